"""`longtail data import`: raw tables plus an import spec in, a point-in-time table set out.

The user has files, not Python: an events table (entity keys, event time, scenario, label), zero
or more profile tables (each with its own entity key and, when its values change, a time column)
and zero or more behavior logs (an entity key, a step time and per-step fields), as parquet or
CSV. An `ImportSpec` (YAML) names the files, the columns and their roles; `import_tables` builds
the table set (`longtail.data.tables`) that every later stage reads:

* each event's sequence holds the log's steps known strictly before its prediction time, newest
  last, at most ``max_length`` of them;
* each event's profile is the newest row of its entity known strictly before the prediction
  time (a static table without a time column is known at all times).

Visibility. A row or step with time ``t`` is known at ``k = t + available_after``. Without a
``refresh`` period it is visible to every event strictly after ``k`` (its snapshot is stamped one
microsecond later: the finest time Feast's offline store holds, so both joins agree). With
``refresh: 1h`` the table is refreshed on a clock and a value enters the first refresh strictly
after ``k`` (the snapshot stamped ``floor(k, 1h) + 1h``). `visibility_stamp` is that rule.

Every choice is reported: rows filtered by ``where``, profile rows superseded within one refresh,
scenarios dropped or merged by ``scenarios`` (see `longtail.spec.ScenarioRules`), events without
history; a required profile table with join misses is an error naming the table, the count and
example keys, and nothing is written.

The joins are vectorised (sorts, ``merge_asof`` and one gather per sequence field); sequences are
built in chunks of whole entities so a progress bar can follow a large log.

Example:
    >>> spec = ImportSpec.from_yaml("raw/ratings.import.yaml")
    >>> tables = import_tables(spec, "data/ratings", base_dir="raw")
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import yaml

from longtail.config import ConfigError, config_from_dict, config_to_dict
from longtail.data.tables import SNAPSHOT_TS, TableSet, snapshot_table, trim_before, write_table_set
from longtail.spec import (
    CategoricalFeature,
    DatasetSpec,
    NumericFeature,
    ProfileSpec,
    ScenarioRules,
    SequenceSpec,
    SpecError,
    step_counts,
)

__all__ = [
    "EventsSource",
    "Lookup",
    "ImportResult",
    "ImportSpec",
    "ImportSpecError",
    "LogSource",
    "ProfileSource",
    "apply_scenario_rules",
    "build_tables",
    "import_tables",
    "visibility_stamp",
]

TICK = pd.Timedelta(microseconds=1)
STATIC_KNOWN_AT = pd.Timestamp("1970-01-01", tz="UTC")  # a static row is known at all times
STATIC_TIME_FIELD = "known_at"
TimeUnit = Literal["", "s", "ms", "us", "ns"]
Progress = Callable[[str, int, int], None]  # (stage, done, total)
SEQUENCE_CHUNK_ROWS = 1_000_000


class ImportSpecError(SpecError):
    """The import spec or a raw table is wrong; the message names the key, file or column and the fix."""


# ---------------------------------------------------------------------- the import spec
@dataclass(frozen=True)
class Lookup:
    """Columns of another file joined onto a table by a key (see `Source.join`).

    Args:
        path: the other file (parquet or CSV), relative to the import spec's folder.
        key: the key column, in both files; unique in the other file.
        columns: the columns to bring over (a name the table already has is an error).
    """

    path: str
    key: str
    columns: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class Source:
    """Where a raw table comes from and how it is read (the keys every table of an import spec has).

    Args:
        path: parquet (``.parquet``, ``.pq``) or CSV (``.csv``, ``.tsv``, optionally ``.gz``) file,
            relative to the import spec's folder.
        rename: raw column -> name used in the spec (applied first).
        derive: new column -> a pandas expression over the table's columns (``DataFrame.eval``),
            e.g. ``liked: rating >= 4``; applied after ``rename``.
        where: keep only the rows matching this pandas query (``DataFrame.query``), e.g.
            ``arr_delay == arr_delay`` to drop missing values; applied after ``derive``.
        join: columns looked up in other files before ``rename``: each item is ``{path, key, columns}``
            (a left join on the column ``key``, which must be unique in that file), e.g. the genre of
            each rated item from the item catalog.
        time_unit: unit of a time column that holds numbers: ``s``, ``ms``, ``us`` or ``ns`` since the
            Unix epoch. Strings and datetimes need none.
        timezone: time zone of times written without one (default UTC).
    """

    path: str
    join: tuple[Lookup, ...] = ()
    rename: dict[str, str] = field(default_factory=dict)
    derive: dict[str, str] = field(default_factory=dict)
    where: str = ""
    time_unit: TimeUnit = ""
    timezone: str = "UTC"


@dataclass(frozen=True, kw_only=True)
class EventsSource(Source):
    """The labelled events: one row per prediction.

    Args:
        keys: the entity keys (every profile's and log's key must be one of them).
        time: the event time column.
        scenario: the scenario column (one model per value).
        label: the binary label column (0/1 or true/false).
        lead: the prediction is made this long before ``time`` (e.g. ``2h``); the event time column
            then holds ``time - lead``. Default ``0s``.
    """

    keys: tuple[str, ...]
    time: str
    scenario: str
    label: str
    lead: str = "0s"


@dataclass(frozen=True, kw_only=True)
class ProfileSource(Source):
    """A profile table: attributes of one entity.

    Args:
        name: the table's name (letters, digits, ``_``).
        key: its entity key (one of ``events.keys``).
        time: when each row's values were observed; empty: a static table known at all times.
        numeric / categorical: the features (as in `longtail.spec`).
        required: every event must find a row (a join miss is an error); false allows misses
            (numeric features must then be nullable).
        available_after: a row is known this long after ``time`` (default ``0s``).
        refresh: the table is refreshed every period (e.g. ``1D``); empty: each row at its own time.
        view: the table's file and Feast view name (default ``profile_<name>``).
    """

    name: str
    key: str
    time: str = ""
    numeric: tuple[NumericFeature, ...] = ()
    categorical: tuple[CategoricalFeature, ...] = ()
    required: bool = True
    available_after: str = "0s"
    refresh: str = ""
    view: str = ""


@dataclass(frozen=True, kw_only=True)
class LogSource(Source):
    """A behavior log: one row per step of one entity; it becomes a behavior sequence.

    Args:
        name: the sequence's name.
        key: its entity key (one of ``events.keys``).
        time: the step time (kept as the per-step field of that name; models see hours before the event).
        numeric / categorical: the per-step fields.
        max_length: the newest steps kept per event.
        padding: ``left`` (default) or ``right``.
        available_after: a step is known this long after ``time`` (default ``0s``).
        refresh: the log's snapshots are refreshed every period (e.g. ``1h``); empty: each step at its own time.
        view: the snapshot table's file and Feast view name (default ``behavior_<name>``).
        count_as: when set, also a numeric profile feature of this name: how many steps of the entity the
            log holds known before the event (all of them, not only the newest ``max_length``; 0 before
            the first), in a profile table ``<name>_count`` (view ``profile_<name>_count``).
    """

    name: str
    key: str
    time: str
    numeric: tuple[NumericFeature, ...] = ()
    categorical: tuple[CategoricalFeature, ...] = ()
    max_length: int = 16
    padding: Literal["left", "right"] = "left"
    available_after: str = "0s"
    refresh: str = ""
    view: str = ""
    count_as: str = ""

    def field_names_without_time(self) -> list[str]:
        return [f.name for f in self.numeric] + [c.name for c in self.categorical]


@dataclass(frozen=True)
class ImportSpec:
    """What `longtail data import` reads: the raw tables, their columns' roles, scenario hygiene.

    Args:
        name: the dataset's name (names the Feast feature service ``<name>_v<N>``).
        events: the events table.
        profiles: profile tables, each keyed by its own entity key.
        sequences: behavior logs.
        scenarios: scenario hygiene (`longtail.spec.ScenarioRules`), applied and reported.
        description: free text, copied into the table set's spec.

    Example:
        >>> spec = ImportSpec.from_yaml("raw/ratings.import.yaml")
        >>> spec.dataset_spec().views
        ['profile_user', 'profile_item', 'behavior_history']
    """

    name: str
    events: EventsSource
    profiles: tuple[ProfileSource, ...] = ()
    sequences: tuple[LogSource, ...] = ()
    scenarios: ScenarioRules = ScenarioRules()
    description: str = ""

    def __post_init__(self) -> None:
        keys = self.events.keys
        if not keys:
            raise ImportSpecError("events.keys: empty; name the entity key column(s) of the events")
        for kind, items in (("profiles", self.profiles), ("sequences", self.sequences)):
            for i, t in enumerate(items):
                if t.key not in keys:
                    raise ImportSpecError(f"{kind}[{i}] ('{t.name}'): key '{t.key}' is not one of events.keys "
                                          f"{list(keys)}; add it there (every event must carry it)")
                for k in ("available_after", "refresh"):
                    _duration(getattr(t, k), f"{kind}[{i}].{k}", allow_empty=k == "refresh")
        _duration(self.events.lead, "events.lead")
        self.dataset_spec()  # the spec's own checks (names, duplicates, nullability), raised now

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ImportSpec:
        try:
            return config_from_dict(cls, dict(d), "import spec")
        except ConfigError as e:
            raise ImportSpecError(str(e)) from None

    @classmethod
    def from_yaml(cls, path: str | Path) -> ImportSpec:
        p = Path(path)
        if not p.exists():
            raise ImportSpecError(f"import spec {p}: not found")
        try:
            data = yaml.safe_load(p.read_text())
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ImportSpecError(f"import spec {p}: not valid YAML ({first}); fix the file (docs/your-data.md "
                                  "shows one)") from None
        if not isinstance(data, dict):
            raise ImportSpecError(f"import spec {p}: expected a mapping at the top level")
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            from longtail.io import atomic_write_text

            atomic_write_text(path, text)
        return text

    def dataset_spec(self) -> DatasetSpec:
        """The `DatasetSpec` of the table set this import builds."""
        ev = self.events
        for s in self.sequences:
            if s.time in s.field_names_without_time():
                raise ImportSpecError(f"sequences '{s.name}': the time column '{s.time}' is also declared as a field; "
                                      "it is kept as the step time already, remove it from numeric/categorical")
        profiles = tuple(
            ProfileSpec(name=p.name, entity_key=p.key,
                        features=tuple(f.name for f in p.numeric) + tuple(c.name for c in p.categorical),
                        view=p.view or f"profile_{p.name}", timestamp_field=p.time or STATIC_TIME_FIELD,
                        required=p.required, static=not p.time)
            for p in self.profiles)
        counts = [s for s in self.sequences if s.count_as]
        profiles += tuple(ProfileSpec(name=f"{s.name}_count", entity_key=s.key, features=(s.count_as,),
                                      view=f"profile_{s.name}_count", timestamp_field=s.time) for s in counts)
        sequences = tuple(
            SequenceSpec(name=s.name, numeric=s.numeric, categorical=s.categorical, max_length=s.max_length,
                         padding=s.padding, timestamp_field=s.time, entity_key=s.key,
                         view=s.view or f"behavior_{s.name}")
            for s in self.sequences)
        try:
            return DatasetSpec(
                name=self.name, scenario=ev.scenario, label=ev.label, event_timestamp=ev.time,
                entity_keys=tuple(ev.keys),
                profile_numeric=tuple(f for p in self.profiles for f in p.numeric)
                + tuple(NumericFeature(s.count_as, normalization="log_standard") for s in counts),
                profile_categorical=tuple(c for p in self.profiles for c in p.categorical),
                sequences=sequences, description=self.description, profiles=profiles,
                scenario_rules=self.scenarios)
        except SpecError as e:
            raise ImportSpecError(str(e)) from None


def _duration(text: str, where: str, *, allow_empty: bool = False) -> pd.Timedelta | None:
    if allow_empty and not str(text).strip():
        return None
    try:
        d = pd.Timedelta(str(text))
    except (ValueError, TypeError):
        raise ImportSpecError(f"{where}: '{text}' is not a duration; write e.g. 0s, 90min, 2h, 1D") from None
    if d < pd.Timedelta(0) or (allow_empty and d <= pd.Timedelta(0)):
        raise ImportSpecError(f"{where}: '{text}' must be {'positive' if allow_empty else '>= 0'}")
    return d


# ---------------------------------------------------------------------- stamps
def visibility_stamp(known_at: pd.Series, refresh: pd.Timedelta | None = None) -> pd.Series:
    """The first snapshot time at which a value known at ``known_at`` may be used.

    A snapshot stamped S holds only what was known strictly before S, and the join takes the newest
    snapshot with S <= the event time. Without ``refresh`` the stamp is the next microsecond after
    ``known_at`` (an event strictly later sees the value); with a ``refresh`` period it is the
    first refresh boundary strictly after ``known_at`` (10:37 and 10:00 both -> 11:00 for ``1h``).

    Args:
        known_at: tz-aware UTC times.
        refresh: the refresh period, or None.

    Returns:
        The stamps (tz-aware UTC), on the microsecond grid (or the refresh grid).
    """
    grid = refresh if refresh is not None else TICK
    return known_at.dt.floor(grid) + grid


# ---------------------------------------------------------------------- reading
def _read(path: Path, where: str) -> pd.DataFrame:
    if not path.exists():
        raise ImportSpecError(f"{where}: file {path} not found (paths are relative to the import spec's folder)")
    name = path.name.lower().removesuffix(".gz")
    if name.endswith((".parquet", ".pq")):
        return pd.read_parquet(path)
    if name.endswith((".csv", ".tsv", ".txt")):
        sep = "\t" if name.endswith(".tsv") else ","
        try:
            return pd.read_csv(path, sep=sep, engine="pyarrow")
        except (ValueError, TypeError):  # e.g. quoting the pyarrow parser does not take
            return pd.read_csv(path, sep=sep, low_memory=False)
    raise ImportSpecError(f"{where}: {path.name} is neither parquet (.parquet, .pq) nor CSV (.csv, .tsv); "
                          "convert it to one of those")


class _Reader:
    """Reads each raw file once (a log and the events may be the same file) and applies a table's options."""

    def __init__(self, base_dir: Path, frames: Mapping[str, pd.DataFrame] | None):
        self.base_dir = base_dir
        self.frames = dict(frames or {})
        self.cache: dict[str, pd.DataFrame] = {}
        self.inputs: dict[str, dict[str, Any]] = {}  # file -> rows, bytes
        self.filtered: dict[str, int] = {}  # table -> rows its `where` left out

    def _file(self, path_text: str, where: str) -> pd.DataFrame:
        if path_text in self.frames:
            return self.frames[path_text]
        path = Path(path_text) if Path(path_text).is_absolute() else self.base_dir / path_text
        key = str(path.resolve())
        if key not in self.cache:
            self.cache[key] = _read(path, where)
            self.inputs[path_text] = {"rows": len(self.cache[key]), "bytes": path.stat().st_size}
        return self.cache[key]

    def _lookup(self, left: pd.DataFrame, look: Lookup, where: str, left_path: str) -> pd.DataFrame:
        other = self._file(look.path, f"{where}.path")
        for df, name in ((left, left_path), (other, look.path)):
            if look.key not in df.columns:
                raise ImportSpecError(f"{where}.key: column '{look.key}' not in {name}; it has {list(df.columns)}")
        missing = [c for c in look.columns if c not in other.columns]
        if missing:
            raise ImportSpecError(f"{where}.columns: {missing} not in {look.path}; it has {list(other.columns)}")
        clash = [c for c in look.columns if c in left.columns]
        if clash:
            raise ImportSpecError(f"{where}.columns: {clash} already in {left_path}; rename them in one file first")
        dup = other[look.key].duplicated()
        if dup.any():
            raise ImportSpecError(f"{where}: '{look.key}' is not unique in {look.path} ({int(dup.sum())} repeated, e.g. "
                                  f"{other.loc[dup, look.key].iloc[0]!r}); a lookup needs one row per key")
        right = other[[look.key, *look.columns]]
        if left[look.key].dtype != right[look.key].dtype:  # e.g. ids read as numbers in one file, text in the other
            left = left.assign(**{look.key: left[look.key].astype(str)})
            right = right.assign(**{look.key: right[look.key].astype(str)})
        joined = left.merge(right, on=look.key, how="left", validate="many_to_one")
        return joined.assign(**{look.key: left[look.key].to_numpy()}) if look.key in left else joined

    def table(self, src: Source, where: str, need: list[str]) -> pd.DataFrame:
        raw = self._file(src.path, f"{where}.path")
        for i, look in enumerate(src.join):
            raw = self._lookup(raw, look, f"{where}.join[{i}]", src.path)
        df = raw.rename(columns=dict(src.rename)) if src.rename else raw
        unknown = sorted(set(src.rename) - set(raw.columns))
        if unknown:
            raise ImportSpecError(f"{where}.rename: column(s) {unknown} not in {src.path}; it has {list(raw.columns)}")
        if src.derive:
            df = df.copy()
            for col, expr in src.derive.items():
                try:
                    df[col] = df.eval(str(expr))
                except Exception as e:  # pandas raises many kinds for a bad expression
                    raise ImportSpecError(f"{where}.derive.{col}: cannot evaluate {expr!r} over {src.path} "
                                          f"({type(e).__name__}: {e}); columns: {list(df.columns)}") from None
        if src.where:
            try:
                kept = df.query(src.where)
            except Exception as e:
                raise ImportSpecError(f"{where}.where: cannot evaluate {src.where!r} over {src.path} "
                                      f"({type(e).__name__}: {e}); columns: {list(df.columns)}") from None
            self.filtered[where] = len(df) - len(kept)
            df = kept
        missing = [c for c in need if c not in df.columns]
        if missing:
            raise ImportSpecError(f"{where}: column(s) {missing} not in {src.path}; it has {list(df.columns)} "
                                  "(use rename or derive to make them)")
        if not len(df):
            left = (f" after where: {src.where!r}, which left out all {self.filtered[where]:,} of its rows"
                    if src.where and self.filtered.get(where) else "")
            raise ImportSpecError(f"{where}: no rows in {src.path}{left}; an empty table gives the models nothing "
                                  "(events: nothing to learn; a profile or log: nothing to join); fix the file"
                                  + (" or the where" if left else "") + ", or remove the table from the import spec")
        return df.reset_index(drop=True)


