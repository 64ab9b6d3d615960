"""`longtail data import`: raw tables plus an import spec in, a point-in-time table set out.

Covers the visibility rules (strictly before the prediction time, at the microsecond or on a
refresh clock), several profile tables keyed by different entities, join misses and profile
leakage, scenario hygiene, errors that name the key, file or column, and the flights builder as an
import that reproduces the table set of the builder it replaced.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from longtail.cli import main
from longtail.data import flights as F
from longtail.data import importer
from longtail.data.examples import write_ratings
from longtail.data.importer import ImportSpec, ImportSpecError, build_tables, import_tables, visibility_stamp
from longtail.data.tables import SNAPSHOT_TS, TableSet, point_in_time_join, snapshot_table, trim_before
from longtail.spec import SpecError, arrow_lists

pytestmark = pytest.mark.data

T = pd.Timestamp("2024-03-01 10:00", tz="UTC")


def _spec(**changes) -> dict:
    """A small import spec: events of users buying items; a user profile, an item catalog, a click log."""
    d = {
        "name": "shop",
        "events": {"path": "events", "keys": ["user_id", "item_id"], "time": "at", "scenario": "shop",
                   "label": "bought"},
        "profiles": [
            {"name": "user", "path": "users", "key": "user_id", "time": "updated_at",
             "numeric": [{"name": "age"}]},
            {"name": "item", "path": "items", "key": "item_id", "categorical": [{"name": "colour"}]},
        ],
        "sequences": [{"name": "clicks", "path": "clicks", "key": "user_id", "time": "clicked_at", "max_length": 3,
                       "numeric": [{"name": "dwell"}]}],
        "scenarios": {"min_rows": 0, "min_per_class": 0},
    }
    for k, v in changes.items():
        d[k] = v
    return d


def _frames() -> dict[str, pd.DataFrame]:
    events = pd.DataFrame({"user_id": [1, 1, 2, 2], "item_id": [10, 11, 10, 12], "shop": ["a", "a", "b", "b"],
                           "at": [T, T + pd.Timedelta(hours=2), T, T + pd.Timedelta(days=1)],
                           "bought": [0, 1, 1, 0]})
    users = pd.DataFrame({"user_id": [1, 1, 2, 2], "updated_at": [T - pd.Timedelta(days=3), T,
                                                                   T - pd.Timedelta(days=1), T + pd.Timedelta(hours=1)],
                          "age": [30.0, 31.0, 40.0, 41.0]})
    items = pd.DataFrame({"item_id": [10, 11, 12], "colour": ["red", "blue", "red"]})
    clicks = pd.DataFrame({"user_id": [1, 1, 1, 2, 2], "dwell": [1.0, 2.0, 3.0, 4.0, 5.0],
                           "clicked_at": [T - pd.Timedelta(minutes=5), T - pd.Timedelta(microseconds=1), T,
                                          T - pd.Timedelta(hours=3), T + pd.Timedelta(hours=5)]})
    return {"events": events, "users": users, "items": items, "clicks": clicks}


def _join(spec: dict | ImportSpec, frames: dict[str, pd.DataFrame] | None = None) -> pd.DataFrame:
    s = spec if isinstance(spec, ImportSpec) else ImportSpec.from_dict(spec)
    r = build_tables(s, frames=frames or _frames())
    from longtail.data.tables import join_frames

    return join_frames(r.spec, r.events, r.profiles, r.behaviors)


# ---------------------------------------------------------------------- visibility
def test_steps_and_profiles_are_strictly_before_the_prediction_time():
    df = _join(_spec())
    # user 1 at T: the click 1 µs before T is seen, the one at T is not; the profile row updated at T is not
    first = df.iloc[0]
    assert list(first["clicks__dwell"]) == [1.0, 2.0]
    assert first["age"] == 30.0 and first["user__updated_at"] == (T - pd.Timedelta(days=3)).tz_localize(None)
    # two hours later both are
    second = df.iloc[1]
    assert list(second["clicks__dwell"]) == [1.0, 2.0, 3.0] and second["age"] == 31.0
    # the static catalog is known at all times, the second user's later update is not seen at T
    assert list(df["colour"]) == ["red", "blue", "red", "red"]
    assert df.iloc[2]["age"] == 40.0 and df.iloc[3]["age"] == 41.0
    assert list(df.iloc[3]["clicks__dwell"]) == [4.0, 5.0]
    spec = ImportSpec.from_dict(_spec()).dataset_spec()
    assert spec.problems(df) == []


def test_refresh_and_available_after_follow_the_clock():
    known = pd.Series(pd.to_datetime(["2024-03-01 10:37:00", "2024-03-01 10:00:00", "2024-03-01 10:59:59.999999"],
                                     utc=True, format="ISO8601"))
    hourly = visibility_stamp(known, pd.Timedelta(hours=1))
    assert list(hourly.dt.strftime("%H:%M")) == ["11:00", "11:00", "11:00"]
    fine = visibility_stamp(known)
    assert (fine - known == pd.Timedelta(microseconds=1)).all()
    seq = _spec()["sequences"][0] | {"refresh": "1h", "available_after": "30min"}
    df = _join(_spec(sequences=[seq]))
    # at T: clicks at 9:55 and 9:59:59.999999 are known at 10:25 and ~10:30, shown from 11:00
    assert list(df.iloc[0]["clicks__dwell"]) == []
    assert list(df.iloc[1]["clicks__dwell"]) == [1.0, 2.0, 3.0]  # at 12:00: everything before 11:30


def test_sequences_are_built_in_chunks_of_whole_entities(monkeypatch):
    rng = np.random.default_rng(0)
    n = 500
    clicks = pd.DataFrame({"user_id": rng.integers(1, 30, n), "dwell": rng.normal(size=n),
                           "clicked_at": T - pd.to_timedelta(rng.integers(0, 10**6, n), unit="s")})
    frames = _frames() | {"clicks": clicks}
    whole = build_tables(ImportSpec.from_dict(_spec()), frames=frames).behaviors["clicks"]
    monkeypatch.setattr(importer, "SEQUENCE_CHUNK_ROWS", 37)
    seen = []
    chunked = build_tables(ImportSpec.from_dict(_spec()), frames=frames,
                           progress=lambda stage, done, total: seen.append((stage, done, total))).behaviors["clicks"]
    pd.testing.assert_frame_equal(whole.drop(columns="clicks__dwell"), chunked.drop(columns="clicks__dwell"))
    assert all(np.array_equal(a, b) for a, b in zip(whole["clicks__dwell"], chunked["clicks__dwell"], strict=True))
    steps = [d for s, d, _ in seen if s == "sequence clicks"]
    assert len(steps) > 5 and steps == sorted(steps) and steps[-1] == n


# ---------------------------------------------------------------------- several profiles, misses, leakage
def test_several_profile_tables_each_keyed_by_its_own_entity(tmp_path):
    spec = ImportSpec.from_dict(_spec())
    ts = import_tables(spec, tmp_path / "t", frames=_frames())
    ds = ts.spec
    assert [(p.name, p.entity_key, p.view_name) for p in ds.profile_tables] == [
        ("user", "user_id", "profile_user"), ("item", "item_id", "profile_item")]
    assert ds.views == ["profile_user", "profile_item", "behavior_clicks"]
    assert sorted(p.name for p in ts.root.glob("*.parquet")) == [
        "behavior_clicks.parquet", "events.parquet", "profile_item.parquet", "profile_user.parquet"]
    assert ds.profile("item").static and not ds.profile("user").static
    assert ts.manifest["rows"]["profile_item"] == 3
    joined = point_in_time_join(ts)
    assert list(joined["colour"]) == ["red", "blue", "red", "red"]
    # the spec round-trips with its profile tables
    assert type(ds).from_yaml(ds.to_yaml()) == ds


def test_a_required_profile_with_join_misses_is_refused_naming_the_table(tmp_path):
    frames = _frames()
    frames["users"] = frames["users"][frames["users"]["user_id"] == 1]
    with pytest.raises(ImportSpecError, match=r"profile 'user' \(key 'user_id'\): 2 of 4 event\(s\) find no row.*"
                                              r"2 with a key the table does not have.*required: false"):
        import_tables(ImportSpec.from_dict(_spec()), tmp_path / "t", frames=frames)
    assert not (tmp_path / "t").exists()
    # a row known only after the event is a miss too, counted apart
    frames = _frames()
    frames["users"] = frames["users"].assign(updated_at=frames["users"]["updated_at"] + pd.Timedelta(days=10))
    with pytest.raises(ImportSpecError, match=r"0 with a key the table does not have, 4 whose first row is known"):
        build_tables(ImportSpec.from_dict(_spec()), frames=frames)


def test_misses_allowed_when_not_required_and_reported_as_misses_not_nans(tmp_path):
    frames = _frames()
    frames["users"] = frames["users"][frames["users"]["user_id"] == 1]
    profiles = _spec()["profiles"]
    with pytest.raises(ImportSpecError, match="required is false.*'age' is not nullable"):
        ImportSpec.from_dict(_spec(profiles=[profiles[0] | {"required": False}, profiles[1]]))
    loose = _spec(profiles=[profiles[0] | {"required": False, "numeric": [{"name": "age", "nullable": True}]},
                            profiles[1]])
    ts = import_tables(ImportSpec.from_dict(loose), tmp_path / "t", frames=frames)
    assert ts.manifest["meta"]["coverage"]["user"] == {"events_with_a_row": 2, "join_misses": 2}
    df = point_in_time_join(ts)
    assert ts.spec.join_misses(df) == {"user": 2, "item": 0}
    assert ts.spec.problems(df) == []
    # the same rows in a set whose profile is required: reported as a join miss, never as "fill your NaNs"
    strict = dataclasses.replace(ImportSpec.from_dict(_spec()).dataset_spec())
    problems = strict.problems(df)
    assert len(problems) == 1 and "join miss, not a NaN value" in problems[0] and "NaN value(s) but" not in problems[0]
    assert "profile 'user' (view profile_user, key 'user_id'" in problems[0]


def test_a_profile_snapshot_known_at_or_after_the_event_is_leakage():
    df = _join(_spec())
    spec = ImportSpec.from_dict(_spec()).dataset_spec()
    leaked = df.copy()
    leaked.loc[2, "user__updated_at"] = df.loc[2, "at"].tz_localize(None)  # known exactly at the prediction time
    problems = spec.problems(leaked)
    assert len(problems) == 1
    assert re_search(r"profile 'user'.*1 event\(s\) got a snapshot known at or after their 'at' \(leakage\), "
                     r"e\.g\. row 2 \(user_id=2", problems[0])
    with pytest.raises(SpecError, match="leakage"):
        spec.validate(leaked)


def re_search(pattern: str, text: str) -> bool:
    import re

    return re.search(pattern, text) is not None


# ---------------------------------------------------------------------- scenario hygiene
def _tail_frames() -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(1)
    sizes = {"big": 200, "mid": 60, "tiny1": 8, "tiny2": 7, "oneclass": 30}
    shop = np.repeat(list(sizes), list(sizes.values()))
    y = rng.integers(0, 2, len(shop))
    y[shop == "oneclass"] = 1
    ev = pd.DataFrame({"user_id": rng.integers(1, 3, len(shop)), "item_id": rng.choice([10, 11, 12], len(shop)),
                       "shop": shop, "at": T + pd.to_timedelta(rng.integers(0, 10**5, len(shop)), unit="s"),
                       "bought": y})
    return _frames() | {"events": ev}


def test_scenario_rules_drop_small_scenarios_and_say_so():
    spec = ImportSpec.from_dict(_spec(scenarios={"min_rows": 20, "min_per_class": 3}))
    r = build_tables(spec, frames=_tail_frames())
    assert sorted(r.events["shop"].unique()) == ["big", "mid"]
    acted = {x["scenario"]: x["action"] for x in r.report["scenario_policy"]}
    assert acted == {"tiny1": "dropped", "tiny2": "dropped", "oneclass": "dropped"}
    assert r.report["events_read"] == 305 and r.report["events"] == 260


def test_scenario_rules_merge_into_a_bucket(tmp_path, capsys):
    spec = ImportSpec.from_dict(_spec(scenarios={"min_rows": 10, "min_per_class": 2, "policy": "merge",
                                                 "merge_into": "rest"}))
    r = build_tables(spec, frames=_tail_frames())
    assert sorted(r.events["shop"].unique()) == ["big", "mid", "rest"]
    assert (r.events["shop"] == "rest").sum() == 8 + 7 + 30
    assert {x["scenario"] for x in r.report["scenario_policy"]} == {"tiny1", "tiny2", "oneclass"}
    # a bucket still too small is dropped in turn, and reported
    spec = ImportSpec.from_dict(_spec(scenarios={"min_rows": 50, "min_per_class": 2, "policy": "merge",
                                                 "merge_into": "rest"}))
    r = build_tables(spec, frames=_tail_frames())
    assert sorted(r.events["shop"].unique()) == ["big", "mid"]
    assert r.report["scenario_policy"][-1]["action"].startswith("bucket dropped")
    with pytest.raises(ImportSpecError, match="merge_into: 'big' is already a scenario"):
        build_tables(ImportSpec.from_dict(_spec(scenarios={"min_rows": 50, "policy": "merge", "merge_into": "big"})),
                     frames=_tail_frames())
    with pytest.raises(ImportSpecError, match="merge_into is empty"):
        ImportSpec.from_dict(_spec(scenarios={"min_rows": 50, "policy": "merge"}))


def test_validation_names_scenarios_below_the_rules():
    spec = ImportSpec.from_dict(_spec(scenarios={"min_rows": 20, "min_per_class": 3})).dataset_spec()
    df = _join(ImportSpec.from_dict(_spec()), _tail_frames())
    problems = spec.scenario_problems(df)
    assert len(problems) == 3
    assert any("scenario 'tiny2' (column 'shop'): 7 row(s)" in p and "min_rows 20" in p for p in problems)


# ---------------------------------------------------------------------- bad input names the fix
@pytest.mark.parametrize("change, frames_change, pattern", [
    ({"events": {"keys": ["user_id", "item_id", "basket_id"]}}, None,
     r"events: column\(s\) \['basket_id'\] not in events"),
    ({"profiles": [{"name": "user", "path": "users", "key": "account"}]}, None,
     r"profiles\[0\] \('user'\): key 'account' is not one of events.keys"),
    ({"sequences": [{"name": "clicks", "path": "clicks", "key": "user_id", "time": "clicked_at",
                     "numeric": [{"name": "dwell"}], "refresh": "hourly"}]}, None,
     r"sequences\[0\].refresh: 'hourly' is not a duration"),
    ({"events": {"label": "score"}}, {"events": lambda e: e.assign(score=e["bought"] * 5)},
     r"label column 'score' holds \[0, 5\].*derive: \{liked: 'score >= 4'\}"),
    ({}, {"clicks": lambda c: c.assign(clicked_at=c["clicked_at"].astype("int64") // 10**9)},
     r"column 'clicked_at' holds numbers.*set time_unit: s"),
    ({}, {"users": lambda u: u.assign(age=u["age"].astype(str) + " years")},
     r"column 'age' is declared numeric but holds '30.0 years'"),
    ({"events": {"where": "bought >"}}, None, r"events.where: cannot evaluate 'bought >'"),
    ({"events": {"colour": "red"}}, None, r"import spec.events: unknown key\(s\) \['colour'\]"),
    ({}, {"items": lambda i: pd.concat([i, i.iloc[:1]])}, r"2 rows share a \(item_id, time\).*one row per key"),
    ({}, {"clicks": lambda c: c.assign(user_id=c["user_id"].astype(float).where(c["dwell"] < 5))},
     r"sequence 'clicks': key column 'user_id' is empty in 1 row"),
    ({}, {"events": lambda e: pd.concat([e, e.iloc[:2]])}, r"events: 2 row\(s\) of events repeat an event"),
    ({"events": {"where": "bought > 5"}}, None, r"events: no rows in events after where: 'bought > 5'"),
    ({}, {"clicks": lambda c: c.iloc[:0]}, r"sequences\[0\] \('clicks'\): no rows in clicks"),
])
def test_bad_input_names_the_key_and_the_fix(change, frames_change, pattern):
    d = _spec()
    for k, v in change.items():
        d[k] = {**d[k], **v} if isinstance(d[k], dict) else v
    frames = _frames()
    for k, f in (frames_change or {}).items():
        frames[k] = f(frames[k])
    with pytest.raises(ImportSpecError, match=pattern):
        build_tables(ImportSpec.from_dict(d), frames=frames)


def test_missing_file_and_unknown_format_are_named(tmp_path):
    (tmp_path / "events.xlsx").write_text("x")
    spec = ImportSpec.from_dict(_spec(events={**_spec()["events"], "path": "events.xlsx"}))
    with pytest.raises(ImportSpecError, match="events.path: events.xlsx is neither parquet"):
        build_tables(spec, tmp_path)
    spec = ImportSpec.from_dict(_spec(events={**_spec()["events"], "path": "nowhere.csv"}))
    with pytest.raises(ImportSpecError, match=r"events.path: file .*nowhere.csv not found"):
        build_tables(spec, tmp_path)
    with pytest.raises(ImportSpecError, match="not found"):
        ImportSpec.from_yaml(tmp_path / "none.yaml")


def test_keys_get_one_type_across_tables():
    frames = _frames()
    frames["events"] = frames["events"].assign(item_id=frames["events"]["item_id"].astype(str))
    r = build_tables(ImportSpec.from_dict(_spec()), frames=frames)
    assert r.report["key_types"] == {"user_id": "int64", "item_id": "string"}
    assert r.profiles["item"]["item_id"].tolist() == ["10", "11", "12"]


# ---------------------------------------------------------------------- files and the CLI
def test_csv_files_through_the_cli(tmp_path, capsys):
    """The ratings example: CSV files, Unix seconds, ISO times with offsets, a lookup, a derived label."""
    spec_path = write_ratings(tmp_path / "raw")
    assert main(["data", "import", str(spec_path), "--out", str(tmp_path / "ratings")]) == 0
    out = capsys.readouterr().out
    assert "merged into other" in out and "sequence history:" in out
    ts = TableSet.load(tmp_path / "ratings")
    assert ts.spec.views == ["profile_user", "profile_item", "profile_history_count", "behavior_history",
                             "behavior_item_history"]
    assert ts.read_events().shape[0] == len(point_in_time_join(ts)["n_ratings"].dropna())
    ratings = pd.read_csv(tmp_path / "raw" / "ratings.csv")
    assert ts.manifest["meta"]["events_read"] == len(ratings)
    ev = ts.read_events()
    assert set(ev["liked"]) == {0, 1} and "other" in set(ev["genre"])
    assert main(["data", "validate", str(tmp_path / "ratings")]) == 0
    assert "0 join miss(es)" in capsys.readouterr().out
    df = point_in_time_join(ts)
    # a rating's own event never sees itself: every history step is strictly earlier
    lens = df["history__rated_at"].map(len).to_numpy()
    steps = np.concatenate([np.asarray(v, "datetime64[ns]") for v in df["history__rated_at"] if len(v)])
    assert (steps < np.repeat(df["rated_at"].dt.tz_localize(None).to_numpy("datetime64[ns]"), lens)).all()


def test_commands_need_a_table_set_and_leave_nothing_behind(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run)]) == 2
    msg = capsys.readouterr().err
    assert "no table set is the default" in msg and "longtail data import" in msg
    assert not run.exists()
    assert main(["train", "--data", str(tmp_path / "nothing"), "--out", str(run)]) == 2
    msg = capsys.readouterr().err
    assert "not a complete table set" in msg and "longtail data import" in msg and not run.exists()
    assert main(["data", "validate", str(tmp_path / "nothing")]) == 2
    assert "longtail data import" in capsys.readouterr().err


# ---------------------------------------------------------------------- flights as an import
def _legacy_flights(months: tuple[int, ...]) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, pd.DataFrame]]:
    """The flights tables as `build_flights` made them before it became an import (its code, kept here)."""
    hour = pd.Timedelta(hours=1)
    spec = F.flights_spec()
    src = F.load_source()
    fl, _ = F.prepare_flights(src["flights"], src["airports"])
    history = fl.loc[fl["month"] <= max(months)]
    ev_fl = history.loc[history["month"].isin(months)].reset_index(drop=True)
    events = F.build_events(ev_fl)
    profile = F.build_profile(ev_fl, src["planes"]).drop(columns="published_at")
    profile.insert(1, SNAPSHOT_TS, ev_fl["event_timestamp"].dt.floor("D"))
    seq = spec.sequence("aircraft")
    steps = history[["tailnum", "flight_id", *seq.field_names]].copy()
    steps["tailnum"] = steps["tailnum"].astype(str).astype(object)
    steps = steps.sort_values(["tailnum", "landed_at", "flight_id"], kind="stable")
    aircraft = snapshot_table(steps, key="tailnum", stamp=steps["landed_at"].dt.floor("h") + hour,
                              time_col="landed_at", seq=seq)
    seq = spec.sequence("weather")
    w = src["weather"].loc[src["weather"]["month"] <= max(months)].copy()
    w["observed_at"] = pd.to_datetime(w["time_hour"], utc=True).astype("datetime64[ns, UTC]")
    w["wind_speed"] = w["wind_speed"].where(~(w["wind_speed"] > F.MAX_WIND_SPEED_MPH))
    w["origin"] = w["origin"].astype(str).astype(object)
    w = w.drop_duplicates(["origin", "observed_at"], keep="first")
    for f in seq.numeric:
        w[f.name] = w[f.name].astype(float)
    w = w[["origin", *seq.field_names]].sort_values(["origin", "observed_at"], kind="stable")
    weather = snapshot_table(w, key="origin", stamp=w["observed_at"] + hour, time_col="observed_at", seq=seq)
    start = events["event_timestamp"].min()
    return events, profile, {"aircraft": trim_before(aircraft, "tailnum", start),
                             "weather": trim_before(weather, "origin", start)}


def _same_frames(a: pd.DataFrame, b: pd.DataFrame, name: str) -> None:
    assert list(a.columns) == list(b.columns), name
    assert len(a) == len(b), name
    for col in a.columns:
        x, y = a[col], b[col]
        if arrow_lists(x) is not None or arrow_lists(y) is not None:  # read as arrow lists: compare the cells
            x, y = pd.Series(x.to_numpy(), dtype=object), pd.Series(y.to_numpy(), dtype=object)
        if x.dtype == object and len(x) and isinstance(x.iloc[0], np.ndarray | list):
            bad = [i for i, (u, v) in enumerate(zip(x, y, strict=True))
                   if not np.array_equal(np.asarray(u), np.asarray(v), equal_nan=np.asarray(u).dtype.kind == "f")]
        else:
            assert x.dtype == y.dtype, (name, col)
            bad = np.flatnonzero(~((x.to_numpy() == y.to_numpy()) | (x.isna() & y.isna()).to_numpy()))[:5].tolist()
        assert not bad, f"{name}.{col}: rows {bad[:5]} differ"


def test_flights_raw_files_through_data_import_equal_the_builder_it_replaced(tmp_path, capsys):
    """Intended differences, and nothing else: the profile table gains its as-of column
    ``flight__published_at``; the spec names its profile table (``flight``, view ``profile_daily``)
    and its views, and carries scenario rules that keep every carrier; the manifest's meta holds the
    import report."""
    months = (1,)
    assert main(["data", "example", "flights", "--months", "1", "--out", str(tmp_path / "raw")]) == 0
    spec_path = tmp_path / "raw" / "flights.import.yaml"
    assert spec_path.exists()
    assert main(["data", "import", str(spec_path), "--out", str(tmp_path / "set")]) == 0
    ts = TableSet.load(tmp_path / "set")
    events, profile, behaviors = _legacy_flights(months)
    _same_frames(ts.read_events(), events, "events")
    got = ts.read_profile().sort_values("flight_id").reset_index(drop=True)
    assert (got["flight__published_at"] < got[SNAPSHOT_TS].dt.tz_localize(None)).all()
    _same_frames(got.drop(columns="flight__published_at"),
                 pd.read_parquet(_write(tmp_path / "p.parquet", profile)).sort_values("flight_id").reset_index(
                     drop=True), "profile_daily")
    for name, legacy in behaviors.items():
        got = ts.read_behavior(name).sort_values([ts.spec.sequence_entity(ts.spec.sequence(name)), SNAPSHOT_TS])
        want = pd.read_parquet(_write(tmp_path / f"{name}.parquet", legacy))
        _same_frames(got.reset_index(drop=True), want.reset_index(drop=True), name)
    assert ts.manifest["rows"] == {"events": len(events), "profile_daily": len(profile),
                                   **{f"behavior_{k}_hourly": len(v) for k, v in behaviors.items()}}
    legacy_spec = yaml.safe_load(Path(__file__).with_name("flights_spec_before_import.yaml").read_text())
    now = ts.spec.to_dict()
    for key in ("profiles", "scenario_rules", "description"):
        now.pop(key)
    for s in now["sequences"]:
        s.pop("view")
    legacy_spec.pop("description")
    assert now == legacy_spec
    # and `data build flights` is the same import
    built = F.build_flights(tmp_path / "built", months=months)
    _same_frames(built.read_events(), ts.read_events(), "events (build)")
    assert built.spec == ts.spec and built.manifest["rows"] == ts.manifest["rows"]


def _write(path: Path, df: pd.DataFrame) -> Path:
    df.to_parquet(path, index=False)
    return path


def test_the_import_report_is_in_the_manifest(tmp_path):
    ts = import_tables(ImportSpec.from_dict(_spec()), tmp_path / "t", frames=_frames())
    meta = json.loads((ts.root / "manifest.json").read_text())["meta"]
    assert meta["import_spec"]["name"] == "shop" and meta["events"] == 4
    assert meta["coverage"]["clicks"] == {"events_without_history": 0, "mean_steps": 2.0}


def test_a_log_can_count_the_steps_known_so_far():
    """``count_as``: every step of the entity before the event, not only the newest ``max_length``."""
    seq = _spec()["sequences"][0] | {"count_as": "n_clicks", "max_length": 1}
    spec = ImportSpec.from_dict(_spec(sequences=[seq]))
    ds = spec.dataset_spec()
    assert ds.profile("clicks_count").features == ("n_clicks",) and ds.profile("clicks_count").required
    df = _join(spec)
    assert df["n_clicks"].tolist() == [2.0, 3.0, 1.0, 2.0]
    assert [len(v) for v in df["clicks__dwell"]] == [1, 1, 1, 1]
    assert ds.problems(df) == []
    # an entity with no step before its event counts 0, not a join miss
    frames = _frames()
    frames["clicks"] = frames["clicks"][frames["clicks"]["user_id"] == 1]
    df = _join(spec, frames)
    assert df["n_clicks"].tolist() == [2.0, 3.0, 0.0, 0.0] and ds.problems(df) == []


def test_rows_left_out_by_where_are_reported(tmp_path, capsys):
    spec = _spec(events={**_spec()["events"], "where": "shop == 'a'"})
    r = build_tables(ImportSpec.from_dict(spec), frames=_frames())
    assert r.report["left_out_by_where"] == {"events": 2} and len(r.events) == 2
