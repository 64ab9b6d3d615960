"""Table sets: the parquet tables a feature store consumes, and the point-in-time join over them.

A table set is a folder:

    manifest.json      written last; its presence marks the set as complete
    spec.yaml          the DatasetSpec
    events.parquet     entity keys, scenario, event timestamp, label (one row per event)
    <view>.parquet     one per profile table (``spec.profile_tables``): its entity key, ``snapshot_ts``,
                       its profile features and, when the profile names a ``timestamp_field``, the
                       as-of column ``<profile>__<timestamp_field>`` (when the values were known)
    <view>.parquet     one per behavior sequence: its entity key, ``snapshot_ts`` (one row per entity
                       per stamp at which the sequence changed) and list columns ``<seq>__<field>``

View names come from the spec (``ProfileSpec.view_name``, ``SequenceSpec.view_name``); a spec
that names none has the layout of the first table sets, ``profile_daily`` and
``behavior_<seq>_hourly``. Stamps may have any resolution (a day, an hour, one per event); the
Feast offline store holds microseconds, so stamps should sit on the microsecond grid
(`longtail.data.importer` puts them there).

Snapshot semantics (what makes the join leak-free): a snapshot row stamped ``snapshot_ts`` holds
only information available strictly before ``snapshot_ts``; the join takes, for each event, the
newest snapshot with ``snapshot_ts <= event time``. Feast's ``get_historical_features`` applies
the same rule, so the embedded join here and the Feast path return the same rows.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from longtail.io import atomic_path, atomic_write_json
from longtail.spec import DatasetSpec, ProfileSpec, SequenceSpec, SpecError, arrow_lists

SNAPSHOT_TS = "snapshot_ts"
MANIFEST = "manifest.json"
HOW_TO_MAKE = ("import your own data with `longtail data import SPEC.yaml --out DIR` (docs/your-data.md), or "
               "build an example set with `longtail data build flights --out DIR` (or `synthetic`), then pass "
               "that folder")
REBUILD = ("the table set is damaged or was edited by hand: rebuild it with `longtail data import SPEC.yaml --out "
           "DIR` (or `longtail data build ...` for the examples)")


class TableSetError(RuntimeError):
    """A table set is missing, incomplete or inconsistent with its spec."""


@dataclass(frozen=True)
class TableSet:
    """A complete table set on disk (see the module docstring for the layout)."""

    root: Path
    spec: DatasetSpec
    manifest: dict[str, Any]

    @property
    def events_path(self) -> Path:
        return self.root / "events.parquet"

    def view_path(self, view: str) -> Path:
        """The parquet file of a profile or sequence view."""
        return self.root / f"{view}.parquet"

    @property
    def profile_path(self) -> Path:
        """The first profile table's file (the only one of a set with a single profile table)."""
        return self.view_path(self.spec.profile_tables[0].view_name)

    def profile_table_path(self, profile: str | ProfileSpec) -> Path:
        p = profile if isinstance(profile, ProfileSpec) else self.spec.profile(profile)
        return self.view_path(p.view_name)

    def behavior_path(self, seq: str | SequenceSpec) -> Path:
        s = self.spec.sequence(seq) if isinstance(seq, str) else seq
        return self.view_path(s.view_name)

    @property
    def table_paths(self) -> list[Path]:
        """Every table file: events, then each view's."""
        return [self.events_path, *(self.view_path(v) for v in self.spec.views)]

    @classmethod
    def load(cls, root: str | Path, *, check: bool = True) -> TableSet:
        """Open a complete table set, checking it before anything is joined or trained.

        Args:
            root: the table-set folder.
            check: check every table against the spec (`table_problems`): the files are readable
                parquet with the spec's columns and types, no table is empty, no timestamp or key is
                missing and no event is duplicated. False only opens the manifest and the spec
                (`longtail data validate` lists the problems itself).

        Raises:
            TableSetError: the folder has no manifest (never built, or a build crashed), the manifest
                is not JSON, or (with ``check``) a table has a problem; the message names the file or
                column and the fix.
            SpecError: ``spec.yaml`` is missing, not YAML or not a valid spec (names the file and key).
        """
        root = Path(root)
        if not str(root).strip() or str(root) == ".":
            raise TableSetError(f"no table set given; {HOW_TO_MAKE}")
        if not (root / MANIFEST).exists():
            raise TableSetError(f"{root}: not a complete table set (no {MANIFEST}); {HOW_TO_MAKE}")
        manifest = _read_manifest(root / MANIFEST)
        if not (root / "spec.yaml").exists():
            raise SpecError(f"{root / 'spec.yaml'}: missing; {REBUILD}")
        spec = DatasetSpec.from_yaml(root / "spec.yaml")
        tables = cls(root=root, spec=spec, manifest=manifest)
        if check:
            tables.check()
        return tables

    def problems(self) -> list[str]:
        """Every problem of the set's tables against its spec (see `table_problems`), one sentence each."""
        return table_problems(self.root, self.spec)

    def check(self) -> None:
        """Raise `TableSetError` naming the first problem of `problems` (and how many more there are)."""
        found = self.problems()
        if found:
            more = (f" (and {len(found) - 1} more problem(s); `longtail data validate {self.root}` lists them)"
                    if len(found) > 1 else "")
            raise TableSetError(found[0] + more)

    def read_events(self) -> pd.DataFrame:
        return read_table(self.events_path)

    def read_profile(self, profile: str | ProfileSpec | None = None) -> pd.DataFrame:
        """One profile table (default: the first)."""
        return read_table(self.profile_path if profile is None else self.profile_table_path(profile))

    def read_profiles(self) -> dict[str, pd.DataFrame]:
        """Every profile table, by profile name."""
        return {p.name: read_table(self.view_path(p.view_name)) for p in self.spec.profile_tables}

    def read_behavior(self, seq: str | SequenceSpec) -> pd.DataFrame:
        """One sequence's snapshot table; its list columns stay arrow lists (see `read_table`)."""
        return read_table(self.behavior_path(seq), arrow_lists=True)


