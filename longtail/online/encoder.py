"""The serving encoder: a request's raw JSON values -> a model's input arrays, with no pandas.

Compiled once per model, when it loads, from its saved transforms (``transforms.json``,
:class:`longtail.data.transforms.FittedTransforms`): normalisation centres and scales become
float64 arrays, vocabularies become ``{value: index}`` dicts, and every sequence gets its padded
layout. :meth:`ServingEncoder.encode` then validates one request as strictly as the prepared-row
path (:func:`longtail.online.rows.build_row` and ``check_vocabularies``: the same checks, in the same
order, naming the same field) and writes the arrays that ``FittedTransforms.transform`` gives for
that row, element for element (the parity tests compare them on real rows).

What is the same as the training path, and why it is exact: numeric values are normalised with the
same float64 numpy operations (``sign(x)·log1p(|x|)``, ``(x - centre) / scale``, NaN -> 0 with a
missing flag, clipping at ±``CLIP``) before the cast to float32; ``hours_before`` is the same
``datetime64[ns]`` difference divided by one hour; an unknown or missing category maps to the
out-of-vocabulary index exactly as ``Vocabulary.apply`` does.

Example::

    enc = ServingEncoder(transforms)
    row = enc.encode("AA", parse_time_ns("2013-05-01T10:00:00Z", "event_timestamp"), features)
    inputs = enc.stack([row])           # arrays in `input_names` order, batch dimension first
    batch = enc.batch([row])            # the same as a `Batch` of tensors
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any

import numpy as np
import torch

from longtail.data.tensors import OOV_INDEX, Batch
from longtail.data.transforms import CLIP, HOURS_BEFORE, FittedTransforms
from longtail.online.errors import RequestError
from longtail.online.rows import number_error, parse_time

__all__ = ["EncodedRow", "ServingEncoder", "parse_time_ns"]

_NS_PER_HOUR = np.timedelta64(1, "h")
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_MIN_NS, _MAX_NS = -(2**63) + 1, 2**63 - 1  # pandas' Timestamp range, in ns since the epoch
_ISO = re.compile(r"(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?(Z|[+-]\d{2}:\d{2})?\Z")
_TIME_CACHE: dict[str, int] = {}  # ISO string -> ns; hourly step times repeat across requests
_TIME_CACHE_SIZE = 65536


def _iso_ns(text: str) -> int | None:
    """ns since the epoch (UTC) of a plain ISO 8601 time, or None to leave the string to pandas.

    Only the common shape ``YYYY-MM-DD[T ]HH:MM[:SS[.f{1,9}]][Z|±HH:MM]`` is read here (naive times
    are UTC, as in `parse_time`); anything else, including every invalid value, goes to
    ``pandas.Timestamp`` so that what is accepted, and each error, stays exactly as before.
    """
    m = _ISO.match(text)
    if m is None:
        return None
    y, mo, d, hh, mi, ss, frac, tz = m.groups()
    hour, minute, second = int(hh), int(mi), int(ss or 0)
    if hour > 23 or minute > 59 or second > 59:
        return None
    try:
        days = date(int(y), int(mo), int(d)).toordinal() - _EPOCH_ORDINAL
    except ValueError:
        return None
    ns = (((days * 24 + hour) * 60 + minute) * 60 + second) * 1_000_000_000
    if frac:
        ns += int(frac.ljust(9, "0"))
    if tz and tz != "Z":
        oh, om = int(tz[1:3]), int(tz[4:6])
        if oh > 23 or om > 59:
            return None
        ns -= (1 if tz[0] == "+" else -1) * (oh * 60 + om) * 60_000_000_000
    if not _MIN_NS <= ns <= _MAX_NS:
        return None
    return ns


def parse_time_ns(value: Any, field: str) -> int:
    """A prediction or step time as ns since the epoch (UTC), accepting what `parse_time` accepts.

    Raises:
        RequestError: naming ``field`` (the message of `parse_time`, or a time outside the nanosecond range,
            about the years 1677 to 2262).
    """
    if type(value) is str:
        ns = _TIME_CACHE.get(value)
        if ns is not None:
            return ns
        ns = _iso_ns(value)
        if ns is not None:
            if len(_TIME_CACHE) >= _TIME_CACHE_SIZE:
                _TIME_CACHE.clear()
            _TIME_CACHE[value] = ns
            return ns
    ts = parse_time(value, field)
    try:
        return int(ts.value)
    except OverflowError:  # a valid ISO time such as year 9999 that no int64 of nanoseconds holds
        raise RequestError(f"'{field}' is {ts.isoformat()}, outside the times this service handles (about the years "
                           "1677 to 2262); send a time in that range", field=field) from None



def _numeric_layout(fields: list[tuple[str, bool]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Where each numeric field's value goes in the output columns: the value, then its missing flag if
    the field is nullable (the layout of `FittedTransforms.transform`).

    Returns:
        (value columns, missing-flag columns, the field index of each flag, number of columns)
    """
    cols, miss_cols, miss_src, k = [], [], [], 0
    for j, (_, nullable) in enumerate(fields):
        cols.append(k)
        k += 1
        if nullable:
            miss_cols.append(k)
            miss_src.append(j)
            k += 1
    as_index = lambda xs: np.array(xs, dtype=np.int64)  # noqa: E731
    return as_index(cols), as_index(miss_cols), as_index(miss_src), k

