"""Working copies of ``feature_repo/``, apply, materialize, and the point-in-time training frame.

A run never writes into the checked-in ``feature_repo/``: `working_repo` copies its files into the
run's workspace and points ``longtail_features.yaml`` at the run's table set, so that the SQLite
online store and the registry of one run are its own.

Example:
    >>> repo = working_repo("runs/ws/feature_repo", "data/flights")
    >>> store = open_store(repo)
    >>> apply_repo(store, repo)
    >>> frame = historical_frame(store, spec, events)        # as of each event time
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from feature_store.definitions import (
    STATIC_TAG,
    FeatureRepoConfig,
    build_definitions,
    load_spec,
    service_name,
)
from feature_store.errors import FeatureStoreError
from longtail.data.tables import SNAPSHOT_TS
from longtail.io import atomic_write_text
from longtail.spec import DatasetSpec

VARIANTS = {"local": "feature_store.yaml", "production": "feature_store.production.yaml"}
REPO_FILES = ("feature_store.yaml", "feature_store.production.yaml", "features.py", ".feastignore")
SETTINGS = "longtail_features.yaml"


def default_template() -> Path:
    """The checked-in ``feature_repo/`` (beside the ``longtail`` package in a checkout or the image)."""
    return Path(__file__).resolve().parents[1] / "feature_repo"


def working_repo(dest: str | Path, tables: str | Path, *, template: str | Path | None = None,
                 service_version: int | None = None) -> Path:
    """Copy the feature repo to ``dest`` and point it at ``tables`` (idempotent).

    The template's ``longtail_features.yaml`` settings (service version, ttls) are kept; only
    ``tables`` (and ``service_version`` when given) are replaced.

    Args:
        dest: the working repo folder (created; its ``data/`` holds registry and SQLite store).
        tables: the table-set folder (made absolute) or ``s3://bucket/prefix``.
        template: the repo to copy (default: the checked-in ``feature_repo/``).
        service_version: ``N`` of the feature service ``<dataset>_v<N>``.

    Returns:
        ``dest``.
    """
    template = Path(template) if template else default_template()
    if not (template / "features.py").exists():
        raise FeatureStoreError(f"feature repo template {template}: no features.py; pass the repo folder "
                                "(feature_repo/ of a longtail checkout)")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name in REPO_FILES:
        if (template / name).exists():
            shutil.copyfile(template / name, dest / name)
    settings = yaml.safe_load((template / SETTINGS).read_text()) if (template / SETTINGS).exists() else {}
    tables_s = str(tables)
    if "://" not in tables_s:
        tables_s = str(Path(tables_s).resolve())
    settings["tables"] = tables_s
    if service_version is not None:
        settings["service_version"] = int(service_version)
    atomic_write_text(dest / SETTINGS, yaml.safe_dump(settings, sort_keys=False))
    (dest / "data").mkdir(exist_ok=True)
    return dest


def repo_config(repo: str | Path, s3_endpoint_url: str | None = None) -> FeatureRepoConfig:
    """The `FeatureRepoConfig` a working repo's ``longtail_features.yaml`` describes."""
    path = Path(repo) / SETTINGS
    if not path.exists():
        raise FeatureStoreError(f"{path}: missing; make the working repo with working_repo(dest, tables)")
    s = yaml.safe_load(path.read_text()) or {}
    if "tables" not in s:
        raise FeatureStoreError(f"{path}: key 'tables' missing; set it to the table-set folder or s3:// prefix")
    return FeatureRepoConfig(tables=str(s["tables"]), service_version=int(s.get("service_version", 1)),
                             ttl_days=float(s.get("ttl_days", 36500)),
                             view_ttl_days={str(k): float(v) for k, v in (s.get("view_ttl_days") or {}).items()},
                             s3_endpoint_url=s3_endpoint_url)


def open_store(repo: str | Path, variant: str = "local") -> Any:
    """A ``feast.FeatureStore`` on a working repo with the ``local`` or ``production`` store config."""
    from feast import FeatureStore

    if variant not in VARIANTS:
        raise FeatureStoreError(f"feature store variant {variant!r}: use one of {sorted(VARIANTS)}")
    repo = Path(repo)
    return FeatureStore(repo_path=str(repo), fs_yaml_file=repo / VARIANTS[variant])


def apply_repo(store: Any, repo: str | Path) -> list[str]:
    """``feast apply`` of the repo's definitions, in process (same objects as ``features.py``).

    Returns:
        The names of the applied objects.
    """
    import os

    cfg = repo_config(repo, os.environ.get("AWS_ENDPOINT_URL") or None)
    defs = build_definitions(load_spec(cfg), cfg)
    store.apply(list(defs.values()))
    return sorted(defs)