def _arrow_list_dtype(t: pa.DataType) -> pd.ArrowDtype | None:
    return pd.ArrowDtype(t) if pa.types.is_list(t) or pa.types.is_large_list(t) else None


def read_table(path: str | Path, columns: list[str] | None = None, *, arrow_lists: bool = False) -> pd.DataFrame:
    """A table file of a set as a dataframe.

    Args:
        arrow_lists: keep list columns as arrow lists (dtype ``list<...>[pyarrow]``: one values array and
            offsets, not a numpy array per row), which the join, validation and transforms read without a
            per-row step; other columns are read as always.

    Raises:
        TableSetError: the file is missing, truncated or not parquet (names the file and the fix).
    """
    path = Path(path)
    try:
        if arrow_lists:
            return pq.read_table(path, columns=columns).to_pandas(types_mapper=_arrow_list_dtype)
        return pd.read_parquet(path, columns=columns)
    except FileNotFoundError:
        raise TableSetError(f"{path}: missing; {REBUILD}") from None
    except (pa.ArrowException, OSError, ValueError) as e:
        raise TableSetError(f"{path}: not a readable parquet file ({_first_line(e)}); {REBUILD}") from None


def write_frame(df: pd.DataFrame, path: str | Path) -> None:
    """Write ``df`` as parquet (no index) so that plain ``pandas.read_parquet`` reads it too: an arrow list column
    is recorded as the object column of lists pandas would write (pandas cannot restore ``list<...>[pyarrow]``
    from the file's metadata); `read_table` with ``arrow_lists`` reads it back as arrow lists."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    meta = table.schema.metadata or {}
    if b"pandas" in meta:
        pandas_meta = json.loads(meta[b"pandas"])
        for c in pandas_meta.get("columns", []):
            if str(c.get("numpy_type", "")).endswith("[pyarrow]") and str(c.get("pandas_type", "")).startswith("list"):
                c["numpy_type"] = "object"
        table = table.replace_schema_metadata({**meta, b"pandas": json.dumps(pandas_meta).encode()})
    pq.write_table(table, path)


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise TableSetError(f"{path}: not valid JSON ({_first_line(e)}); {REBUILD}") from None
    if not isinstance(manifest, dict):
        raise TableSetError(f"{path}: expected a JSON object, got {type(manifest).__name__}; {REBUILD}")
    return manifest


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# ---------------------------------------------------------------------- checks before any join
# arrow type families a column of each role may have
def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or \
        pa.types.is_decimal(t) or pa.types.is_null(t)


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t)


def _key_family(t: pa.DataType) -> str:
    if pa.types.is_integer(t):
        return "integer"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    return str(t)


def _timestamp_problem(where: str, t: pa.DataType, *, tz_aware: bool = True) -> str | None:
    """The problem of a timestamp column's type, or None."""
    if pa.types.is_timestamp(t):
        if tz_aware and t.tz is None:
            return (f"{where}: timestamps without a time zone ({t}); store them as tz-aware UTC "
                    "(pd.to_datetime(col, utc=True), or `timezone:` of the table in the import spec, which says "
                    "what zone naive times are in)")
        return None
    kind = "text" if pa.types.is_string(t) or pa.types.is_large_string(t) else str(t)
    return (f"{where}: holds {kind}, not timestamps; store tz-aware UTC datetimes (pd.to_datetime(col, utc=True)), "
            "or import the raw table with `longtail data import`, which parses times (time_unit: for numbers)")


