"""The request fields of a served dataset as OpenAPI 3.0 schemas: what ``features`` and ``entity`` hold.

The service's input model can only say "an object" for both (one service serves any dataset); the
served models' spec says which keys, which types and how many steps. `request_schemas` turns a
`DatasetSpec` into the two schemas; the HTTP front writes them into ``/docs.json`` so that a client
generated from the schema (or a fuzzer) sends the keys the service needs.

What a schema cannot say is still checked per request (and named in the 400): the fields of one
sequence need the same number of steps, step times must be before the prediction time, and a
vocabulary without an out-of-vocabulary bucket takes only its known values.
"""

from __future__ import annotations

from typing import Any

from longtail.spec import DatasetSpec

_TIME = {"anyOf": [{"type": "string", "format": "date-time"}, {"type": "number"}],
         "description": "ISO 8601 (e.g. 2024-01-05T10:00:00Z) or seconds since the epoch"}


def _number(nullable: bool) -> dict[str, Any]:
    return {"type": "number", **({"nullable": True} if nullable else {})}


def _category() -> dict[str, Any]:
    # a category is a string; an integer is read as its decimal text; null is the out-of-vocabulary value
    return {"anyOf": [{"type": "string"}, {"type": "integer"}], "nullable": True}


def _steps(item: dict[str, Any], max_length: int, what: str) -> dict[str, Any]:
    return {"type": "array", "items": item, "maxItems": max_length,
            "description": f"{what}: one value per step, oldest first, at most {max_length} steps"}


def features_schema(spec: DatasetSpec) -> dict[str, Any]:
    """The ``features`` object of ``spec``: every feature column, required, no other key."""
    props: dict[str, Any] = {}
    for f in spec.profile_numeric:
        props[f.name] = _number(f.nullable)
    for c in spec.profile_categorical:
        props[c.name] = _category()
    for s in spec.sequences:
        for f in s.numeric:
            props[s.column(f.name)] = _steps(_number(f.nullable), s.max_length, f"sequence '{s.name}'")
        for c in s.categorical:
            props[s.column(c.name)] = _steps(_category(), s.max_length, f"sequence '{s.name}'")
        if s.timestamp_field:
            props[s.column(s.timestamp_field)] = _steps(
                dict(_TIME), s.max_length, f"sequence '{s.name}' step times, each before the prediction time")
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False,
            "description": f"raw feature values of dataset '{spec.name}' (instead of entity); the fields of one "
                           "sequence have the same number of steps"}


def entity_schema(spec: DatasetSpec) -> dict[str, Any]:
    """The ``entity`` object of ``spec``: every entity key, required, no other key."""
    key = {"anyOf": [{"type": "string"}, {"type": "integer"}, {"type": "number"}]}
    return {"type": "object", "properties": {k: dict(key) for k in spec.entity_keys},
            "required": list(spec.entity_keys), "additionalProperties": False,
            "description": f"entity keys of dataset '{spec.name}': the features are read from the online store"}


def request_schemas(spec: DatasetSpec) -> dict[str, dict[str, Any]]:
    """``{"features": ..., "entity": ...}`` for ``spec`` (see `features_schema`, `entity_schema`)."""
    return {"features": features_schema(spec), "entity": entity_schema(spec)}