def materialize(store: Any, end: datetime | None = None, *, initial_days: float = 2.0) -> dict[str, Any]:
    """Load the newest feature values into the online store.

    The first run loads the window ``[end - initial_days, end]`` (the online store keeps only the
    newest value per entity, so older snapshots are not needed for serving), except for the views
    of static profile tables (tagged ``static``: facts known at all times, stamped at the epoch),
    which are loaded whole; later runs are ``materialize_incremental`` from where the previous one
    ended.

    Args:
        store: the feature store.
        end: the end of the window (default: now, UTC).
        initial_days: window of the first run.

    Returns:
        ``{"start": ..., "end": ..., "incremental": bool, "views": [...]}``.
    """
    end = end or datetime.now(UTC)
    views = store.list_feature_views()
    first = any(v.most_recent_end_time is None for v in views)
    if first:
        start = end - timedelta(days=initial_days)
        static = [v.name for v in views if (v.tags or {}).get(STATIC_TAG) == "true"]
        recent = [v.name for v in views if v.name not in static]
        if recent:
            store.materialize(start_date=start, end_date=end, feature_views=recent)
        if static:
            store.materialize(start_date=datetime(1970, 1, 1, tzinfo=UTC), end_date=end, feature_views=static)
    else:
        start = min(v.most_recent_end_time for v in views)
        store.materialize_incremental(end_date=end)
    return {"start": str(start), "end": str(end), "incremental": not first, "views": sorted(v.name for v in views)}


def data_end(repo: str | Path) -> datetime:
    """The newest snapshot time of the repo's tables, plus one second (a materialize end)."""
    cfg = repo_config(repo)
    spec = load_spec(cfg)
    newest = max(pd.read_parquet(f"{cfg.tables}/{t}.parquet", columns=[SNAPSHOT_TS])[SNAPSHOT_TS].max()
                 for t in spec.views)
    return newest.to_pydatetime() + timedelta(seconds=1)


def historical_frame(store: Any, spec: DatasetSpec, events: pd.DataFrame, service_version: int = 1) -> pd.DataFrame:
    """The prepared rows of ``events``: the feature service joined point in time (Feast).

    For each event, every view contributes its entity's newest snapshot with ``snapshot_ts <=``
    the event time (Feast's ``get_historical_features``); rows come back in the events' order with
    the spec's columns, like `longtail.data.tables.join_frames` (a missing sequence is empty).

    Args:
        store: the feature store (definitions applied).
        spec: the dataset spec.
        events: labelled events (scenario, label, event timestamp, entity keys).
        service_version: the ``N`` of the feature service ``<dataset>_v<N>``.

    Returns:
        The joined dataframe.
    """
    service = store.get_feature_service(service_name(spec, service_version))
    entity_df = events.reset_index(drop=True).copy()
    entity_df["_row"] = np.arange(len(entity_df))
    if spec.event_timestamp != "event_timestamp" and "event_timestamp" in entity_df:
        raise FeatureStoreError("events: a column 'event_timestamp' besides the spec's event timestamp "
                                f"'{spec.event_timestamp}' makes Feast's timestamp ambiguous; drop or rename it")
    query = entity_df.copy()
    # DuckDB (ibis) holds timestamps in microseconds and refuses to drop nanoseconds; snapshots
    # are stamped on the microsecond grid (longtail.data.importer), and for a stamp S on that grid
    # S <= t exactly when S <= floor(t, 1 µs), so flooring an event time changes no match
    query[spec.event_timestamp] = query[spec.event_timestamp].dt.floor("us")
    joined = store.get_historical_features(entity_df=query, features=service, full_feature_names=False).to_df()
    features = [c for c in joined.columns if c not in entity_df.columns]
    out = entity_df.merge(joined[["_row", *features]], on="_row", how="left", validate="one_to_one")
    lost = ~out["_row"].isin(joined["_row"])
    if lost.any():
        # Feast 0.67's file store drops an event when one view has no snapshot at or before it,
        # losing the other views' features too; such rows are joined again one view at a time
        again = query[lost.to_numpy()]
        for proj in service.feature_view_projections:
            refs = [f"{proj.name}:{f.name}" for f in proj.features]
            part = store.get_historical_features(entity_df=again, features=refs, full_feature_names=False).to_df()
            part = part.set_index("_row")
            cols = [f.name for f in proj.features]
            idx = out.index[lost.to_numpy() & out["_row"].isin(part.index).to_numpy()]
            for c in cols:
                out[c] = out[c].astype(object) if out[c].dtype != part[c].dtype else out[c]
                out.loc[idx, c] = part.loc[out.loc[idx, "_row"], c].to_numpy()
    out = out.sort_values("_row").drop(columns="_row").reset_index(drop=True)
    for p in spec.profile_tables:  # as-of columns: naive UTC, as the table set stores them (and list columns)
        col = p.time_column
        if col is not None and col in out.columns and out[col].dtype != "datetime64[ns]":
            out[col] = pd.to_datetime(out[col], utc=True, format="ISO8601").dt.tz_localize(None).astype(
                "datetime64[ns]")
    for s in spec.sequences:
        for col in s.columns:
            missing = out[col].map(lambda v: not isinstance(v, list | np.ndarray))
            if missing.any():
                out.loc[missing, col] = pd.Series([[] for _ in range(int(missing.sum()))],
                                                  index=out.index[missing], dtype=object)
    front = [c for c in events.columns]
    return out[front + [c for c in out.columns if c not in front]]