def table_problems(root: str | Path, spec: DatasetSpec, *, read_data: bool = True,
                   shown_as: str | Path | None = None) -> list[str]:
    """Every problem of a table set's files against its spec, found before any join.

    File level (parquet footers only): every table file the spec needs exists and is readable
    parquet, holds the spec's columns with usable types (tz-aware event and snapshot times,
    numeric labels, numbers for numeric features, lists for sequence fields, one key type
    across tables) and has rows. With ``read_data`` (only the key, time and label columns are
    read): no missing event time, snapshot time, scenario, label or key, labels 0/1, and no
    event twice (the same entity keys and event time).

    Args:
        root: the table-set folder.
        spec: its dataset spec.
        read_data: also run the checks that read column values.
        shown_as: the folder the messages name instead of ``root`` (a set being written names its
            destination, not its temporary folder).

    Returns:
        One sentence per problem, naming the file and column and the fix (empty: no problem).
    """
    root = Path(root)
    out: list[str] = []
    schemas: dict[str, pa.Schema] = {}
    rows: dict[str, int] = {}
    files = {"events": root / "events.parquet", **{v: root / f"{v}.parquet" for v in spec.views}}
    for name, path in files.items():
        if not path.exists():
            out.append(f"{path}: missing (the spec names table '{name}'); {REBUILD}")
            continue
        try:
            meta = pq.read_metadata(path)
            schemas[name] = meta.schema.to_arrow_schema()
            rows[name] = meta.num_rows
        except (pa.ArrowException, OSError, ValueError) as e:
            out.append(f"{path}: not a readable parquet file ({_first_line(e)}); {REBUILD}")
    key_types: dict[str, tuple[str, str]] = {}  # key -> (family, file) as the events table holds it

    def columns_of(name: str, need: list[str]) -> pa.Schema | None:
        schema = schemas.get(name)
        if schema is None:
            return None
        missing = [c for c in need if c not in schema.names]
        if missing:
            out.append(f"{files[name]}: missing column(s) {missing} that spec '{spec.name}' declares; it has "
                       f"{schema.names}. Add them, or remove them from the spec; {REBUILD}")
            return None
        return schema

    def key_problem(name: str, schema: pa.Schema, key: str) -> None:
        family = _key_family(schema.field(key).type)
        if key in key_types and key_types[key][0] != family:
            out.append(f"{files[name]}: entity key '{key}' is {family} here but {key_types[key][0]} in "
                       f"{key_types[key][1]}; store the key with one type in every table (`longtail data import` "
                       "gives each key one type)")

    ev = columns_of("events", [spec.scenario, spec.label, spec.event_timestamp, *spec.entity_keys])
    if ev is not None and rows.get("events") == 0:
        out.append(f"{files['events']}: no rows: there is no event to train or evaluate on; import events "
                   "(check the events file and its `where:` filter in the import spec)")
    elif ev is not None:
        where = f"{files['events']}: column '{spec.event_timestamp}' (the event time)"
        problem = _timestamp_problem(where, ev.field(spec.event_timestamp).type)
        out += [problem] if problem else []
        label_t = ev.field(spec.label).type
        if not (pa.types.is_integer(label_t) or pa.types.is_boolean(label_t) or pa.types.is_floating(label_t)):
            out.append(f"{files['events']}: label column '{spec.label}' holds {label_t} values; the label must be 0/1 "
                       f"or true/false: map it (e.g. yes/no -> 1/0), or derive it in the import spec (derive: "
                       f"{{{spec.label}: \"outcome == 'yes'\"}})")
        for k in spec.entity_keys:
            key_types[k] = (_key_family(ev.field(k).type), str(files["events"]))
    for p in spec.profile_tables:
        need = [p.entity_key, SNAPSHOT_TS, *p.features, *([p.time_column] if p.time_column else [])]
        schema = columns_of(p.view_name, need)
        if schema is None:
            continue
        if rows.get(p.view_name) == 0:
            out.append(f"{files[p.view_name]}: no rows: profile '{p.name}' has nothing to join onto the events; "
                       "import its rows (check its file and `where:`), or remove the profile from the spec")
            continue
        key_problem(p.view_name, schema, p.entity_key)
        problem = _timestamp_problem(f"{files[p.view_name]}: column '{SNAPSHOT_TS}'", schema.field(SNAPSHOT_TS).type)
        out += [problem] if problem else []
        for f in spec.profile_numeric:
            if f.name in p.features and not _is_number(schema.field(f.name).type):
                t = schema.field(f.name).type
                out.append(f"{files[p.view_name]}: numeric feature '{f.name}' is stored as {t}"
                           f"{' (numbers as text)' if pa.types.is_string(t) or pa.types.is_large_string(t) else ''}; "
                           "store it as numbers (pd.to_numeric), re-import it with `longtail data import` (which "
                           "converts and names a value that is not a number), or declare it categorical")
        if p.time_column:
            problem = _timestamp_problem(f"{files[p.view_name]}: as-of column '{p.time_column}'",
                                         schema.field(p.time_column).type, tz_aware=False)
            out += [problem] if problem else []
    for s in spec.sequences:
        key = spec.sequence_entity(s)
        schema = columns_of(s.view_name, [key, SNAPSHOT_TS, *s.columns])
        if schema is None:
            continue
        if rows.get(s.view_name) == 0:
            out.append(f"{files[s.view_name]}: no rows: every event would have an empty '{s.name}' sequence; "
                       "import the behavior log (check its file and `where:` in the import spec), or remove the "
                       "sequence from the spec")
            continue
        key_problem(s.view_name, schema, key)
        problem = _timestamp_problem(f"{files[s.view_name]}: column '{SNAPSHOT_TS}'", schema.field(SNAPSHOT_TS).type)
        out += [problem] if problem else []
        numeric = {f.name for f in s.numeric}
        for fname in s.field_names:
            col, t = s.column(fname), schema.field(s.column(fname)).type
            if not _is_list(t):
                out.append(f"{files[s.view_name]}: sequence column '{col}' holds {t}, not a list per snapshot; "
                           "build the sequence tables with `longtail data import` (a log becomes list columns)")
                continue
            inner = t.value_type
            if fname == s.timestamp_field:
                if not (pa.types.is_timestamp(inner) or pa.types.is_null(inner)):
                    out.append(f"{files[s.view_name]}: step times '{col}' hold {inner}, not timestamps; store UTC "
                               "datetimes (or re-import the log with `longtail data import`)")
            elif fname in numeric and not _is_number(inner):
                out.append(f"{files[s.view_name]}: numeric step field '{col}' holds {inner}"
                           f"{' (numbers as text)' if pa.types.is_string(inner) else ''}; store numbers, re-import "
                           "the log with `longtail data import`, or declare the field categorical")
    if read_data and not out:
        out += _data_problems(files, spec)
    if shown_as is not None:
        out = [m.replace(str(root), str(shown_as)) for m in out]
    return out