def _utc(col: pd.Series, src: Source, where: str) -> pd.Series:
    """A time column as tz-aware UTC (numbers need ``time_unit``; naive times are in ``timezone``)."""
    name = f"{where}: column '{col.name}'"
    if col.isna().any():
        raise ImportSpecError(f"{name}: {int(col.isna().sum())} row(s) without a time; drop them (e.g. where: "
                              f"\"`{col.name}` == `{col.name}`\") or fill them")
    if isinstance(col.dtype, pd.DatetimeTZDtype):
        return col.dt.tz_convert("UTC").astype("datetime64[ns, UTC]")
    if pd.api.types.is_numeric_dtype(col.dtype) and not pd.api.types.is_bool_dtype(col.dtype):
        if not src.time_unit:
            raise ImportSpecError(f"{name} holds numbers ({col.iloc[0]!r}, ...); set time_unit: s (Unix seconds), "
                                  "ms, us or ns for this table")
        return pd.to_datetime(col, unit=src.time_unit, utc=True).astype("datetime64[ns, UTC]")
    if not pd.api.types.is_datetime64_any_dtype(col.dtype):
        try:
            parsed = pd.to_datetime(col, format="ISO8601")
        except (ValueError, TypeError):
            try:
                parsed = pd.to_datetime(col, format="mixed")
            except (ValueError, TypeError) as e:
                raise ImportSpecError(f"{name}: not a time ({e}); write ISO 8601 times such as "
                                      "2024-05-01T13:45:00Z, or numbers with time_unit") from None
        if isinstance(parsed.dtype, pd.DatetimeTZDtype):
            return parsed.dt.tz_convert("UTC").astype("datetime64[ns, UTC]")
        if not pd.api.types.is_datetime64_any_dtype(parsed.dtype):  # mixed offsets come back as objects
            parsed = pd.to_datetime(col, format="mixed", utc=True)
            return parsed.astype("datetime64[ns, UTC]")
        col = parsed
    try:
        local = col.dt.tz_localize(src.timezone, nonexistent="shift_forward", ambiguous="NaT")
    except Exception as e:
        raise ImportSpecError(f"{where}.timezone: {src.timezone!r} ({e}); use an IANA name such as UTC or "
                              "Europe/Paris") from None
    if local.isna().any():
        bad = col[local.isna()].iloc[0]
        raise ImportSpecError(f"{name}: {int(local.isna().sum())} local time(s) such as {bad} are ambiguous in "
                              f"{src.timezone} (the hour clocks are set back); write times with their UTC offset")
    return local.dt.tz_convert("UTC").astype("datetime64[ns, UTC]")


