"""Table sets, the point-in-time join, transforms and splits on synthetic data."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from longtail.data import tables as tables_mod
from longtail.data.splits import TEST, TRAIN, VALID, assign_split, support_query
from longtail.data.synthetic import SyntheticConfig, build_synthetic, generate_tables
from longtail.data.tables import SNAPSHOT_TS, TableSet, TableSetError, point_in_time_join
from longtail.data.tensors import OOV_INDEX, PAD_INDEX
from longtail.data.transforms import FittedTransforms
from longtail.spec import SpecError, arrow_lists

pytestmark = pytest.mark.data


def test_synthetic_is_deterministic_and_long_tailed():
    a = generate_tables(SyntheticConfig(n_scenarios=4, max_rows=400, min_rows=40, seed=3))
    b = generate_tables(SyntheticConfig(n_scenarios=4, max_rows=400, min_rows=40, seed=3))
    pd.testing.assert_frame_equal(a[1], b[1])
    sizes = a[1]["scenario"].value_counts()
    assert sizes.max() == 400 and sizes.min() == 40


def test_join_takes_newest_snapshot_at_or_before_event(synthetic_tables, synthetic_frame):
    beh = synthetic_tables.read_behavior("actions")
    ev = synthetic_frame.sample(50, random_state=0)
    for _, row in ev.iterrows():
        snaps = beh[(beh["user_id"] == row["user_id"]) & (beh[SNAPSHOT_TS] <= row["event_timestamp"])]
        expect = [] if snaps.empty else list(snaps.sort_values(SNAPSHOT_TS).iloc[-1]["actions__amount"])
        assert list(row["actions__amount"]) == expect


def test_no_sequence_step_at_or_after_event(synthetic_frame):
    for seq in ("actions__at", "market__observed_at"):
        lens = synthetic_frame[seq].map(len).to_numpy()
        steps = pd.to_datetime(pd.Series(np.concatenate([np.asarray(v) for v in synthetic_frame[seq] if len(v)])),
                               utc=True)
        ev = np.repeat(synthetic_frame["event_timestamp"].to_numpy(), lens)
        assert (steps.to_numpy() < ev).all()


def test_incomplete_table_set_is_refused(tmp_path, monkeypatch):
    spec, events, profile, behaviors = generate_tables(SyntheticConfig(n_scenarios=2, max_rows=80, min_rows=40))
    good = tables_mod.write_table_set(tmp_path / "t", spec, events, profile, behaviors)
    assert len(good.read_events()) == 120

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(tables_mod, "atomic_write_json", boom)
    with pytest.raises(OSError):
        tables_mod.write_table_set(tmp_path / "t", spec, events.iloc[:10], profile, behaviors)
    # the previous complete set is intact and no partial folder is visible
    assert len(TableSet.load(tmp_path / "t").read_events()) == 120
    assert [p.name for p in tmp_path.iterdir()] == ["t"]
    with pytest.raises(TableSetError, match="not a complete table set"):
        TableSet.load(tmp_path / "nothing")


def test_transforms_round_trip_and_shapes(synthetic_tables, synthetic_frame):
    spec = synthetic_tables.spec
    train = synthetic_frame.iloc[:1000]
    tf = FittedTransforms.fit(spec, train)
    b = tf.transform(synthetic_frame)
    schema = tf.schema
    assert b.profile_num.shape == (len(synthetic_frame), schema.n_profile_numeric)
    assert b.seq_num["actions"].shape == (len(synthetic_frame), 8, schema.sequences[0].n_numeric)
    again = FittedTransforms.from_dict(json.loads(json.dumps(tf.to_dict())))
    b2 = again.transform(synthetic_frame)
    assert torch.equal(b.seq_num["actions"], b2.seq_num["actions"])
    assert torch.equal(b.profile_cat, b2.profile_cat)


def test_left_padding_and_mask(synthetic_tables, synthetic_frame):
    tf = FittedTransforms.fit(synthetic_tables.spec, synthetic_frame)
    b = tf.transform(synthetic_frame)
    lens = synthetic_frame["actions__amount"].map(len).to_numpy()
    mask = b.seq_mask["actions"].numpy()
    assert (mask.sum(1) == np.minimum(lens, 8)).all()
    # left padding: real steps are the last ones
    for i in np.flatnonzero((lens > 0) & (lens < 8))[:20]:
        assert not mask[i, : 8 - lens[i]].any() and mask[i, 8 - lens[i]:].all()
        assert (b.seq_cat["actions"][i, : 8 - lens[i]] == PAD_INDEX).all()
        assert (b.seq_num["actions"][i, : 8 - lens[i]] == 0).all()


def test_transforms_fitted_on_train_only(synthetic_tables, synthetic_frame):
    spec = synthetic_tables.spec
    train = synthetic_frame.iloc[:500].copy()
    train["segment"] = "a"
    tf = FittedTransforms.fit(spec, train)
    b = tf.transform(synthetic_frame)
    # categories never seen in training go to the OOV bucket
    seg = synthetic_frame["segment"].to_numpy()
    assert (b.profile_cat[seg != "a", 0] == OOV_INDEX).all()
    assert tf.numeric["x1"].center == pytest.approx(train["x1"].mean())


def test_missing_numeric_gets_indicator(synthetic_tables, synthetic_frame):
    tf = FittedTransforms.fit(synthetic_tables.spec, synthetic_frame)
    b = tf.transform(synthetic_frame)
    age_missing = synthetic_frame["age"].isna().to_numpy()
    assert age_missing.any()
    # inputs: x1, x2, age, age_missing
    assert (b.profile_num[age_missing, 2] == 0).all()
    assert (b.profile_num[:, 3].numpy() == age_missing).all()


def test_unknown_category_refused_when_closed(synthetic_tables, synthetic_frame):
    from longtail.spec import DatasetSpec

    d = synthetic_tables.spec.to_dict()
    d["sequences"][0]["categorical"][0]["oov_bucket"] = False
    tf = FittedTransforms.fit(DatasetSpec.from_dict(d), synthetic_frame)
    bad = synthetic_frame.copy()
    bad["actions__kind"] = bad["actions__kind"].map(lambda v: ["teleport"] * len(v))
    with pytest.raises(SpecError, match="actions__kind.*teleport"):
        tf.transform(bad)


def test_splits_reproducible_and_stratified(synthetic_frame):
    s1 = assign_split(synthetic_frame["scenario"], seed=0)
    s2 = assign_split(synthetic_frame["scenario"], seed=0)
    s3 = assign_split(synthetic_frame["scenario"], seed=1)
    assert (s1 == s2).all() and not (s1 == s3).all()
    for _scen, g in synthetic_frame.groupby("scenario"):
        part = s1[g.index]
        assert abs((part == TEST).mean() - 0.2) < 0.02
        assert (part == VALID).any() and (part == TRAIN).any()


def test_split_of_a_scenario_does_not_depend_on_others(synthetic_frame):
    full = assign_split(synthetic_frame["scenario"], seed=0)
    only = synthetic_frame["scenario"] == "s03"
    alone = assign_split(synthetic_frame.loc[only, "scenario"].reset_index(drop=True), seed=0)
    assert (full[only.to_numpy()] == alone).all()


def test_support_query():
    s, q = support_query(100, seed=0, scenario="a", query_frac=0.3)
    assert len(q) == 30 and len(s) == 70 and not set(s) & set(q)
    s2, q2 = support_query(100, seed=0, scenario="a", query_frac=0.3)
    assert (q == q2).all()


def test_build_synthetic_writes_spec(tmp_path):
    ts = build_synthetic(tmp_path / "s", SyntheticConfig(n_scenarios=2, max_rows=60, min_rows=30))
    assert ts.spec.name == "synthetic"
    df = point_in_time_join(ts)
    ts.spec.validate(df)


def test_join_cache_round_trips_and_follows_the_table_set(tmp_path, monkeypatch):
    from longtail.data.prepared import DataConfig, prepare
    from longtail.data.tables import JOIN_CACHE_ENV, cached_join

    root = tmp_path / "tables"
    tables = build_synthetic(root, SyntheticConfig(n_scenarios=3, max_rows=200, min_rows=40, seed=1))
    cache = tmp_path / "cache"
    frame, validated = cached_join(tables, cache)  # a miss: joins, validates, writes
    assert validated
    assert len(list(cache.glob("*.parquet"))) == 1 and len(list(cache.glob("*.json"))) == 1
    again, validated = cached_join(tables, cache)  # a hit: the same rows, values and dtypes
    assert validated
    pd.testing.assert_frame_equal(again, frame)  # arrow list columns stay arrow lists
    col = tables.spec.sequences[0].column(tables.spec.sequences[0].field_names[0])
    assert arrow_lists(again[col]) is not None
    # and plain pandas reads the cached file as always: a numpy array of steps per cell
    plain_read = pd.read_parquet(next(cache.glob("*.parquet")))
    assert plain_read[col].dtype == object and isinstance(plain_read[col].iloc[0], np.ndarray)
    assert [list(v) for v in plain_read[col]] == [list(v) for v in frame[col].to_numpy()]
    # prepare through the environment variable gives the same split and rows as without a cache
    plain = prepare(DataConfig(tables=str(root)))
    monkeypatch.setenv(JOIN_CACHE_ENV, str(cache))
    cached = prepare(DataConfig(tables=str(root), scenarios=tuple(plain.scenarios[:2])))
    sub = plain.frame[plain.frame[tables.spec.scenario].astype(str).isin(plain.scenarios[:2])]
    assert len(cached.frame) == len(sub)
    # a rebuilt table set gets a new key, never the stale entry
    build_synthetic(root, SyntheticConfig(n_scenarios=3, max_rows=150, min_rows=40, seed=2))
    fresh, _ = cached_join(TableSet.load(root), cache)
    assert len(fresh) != len(frame)
    assert len(list(cache.glob("*.parquet"))) == 2


def test_join_cache_records_an_invalid_set_and_prepare_still_refuses_it(tmp_path, monkeypatch):
    from longtail.data.prepared import DataConfig, prepare
    from longtail.data.tables import JOIN_CACHE_ENV

    root = tmp_path / "tables"
    tables = build_synthetic(root, SyntheticConfig(n_scenarios=3, max_rows=200, min_rows=40, seed=1))
    profile = tables.read_profile()
    profile.loc[profile.index[:3], "x1"] = np.nan  # x1 is not nullable: only the joined rows show it
    profile.to_parquet(tables.profile_path, index=False)
    monkeypatch.setenv(JOIN_CACHE_ENV, str(tmp_path / "cache"))
    for _ in range(2):  # the miss and the hit both refuse it, naming the column
        with pytest.raises(SpecError, match="'x1'.*NaN"):
            prepare(DataConfig(tables=str(root)))


def test_a_set_of_the_first_layout_still_loads_and_joins(tmp_path):
    """A spec that names no profile tables: one ``profile_daily`` table keyed by the first entity key,
    views ``behavior_<seq>_hourly``, no as-of column (so no join-miss count, as before)."""
    import dataclasses

    spec, events, profile, behaviors = generate_tables(SyntheticConfig(n_scenarios=2, max_rows=80, min_rows=40))
    legacy = dataclasses.replace(spec, profiles=(), sequences=tuple(dataclasses.replace(s, view=None)
                                                                    for s in spec.sequences))
    old_profile = profile.drop(columns=[c for c in profile if c.endswith("__published_at")])
    ts = tables_mod.write_table_set(tmp_path / "t", legacy, events, old_profile, behaviors)
    assert sorted(p.name for p in ts.root.glob("*.parquet")) == [
        "behavior_actions_hourly.parquet", "behavior_market_hourly.parquet", "events.parquet", "profile_daily.parquet"]
    assert ts.profile_path.name == "profile_daily.parquet" and legacy.profile_entity == "event_id"
    df = point_in_time_join(ts)
    assert legacy.join_misses(df) == {} and not legacy.problems(df)
    with pytest.raises(TableSetError, match="profile table\\(s\\) \\['event'\\] missing"):
        tables_mod.write_table_set(tmp_path / "u", spec, events, {"other": profile}, behaviors)