class _NotFast(Exception):
    """A value the fast path does not take as it is; the exact checks decide."""


_NUMBER = frozenset((float, int))
_NUMBER_OR_NULL = frozenset((float, int, type(None)))
_TEXT_OR_NULL = frozenset((str, type(None)))
_TEXT = frozenset((str,))


def _number(v: Any, field: str, nullable: bool) -> float:
    if type(v) is float and math.isfinite(v):
        return v
    err = number_error(v, field, nullable)
    if err is not None:
        raise err
    return float("nan") if v is None else float(v)


def _numbers(steps: list, field: str, nullable: bool) -> np.ndarray:
    """float64 array of one numeric sequence field; the first bad step is named as `rows.build_row` names it."""
    return np.array([_number(v, f"{field}[{i}]", nullable) for i, v in enumerate(steps)], dtype=np.float64)


def _category(v: Any, field: str) -> str | None:
    if v is None or type(v) is str:
        return v
    if isinstance(v, bool) or not isinstance(v, str | int | np.integer):
        raise RequestError(f"'{field}' must be a string (a category), got {type(v).__name__} {v!r}", field=field)
    return str(v)


def _steps(v: Any, field: str) -> list:
    if type(v) is list:
        return v
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, tuple):
        return list(v)
    raise RequestError(f"'{field}' must be a list (one value per step, oldest first), got "
                       f"{type(v).__name__}", field=field)


