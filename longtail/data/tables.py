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

from longtail.io import atomic_path, atomic_write_json
from longtail.spec import DatasetSpec, ProfileSpec, SequenceSpec, SpecError

SNAPSHOT_TS = "snapshot_ts"
MANIFEST = "manifest.json"
HOW_TO_MAKE = ("import your own data with `longtail data import SPEC.yaml --out DIR` (docs/your-data.md), or "
               "build an example set with `longtail data build flights --out DIR` (or `synthetic`), then pass "
               "that folder")


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
    def load(cls, root: str | Path) -> TableSet:
        """Open a complete table set.

        Raises:
            TableSetError: when the folder has no manifest (never built, or a build crashed).
        """
        root = Path(root)
        if not str(root).strip() or str(root) == ".":
            raise TableSetError(f"no table set given; {HOW_TO_MAKE}")
        if not (root / MANIFEST).exists():
            raise TableSetError(f"{root}: not a complete table set (no {MANIFEST}); {HOW_TO_MAKE}")
        manifest = json.loads((root / MANIFEST).read_text())
        spec = DatasetSpec.from_yaml(root / "spec.yaml")
        return cls(root=root, spec=spec, manifest=manifest)

    def read_events(self) -> pd.DataFrame:
        return pd.read_parquet(self.events_path)

    def read_profile(self, profile: str | ProfileSpec | None = None) -> pd.DataFrame:
        """One profile table (default: the first)."""
        return pd.read_parquet(self.profile_path if profile is None else self.profile_table_path(profile))

    def read_profiles(self) -> dict[str, pd.DataFrame]:
        """Every profile table, by profile name."""
        return {p.name: pd.read_parquet(self.view_path(p.view_name)) for p in self.spec.profile_tables}

    def read_behavior(self, seq: str | SequenceSpec) -> pd.DataFrame:
        return pd.read_parquet(self.behavior_path(seq))


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
        events.to_parquet(tmp / "events.parquet", index=False)
        views = {p.view_name: profiles[p.name] for p in spec.profile_tables}
        views.update({s.view_name: behaviors[s.name] for s in spec.sequences})
        for view, df in views.items():
            df.to_parquet(tmp / f"{view}.parquet", index=False)
        manifest = {
            "dataset": spec.name,
            "created_unix": time.time(),
            "rows": {"events": len(events), **{view: len(df) for view, df in views.items()}},
            "scenarios": events[spec.scenario].value_counts().to_dict(),
            "meta": meta or {},
        }
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
    for s in spec.sequences:
        out = _asof(out, behaviors[s.name], spec.sequence_entity(s), ts, s.columns)
        for col in s.columns:
            missing = out[col].isna()
            if missing.any():
                out.loc[missing, col] = pd.Series([[] for _ in range(int(missing.sum()))],
                                                  index=out.index[missing], dtype=object)
    return out.sort_values("_row").drop(columns="_row").reset_index(drop=True)


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
        return pd.read_parquet(data_path), bool(meta.get("valid"))
    frame = point_in_time_join(tables)
    valid = not tables.spec.problems(frame)
    cache.mkdir(parents=True, exist_ok=True)
    with atomic_path(data_path) as tmp:
        frame.to_parquet(tmp, index=False)
    atomic_write_json(meta_path, {"tables": str(tables.root.resolve()), "rows": len(frame), "valid": valid,
                                  "created_unix": time.time()})
    return frame, valid