def _numeric(col: pd.Series, where: str) -> pd.Series:
    if pd.api.types.is_bool_dtype(col.dtype):
        return col.astype(float)
    out = pd.to_numeric(col, errors="coerce")
    bad = out.isna() & col.notna()
    if bad.any():
        raise ImportSpecError(f"{where}: column '{col.name}' is declared numeric but holds {col[bad].iloc[0]!r} "
                              f"({int(bad.sum())} row(s)); fix the values or declare it categorical")
    return out.astype(float)


def _categorical(col: pd.Series) -> pd.Series:
    """Values as strings (missing ones as None); integral floats read from CSV print as integers."""
    values = col
    if pd.api.types.is_float_dtype(col.dtype):
        finite = col.dropna()
        if len(finite) and (finite == np.floor(finite)).all():
            values = col.astype("Int64")
    strings = values.astype(str).astype(object)
    return strings.where(col.notna().to_numpy(), None)


def _unify_keys(tables: list[tuple[str, pd.DataFrame, str]]) -> dict[str, str]:
    """Give each entity key one type across tables: int64 when every table holds integers, else strings.

    Args:
        tables: (where, frame, key column) for every table a key appears in.

    Returns:
        key -> the type chosen (``int64`` or ``string``), for the manifest.
    """
    by_key: dict[str, list[tuple[str, pd.DataFrame]]] = {}
    for where, df, key in tables:
        if df[key].isna().any():
            raise ImportSpecError(f"{where}: key column '{key}' is empty in {int(df[key].isna().sum())} row(s); "
                                  f"drop those rows (where: \"`{key}` == `{key}`\")")
        by_key.setdefault(key, []).append((where, df))
    chosen = {}
    for key, items in by_key.items():
        as_int = []
        for _, df in items:
            col = df[key]
            if pd.api.types.is_integer_dtype(col.dtype) and not pd.api.types.is_bool_dtype(col.dtype):
                as_int.append(col.astype("int64"))
            elif pd.api.types.is_float_dtype(col.dtype) and (col == np.floor(col)).all():
                as_int.append(col.astype("int64"))
            else:
                as_int.append(None)
        if all(c is not None for c in as_int):
            for (_, df), c in zip(items, as_int, strict=True):
                df[key] = c
            chosen[key] = "int64"
        else:
            for (_, df), c in zip(items, as_int, strict=True):
                df[key] = (c if c is not None else df[key]).astype(str).astype(object)
            chosen[key] = "string"
    return chosen


