"""Table sets: the parquet tables a feature store consumes, and the point-in-time join over them.

A table set is a folder:

    manifest.json                  written last; its presence marks the set as complete
    spec.yaml                      the DatasetSpec
    events.parquet                 entity keys, scenario, event timestamp, label (one row per event)
    profile_daily.parquet          profile entity key, ``snapshot_ts`` (daily), profile features
    behavior_<seq>_hourly.parquet  sequence entity key, ``snapshot_ts`` (hourly, one row per entity
                                   per hour in which the sequence changed), list columns <seq>__<field>

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
from longtail.spec import DatasetSpec, SequenceSpec, SpecError

SNAPSHOT_TS = "snapshot_ts"
MANIFEST = "manifest.json"


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

    @property
    def profile_path(self) -> Path:
        return self.root / "profile_daily.parquet"

    def behavior_path(self, seq: str | SequenceSpec) -> Path:
        name = seq if isinstance(seq, str) else seq.name
        return self.root / f"behavior_{name}_hourly.parquet"

    @classmethod
    def load(cls, root: str | Path) -> TableSet:
        """Open a complete table set.

        Raises:
            TableSetError: when the folder has no manifest (never built, or a build crashed).
        """
        root = Path(root)
        if not (root / MANIFEST).exists():
            raise TableSetError(
                f"{root}: not a complete table set (no {MANIFEST}); build it first, e.g. "
                "`longtail data build flights --out DIR` or `longtail data build synthetic --out DIR`"
            )
        manifest = json.loads((root / MANIFEST).read_text())
        spec = DatasetSpec.from_yaml(root / "spec.yaml")
        return cls(root=root, spec=spec, manifest=manifest)

    def read_events(self) -> pd.DataFrame:
        return pd.read_parquet(self.events_path)

    def read_profile(self) -> pd.DataFrame:
        return pd.read_parquet(self.profile_path)

    def read_behavior(self, seq: str | SequenceSpec) -> pd.DataFrame:
        return pd.read_parquet(self.behavior_path(seq))


def write_table_set(
    root: str | Path,
    spec: DatasetSpec,
    events: pd.DataFrame,
    profile: pd.DataFrame,
    behaviors: dict[str, pd.DataFrame],
    meta: dict[str, Any] | None = None,
) -> TableSet:
    """Write a table set atomically: build it in a temporary folder, then rename it into place.

    A reader sees either the previous complete set or the new one, never a partial one; a crash
    leaves only a hidden temporary folder, removed by the next build.

    Args:
        root: destination folder (replaced if it exists).
        spec: the dataset spec; written as spec.yaml.
        events / profile / behaviors: the tables (see the module docstring for their columns).
        meta: extra provenance for the manifest (source, parameters).

    Returns:
        The written `TableSet`.
    """
    root = Path(root)
    _check_tables(spec, events, profile, behaviors)
    root.parent.mkdir(parents=True, exist_ok=True)
    for stale in root.parent.glob(f".{root.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        spec.to_yaml(tmp / "spec.yaml")
        events.to_parquet(tmp / "events.parquet", index=False)
        profile.to_parquet(tmp / "profile_daily.parquet", index=False)
        for name, df in behaviors.items():
            df.to_parquet(tmp / f"behavior_{name}_hourly.parquet", index=False)
        manifest = {
            "dataset": spec.name,
            "created_unix": time.time(),
            "rows": {
                "events": len(events),
                "profile_daily": len(profile),
                **{f"behavior_{k}_hourly": len(v) for k, v in behaviors.items()},
            },
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


def _check_tables(spec: DatasetSpec, events: pd.DataFrame, profile: pd.DataFrame,
                  behaviors: dict[str, pd.DataFrame]) -> None:
    need_events = [spec.scenario, spec.label, spec.event_timestamp, *spec.entity_keys]
    _require(events, need_events, "events")
    prof_feats = [f.name for f in spec.profile_numeric] + [c.name for c in spec.profile_categorical]
    _require(profile, [spec.profile_entity, SNAPSHOT_TS, *prof_feats], "profile_daily")
    for s in spec.sequences:
        if s.name not in behaviors:
            raise TableSetError(f"behavior table for sequence '{s.name}' is missing; pass behaviors['{s.name}']")
        _require(behaviors[s.name], [spec.sequence_entity(s), SNAPSHOT_TS, *s.columns], f"behavior_{s.name}_hourly")
    for name, df in [("events", events), ("profile_daily", profile), *behaviors.items()]:
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
    return join_frames(spec, ev, tables.read_profile(), {s.name: tables.read_behavior(s) for s in spec.sequences})


def join_frames(spec: DatasetSpec, events: pd.DataFrame, profile: pd.DataFrame,
                behaviors: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The point-in-time join over in-memory tables.

    For every event row and every table, the newest snapshot of the row's entity with
    ``snapshot_ts <= event time`` is taken; an event with no such snapshot gets NaN profile
    features (validation then reports them unless the feature is nullable) and empty sequences.
    """
    ts = spec.event_timestamp
    out = events.reset_index(drop=True).copy()
    out["_row"] = np.arange(len(out))
    prof_feats = [f.name for f in spec.profile_numeric] + [c.name for c in spec.profile_categorical]
    out = _asof(out, profile, spec.profile_entity, ts, prof_feats)
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


def snapshot_table(steps: pd.DataFrame, key: str, stamp: pd.Series, time_col: str,
                    seq: SequenceSpec) -> pd.DataFrame:
    """Snapshot rows of a sequence: one per entity per stamp at which its sequence changed.

    ``stamp`` is, per step, the snapshot time at which the step first becomes visible (strictly
    after the step is known, e.g. the next hour boundary); the caller chooses that rule.

    The snapshot stamped S holds the last ``max_length`` steps of its entity with stamp <= S
    (for a stamp that grows with the step time: the newest steps), oldest first.
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
_JOIN_CACHE_VERSION = 1


def join_cache_key(tables: TableSet) -> str:
    """A key that changes whenever the table set or the join's code version changes.

    It hashes the manifest and spec files and the size and modification time of every table file
    (a rebuilt set is written anew, so its files get new times even with equal content).
    """
    h = hashlib.sha256(f"longtail-join-v{_JOIN_CACHE_VERSION}".encode())
    files = [tables.root / MANIFEST, tables.root / "spec.yaml", tables.events_path, tables.profile_path,
             *(tables.behavior_path(s) for s in tables.spec.sequences)]
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
