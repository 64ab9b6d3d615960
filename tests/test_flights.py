"""The flights table set: completeness, spec conformance, label, exclusions, times, atomic build."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from longtail.data import flights as F
from longtail.data import tables as tables_mod
from longtail.data.tables import MANIFEST, SNAPSHOT_TS, TableSet, TableSetError, point_in_time_join
from longtail.spec import DatasetSpec

pytestmark = pytest.mark.data

MONTHS = (1,)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> TableSet:
    return F.build_flights(tmp_path_factory.mktemp("flights") / "set", months=MONTHS)


@pytest.fixture(scope="module")
def joined(built: TableSet) -> pd.DataFrame:
    return point_in_time_join(built)


@pytest.fixture(scope="module")
def raw() -> pd.DataFrame:
    return F.load_source()["flights"]


def test_complete_table_set(built: TableSet) -> None:
    assert (built.root / MANIFEST).exists()
    for seq in ("aircraft", "weather"):
        assert built.behavior_path(seq).exists()
    assert built.events_path.exists() and built.profile_path.exists()
    rows = built.manifest["rows"]
    assert rows["events"] == rows["profile_daily"] == len(built.read_events())
    assert built.manifest["meta"]["months"] == list(MONTHS)
    assert set(built.manifest["scenarios"]) <= set(built.read_events()["carrier"])
    assert not [p for p in built.root.parent.iterdir() if p.name != built.root.name]  # no leftovers


def test_spec_validates_the_joined_frame(built: TableSet, joined: pd.DataFrame) -> None:
    spec = built.spec
    problems = spec.problems(joined)
    # documented exception: OO flies once in January, so its scenario has a single label class
    assert all("single label class" in p and "'OO'" in p for p in problems), problems
    spec.validate(joined, check_scenarios=False)
    assert set(spec.columns) <= set(joined.columns)


def test_sequences_are_aligned_lists_oldest_first(built: TableSet, joined: pd.DataFrame) -> None:
    for seq in built.spec.sequences:
        lens = joined[seq.columns[0]].map(len)
        assert lens.max() == seq.max_length
        for col in seq.columns:
            assert (joined[col].map(len) == lens).all(), col
        stamps = joined[seq.column(seq.timestamp_field)]
        steps = (np.asarray(v, dtype="datetime64[ns]") for v in stamps)
        assert all(np.all(np.diff(v) >= np.timedelta64(0)) for v in steps)
    for seq in built.spec.sequences:
        beh = built.read_behavior(seq)
        key = built.spec.sequence_entity(seq)
        assert not beh.duplicated([key, SNAPSHOT_TS]).any()  # one row per entity per hour
        assert (beh[SNAPSHOT_TS] == beh[SNAPSHOT_TS].dt.floor("h")).all()


def test_events_exclude_cancelled_flights(built: TableSet, raw: pd.DataFrame) -> None:
    events = built.read_events()
    month = raw[raw["month"].isin(MONTHS)]
    cancelled = set(month.loc[month["arr_delay"].isna(), "rownames"])
    assert cancelled and not cancelled & set(events["flight_id"])
    assert len(events) == int(month["arr_delay"].notna().sum())
    assert built.manifest["meta"]["cancelled_excluded"] == len(cancelled)
    assert events["tailnum"].notna().all()
    assert list(events.columns) == ["flight_id", "tailnum", "origin", "carrier", "event_timestamp", "delayed"]
    assert events["flight_id"].dtype == np.int64 and events["flight_id"].is_unique


def test_label_is_arrival_delay_over_15_minutes(built: TableSet, raw: pd.DataFrame) -> None:
    events = built.read_events().merge(raw[["rownames", "arr_delay"]], left_on="flight_id",
                                       right_on="rownames")
    assert events["delayed"].dtype == np.int64
    assert (events["delayed"] == (events["arr_delay"] > 15).astype(int)).all()
    assert (events.loc[events["arr_delay"] == 15, "delayed"] == 0).all()  # strictly more than 15
    assert 0.1 < events["delayed"].mean() < 0.5


def test_times_are_utc_and_two_hours_before_departure(built: TableSet) -> None:
    events = built.read_events().set_index("flight_id")
    assert str(events["event_timestamp"].dt.tz) == "UTC"
    # flight 1: UA 1545 EWR-IAH, scheduled 05:15 EST on 2013-01-01 = 10:15 UTC
    assert events.loc[1, "event_timestamp"] == pd.Timestamp("2013-01-01 08:15", tz="UTC")
    profile = built.read_profile()
    assert (profile[SNAPSHOT_TS] == profile[SNAPSHOT_TS].dt.floor("D")).all()
    merged = profile.merge(events, left_on="flight_id", right_index=True)
    assert (merged[SNAPSHOT_TS] <= merged["event_timestamp"]).all()


def test_landing_times_and_dst() -> None:
    src = F.load_source()
    fl, stats = F.prepare_flights(src["flights"], src["airports"])
    # our local→UTC conversion agrees with the source's own UTC hour, DST days included
    assert stats["time_hour_mismatch"] == 0
    airborne_end = (fl["sched_dep"] + pd.to_timedelta(fl["dep_delay"], unit="min")
                    + pd.to_timedelta(fl["air_time"], unit="min"))
    assert (fl["landed_at"] >= airborne_end).all()
    assert (fl["landed_at"] > fl["sched_dep"]).all()
    fallback = fl["landing_rule"] != "schedule"
    assert set(fl.loc[fallback, "dest"]) == {"BQN", "PSE", "SJU", "STT"}  # not in the airports table
    assert (fl.loc[fallback, "landed_at"] == airborne_end[fallback] + F.TAXI_MARGIN).all()
    assert stats["taxi_minutes_quantiles"]["0.99"] < F.TAXI_MARGIN.total_seconds() / 60


def test_profile_nulls_only_where_planes_is_silent(built: TableSet) -> None:
    spec = built.spec
    profile = built.read_profile()
    for f in spec.profile_numeric:
        if not f.nullable:
            assert profile[f.name].notna().all(), f.name
    planes = set(F.load_source()["planes"]["tailnum"])
    tails = built.read_events().set_index("flight_id")["tailnum"]
    unknown = ~profile["flight_id"].map(tails).isin(planes)
    assert unknown.any() and profile.loc[unknown, ["seats", "plane_model"]].isna().all().all()
    assert profile.loc[~unknown, "seats"].notna().all()


def test_spec_yaml_round_trips(built: TableSet) -> None:
    spec = F.flights_spec()
    assert DatasetSpec.from_yaml(spec.to_yaml()) == spec
    assert DatasetSpec.from_dict(spec.to_dict()) == spec
    assert built.spec == spec
    entities = {s.name: spec.sequence_entity(s) for s in spec.sequences}
    assert entities == {"aircraft": "tailnum", "weather": "origin"}


def _crash_on(monkeypatch: pytest.MonkeyPatch, table_file: str) -> None:
    real = tables_mod.write_frame

    def write_frame(df: pd.DataFrame, path: str | Path) -> None:
        if Path(path).name == table_file:
            raise OSError("simulated crash mid-build")
        real(df, path)

    monkeypatch.setattr(tables_mod, "write_frame", write_frame)  # what write_table_set writes each table with


def test_build_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "set"
    with monkeypatch.context() as m:
        _crash_on(m, "profile_daily.parquet")  # after events.parquet was written
        with pytest.raises(OSError, match="simulated"):
            F.build_flights(out, months=MONTHS)
    assert list(tmp_path.iterdir()) == []  # nothing visible, no partial folder
    with pytest.raises(TableSetError):
        TableSet.load(out)

    first = F.build_flights(out, months=MONTHS)
    with monkeypatch.context() as m:
        _crash_on(m, "behavior_weather_hourly.parquet")
        with pytest.raises(OSError, match="simulated"):
            F.build_flights(out, months=(2,))
    assert [p.name for p in tmp_path.iterdir()] == ["set"]
    again = TableSet.load(out)
    assert again.manifest == first.manifest
    assert json.loads((out / MANIFEST).read_text())["meta"]["months"] == list(MONTHS)
    assert len(again.read_events()) == len(first.read_events())
