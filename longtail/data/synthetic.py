"""A synthetic long-tail dataset with the same shape as the flights tables, for tests.

Controllable: number of scenarios, long-tail sizes (geometric from ``max_rows`` down to
``min_rows``), a shared signal plus a per-scenario shift, and a planted sequence signal. Two
behavior sequences on two different entities exercise the multi-sequence paths:

* ``actions`` (entity ``user_id``): the user's last actions (amount, kind, ``at`` timestamp);
* ``market`` (entity ``region``): the region's last hourly index values (``observed_at``).

The label's logit is ``0.8·x1 − 0.5·x2 + segment effect + 1.2·mean(last 3 action amounts)
+ 0.6·(kind 'risky' among the last 3) + 0.5·last market value + b_s + w_s·x2`` where ``b_s``,
``w_s`` are the scenario's shift; it is computed from the point-in-time joined features, so
everything the label depends on is visible to a model without leakage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from longtail.data.importer import EventsSource, ImportSpec, LogSource, ProfileSource, build_tables
from longtail.data.tables import TableSet, join_frames, write_table_set
from longtail.spec import CategoricalFeature, DatasetSpec, NumericFeature, ScenarioRules

T0 = pd.Timestamp("2024-01-01", tz="UTC")
KINDS = ("view", "buy", "risky", "refund", "chat")


@dataclass(frozen=True)
class SyntheticConfig:
    """Args:
    n_scenarios: number of scenarios.
    max_rows / min_rows: the largest and smallest scenario sizes (geometric in between).
    days: length of the event window.
    shift: scale of the per-scenario shift (0 = one shared model fits all).
    seq_signal: weight of the planted sequence signal.
    seed: random seed (same seed, same tables).
    """

    n_scenarios: int = 6
    max_rows: int = 3000
    min_rows: int = 60
    days: int = 20
    shift: float = 1.0
    seq_signal: float = 1.2
    seed: int = 0


def synthetic_import_spec() -> ImportSpec:
    """The import spec of the synthetic raw tables (frames named events, profile, actions, market).

    The profile is published the day before each event's day and refreshed daily; both logs are
    refreshed hourly, and a market observation of hour h is published one hour later.
    """
    return ImportSpec(
        name="synthetic",
        description="synthetic long-tail data for tests",
        events=EventsSource(path="events", keys=("event_id", "user_id", "region"), time="event_timestamp",
                            scenario="scenario", label="label"),
        profiles=(ProfileSource(name="event", view="profile_daily", path="profile", key="event_id",
                                time="published_at", refresh="1D",
                                numeric=(NumericFeature("x1"), NumericFeature("x2"),
                                         NumericFeature("age", nullable=True)),
                                categorical=(CategoricalFeature("segment"),)),),
        sequences=(
            LogSource(name="actions", view="behavior_actions_hourly", path="actions", key="user_id", time="at",
                      refresh="1h", max_length=8, numeric=(NumericFeature("amount"),),
                      categorical=(CategoricalFeature("kind", vocabulary=KINDS, oov_bucket=True),)),
            LogSource(name="market", view="behavior_market_hourly", path="market", key="region", time="observed_at",
                      available_after="1h", refresh="1h", max_length=6, numeric=(NumericFeature("index"),)),
        ),
        # the labels are drawn after the join (from what it makes visible): no scenario is judged before
        scenarios=ScenarioRules(min_rows=0, min_per_class=0),
    )


def synthetic_spec() -> DatasetSpec:
    """The spec of the synthetic dataset."""
    return synthetic_import_spec().dataset_spec()


def scenario_sizes(cfg: SyntheticConfig) -> list[int]:
    if cfg.n_scenarios == 1:
        return [cfg.max_rows]
    ratio = (cfg.min_rows / cfg.max_rows) ** (1 / (cfg.n_scenarios - 1))
    return [max(cfg.min_rows, int(round(cfg.max_rows * ratio**i))) for i in range(cfg.n_scenarios)]


def generate_tables(cfg: SyntheticConfig) -> tuple[DatasetSpec, pd.DataFrame, pd.DataFrame, dict[str, pd.DataFrame]]:
    """Generate the synthetic tables in memory.

    The raw tables (events, a profile row per event, the users' actions, the regions' hourly index)
    go through `longtail.data.importer.build_tables`; the labels are then drawn from the joined rows.

    Returns:
        (spec, events, profile_daily, {"actions": ..., "market": ...}) in the table-set layout.
    """
    rng = np.random.default_rng(cfg.seed)
    spec = synthetic_spec()
    sizes = scenario_sizes(cfg)
    n = sum(sizes)
    horizon_h = cfg.days * 24
    n_users = max(20, n // 4)
    n_regions = 4

    # ---- actions of each user (behavior sequence 1)
    user_mu = rng.normal(0, 0.7, n_users)
    n_act = rng.poisson(horizon_h / 24 * 1.5, n_users) + 1
    act_user = np.repeat(np.arange(n_users), n_act)
    act_hours = rng.uniform(0, horizon_h, len(act_user))
    act_amount = user_mu[act_user] + rng.normal(0, 0.8, len(act_user))
    act_kind = rng.choice(len(KINDS), len(act_user), p=[0.4, 0.2, 0.15, 0.15, 0.1])
    actions = pd.DataFrame({"user_id": act_user, "h": act_hours, "amount": act_amount,
                            "kind": np.array(KINDS)[act_kind]})
    actions["at"] = T0 + pd.to_timedelta(actions["h"], unit="h")
    actions = actions.sort_values(["user_id", "at"]).reset_index(drop=True)

    # ---- hourly market index per region (behavior sequence 2)
    hours = np.arange(horizon_h + 1)
    market = pd.DataFrame({
        "region": np.repeat([f"r{i}" for i in range(n_regions)], len(hours)),
        "h": np.tile(hours, n_regions).astype(float),
    })
    walk = rng.normal(0, 0.3, len(market)).reshape(n_regions, -1).cumsum(axis=1) * 0.3
    market["index"] = np.clip(walk.ravel(), -3, 3)
    market["observed_at"] = T0 + pd.to_timedelta(market["h"], unit="h")

    # ---- events and daily profile
    scen = np.repeat([f"s{i:02d}" for i in range(cfg.n_scenarios)], sizes)
    ev_hours = rng.uniform(48, horizon_h, n)
    events = pd.DataFrame({
        "event_id": np.arange(n, dtype=np.int64),
        "user_id": rng.integers(0, n_users, n),
        "region": rng.choice([f"r{i}" for i in range(n_regions)], n),
        "scenario": scen,
        "event_timestamp": T0 + pd.to_timedelta(ev_hours, unit="h"),
    })
    profile = pd.DataFrame({
        "event_id": events["event_id"],
        "published_at": events["event_timestamp"].dt.floor("D") - pd.Timedelta(days=1),
        "x1": rng.normal(0, 1, n),
        "x2": rng.normal(0, 1, n),
        "age": np.where(rng.uniform(size=n) < 0.1, np.nan, rng.uniform(18, 80, n)),
        "segment": rng.choice(["a", "b", "c"], n),
    })
    events["label"] = 0
    built = build_tables(synthetic_import_spec(), frames={"events": events, "profile": profile, "actions": actions,
                                                          "market": market})
    events, profiles, behaviors = built.events, built.profiles, built.behaviors
    joined = join_frames(spec, events, profiles, behaviors)

    # ---- the label, from what the join makes visible
    bias = {f"s{i:02d}": rng.normal(0, 0.8 * cfg.shift) for i in range(cfg.n_scenarios)}
    w2 = {f"s{i:02d}": rng.normal(0, 1.0 * cfg.shift) for i in range(cfg.n_scenarios)}
    seg = joined["segment"].map({"a": -0.4, "b": 0.0, "c": 0.5}).to_numpy()
    last3 = joined["actions__amount"].map(lambda v: float(np.mean(v[-3:])) if len(v) else 0.0).to_numpy()
    risky = joined["actions__kind"].map(lambda v: float(sum(k == "risky" for k in v[-3:]))).to_numpy()
    mkt = joined["market__index"].map(lambda v: float(v[-1]) if len(v) else 0.0).to_numpy()
    logit = (0.8 * joined["x1"] - 0.5 * joined["x2"] + seg + cfg.seq_signal * (last3 + 0.5 * risky)
             + 0.5 * mkt + joined["scenario"].map(bias) + joined["scenario"].map(w2) * joined["x2"] - 0.5)
    prob = 1 / (1 + np.exp(-logit.to_numpy()))
    events["label"] = (rng.uniform(size=n) < prob).astype(np.int64)
    return spec, events, profiles["event"], behaviors


def build_synthetic(out: str | Path, cfg: SyntheticConfig | None = None) -> TableSet:
    """Generate the synthetic dataset and write it as a table set.

    Args:
        out: destination folder.
        cfg: generator settings.

    Returns:
        The written `TableSet`.
    """
    cfg = cfg or SyntheticConfig()
    spec, events, profile, behaviors = generate_tables(cfg)
    return write_table_set(out, spec, events, profile, behaviors, meta={"source": "synthetic", **cfg.__dict__})
