"""The Feast-backed feature source: entity keys -> the raw feature values from the online store.

``FeatureStore.get_online_features`` with the dataset's feature service returns the newest
materialized snapshot of each feature view, the same rows the offline point-in-time join takes
for an event at the materialization time; the model's saved transforms then apply as in training.
Feature names in the service are the spec's feature columns (``x1``, ``actions__amount``, ...).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from typing import Any

import pandas as pd

from longtail.online import RequestError
from longtail.spec import DatasetSpec


class FeastFeatureSource:
    """Reads a request's features from a Feast online store.

    Args:
        repo_path: the Feast repo folder (with ``feature_store.yaml``).
        feature_service: the feature service name; ``{dataset}`` becomes the spec's dataset name.
    """

    name = "feast"

    def __init__(self, repo_path: str, feature_service: str = "{dataset}_v1"):
        from feast import FeatureStore

        self.store = FeatureStore(repo_path=str(repo_path))
        self.feature_service = feature_service
        self._services: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _service(self, dataset: str):
        name = self.feature_service.format(dataset=dataset)
        with self._lock:
            if name not in self._services:
                self._services[name] = self.store.get_feature_service(name)
            return self._services[name]

    def lookup(self, spec: DatasetSpec, entity: Mapping[str, Any], event_time: pd.Timestamp) -> dict[str, Any]:
        """The feature columns of ``spec`` for one entity (see :class:`longtail.online.FeatureSource`).

        Every profile table of the spec is read with its own entity key (``spec.profile_tables``), so
        ``entity`` must hold every key of ``spec.entity_keys`` (`longtail.online.check_entity`).

        Raises:
            RequestError: the online store holds no row of a required profile table for its key
                (the field names that key).
        """
        try:
            resp = self.store.get_online_features(features=self._service(spec.name), entity_rows=[dict(entity)])
        except (TypeError, ValueError) as e:  # e.g. a string where the entity key is an integer
            raise RequestError(f"'entity': the online store rejected the keys {dict(entity)}: {e}",
                               field="entity") from None
        rows = decode_response(resp.proto)
        out: dict[str, Any] = {}
        for f in spec.profile_numeric:
            v = _first(rows, f.name)
            out[f.name] = float("nan") if v is None else v
        for c in spec.profile_categorical:
            out[c.name] = _first(rows, c.name)
        for p in spec.profile_tables:
            # a row of the table is there when any of its columns is (its as-of time, when it has one)
            cols = [p.time_column] if p.time_column and p.time_column in rows else list(p.features)
            if p.required and all(_missing(rows[c][0] if c in rows else out.get(c)) for c in cols):
                key = p.entity_key
                raise RequestError(f"'entity.{key}': {entity.get(key)!r} has no row of profile '{p.name}' in the "
                                   "online store (unknown entity, or not materialized yet)", field=f"entity.{key}")
        for s in spec.sequences:
            for col in s.columns:
                v = _first(rows, col)
                out[col] = [] if v is None else list(v)
        return out


def decode_response(proto: Any) -> dict[str, list]:
    """``{feature: [value per entity row]}`` from a GetOnlineFeaturesResponse, decoded here.

    Feast 0.67's ``to_dict`` reads timestamp lists as epoch seconds while a parquet source of
    ``datetime64[ns]`` lists stores nanoseconds (it overflows); the raw proto values are decoded
    with the unit detected from their magnitude instead.
    """
    out: dict[str, list] = {}
    for name, vector in zip(proto.metadata.feature_names.val, proto.results, strict=True):
        out[name] = [_value(v) for v in vector.values]
    return out


def _value(v: Any) -> Any:
    kind = v.WhichOneof("val")
    if kind is None or kind == "null_val":
        return None
    raw = getattr(v, kind)
    if kind == "unix_timestamp_list_val":
        return [_epoch(x) for x in raw.val]
    if kind == "unix_timestamp_val":
        return _epoch(raw)
    if kind.endswith("_list_val"):
        return list(raw.val)
    return raw


def _epoch(x: int) -> pd.Timestamp:
    unit = "ns" if abs(x) >= 10**16 else "us" if abs(x) >= 10**13 else "ms" if abs(x) >= 10**11 else "s"
    return pd.Timestamp(int(x), unit=unit, tz="UTC")


def _first(rows: Mapping[str, list], name: str) -> Any:
    if name not in rows:
        raise RequestError(f"the feature service has no feature {name!r}; update the Feast repo",
                           field="entity")
    return rows[name][0]


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def feature_source(config) -> FeastFeatureSource | None:
    """The feature source a serving config names (``feature_source: feast``), or ``None`` for raw features."""
    if config.feature_source == "feast":
        return FeastFeatureSource(config.feast_repo, config.feast_feature_service)
    return None