# ---------------------------------------------------------------------- scenario hygiene
def apply_scenario_rules(events: pd.DataFrame, spec: DatasetSpec) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Drop or merge the scenarios below ``spec.scenario_rules``.

    Args:
        events: the events (scenario and label columns of ``spec``).
        spec: the dataset spec.

    Returns:
        The kept events and one record per scenario acted on: ``scenario, rows, positives, action``
        (``dropped``, ``merged into <bucket>``, or for the bucket ``bucket dropped``).

    Raises:
        ImportSpecError: ``merge_into`` names a scenario the data already has, or no scenario is left.
    """
    r = spec.scenario_rules
    scen, label = spec.scenario, spec.label
    if r.min_rows <= 0 and r.min_per_class <= 0:
        return events, []

    def small(df: pd.DataFrame) -> pd.DataFrame:
        g = df.groupby(df[scen], observed=True)[label]
        counts = pd.DataFrame({"rows": g.size(), "positives": g.sum()})
        neg = counts["rows"] - counts["positives"]
        return counts[(counts["rows"] < r.min_rows) | (np.minimum(counts["positives"], neg) < r.min_per_class)]

    report: list[dict[str, Any]] = []
    below = small(events)
    if not len(below):
        return events, []
    if r.policy == "merge":
        if r.merge_into in set(events[scen]):
            raise ImportSpecError(f"scenarios.merge_into: '{r.merge_into}' is already a scenario of the events; "
                                  "name a bucket no scenario has (e.g. other)")
        action = f"merged into {r.merge_into}"
        moved = events[scen].isin(below.index)
        events = events.copy()
        events.loc[moved, scen] = r.merge_into
    else:
        action = "dropped"
        events = events[~events[scen].isin(below.index)]
    report += [{"scenario": str(s), "rows": int(c["rows"]), "positives": int(c["positives"]), "action": action}
               for s, c in below.sort_values("rows", ascending=False).iterrows()]
    if r.policy == "merge":
        bucket = small(events[events[scen] == r.merge_into])
        if len(bucket):
            c = bucket.iloc[0]
            report.append({"scenario": r.merge_into, "rows": int(c["rows"]), "positives": int(c["positives"]),
                           "action": "bucket dropped (still below the rules)"})
            events = events[events[scen] != r.merge_into]
    if not len(events):
        raise ImportSpecError(f"scenarios: every scenario is below the rules (min_rows {r.min_rows}, "
                              f"min_per_class {r.min_per_class}); lower them")
    return events.reset_index(drop=True), report


# ---------------------------------------------------------------------- the build
@dataclass
class ImportResult:
    """The tables an import built, in memory, and what it reports."""

    spec: DatasetSpec
    events: pd.DataFrame
    profiles: dict[str, pd.DataFrame]
    behaviors: dict[str, pd.DataFrame]
    report: dict[str, Any]


def _events(spec: ImportSpec, reader: _Reader) -> pd.DataFrame:
    ev = spec.events
    need = [*ev.keys, ev.time, ev.scenario, ev.label]
    df = reader.table(ev, "events", need)
    for col in (ev.scenario, ev.label):
        if df[col].isna().any():
            raise ImportSpecError(f"events: column '{col}' is empty in {int(df[col].isna().sum())} row(s); drop those "
                                  f"rows (where: \"`{col}` == `{col}`\") or fill them")
    y = df[ev.label]
    if pd.api.types.is_bool_dtype(y.dtype):
        y = y.astype("int64")
    elif pd.api.types.is_numeric_dtype(y.dtype):
        values = {v.item() if isinstance(v, np.generic) else v for v in np.unique(y.to_numpy())}
        if not values <= {0, 1}:
            raise ImportSpecError(f"events: label column '{ev.label}' holds {sorted(values)[:6]}; the label must be 0/1 "
                                  f"or true/false: derive one, e.g. derive: {{liked: '{ev.label} >= 4'}} and label: liked")
        y = y.astype("int64")
    else:
        raise ImportSpecError(f"events: label column '{ev.label}' has dtype {y.dtype}; the label must be 0/1 or "
                              "true/false (derive one with derive:)")
    when = _utc(df[ev.time], ev, "events") - _duration(ev.lead, "events.lead")
    out = df[list(ev.keys)].copy()
    out[ev.scenario] = df[ev.scenario].astype(str).astype(object)
    out[ev.time] = when
    out[ev.label] = y
    dup = out.duplicated([*ev.keys, ev.time], keep=False)
    if dup.any():  # the same check as the table-set loader's, naming the raw file
        first = out[dup].iloc[0]
        example = ", ".join(f"{k}={first[k]!r}" for k in ev.keys)
        raise ImportSpecError(f"events: {int(out.duplicated([*ev.keys, ev.time]).sum())} row(s) of {ev.path} repeat "
                              f"an event (the same keys {list(ev.keys)} and time), e.g. {example} at "
                              f"{first[ev.time]}; keep one row per event, or add the column that tells them apart "
                              "to events.keys")
    return out


def _profile(src: ProfileSource, spec: DatasetSpec, reader: _Reader, where: str) -> tuple[pd.DataFrame, int]:
    p = spec.profile(src.name)
    need = [src.key, *([src.time] if src.time else []), *p.features]
    df = reader.table(src, where, need)
    known = _utc(df[src.time], src, where) if src.time else pd.Series(STATIC_KNOWN_AT, index=df.index,
                                                                       dtype="datetime64[ns, UTC]")
    out = pd.DataFrame({src.key: df[src.key]})
    out[SNAPSHOT_TS] = visibility_stamp(known + _duration(src.available_after, where),
                                        _duration(src.refresh, where, allow_empty=True))
    for f in src.numeric:
        out[f.name] = _numeric(df[f.name], where)
    for c in src.categorical:
        out[c.name] = _categorical(df[c.name])
    out[p.time_column] = known.dt.tz_localize(None)  # naive UTC, as in list columns (Feast reads those)
    dup = out.duplicated([src.key, p.time_column], keep=False)
    if dup.any():
        first = out[dup].iloc[0]
        raise ImportSpecError(f"{where}: {int(dup.sum())} rows share a ({src.key}, time) with another row, e.g. "
                              f"{src.key}={first[src.key]!r} at {first[p.time_column]}; keep one row per key and "
                              "time" + ("" if src.time else " (a static table without time: one row per key)"))
    out = out.sort_values([src.key, SNAPSHOT_TS, p.time_column], kind="stable")
    newest = ~out.duplicated([src.key, SNAPSHOT_TS], keep="last")  # several updates within one refresh
    return out[newest.to_numpy()].reset_index(drop=True), int((~newest).sum())


def _step_counts(steps: pd.DataFrame, src: LogSource, spec: DatasetSpec, keys: np.ndarray) -> pd.DataFrame:
    """The ``count_as`` profile table of a log: per entity and stamp, the steps known so far.

    ``steps`` is sorted by (key, stamp, time). Every key of ``keys`` (the events') also gets a row
    with count 0 known at the epoch, so an event before its entity's first step counts 0.
    """
    p = spec.profile(f"{src.name}_count")
    count = steps.groupby(src.key, sort=False).cumcount().to_numpy() + 1
    last = ~steps.duplicated([src.key, "_stamp"], keep="last").to_numpy()  # the newest step of each stamp
    rows = pd.DataFrame({src.key: steps[src.key].to_numpy()[last], SNAPSHOT_TS: steps["_stamp"].to_numpy()[last],
                         src.count_as: count[last].astype(float),
                         p.time_column: steps[src.time].dt.tz_localize(None).to_numpy()[last]})
    logged = steps[src.key].to_numpy()
    if keys.dtype != logged.dtype:  # ids as text in one file, numbers in the other: made text for both later
        keys, logged = keys.astype(str), logged.astype(str)
    zero = pd.DataFrame({src.key: pd.unique(np.concatenate([keys, logged]))})
    zero[SNAPSHOT_TS] = visibility_stamp(pd.Series(STATIC_KNOWN_AT, index=zero.index, dtype="datetime64[ns, UTC]"))
    zero[src.count_as] = 0.0
    zero[p.time_column] = STATIC_KNOWN_AT.tz_localize(None)
    out = pd.concat([zero, rows.astype({SNAPSHOT_TS: zero[SNAPSHOT_TS].dtype})], ignore_index=True)
    return out.sort_values([src.key, SNAPSHOT_TS], kind="stable").reset_index(drop=True)


def _sequence(src: LogSource, spec: DatasetSpec, reader: _Reader, where: str, stages: Progress,
              event_keys: np.ndarray | None = None) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    seq = spec.sequence(src.name)
    df = reader.table(src, where, [src.key, src.time, *src.field_names_without_time()])
    steps = pd.DataFrame({src.key: df[src.key], src.time: _utc(df[src.time], src, where)})
    for f in src.numeric:
        steps[f.name] = _numeric(df[f.name], where)
    for c in src.categorical:
        steps[c.name] = _categorical(df[c.name])
    stamp = visibility_stamp(steps[src.time] + _duration(src.available_after, where),
                             _duration(src.refresh, where, allow_empty=True))
    steps["_stamp"] = stamp
    steps = steps.sort_values([src.key, "_stamp", src.time], kind="stable").reset_index(drop=True)
    # chunks of whole entities (a window never crosses an entity), so the bar can follow a large log
    entity = steps[src.key].to_numpy()
    starts = np.flatnonzero(np.r_[True, entity[1:] != entity[:-1]])
    cuts = [0]
    for target in range(SEQUENCE_CHUNK_ROWS, len(steps), SEQUENCE_CHUNK_ROWS):
        i = int(np.searchsorted(starts, target))
        cut = int(starts[i]) if i < len(starts) else len(steps)
        if cut > cuts[-1]:
            cuts.append(cut)
    cuts.append(len(steps))
    parts = []
    stage = f"sequence {src.name}"
    counts = _step_counts(steps, src, spec, event_keys) if src.count_as else None
    stages(stage, 0, len(steps))
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        if b <= a:
            continue
        chunk = steps.iloc[a:b]
        parts.append(snapshot_table(chunk.drop(columns="_stamp"), key=src.key, stamp=chunk["_stamp"],
                                    time_col=src.time, seq=seq))
        stages(stage, b, len(steps))
    if not parts:
        empty = steps.drop(columns="_stamp")
        return snapshot_table(empty, key=src.key, stamp=steps["_stamp"], time_col=src.time, seq=seq), counts
    return pd.concat(parts, ignore_index=True), counts


def _coverage(spec: DatasetSpec, events: pd.DataFrame, table: pd.DataFrame, key: str,
              length_col: str | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """For each event (in order): whether a snapshot matched, and the matched sequence length."""
    ts = spec.event_timestamp
    left = pd.DataFrame({key: events[key].to_numpy(), ts: events[ts].to_numpy(), "_row": np.arange(len(events))})
    right = pd.DataFrame({key: table[key].to_numpy(), "_snap": table[SNAPSHOT_TS].to_numpy(), "_hit": True})
    if length_col is not None:
        right["_len"] = step_counts(table[length_col])
    joined = pd.merge_asof(left.sort_values(ts, kind="stable"), right.sort_values("_snap", kind="stable"),
                           left_on=ts, right_on="_snap", by=key, direction="backward").sort_values("_row")
    hit = joined["_hit"].notna().to_numpy()
    lens = joined["_len"].fillna(0).to_numpy(int) if length_col is not None else None
    return hit, lens


def build_tables(spec: ImportSpec, base_dir: str | Path = ".", *, frames: Mapping[str, pd.DataFrame] | None = None,
                 progress: Progress | None = None) -> ImportResult:
    """Read the raw tables and build the point-in-time table set in memory.

    Args:
        spec: the import spec.
        base_dir: the folder relative paths are read from (the import spec's folder).
        frames: path -> dataframe to use instead of reading that path (generators, tests).
        progress: called with (stage, done, total) as the build goes.

    Returns:
        The `ImportResult` (tables, the `DatasetSpec`, the report).

    Raises:
        ImportSpecError: naming the key, file or column and the fix; nothing is written.
    """
    t0 = time.perf_counter()
    stages = progress or (lambda _stage, _done, _total: None)
    ds = spec.dataset_spec()
    reader = _Reader(Path(base_dir), frames)
    n_steps = 2 + len(spec.profiles) + len(spec.sequences)
    stages("read events", 0, n_steps)
    events = _events(spec, reader)
    profiles_raw: dict[str, tuple[pd.DataFrame, int]] = {}
    for i, src in enumerate(spec.profiles):
        stages(f"profile {src.name}", 1 + i, n_steps)
        profiles_raw[src.name] = _profile(src, ds, reader, f"profiles[{i}] ('{src.name}')")
    behaviors: dict[str, pd.DataFrame] = {}
    for i, src in enumerate(spec.sequences):
        behaviors[src.name], counts = _sequence(src, ds, reader, f"sequences[{i}] ('{src.name}')", stages,
                                                events[src.key].to_numpy())
        if counts is not None:
            profiles_raw[f"{src.name}_count"] = (counts, 0)
    keyed = [("events", events, k) for k in spec.events.keys]
    keyed += [(f"profile '{n}'", df, ds.profile(n).entity_key) for n, (df, _) in profiles_raw.items()]
    keyed += [(f"sequence '{n}'", df, ds.sequence_entity(ds.sequence(n))) for n, df in behaviors.items()]
    key_types = _unify_keys(keyed)
    stages("scenarios", n_steps - 1, n_steps)
    n_read = len(events)
    events, scenario_report = apply_scenario_rules(events, ds)
    ts = ds.event_timestamp
    start = events[ts].min()
    profiles = {n: trim_before(df, ds.profile(n).entity_key, start) for n, (df, _) in profiles_raw.items()}
    behaviors = {n: trim_before(df, ds.sequence_entity(ds.sequence(n)), start) for n, df in behaviors.items()}

    coverage: dict[str, Any] = {}
    for p in ds.profile_tables:
        hit, _ = _coverage(ds, events, profiles[p.name], p.entity_key)
        coverage[p.name] = {"events_with_a_row": int(hit.sum()), "join_misses": int((~hit).sum())}
        if p.required and not hit.all():
            miss = events[~hit]
            absent = ~miss[p.entity_key].isin(set(profiles[p.name][p.entity_key]))
            examples = [str(v) for v in miss[p.entity_key].drop_duplicates().head(5)]
            raise ImportSpecError(
                f"profile '{p.name}' (key '{p.entity_key}'): {int((~hit).sum())} of {len(events)} event(s) find no row "
                f"known before their event time (a join miss): {int(absent.sum())} with a key the table does not "
                f"have, {int((~absent).sum())} whose first row is known only later; e.g. {p.entity_key} in "
                f"{examples}. Add those rows, check that the key's values match the events', or set required: false "
                "for this profile (its numeric features must then be nullable)")
    for s in ds.sequences:
        _, lens = _coverage(ds, events, behaviors[s.name], ds.sequence_entity(s), s.columns[0])
        coverage[s.name] = {"events_without_history": int((lens == 0).sum()), "mean_steps": float(lens.mean())
                            if len(lens) else 0.0}
    stages("done", n_steps, n_steps)
    report = {
        "source": "import",
        "import_spec": spec.to_dict(),
        "inputs": reader.inputs,
        "left_out_by_where": reader.filtered,
        "events_read": n_read,
        "events": len(events),
        "scenario_policy": scenario_report,
        "superseded_within_refresh": {n: k for n, (_, k) in profiles_raw.items() if k},
        "key_types": key_types,
        "coverage": coverage,
        "build_seconds": time.perf_counter() - t0,
    }
    return ImportResult(ds, events, profiles, behaviors, report)


def import_tables(spec: ImportSpec | str | Path, out: str | Path, *, base_dir: str | Path | None = None,
                  frames: Mapping[str, pd.DataFrame] | None = None, progress: Progress | None = None,
                  meta: Mapping[str, Any] | None = None) -> TableSet:
    """Build a table set from raw tables and write it atomically (see the module docstring).

    Args:
        spec: the import spec, or the path of its YAML file.
        out: the table-set folder (replaced atomically if it exists).
        base_dir: the folder relative paths are read from (default: the YAML file's folder, or the
            current folder for a spec object).
        frames: path -> dataframe to use instead of reading that path.
        progress: called with (stage, done, total).
        meta: extra provenance for the manifest.

    Returns:
        The written `TableSet`; its manifest's ``meta`` holds the import report.
    """
    if not isinstance(spec, ImportSpec):
        path = Path(spec)
        spec = ImportSpec.from_yaml(path)
        base_dir = base_dir if base_dir is not None else path.parent
    result = build_tables(spec, base_dir if base_dir is not None else os.getcwd(), frames=frames, progress=progress)
    return write_table_set(out, result.spec, result.events, result.profiles, result.behaviors,
                           {**result.report, **(meta or {})})