class _Numeric:
    """Normalisation of a group of numeric inputs (float64 in, as `NumericStats.apply` computes it)."""

    def __init__(self, stats: Sequence[Any]):
        self.center = np.array([s.center for s in stats], dtype=np.float64)
        self.scale = np.array([s.scale for s in stats], dtype=np.float64)
        self.log = np.array([s.normalization == "log_standard" for s in stats], dtype=bool)
        self.any_log = bool(self.log.any())

    def apply(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``x`` (..., F) float64, overwritten -> (normalised float32 with NaN -> 0, missing flags float32)."""
        if self.any_log:
            logs = x[..., self.log]
            x[..., self.log] = np.sign(logs) * np.log1p(np.abs(logs))
        x -= self.center
        x /= self.scale
        missing = ~np.isfinite(x)
        x[missing] = 0.0
        np.maximum(x, -CLIP, out=x)
        np.minimum(x, CLIP, out=x)
        return x.astype(np.float32), missing.astype(np.float32)


class _Vocab:
    def __init__(self, values: Sequence[str], oov_bucket: bool):
        self.index: dict[str, int] = {}
        for i, v in enumerate(values):
            self.index.setdefault(str(v), i + 2)  # 0 padding, 1 out of vocabulary, known values from 2
        self.oov_bucket = oov_bucket
        self.known = sorted(self.index)


class _Sequence:
    def __init__(self, transforms: FittedTransforms, s: Any):
        self.spec = s
        self.name = s.name
        self.T = s.max_length
        self.left = s.padding == "left"
        self.numeric = [(s.column(f.name), f.nullable) for f in s.numeric]
        self.categorical = [s.column(c.name) for c in s.categorical]
        self.timestamp = s.column(s.timestamp_field) if s.timestamp_field else None
        self.first = s.column(s.field_names[0])
        # the step fields and hours_before are normalised together: one (n, F + 1) matrix per request
        self.norm = _Numeric([transforms.numeric[c] for c, _ in self.numeric]
                             + ([transforms.numeric[s.column(HOURS_BEFORE)]] if self.timestamp else []))
        # output columns of seq_num: each field, its missing flag if nullable, then hours_before
        self.value_cols, self.miss_cols, self.miss_src, k = _numeric_layout(self.numeric)
        self.hours_col = k if self.timestamp else -1
        self.n_num = k + (1 if self.timestamp else 0)
        self.vocabs = [_Vocab(transforms.vocab[c].values, transforms.vocab[c].oov_bucket) for c in self.categorical]
        self.nullable = np.array([nullable for _, nullable in self.numeric], dtype=bool)
        self.any_nullable = bool(self.nullable.any())

    def parse_fast(self, features: Mapping[str, Any]) -> tuple[np.ndarray, list, np.ndarray | None, int]:
        """``(values (n, F) float64, categories per field, step times in ns, n)`` of a plainly valid sequence
        (lists of JSON numbers, strings and ISO times); raises `_NotFast` for anything else."""
        n = -1
        columns = []
        with_none = False
        for col, nullable in self.numeric:
            steps = features[col]
            if type(steps) is not list or (n >= 0 and len(steps) != n):
                raise _NotFast
            n = len(steps)
            kinds = set(map(type, steps))
            if not kinds <= _NUMBER:
                if not (nullable and kinds <= _NUMBER_OR_NULL):
                    raise _NotFast
                with_none = True
            columns.append(steps)
        cats = []
        for col in self.categorical:
            steps = features[col]
            if type(steps) is not list or (n >= 0 and len(steps) != n) or not set(map(type, steps)) <= _TEXT_OR_NULL:
                raise _NotFast
            n = len(steps)
            cats.append(steps)
        stamps = None
        if self.timestamp:
            steps = features[self.timestamp]
            if type(steps) is not list or (n >= 0 and len(steps) != n):
                raise _NotFast
            n = len(steps)
            if not set(map(type, steps)) <= _TEXT:
                raise _NotFast
            ns = list(map(_TIME_CACHE.get, steps))  # hourly step times repeat across requests
            if None in ns:
                for i, v in enumerate(steps):
                    if ns[i] is None:
                        t = _iso_ns(v)
                        if t is None:
                            raise _NotFast
                        if len(_TIME_CACHE) >= _TIME_CACHE_SIZE:
                            _TIME_CACHE.clear()
                        _TIME_CACHE[v] = ns[i] = t
            stamps = np.array(ns, dtype=np.int64)
        if with_none:
            columns = [[math.nan if v is None else v for v in c] for c in columns]
        try:
            values = np.array(columns, dtype=np.float64).reshape(len(columns), max(n, 0)).T  # (n, F)
        except OverflowError:
            raise _NotFast from None
        if n > 0 and columns:
            finite = np.isfinite(values)
            if not finite.all() and (np.isinf(values).any() or (~finite & ~self.nullable).any()):
                raise _NotFast
        return values, cats, stamps, max(n, 0)

    def parse_exact(self, features: Mapping[str, Any], field: str) -> tuple[np.ndarray, list, np.ndarray | None, int]:
        """`parse_fast`'s result for any input `rows.build_row` accepts, with its checks in its order (the
        first invalid step named)."""
        lengths: dict[str, int] = {}
        values = []
        for col, nullable in self.numeric:
            steps = _steps(features[col], f"{field}.{col}")
            values.append(_numbers(steps, f"{field}.{col}", nullable))
            lengths[col] = len(steps)
        cats = []
        for col in self.categorical:
            steps = _steps(features[col], f"{field}.{col}")
            cats.append([_category(v, f"{field}.{col}[{i}]") for i, v in enumerate(steps)])
            lengths[col] = len(steps)
        stamps = None
        if self.timestamp:
            steps = _steps(features[self.timestamp], f"{field}.{self.timestamp}")
            stamps = np.array([parse_time_ns(v, f"{field}.{self.timestamp}[{i}]") for i, v in enumerate(steps)],
                              dtype=np.int64)
            lengths[self.timestamp] = len(steps)
        if len(set(lengths.values())) > 1:
            raise RequestError(f"'{field}.{self.name}': the fields of sequence '{self.name}' have different step "
                               f"counts {lengths}; every field needs one value per step", field=f"{field}.{self.name}")
        n = lengths[self.first]
        matrix = np.stack(values, axis=1) if values else np.zeros((n, 0), dtype=np.float64)
        return matrix, cats, stamps, n


class EncodedRow:
    """One request's model inputs: arrays in `ServingEncoder.input_names` order (no batch dimension)."""

    __slots__ = ("arrays", "scenario")

    def __init__(self, arrays: tuple[np.ndarray, ...], scenario: int):
        self.arrays = arrays
        self.scenario = scenario


