"""Where a request's features come from: the request itself, or an online feature store.

A :class:`FeatureSource` turns a request's entity keys into the raw feature values of the spec's
feature columns (profile features and ``<sequence>__<field>`` lists), exactly the columns the
point-in-time join produces offline; the model's saved transforms then turn them into tensors,
as in training. The Feast-backed source lives in the serving layer (``serving/feast_source.py``)
because the core never imports feast.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import pandas as pd

from longtail.online.errors import RequestError
from longtail.spec import DatasetSpec


class FeatureSource(Protocol):
    """Looks up the raw feature values of one entity as of a time."""

    name: str

    def lookup(self, spec: DatasetSpec, entity: Mapping[str, Any], event_time: pd.Timestamp) -> dict[str, Any]:
        """Args:
            spec: the dataset spec of the model that will score the row.
            entity: the request's entity keys (``spec.entity_keys``).
            event_time: the prediction time.

        Returns:
            ``{feature column: value}`` for every column of ``spec.feature_columns``.

        Raises:
            RequestError: a key is missing or the entity is unknown to the store.
        """
        ...


class RawFeatureSource:
    """The features travel in the request; an entity-only request is refused with a clear message."""

    name = "raw"

    def lookup(self, spec: DatasetSpec, entity: Mapping[str, Any], event_time: pd.Timestamp) -> dict[str, Any]:
        raise RequestError("this service has no online feature store (feature_source: raw): send 'features' "
                           "with the raw feature values instead of 'entity'", field="entity")


def check_entity(spec: DatasetSpec, entity: Mapping[str, Any], field: str = "entity") -> dict[str, Any]:
    """The entity keys a lookup needs, checked: every key of ``spec.entity_keys``, since each profile
    table and each sequence of the spec is looked up by its own key (a user profile by ``user_id``,
    an item profile by ``item_id``).

    Raises:
        RequestError: a key is missing, unknown or not a scalar.
    """
    if not isinstance(entity, Mapping):
        raise RequestError(f"'{field}' must be an object of entity keys {list(spec.entity_keys)}", field=field)
    unknown = sorted(set(entity) - set(spec.entity_keys))
    if unknown:
        raise RequestError(f"'{field}.{unknown[0]}' is not an entity key of dataset '{spec.name}'; "
                           f"keys: {list(spec.entity_keys)}", field=f"{field}.{unknown[0]}")
    out = {}
    for key in spec.entity_keys:
        if key not in entity or entity[key] is None:
            raise RequestError(f"'{field}.{key}' is missing; dataset '{spec.name}' needs entity keys "
                               f"{list(spec.entity_keys)}", field=f"{field}.{key}")
        value = entity[key]
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise RequestError(f"'{field}.{key}' must be a string or a number, got {type(value).__name__}",
                               field=f"{field}.{key}")
        out[key] = value
    return out