def _data_problems(files: dict[str, Path], spec: DatasetSpec) -> list[str]:
    """The checks of `table_problems` that read values (keys, times, scenarios and labels only)."""
    out: list[str] = []
    ev = read_table(files["events"], [spec.scenario, spec.label, spec.event_timestamp, *spec.entity_keys])
    where = files["events"]
    for col, what, fix in ((spec.event_timestamp, "no event time (NaT)", "drop those rows or fill their time"),
                           (spec.scenario, "no scenario", "drop those rows or name their scenario"),
                           (spec.label, "no label", "drop those rows or fill the label"),
                           *((k, f"no value of entity key '{k}'", "drop those rows or fill the key")
                             for k in spec.entity_keys)):
        n = int(ev[col].isna().sum())
        if n:
            out.append(f"{where}: column '{col}': {n} of {len(ev)} row(s) have {what}; {fix} (e.g. `where: "
                       f"\"`{col}` == `{col}`\"` in the import spec drops them)")
    y = ev[spec.label].dropna()
    if len(y) and y.dtype != bool:
        bad = sorted({v.item() if isinstance(v, np.generic) else v for v in np.unique(y.to_numpy())} - {0, 1})
        if bad:
            out.append(f"{where}: label column '{spec.label}' holds {bad[:5]}; the label must be binary 0/1: derive "
                       f"one (e.g. derive: {{{spec.label}: '{spec.label} >= 4'}} in the import spec)")
    keys = [*spec.entity_keys, spec.event_timestamp]
    dup = ev.duplicated(keys, keep=False)
    if dup.any():
        first = ev[dup].iloc[0]
        example = ", ".join(f"{k}={_shown(first[k])}" for k in keys)
        out.append(f"{where}: {int(ev.duplicated(keys).sum())} duplicated event(s): rows with the same entity keys "
                   f"and event time ({example}); keep one row per event (drop_duplicates), or add the key that "
                   "tells them apart to entity_keys")
    for p in spec.profile_tables:
        out += _snapshot_problems(files[p.view_name], p.entity_key)
    for s in spec.sequences:
        out += _snapshot_problems(files[s.view_name], spec.sequence_entity(s))
    return out