class ServingEncoder:
    """A model's saved transforms compiled for requests: raw values -> input arrays (see the module docstring).

    Args:
        transforms: the model's fitted transforms (``transforms.json`` of its folder).

    Attributes:
        schema: the model's input shapes (``transforms.schema``).
        input_names: the order of the arrays of an `EncodedRow` and of `stack`: ``profile_num``,
            ``profile_cat``, then ``seq_num:<s>``, ``seq_cat:<s>``, ``seq_mask:<s>`` per sequence.
        nbytes: about the bytes held by the compiled tables (normalisation arrays and vocabularies).
    """

    def __init__(self, transforms: FittedTransforms):
        spec = transforms.spec
        self.spec = spec
        self.schema = transforms.schema
        self.feature_columns = spec.feature_columns
        self._known = frozenset(self.feature_columns)
        self._profile_numeric = [(f.name, f.nullable) for f in spec.profile_numeric]
        self._profile_norm = _Numeric([transforms.numeric[f.name] for f in spec.profile_numeric])
        self._p_cols, self._p_miss_cols, self._p_miss_src, self._n_profile = _numeric_layout(self._profile_numeric)
        self._profile_cats = [c.name for c in spec.profile_categorical]
        self._profile_vocabs = [_Vocab(transforms.vocab[c].values, transforms.vocab[c].oov_bucket)
                                for c in self._profile_cats]
        self._sequences = [_Sequence(transforms, s) for s in spec.sequences]
        # vocabularies without an OOV bucket, in the order `check_vocabularies` reports them
        self._closed = [col for col, v in transforms.vocab.items() if not v.oov_bucket]
        self._scenarios = {s: i for i, s in enumerate(transforms.scenarios)}
        self.input_names = ("profile_num", "profile_cat",
                            *(f"seq_num:{s.name}" for s in self._sequences),
                            *(f"seq_cat:{s.name}" for s in self._sequences),
                            *(f"seq_mask:{s.name}" for s in self._sequences))
        tables = [self._profile_norm, *(s.norm for s in self._sequences)]
        n_vocab = sum(len(v.index) for v in self._profile_vocabs) + sum(
            len(v.index) for s in self._sequences for v in s.vocabs)
        self.nbytes = int(sum(t.center.nbytes * 3 for t in tables) + 120 * n_vocab)

    # ------------------------------------------------------------------ one request
    def encode(self, scenario: str, event_ns: int | None, features: Any, field: str = "features") -> EncodedRow:
        """Validate one request's raw features and encode them.

        Args:
            scenario: the request's scenario (its index in the transforms' scenario list is recorded).
            event_ns: the prediction time in ns since the epoch, UTC (None: now).
            features: ``{feature column: raw value}`` (profile values, lists for sequence fields).
            field: the request field that holds ``features`` (errors name ``<field>.<column>[<step>]``).

        Returns:
            The encoded row.

        Raises:
            RequestError: naming the first invalid field, in the order the prepared-row path checks them.
        """
        if event_ns is None:
            event_ns = time.time_ns()
        if not isinstance(features, Mapping):
            raise RequestError(f"'{field}' must be an object of feature values", field=field)
        if len(features) != len(self._known) or not self._known.issuperset(features):
            self._key_error(features, field)
        # profile numerics (float64, normalised together)
        raw = np.empty(len(self._profile_numeric), dtype=np.float64)
        for j, (col, nullable) in enumerate(self._profile_numeric):
            raw[j] = _number(features[col], f"{field}.{col}", nullable)
        cats = [_category(features[col], f"{field}.{col}") for col in self._profile_cats]
        seqs = []
        for s in self._sequences:
            try:
                seqs.append(s.parse_fast(features))
            except _NotFast:  # anything unusual: the exact checks, in the prepared-row path's order
                seqs.append(s.parse_exact(features, field))
        for s, (_, _, stamps, n) in zip(self._sequences, seqs, strict=True):
            if n > s.T:
                where = f"{field}.{s.first}"
                raise RequestError(f"'{where}': {n} steps, more than max_length={s.T} of sequence "
                                   f"'{s.name}'; send the newest {s.T} steps", field=where)
            if stamps is not None and n and (stamps >= event_ns).any():
                where = f"{field}.{s.timestamp}"
                raise RequestError(f"'{where}': step(s) at or after event_timestamp "
                                   f"{_iso(event_ns)} (leakage); send only steps strictly before the "
                                   "prediction time", field=where)
        if self._closed:
            self._check_closed(cats, seqs, field)

        # ---- arrays (the layout of FittedTransforms.transform)
        x, miss = self._profile_norm.apply(raw)
        profile_num = np.empty(self._n_profile, dtype=np.float32)
        profile_num[self._p_cols] = x
        profile_num[self._p_miss_cols] = miss[self._p_miss_src]
        profile_cat = np.array([OOV_INDEX if v is None else vocab.index.get(v, OOV_INDEX)
                                for v, vocab in zip(cats, self._profile_vocabs, strict=True)], dtype=np.int64)
        nums, seq_cats_out, masks = [], [], []
        for s, (values, seq_cats, stamps, n) in zip(self._sequences, seqs, strict=True):
            num = np.zeros((s.T, s.n_num), dtype=np.float32)
            cat = np.zeros((s.T, len(s.categorical)), dtype=np.int64)
            mask = np.zeros(s.T, dtype=bool)
            if n:
                rows = slice(s.T - n, s.T) if s.left else slice(0, n)
                if s.timestamp:
                    hours = (np.datetime64(event_ns, "ns") - stamps.astype("datetime64[ns]")) / _NS_PER_HOUR
                    values = np.column_stack((values, hours))  # (n, F + 1)
                if values.shape[1]:
                    x, miss = s.norm.apply(values)
                    F = len(s.numeric)
                    if F:
                        num[rows, s.value_cols] = x[:, :F]
                    if len(s.miss_cols):
                        num[rows, s.miss_cols] = miss[:, s.miss_src]
                    if s.timestamp:
                        num[rows, s.hours_col] = x[:, F]
                for k, (steps, vocab) in enumerate(zip(seq_cats, s.vocabs, strict=True)):
                    cat[rows, k] = [OOV_INDEX if v is None else vocab.index.get(v, OOV_INDEX) for v in steps]
                mask[rows] = True
            nums.append(num)
            seq_cats_out.append(cat)
            masks.append(mask)
        return EncodedRow((profile_num, profile_cat, *nums, *seq_cats_out, *masks),
                          self._scenarios.get(str(scenario), -1))

    def _key_error(self, features: Mapping[str, Any], field: str) -> None:
        known = self.feature_columns
        unknown = sorted(set(features) - self._known, key=str)
        if unknown:
            raise RequestError(f"'{field}.{unknown[0]}' is not a feature of dataset '{self.spec.name}'; "
                               f"features: {known}", field=f"{field}.{unknown[0]}")
        missing = [c for c in known if c not in features]
        raise RequestError(f"'{field}.{missing[0]}' is missing; dataset '{self.spec.name}' needs features {known}",
                           field=f"{field}.{missing[0]}")

    def _check_closed(self, cats: list, seqs: list, field: str) -> None:
        """Unknown values of vocabularies without an OOV bucket, named (as `rows.check_vocabularies`)."""
        values: dict[str, tuple[list, _Vocab]] = {}
        for col, v, vocab in zip(self._profile_cats, cats, self._profile_vocabs, strict=True):
            values[col] = ([v], vocab)
        for s, (_, seq_cats, _, _) in zip(self._sequences, seqs, strict=True):
            for col, steps, vocab in zip(s.categorical, seq_cats, s.vocabs, strict=True):
                values[col] = (steps, vocab)
        for col in self._closed:
            steps, vocab = values[col]
            for v in steps:
                if v is not None and v not in vocab.index:
                    raise RequestError(f"'{field}.{col}': unknown category {v!r} and the model has no "
                                       f"out-of-vocabulary bucket; known: {vocab.known[:20]}", field=f"{field}.{col}")

    # ------------------------------------------------------------------ batches
    def stack(self, rows: Sequence[EncodedRow]) -> list[np.ndarray]:
        """The arrays of ``rows`` with a batch dimension first, in `input_names` order."""
        if len(rows) == 1:
            return [a[None] for a in rows[0].arrays]
        return [np.stack(parts) for parts in zip(*(r.arrays for r in rows), strict=True)]

    def batch(self, rows: Sequence[EncodedRow]) -> Batch:
        """``rows`` as the `Batch` of tensors that ``FittedTransforms.transform`` gives (label zeros)."""
        arrays = [torch.from_numpy(np.ascontiguousarray(a)) for a in self.stack(rows)]
        k = len(self._sequences)
        names = [s.name for s in self._sequences]
        return Batch(profile_num=arrays[0], profile_cat=arrays[1],
                     seq_num=dict(zip(names, arrays[2:2 + k], strict=True)),
                     seq_cat=dict(zip(names, arrays[2 + k:2 + 2 * k], strict=True)),
                     seq_mask=dict(zip(names, arrays[2 + 2 * k:], strict=True)),
                     label=torch.zeros(len(rows), dtype=torch.float32),
                     scenario=torch.tensor([r.scenario for r in rows], dtype=torch.int64))


def _iso(ns: int) -> str:
    import pandas as pd  # an error message only, never the hot path

    return pd.Timestamp(ns, unit="ns", tz="UTC").isoformat()
