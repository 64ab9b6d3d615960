"""A request's raw feature values -> the one-row prepared dataframe that the saved transforms take.

The row has exactly the columns the offline point-in-time join produces (scenario, event time,
entity keys, profile features, ``<sequence>__<field>`` lists), so serving applies the model's
fitted transforms to the same thing as training and evaluation did. Every check names the field
the client got wrong.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from longtail.online.errors import RequestError
from longtail.spec import DatasetSpec, SpecError

_COLUMN = re.compile(r"column '([^']+)'")


def parse_time(value: Any, field: str) -> pd.Timestamp:
    """A tz-aware UTC timestamp from an ISO string, a datetime or epoch seconds.

    Raises:
        RequestError: the value is not a time (naive times are taken as UTC).
    """
    if isinstance(value, bool):
        raise RequestError(f"'{field}' must be an ISO 8601 time, got {value!r}", field=field)
    try:
        if isinstance(value, int | float):
            ts = pd.Timestamp(float(value), unit="s", tz="UTC")
        elif isinstance(value, str | datetime | pd.Timestamp | np.datetime64):
            ts = pd.Timestamp(value)
        else:
            raise TypeError(type(value).__name__)
    except (TypeError, ValueError, OverflowError) as e:
        raise RequestError(f"'{field}' must be an ISO 8601 time such as 2024-01-05T10:00:00Z ({e})",
                           field=field) from None
    if ts is pd.NaT or pd.isna(ts):
        raise RequestError(f"'{field}' must be an ISO 8601 time, got {value!r}", field=field)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def number_error(v: Any, field: str, nullable: bool) -> RequestError | None:
    """The error of a raw numeric feature value, or None when it is a valid number (or an allowed null)."""
    if v is None:
        return None if nullable else RequestError(
            f"'{field}' is null but the feature is not nullable; send a number", field=field)
    if isinstance(v, bool) or not isinstance(v, int | float | np.number):
        return RequestError(f"'{field}' must be a number, got {type(v).__name__} {v!r}", field=field)
    try:
        x = float(v)
    except OverflowError:  # a JSON integer such as 10^400 is valid JSON but no float
        return RequestError(f"'{field}' is too large for a 64-bit float (a {len(str(abs(int(v))))}-digit integer); "
                            "send a finite number", field=field)
    if math.isinf(x):
        return RequestError(f"'{field}' must be finite, got {x}", field=field)
    if math.isnan(x) and not nullable:
        return RequestError(f"'{field}' is NaN but the feature is not nullable; send a number", field=field)
    return None


def _number(v: Any, field: str, nullable: bool) -> float:
    err = number_error(v, field, nullable)
    if err is not None:
        raise err
    return float("nan") if v is None else float(v)


def _category(v: Any, field: str) -> str | None:
    # a missing category (null) is allowed as in training, where it maps to the out-of-vocabulary index
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, str | int | np.integer):
        raise RequestError(f"'{field}' must be a string (a category), got {type(v).__name__} {v!r}", field=field)
    return str(v)


def _steps(v: Any, field: str) -> list:
    if isinstance(v, np.ndarray):
        v = v.tolist()
    if not isinstance(v, list | tuple):
        raise RequestError(f"'{field}' must be a list (one value per step, oldest first), got "
                           f"{type(v).__name__}", field=field)
    return list(v)


def build_row(spec: DatasetSpec, scenario: str, event_time: pd.Timestamp, features: Mapping[str, Any],
              entity: Mapping[str, Any] | None = None, field: str = "features") -> pd.DataFrame:
    """The one-row prepared dataframe of a request.

    Args:
        spec: the dataset spec of the model that scores the row.
        scenario: the scenario value.
        event_time: the prediction time (UTC).
        features: ``{feature column: raw value}`` (profile values; lists for sequence fields).
        entity: entity key values (placeholders are used where absent: transforms never read them).
        field: the request field that holds ``features`` (for error messages).

    Returns:
        A one-row dataframe with the spec's columns (label absent).

    Raises:
        RequestError: naming the first invalid field.
    """
    if not isinstance(features, Mapping):
        raise RequestError(f"'{field}' must be an object of feature values", field=field)
    known = spec.feature_columns
    unknown = sorted(set(features) - set(known))
    if unknown:
        raise RequestError(f"'{field}.{unknown[0]}' is not a feature of dataset '{spec.name}'; "
                           f"features: {known}", field=f"{field}.{unknown[0]}")
    missing = [c for c in known if c not in features]
    if missing:
        raise RequestError(f"'{field}.{missing[0]}' is missing; dataset '{spec.name}' needs features {known}",
                           field=f"{field}.{missing[0]}")
    row: dict[str, Any] = {spec.scenario: scenario, spec.event_timestamp: event_time}
    for key in spec.entity_keys:
        row[key] = (entity or {}).get(key, "")
    for f in spec.profile_numeric:
        row[f.name] = _number(features[f.name], f"{field}.{f.name}", f.nullable)
    for c in spec.profile_categorical:
        row[c.name] = _category(features[c.name], f"{field}.{c.name}")
    for s in spec.sequences:
        lengths = {}
        for f in s.numeric:
            col = s.column(f.name)
            steps = _steps(features[col], f"{field}.{col}")
            row[col] = np.array([_number(v, f"{field}.{col}[{i}]", f.nullable) for i, v in enumerate(steps)],
                                dtype=float)
            lengths[col] = len(steps)
        for c in s.categorical:
            col = s.column(c.name)
            steps = _steps(features[col], f"{field}.{col}")
            row[col] = np.array([_category(v, f"{field}.{col}[{i}]") for i, v in enumerate(steps)], dtype=object)
            lengths[col] = len(steps)
        if s.timestamp_field:
            col = s.column(s.timestamp_field)
            steps = _steps(features[col], f"{field}.{col}")
            stamps = [parse_time(v, f"{field}.{col}[{i}]") for i, v in enumerate(steps)]
            row[col] = (pd.DatetimeIndex(stamps).tz_convert("UTC").tz_localize(None).to_numpy("datetime64[ns]")
                        if stamps else np.array([], dtype="datetime64[ns]"))
            lengths[col] = len(steps)
        if len(set(lengths.values())) > 1:
            raise RequestError(f"'{field}.{s.name}': the fields of sequence '{s.name}' have different step counts "
                               f"{lengths}; every field needs one value per step", field=f"{field}.{s.name}")
    df = pd.DataFrame({k: [v] for k, v in row.items()})
    df[spec.event_timestamp] = pd.to_datetime(df[spec.event_timestamp], utc=True)
    _check_sequences(spec, row, event_time, field)
    return df


def _check_sequences(spec: DatasetSpec, row: dict[str, Any], event_time: pd.Timestamp, field: str) -> None:
    """The spec's sequence rules on one row (cheap numpy checks; the per-request hot path):
    at most ``max_length`` steps, and every step strictly before the prediction time (no leakage)."""
    event = np.datetime64(event_time.tz_convert("UTC").tz_localize(None).to_datetime64(), "ns")
    for s in spec.sequences:
        n = len(row[s.column(s.field_names[0])])
        if n > s.max_length:
            where = f"{field}.{s.column(s.field_names[0])}"
            raise RequestError(f"'{where}': {n} steps, more than max_length={s.max_length} of sequence "
                               f"'{s.name}'; send the newest {s.max_length} steps", field=where)
        if s.timestamp_field:
            col = s.column(s.timestamp_field)
            if n and (row[col] >= event).any():
                where = f"{field}.{col}"
                raise RequestError(f"'{where}': step(s) at or after event_timestamp {event_time.isoformat()} "
                                   "(leakage); send only steps strictly before the prediction time", field=where)


def check_vocabularies(transforms: Any, df: pd.DataFrame, field: str = "features") -> None:
    """Unknown categories of features without an out-of-vocabulary bucket, named (before batching, so one
    client's bad value never fails another client's rows in the same forward pass)."""
    for col, vocab in transforms.vocab.items():
        if vocab.oov_bucket:
            continue
        known = _known(vocab)
        values = df[col].iloc[0]
        for v in (values if isinstance(values, np.ndarray | list) else [values]):
            if v is not None and not (isinstance(v, float) and math.isnan(v)) and str(v) not in known:
                raise RequestError(f"'{field}.{col}': unknown category {v!r} and the model has no "
                                   f"out-of-vocabulary bucket; known: {sorted(known)[:20]}", field=f"{field}.{col}")


_KNOWN: dict[int, frozenset[str]] = {}


def _known(vocab: Any) -> frozenset[str]:
    key = id(vocab)
    if key not in _KNOWN:
        _KNOWN[key] = frozenset(str(v) for v in vocab.values)
    return _KNOWN[key]


def jsonable_row(spec: DatasetSpec, df: pd.DataFrame) -> dict[str, Any]:
    """The feature values of a one-row prepared dataframe as JSON (times as ISO strings)."""
    out: dict[str, Any] = {}
    for col in spec.feature_columns:
        v = df[col].to_numpy()[0]  # an arrow list column's cell as the numpy array of its steps
        if isinstance(v, np.ndarray | list | tuple):
            arr = np.asarray(v)
            if np.issubdtype(arr.dtype, np.datetime64):
                out[col] = [pd.Timestamp(x, tz="UTC").isoformat() for x in arr]
            else:
                out[col] = [_plain(x) for x in arr.tolist()]
        else:
            out[col] = _plain(v)
    return out


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, pd.Timestamp):
        return v.isoformat()
    return v


def spec_error_to_request(e: SpecError, field: str = "features") -> RequestError:
    """A transform-time SpecError (e.g. an unknown category without an OOV bucket) as a RequestError."""
    m = _COLUMN.search(str(e))
    where = f"{field}.{m.group(1)}" if m else field
    return RequestError(f"'{where}': {e}", field=where)
