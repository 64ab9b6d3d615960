"""Feast definitions derived from a `DatasetSpec` and a table set (local folder or ``s3://`` prefix).

One entity per entity key a table is keyed by, one ``FileSource`` per table of the set, one
feature view per profile table and per behavior sequence, named as the spec names them
(``ProfileSpec.view_name``, ``SequenceSpec.view_name``: e.g. ``profile_user``, ``behavior_history``;
the first table sets used ``profile_daily`` and ``behavior_<seq>_hourly``) with sequence fields
as array features and a profile's as-of column as a timestamp feature, and the versioned feature
service ``<dataset>_v<N>`` that both training (``get_historical_features``) and serving
(``get_online_features``) name.

A snapshot stamped ``snapshot_ts`` holds what was known strictly before it (see
`longtail.data.tables`); the views' ``ttl`` is long by default because a sequence snapshot is only
written when the sequence changes (an aircraft idle for weeks keeps its last snapshot). Each view
is tagged with its entity key and whether its rows are static (known at all times, see
`feature_store.store.materialize`).

Example:
    >>> defs = build_definitions(spec, FeatureRepoConfig(tables="data/flights"))
    >>> sorted(defs)[:3]
    ['behavior_aircraft_hourly', 'behavior_aircraft_hourly_source', 'behavior_weather_hourly']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pyarrow.parquet as pq
from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.types import Array, Bool, Float32, Float64, Int32, Int64, String, UnixTimestamp

from longtail.data.tables import SNAPSHOT_TS
from longtail.spec import LEGACY_PROFILE_VIEW, DatasetSpec

PROFILE_VIEW = LEGACY_PROFILE_VIEW  # the profile view of a spec that names no profile tables
STATIC_TAG = "static"

_VALUE_TYPES = {"int64": ValueType.INT64, "int32": ValueType.INT32, "string": ValueType.STRING,
                "large_string": ValueType.STRING}


@dataclass(frozen=True)
class FeatureRepoConfig:
    """Where the feature data lives and how the repo is versioned.

    Args:
        tables: the table-set folder or ``s3://bucket/prefix`` (as written by ``longtail data build``).
        service_version: the ``N`` of the feature service ``<dataset>_v<N>``.
        ttl_days: ttl of every view (0 = no expiry in the offline join; materialize then starts at
            a fixed window, see `feature_store.store`).
        view_ttl_days: view name -> its own ttl. A view whose snapshots come regularly (daily
            profile, hourly weather) should have a short one: the offline join only considers
            snapshots within the ttl of each event, which keeps it small.
        s3_endpoint_url: endpoint of S3-compatible storage (MinIO) for ``s3://`` sources.
    """

    tables: str
    service_version: int = 1
    ttl_days: float = 36500
    view_ttl_days: dict[str, float] = field(default_factory=dict)
    s3_endpoint_url: str | None = None


def service_name(spec: DatasetSpec, version: int) -> str:
    """The versioned feature service of a dataset, e.g. ``flights_v1``."""
    return f"{spec.name}_v{int(version)}"


def behavior_view(spec: DatasetSpec, seq_name: str) -> str:
    """The feature view of a behavior sequence, e.g. ``behavior_aircraft_hourly``."""
    return spec.sequence(seq_name).view_name


def view_tables(spec: DatasetSpec) -> dict[str, tuple[str, list[str], bool]]:
    """View name -> (its entity key, its feature columns, static) for every table of the spec."""
    out: dict[str, tuple[str, list[str], bool]] = {}
    for p in spec.profile_tables:
        out[p.view_name] = (p.entity_key, [*p.features, *([p.time_column] if p.time_column else [])], p.static)
    for s in spec.sequences:
        out[s.view_name] = (spec.sequence_entity(s), s.columns, False)
    return out


def build_definitions(spec: DatasetSpec, cfg: FeatureRepoConfig, schemas: dict[str, Any] | None = None
                      ) -> dict[str, Any]:
    """Feast objects of a dataset, by name (assign them to module attributes for ``feast apply``).

    Args:
        spec: the dataset spec.
        cfg: table location, service version, ttl.
        schemas: table name -> pyarrow schema; read from the local parquet files when omitted
            (pass them for ``s3://`` tables).

    Returns:
        Name -> `Entity` / `FileSource` / `FeatureView` / `FeatureService`.
    """
    root = cfg.tables.rstrip("/")
    tables = view_tables(spec)
    schemas = schemas or {t: read_schema(f"{root}/{t}.parquet", cfg.s3_endpoint_url) for t in tables}
    out: dict[str, Any] = {}
    entities = {}
    for key in spec.entity_keys:
        table = next((t for t, (k, _, _) in tables.items() if k == key), None)
        if table is None:
            continue
        arrow_type = str(schemas[table].field(key).type)
        entities[key] = Entity(name=key, join_keys=[key], value_type=_VALUE_TYPES.get(arrow_type, ValueType.STRING),
                               description=f"{spec.name} entity key '{key}'")
    out.update({f"entity_{k}": v for k, v in entities.items()})
    views = []
    for table, (key, cols, static) in tables.items():
        schema = schemas[table]
        cols = [c for c in cols if c in schema.names]  # an as-of column is absent from sets built before it
        src = FileSource(name=f"{table}_source", path=f"{root}/{table}.parquet", timestamp_field=SNAPSHOT_TS,
                         s3_endpoint_override=cfg.s3_endpoint_url)
        fields = [Field(name=c, dtype=_feast_type(schema.field(c).type, table, c)) for c in cols]
        ttl = timedelta(days=float(cfg.view_ttl_days.get(table, cfg.ttl_days)))
        view = FeatureView(name=table, entities=[entities[key]], ttl=ttl, online=True, schema=fields, source=src,
                           tags={"dataset": spec.name, "entity": key, STATIC_TAG: str(static).lower()})
        out[f"{table}_source"] = src
        out[table] = view
        views.append(view)
    name = service_name(spec, cfg.service_version)
    out[name] = FeatureService(name=name, features=views,
                               description=f"{spec.name} features for training and serving, version "
                                           f"{cfg.service_version}")
    return out


def load_spec(cfg: FeatureRepoConfig) -> DatasetSpec:
    """The `DatasetSpec` saved with the table set (``spec.yaml``), local or ``s3://``."""
    path = f"{cfg.tables.rstrip('/')}/spec.yaml"
    if path.startswith("s3://"):
        from pyarrow import fs

        s3 = fs.S3FileSystem(endpoint_override=cfg.s3_endpoint_url) if cfg.s3_endpoint_url else fs.S3FileSystem()
        with s3.open_input_stream(path[len("s3://"):]) as f:
            return DatasetSpec.from_yaml(f.read().decode())
    return DatasetSpec.from_yaml(path)


def read_schema(path: str, s3_endpoint_url: str | None = None) -> Any:
    """The pyarrow schema of a parquet file, local or ``s3://`` (credentials from the environment)."""
    if path.startswith("s3://"):
        from pyarrow import fs

        s3 = fs.S3FileSystem(endpoint_override=s3_endpoint_url) if s3_endpoint_url else fs.S3FileSystem()
        return pq.read_schema(path[len("s3://"):], filesystem=s3)
    return pq.read_schema(path)


def _feast_type(t: Any, table: str, column: str) -> Any:
    """The Feast type of a parquet column type (lists become arrays)."""
    import pyarrow as pa

    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return Array(_scalar(t.value_type, table, column))
    return _scalar(t, table, column)


def _scalar(t: Any, table: str, column: str) -> Any:
    import pyarrow as pa

    if pa.types.is_floating(t):
        return Float32 if t == pa.float32() else Float64
    if pa.types.is_integer(t):
        return Int32 if pa.types.is_int32(t) or pa.types.is_int16(t) or pa.types.is_int8(t) else Int64
    if pa.types.is_boolean(t):
        return Bool
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return String
    if pa.types.is_timestamp(t):
        return UnixTimestamp
    raise ValueError(f"table {table}: column '{column}' has parquet type {t}, which has no Feast type here; "
                     "store it as a number, a string, a bool or a timestamp (or a list of those)")