def _shown(v: Any) -> str:
    """A value as a message shows it: 2, 'r3', 2024-01-10 03:58:15+00:00 (not np.int64(2))."""
    if isinstance(v, pd.Timestamp):
        return str(v)
    return repr(v.item() if isinstance(v, np.generic) else v)


def _snapshot_problems(path: Path, key: str) -> list[str]:
    df = read_table(path, [key, SNAPSHOT_TS])
    out = []
    for col, what in ((SNAPSHOT_TS, "no snapshot time (NaT)"), (key, f"no value of entity key '{key}'")):
        n = int(df[col].isna().sum())
        if n:
            out.append(f"{path}: column '{col}': {n} of {len(df)} row(s) have {what}; drop or fix those rows "
                       "(`longtail data import` stamps every snapshot)")
    return out


Profiles = pd.DataFrame | dict[str, pd.DataFrame]


def _profile_frames(spec: DatasetSpec, profiles: Profiles) -> dict[str, pd.DataFrame]:
    """Profile tables by profile name (a single frame is the only profile table's)."""
    tables = spec.profile_tables
    if isinstance(profiles, pd.DataFrame):
        if len(tables) != 1:
            raise TableSetError(f"spec '{spec.name}' has {len(tables)} profile tables "
                                f"{[p.name for p in tables]}; pass a dict of frames by profile name")
        return {tables[0].name: profiles}
    missing = [p.name for p in tables if p.name not in profiles]
    if missing:
        raise TableSetError(f"profile table(s) {missing} missing; pass profiles[name] for every profile of the spec")
    return {p.name: profiles[p.name] for p in tables}


