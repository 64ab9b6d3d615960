"""Leakage checks on the real flights table set: no sequence step is visible before it happened.

The checks read the joined arrays directly (not only through `DatasetSpec.validate`), compare a
sample of rows with a slow, obviously-correct recomputation from the source tables, and prove
they can fail by rebuilding with leaky snapshot-stamping rules.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from longtail.data import flights as F
from longtail.data import importer
from longtail.data.tables import point_in_time_join
from longtail.spec import SpecError

pytestmark = pytest.mark.data

MONTHS = (2,)  # February events; January flights and weather are their history
SAMPLE = 200
HOUR = pd.Timedelta(hours=1)
Source = tuple[pd.DataFrame, pd.DataFrame]  # (prepared flights up to the slice's end, weather)


def _step_times(df: pd.DataFrame, col: str) -> tuple[np.ndarray, np.ndarray]:
    """Flatten a list-of-timestamps column: (step times, the event time of each step's row), naive UTC."""
    lens = df[col].map(len).to_numpy()
    steps = [np.asarray(v, dtype="datetime64[ns]") for v in df[col]]
    flat = np.concatenate(steps) if lens.sum() else np.zeros(0, "datetime64[ns]")
    event = df["event_timestamp"].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy("datetime64[ns]")
    return flat, np.repeat(event, lens)


def aircraft_leaks(df: pd.DataFrame) -> int:
    """Aircraft steps that landed at or after their row's prediction time."""
    landed, event = _step_times(df, "aircraft__landed_at")
    return int((landed >= event).sum())


def weather_leaks(df: pd.DataFrame) -> int:
    """Weather steps not yet available at the prediction time (hour h is available from h + 1h)."""
    observed, event = _step_times(df, "weather__observed_at")
    return int((observed + np.timedelta64(1, "h") > event).sum())


def _build(tmp_path_factory: pytest.TempPathFactory, name: str) -> pd.DataFrame:
    tables = F.build_flights(tmp_path_factory.mktemp(name) / "flights", months=MONTHS)
    return point_in_time_join(tables)


@pytest.fixture(scope="module")
def joined(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    return _build(tmp_path_factory, "ok")


@pytest.fixture(scope="module")
def source() -> Source:
    src = F.load_source()
    fl, _ = F.prepare_flights(src["flights"], src["airports"])
    weather = src["weather"].assign(observed_at=pd.to_datetime(src["weather"]["time_hour"], utc=True))
    return fl.loc[fl["month"] <= max(MONTHS)], weather


def test_no_step_at_or_after_the_prediction_time(joined: pd.DataFrame) -> None:
    assert aircraft_leaks(joined) == 0
    assert weather_leaks(joined) == 0
    # the slice's first events already see January: history crosses the slice boundary
    first_day = joined[joined["event_timestamp"] < joined["event_timestamp"].min() + pd.Timedelta(days=1)]
    assert (first_day["aircraft__landed_at"].map(len) > 0).mean() > 0.5
    assert (joined["weather__observed_at"].map(len) == 24).all()


def test_spec_check_agrees(joined: pd.DataFrame) -> None:
    spec = F.flights_spec()
    assert not [p for p in spec.problems(joined) if "leakage" in p]


def test_aircraft_steps_match_a_slow_recomputation(joined: pd.DataFrame, source: Source) -> None:
    fl, _ = source
    by_tail = {t: g.sort_values(["landed_at", "flight_id"]) for t, g in fl.groupby("tailnum")}
    rows = joined.sample(SAMPLE, random_state=0)
    assert (rows["aircraft__landed_at"].map(len) > 0).sum() > SAMPLE // 2
    for _, row in rows.iterrows():
        event = row["event_timestamp"]
        # hourly refresh: a landing is visible from the next full hour strictly after it
        seen = by_tail[row["tailnum"]]
        seen = seen[seen["landed_at"] < event.floor("h")].tail(16)
        got = pd.to_datetime(np.asarray(row["aircraft__landed_at"], dtype="datetime64[ns]"), utc=True)
        assert list(got) == list(seen["landed_at"]), row["flight_id"]
        got_delay = np.asarray(row["aircraft__arr_delay"], float)
        np.testing.assert_array_equal(got_delay, seen["arr_delay"].to_numpy())
        assert list(row["aircraft__dest"]) == list(seen["dest"])
        if len(seen):
            later = by_tail[row["tailnum"]]
            later = later[(later["landed_at"] > seen["landed_at"].iloc[-1]) & (later["landed_at"] < event)]
            # the only flights landed before the event but not shown are those of the current hour
            assert (later["landed_at"] >= event.floor("h")).all()


def test_weather_steps_match_a_slow_recomputation(joined: pd.DataFrame, source: Source) -> None:
    _, weather = source
    rows = joined.sample(SAMPLE, random_state=1)
    for _, row in rows.iterrows():
        available = weather["observed_at"] + HOUR <= row["event_timestamp"]
        w = weather[(weather["origin"] == row["origin"]) & available]
        w = w.sort_values("observed_at").tail(24)
        got = pd.to_datetime(np.asarray(row["weather__observed_at"], dtype="datetime64[ns]"), utc=True)
        assert list(got) == list(w["observed_at"])
        np.testing.assert_array_equal(np.asarray(row["weather__temp"], float), w["temp"].to_numpy(float))


@pytest.mark.parametrize("leaky_rule", ["floor", "ceil"])
def test_check_catches_a_leaky_aircraft_stamp(tmp_path_factory, monkeypatch, leaky_rule: str) -> None:
    # the importer's stamping rule swapped for a leaky one (no import spec can ask for it):
    # floor: a 10:37 landing shown at 10:00; ceil: a 10:00 landing shown at 10:00 (the on-hour edge)
    def leaky(known: pd.Series, refresh: pd.Timedelta | None = None) -> pd.Series:
        return getattr(known.dt, leaky_rule)(refresh or importer.TICK)

    monkeypatch.setattr(importer, "visibility_stamp", leaky)
    joined = _build(tmp_path_factory, f"leaky_{leaky_rule}")
    assert aircraft_leaks(joined) > 0
    with pytest.raises(SpecError, match="leakage"):
        F.flights_spec().validate(joined, check_scenarios=False)


def test_check_catches_weather_shown_too_early(tmp_path_factory, monkeypatch) -> None:
    monkeypatch.setattr(importer, "visibility_stamp", lambda known, refresh=None: known)  # at, not after
    joined = _build(tmp_path_factory, "leaky_weather")
    assert weather_leaks(joined) > 0
    with pytest.raises(SpecError, match="weather__observed_at.*leakage"):
        F.flights_spec().validate(joined.drop(columns=[c for c in joined if c.startswith("aircraft__")]).assign(
            **{c: [[]] * len(joined) for c in F.flights_spec().sequence("aircraft").columns}), check_scenarios=False)