def write_table_set(
    root: str | Path,
    spec: DatasetSpec,
    events: pd.DataFrame,
    profiles: Profiles,
    behaviors: dict[str, pd.DataFrame],
    meta: dict[str, Any] | None = None,
) -> TableSet:
    """Write a table set atomically: build it in a temporary folder, then rename it into place.

    A reader sees either the previous complete set or the new one, never a partial one; a crash
    leaves only a hidden temporary folder, removed by the next build.

    Args:
        root: destination folder (replaced if it exists).
        spec: the dataset spec; written as spec.yaml.
        events: the events table (see the module docstring for the columns of every table).
        profiles: the profile tables by profile name (a single frame when the spec has one).
        behaviors: the sequences' snapshot tables by sequence name.
        meta: extra provenance for the manifest (source, parameters).

    Returns:
        The written `TableSet`.
    """
    root = Path(root)
    profiles = _profile_frames(spec, profiles)
    _check_tables(spec, events, profiles, behaviors)
    root.parent.mkdir(parents=True, exist_ok=True)
    for stale in root.parent.glob(f".{root.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        spec.to_yaml(tmp / "spec.yaml")
        write_frame(events, tmp / "events.parquet")
        views = {p.view_name: profiles[p.name] for p in spec.profile_tables}
        views.update({s.view_name: behaviors[s.name] for s in spec.sequences})
        for view, df in views.items():
            write_frame(df, tmp / f"{view}.parquet")
        manifest = {
            "dataset": spec.name,
            "created_unix": time.time(),
            "rows": {"events": len(events), **{view: len(df) for view, df in views.items()}},
            "scenarios": events[spec.scenario].value_counts().to_dict(),
            "meta": meta or {},
        }
        problems = table_problems(tmp, spec, shown_as=root)
        if problems:  # the checks every reader runs: a set that would be refused is never written
            more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
            raise TableSetError(problems[0] + more)
        atomic_write_json(tmp / MANIFEST, manifest)
        if root.exists():
            old = root.parent / f".{root.name}.tmp-old-{os.getpid()}"
            os.replace(root, old)
            os.replace(tmp, root)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return TableSet.load(root)


def _check_tables(spec: DatasetSpec, events: pd.DataFrame, profiles: dict[str, pd.DataFrame],
                  behaviors: dict[str, pd.DataFrame]) -> None:
    need_events = [spec.scenario, spec.label, spec.event_timestamp, *spec.entity_keys]
    _require(events, need_events, "events")
    checked: list[tuple[str, pd.DataFrame]] = [("events", events)]
    for p in spec.profile_tables:
        cols = [p.entity_key, SNAPSHOT_TS, *p.features, *([p.time_column] if p.time_column else [])]
        _require(profiles[p.name], cols, p.view_name)
        checked.append((p.view_name, profiles[p.name]))
    for s in spec.sequences:
        if s.name not in behaviors:
            raise TableSetError(f"behavior table for sequence '{s.name}' is missing; pass behaviors['{s.name}']")
        _require(behaviors[s.name], [spec.sequence_entity(s), SNAPSHOT_TS, *s.columns], s.view_name)
        checked.append((s.view_name, behaviors[s.name]))
    for name, df in checked:
        col = spec.event_timestamp if name == "events" else SNAPSHOT_TS
        if not isinstance(df[col].dtype, pd.DatetimeTZDtype):
            raise TableSetError(f"table {name}: column '{col}' must be tz-aware UTC, got {df[col].dtype}")


def _require(df: pd.DataFrame, cols: list[str], table: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise TableSetError(f"table {table}: missing column(s) {missing}")


def point_in_time_join(tables: TableSet, events: pd.DataFrame | None = None) -> pd.DataFrame:
    """Join profile and behavior snapshots onto events as of each event time.

    Args:
        tables: the table set.
        events: the events to join (default: the set's events table).

    Returns:
        A prepared dataframe in the events' row order, with the spec's columns (see `join_frames`).
    """
    spec = tables.spec
    ev = tables.read_events() if events is None else events
    return join_frames(spec, ev, tables.read_profiles(), {s.name: tables.read_behavior(s) for s in spec.sequences})


def join_frames(spec: DatasetSpec, events: pd.DataFrame, profiles: Profiles,
                behaviors: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The point-in-time join over in-memory tables.

    For every event row and every table, the newest snapshot of the row's entity with
    ``snapshot_ts <= event time`` is taken. An event with no such snapshot gets empty sequences
    and NaN profile features; a profile table's as-of column (when it has one) is then NaT, which
    validation reports as a join miss.
    """
    ts = spec.event_timestamp
    out = events.reset_index(drop=True).copy()
    out["_row"] = np.arange(len(out))
    frames = _profile_frames(spec, profiles)
    for p in spec.profile_tables:
        df = frames[p.name]
        cols = [*p.features, *([p.time_column] if p.time_column and p.time_column in df.columns else [])]
        out = _asof(out, df, p.entity_key, ts, cols)
    # a sequence's snapshot is joined as its row number: its list columns are gathered once each, in the
    # events' order, after the sorts (a sort or merge would copy every step of every list column)
    for s in spec.sequences:
        key = spec.sequence_entity(s)
        snap = behaviors[s.name][[key, SNAPSHOT_TS]].copy()
        snap[f"_snap:{s.name}"] = np.arange(len(snap), dtype=float)
        out = _asof(out.drop(columns=[c for c in s.columns if c in out.columns]), snap, key, ts, [f"_snap:{s.name}"])
    out = out.sort_values("_row").drop(columns="_row").reset_index(drop=True)
    for s in spec.sequences:
        at = out.pop(f"_snap:{s.name}").to_numpy()
        found = ~np.isnan(at)
        idx = np.where(found, at, 0).astype(np.int64)
        for col in s.columns:
            out[col] = _take_lists(behaviors[s.name][col], idx, found)
    return out


def _take_lists(col: pd.Series, idx: np.ndarray, found: np.ndarray) -> pd.Series:
    """``col``'s lists at rows ``idx`` where ``found``, an empty list elsewhere (an event with no snapshot)."""
    lists = arrow_lists(col)
    if lists is not None:  # one gather; a miss points at an empty list appended to the snapshots' lists
        with_empty = pa.concat_arrays([*lists.chunks, pa.array([[]], lists.type)])
        taken = with_empty.take(pa.array(np.where(found, idx, len(lists))))
        return pd.Series(pd.arrays.ArrowExtensionArray(taken))
    values = col.to_numpy()
    cells = values[idx] if len(values) else np.empty(len(idx), dtype=object)
    cells = np.asarray(cells, dtype=object)
    for i in np.flatnonzero(~found):
        cells[i] = []
    return pd.Series(cells, dtype=object)


def _snapshot_windows(entity: np.ndarray, stamp: np.ndarray,
                      max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows of a table sorted by (entity, stamp): one per (entity, stamp) group.

    Returns ``(start, end)`` (end exclusive): the window of the group's snapshot is the last
    ``max_length`` rows of the same entity whose stamp is <= the group's stamp.
    """
    n = len(entity)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    new_entity = np.ones(n, bool)
    new_entity[1:] = entity[1:] != entity[:-1]
    entity_start = np.maximum.accumulate(np.where(new_entity, np.arange(n), 0))
    last = np.ones(n, bool)
    last[:-1] = new_entity[1:] | (stamp[1:] != stamp[:-1])
    end = np.flatnonzero(last) + 1
    start = np.maximum(entity_start[end - 1], end - max_length)
    return start.astype(np.int64), end.astype(np.int64)


def _gather_lists(values: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """One list (a numpy array) per window ``values[start:end]``, built in one vectorised gather."""
    lens = end - start
    offsets = np.zeros(len(lens) + 1, np.int64)
    np.cumsum(lens, out=offsets[1:])
    idx = np.arange(offsets[-1], dtype=np.int64) + np.repeat(start - offsets[:-1], lens)
    flat = values[idx]
    if flat.dtype.kind == "M":
        flat = flat.astype("datetime64[ns]")
    list_type = pa.ListArray if offsets[-1] < 2**31 else pa.LargeListArray  # int32 offsets when they fit
    lists = list_type.from_arrays(pa.array(offsets, pa.int32() if list_type is pa.ListArray else pa.int64()),
                                  pa.array(flat))
    return lists.to_numpy(zero_copy_only=False)


def _utc_values(ts: pd.Series) -> np.ndarray:
    """tz-aware series → naive UTC datetime64[ns] numpy values (no per-element conversion)."""
    return ts.dt.tz_convert("UTC").dt.tz_localize(None).astype("datetime64[ns]").to_numpy()


def snapshot_table(steps: pd.DataFrame, *, key: str, stamp: pd.Series, time_col: str,
                   seq: SequenceSpec) -> pd.DataFrame:
    """Snapshot rows of a sequence: one per entity per stamp at which its sequence changed.

    Args:
        steps: one row per step, with the entity ``key``, the step time ``time_col`` and every field
            of ``seq`` (``seq.field_names``).
        key: the entity key column.
        stamp: per step (aligned with ``steps``), the snapshot time from which the step is visible: a
            snapshot stamped S holds only what was known strictly before S, so ``stamp`` must be
            strictly after the step became known (`longtail.data.importer.visibility_stamp` computes
            it from a refresh period or at the microsecond).
        time_col: the step time column; it orders steps that share a stamp.
        seq: the sequence spec (``max_length`` and the fields to gather).

    Returns:
        ``key, snapshot_ts`` and one list column ``<seq>__<field>`` per field: the snapshot stamped S
        holds the last ``max_length`` steps of its entity with stamp <= S, oldest first.
    """
    steps = steps.assign(_stamp=_utc_values(stamp)).sort_values([key, "_stamp", time_col], kind="stable")
    steps = steps.reset_index(drop=True)
    entity = steps[key].to_numpy()
    stamps = steps["_stamp"].to_numpy()
    start, end = _snapshot_windows(entity, stamps.view("int64"), seq.max_length)
    rows = end - 1
    out = pd.DataFrame({key: entity[rows], SNAPSHOT_TS: pd.DatetimeIndex(stamps[rows]).tz_localize("UTC")})
    for fname in seq.field_names:
        col = steps[fname]
        values = _utc_values(col) if isinstance(col.dtype, pd.DatetimeTZDtype) else col.to_numpy()
        out[seq.column(fname)] = _gather_lists(values, start, end)
    return out


def trim_before(df: pd.DataFrame, key: str, start: pd.Timestamp) -> pd.DataFrame:
    """Drop snapshots no event at or after ``start`` can select (keep each entity's last one before it).

    Returns:
        The kept rows, sorted by ``(key, snapshot_ts)``.
    """
    df = df.sort_values([key, SNAPSHOT_TS], kind="stable").reset_index(drop=True)
    before = (df[SNAPSHOT_TS] < start).to_numpy()
    ent = df[key].to_numpy()
    next_differs = np.ones(len(df), bool)
    next_differs[:-1] = (ent[1:] != ent[:-1]) | ~before[1:]
    return df.loc[~before | next_differs].reset_index(drop=True)


def _asof(left: pd.DataFrame, right: pd.DataFrame, key: str, ts: str, cols: list[str]) -> pd.DataFrame:
    drop = [c for c in cols if c in left.columns]
    left = left.drop(columns=drop)
    r = right[[key, SNAPSHOT_TS, *cols]].rename(columns={SNAPSHOT_TS: "_snap_ts"})
    if left[key].dtype != r[key].dtype:
        raise SpecError(f"entity key '{key}': dtype {left[key].dtype} in events but {r[key].dtype} in the "
                        "snapshot table; store both with the same type")
    left_sorted = left.sort_values(ts, kind="stable")
    r = r.sort_values("_snap_ts", kind="stable")
    joined = pd.merge_asof(left_sorted, r, left_on=ts, right_on="_snap_ts", by=key, direction="backward",
                           allow_exact_matches=True)
    return joined.drop(columns="_snap_ts")


# ---------------------------------------------------------------------- join cache
JOIN_CACHE_ENV = "LONGTAIL_JOIN_CACHE"
_JOIN_CACHE_VERSION = 2  # 2: profile tables named by the spec, with their as-of columns


def join_cache_key(tables: TableSet) -> str:
    """A key that changes whenever the table set or the join's code version changes.

    It hashes the manifest and spec files and the size and modification time of every table file
    (a rebuilt set is written anew, so its files get new times even with equal content).
    """
    h = hashlib.sha256(f"longtail-join-v{_JOIN_CACHE_VERSION}".encode())
    files = [tables.root / MANIFEST, tables.root / "spec.yaml", *tables.table_paths]
    for p in files:
        st = p.stat()
        h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    h.update((tables.root / MANIFEST).read_bytes())
    h.update((tables.root / "spec.yaml").read_bytes())
    return h.hexdigest()[:24]


def cached_join(tables: TableSet, cache_dir: str | Path | None = None) -> tuple[pd.DataFrame, bool]:
    """The point-in-time join of the whole set, read from a cache when one is configured.

    The cache folder is ``cache_dir`` or the ``LONGTAIL_JOIN_CACHE`` environment variable; with
    neither this is `point_in_time_join`. A cached entry is the joined frame as parquet plus a
    small JSON written after it (so a crash mid-write leaves no entry), keyed by `join_cache_key`.
    The whole frame is validated against the spec before it is cached; an entry records the
    outcome, so a reader of a valid entry can skip validation (every check of
    `DatasetSpec.problems` is per row or per scenario, so any subset of whole scenarios of a valid
    frame is valid too).

    Returns:
        ``(frame, validated)``: ``validated`` is True when the whole frame is known to pass
        `DatasetSpec.validate`.
    """
    cache_dir = cache_dir or os.environ.get(JOIN_CACHE_ENV) or None
    if not cache_dir:
        return point_in_time_join(tables), False
    cache = Path(cache_dir)
    key = join_cache_key(tables)
    data_path, meta_path = cache / f"{tables.spec.name}-{key}.parquet", cache / f"{tables.spec.name}-{key}.json"
    if meta_path.exists() and data_path.exists():
        meta = json.loads(meta_path.read_text())
        return read_table(data_path, arrow_lists=True), bool(meta.get("valid"))
    frame = point_in_time_join(tables)
    valid = not tables.spec.problems(frame)
    cache.mkdir(parents=True, exist_ok=True)
    with atomic_path(data_path) as tmp:
        write_frame(frame, tmp)
    atomic_write_json(meta_path, {"tables": str(tables.root.resolve()), "rows": len(frame), "valid": valid,
                                  "created_unix": time.time()})
    return frame, valid
