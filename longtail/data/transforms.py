"""Fitted transforms: prepared dataframe -> tensors, fitted on training rows only.

Numeric features are normalised as the spec says (NaN of a nullable feature becomes 0 after
normalisation, i.e. the fitted mean, plus a missing-indicator input) and get up to ``N_EDGES``
quantile bin edges in that normalised space (what a piecewise-linear numeric embedding of the
model bins them by, `longtail.models.numeric`); categoricals map to
indices (0 padding, 1 out-of-vocabulary, known values from 2); sequences are padded to their
``max_length`` (left padding keeps the newest step last) with a mask, and a sequence with a
``timestamp_field`` gets a derived per-step input ``hours_before`` (event time − step time).

The fitted state is plain JSON (`to_dict` / `from_dict`): saved beside every model, loaded
without unpickling anything, and applied identically in training, evaluation and serving.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import torch

from longtail.data.tensors import OOV_INDEX, Batch, InputSchema, SequenceSchema
from longtail.spec import (
    CategoricalFeature,
    DatasetSpec,
    NumericFeature,
    SequenceSpec,
    SpecError,
    arrow_lists,
    flatten_steps,
    step_counts,
)

CLIP = 8.0  # normalised values are clipped to ±CLIP so one outlier cannot blow up a batch
HOURS_BEFORE = "hours_before"
N_EDGES = 16  # quantile bin edges per numeric input (fewer when the training values repeat)


@dataclass
class NumericStats:
    """Normalisation of one numeric input, and its bin edges.

    Attributes:
        edges: up to ``N_EDGES`` quantiles (0 to 1, evenly spaced) of the finite training values
            in the normalised space the model receives (after centre/scale and the ±CLIP clip),
            unique and sorted; empty when there was no finite training value, or in transforms
            fitted before edges existed.
    """

    normalization: str
    center: float = 0.0
    scale: float = 1.0
    nullable: bool = False
    edges: list[float] = field(default_factory=list)

    @classmethod
    def fit(cls, f: NumericFeature, values: np.ndarray) -> NumericStats:
        x = _pre(f.normalization, values.astype(float))
        x = x[np.isfinite(x)]
        if f.normalization == "none" or not len(x):
            stats = cls(f.normalization, 0.0, 1.0, f.nullable)
        elif f.normalization == "minmax":
            lo, hi = float(x.min()), float(x.max())
            stats = cls(f.normalization, lo, (hi - lo) or 1.0, f.nullable)
        else:
            std = float(x.std())
            stats = cls(f.normalization, float(x.mean()), std if std > 1e-12 else 1.0, f.nullable)
        stats.edges = _edges(np.clip((x - stats.center) / stats.scale, -CLIP, CLIP))
        return stats

    def apply(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Returns (normalised values with NaN -> 0, missing indicator)."""
        # in place on one float64 copy of the values (the same arithmetic as out of place, fewer arrays)
        x = _pre(self.normalization, values.astype(float))
        x -= self.center
        x /= self.scale
        missing = ~np.isfinite(x)
        x[missing] = 0.0
        # np.clip, without its NaN handling (there is none left): the same values, several times faster
        np.minimum(np.maximum(x, -CLIP, out=x), CLIP, out=x)
        return x.astype(np.float32), missing.astype(np.float32)


def _edges(x: np.ndarray) -> list[float]:
    """``N_EDGES`` evenly spaced quantiles of ``x``, as float32 values (what the model compares them with),
    unique and sorted; ``[]`` for no value."""
    if not len(x):
        return []
    q = np.quantile(x, np.linspace(0.0, 1.0, N_EDGES)).astype(np.float32)
    return [float(v) for v in np.unique(q)]


def _pre(normalization: str, x: np.ndarray) -> np.ndarray:
    """The transform before centring: sign(x)·log1p(|x|) for ``log_standard`` (a new array), else ``x`` itself."""
    if normalization == "log_standard":
        out = np.abs(x)
        np.log1p(out, out=out)
        out *= np.sign(x)
        return out
    return x


@dataclass
class Vocabulary:
    values: list[str]
    oov_bucket: bool = True

    @property
    def cardinality(self) -> int:
        return len(self.values) + 2

    @classmethod
    def fit(cls, c: CategoricalFeature, values: pd.Series | pa.Array) -> Vocabulary:
        """The vocabulary of ``values`` (a Series, or arrow strings: `_flat_categories` of a step field)."""
        if c.vocabulary:
            return cls(list(c.vocabulary), c.oov_bucket)
        if isinstance(values, pa.Array):  # strings counted in arrow, not as a Python object per step
            vc = pc.value_counts(values.drop_null())
            counts = pd.Series(vc.field("counts").to_numpy(), index=vc.field("values").to_pylist(), dtype=np.int64)
        else:
            counts = values.dropna().astype(str).value_counts()
        counts = counts[counts >= c.min_count]
        # stable order: most frequent first, ties by value, so a refit on the same data is identical
        ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: c.max_size]
        return cls([k for k, _ in ordered], c.oov_bucket)

    def apply(self, values: pd.Series | np.ndarray | pa.Array, column: str) -> np.ndarray:
        """Indices of ``values`` (a Series or array, or arrow strings: `_flat_categories` of a step field): known
        values from 2, missing and unknown ones at `OOV_INDEX`.

        Raises:
            SpecError: an unknown or missing value and no out-of-vocabulary bucket (names the column).
        """
        if isinstance(values, pa.Array):  # arrow strings: arrow's dictionary encoding gives the distinct values
            enc = pc.dictionary_encode(values)
            codes = pc.fill_null(enc.indices, -1).to_numpy().astype(np.int64, copy=False)
            idx, missing = self._by_distinct(codes, enc.dictionary.to_pylist()), codes < 0
        else:
            s = pd.Series(values, dtype=object)
            missing = s.isna().to_numpy()
            if pd.api.types.infer_dtype(s, skipna=True) == "string":
                # strings only: look up each distinct value once (sequence columns hold millions of steps)
                idx = self._by_distinct(*pd.factorize(s, use_na_sentinel=True))
            else:
                idx = pd.Index(self.values, dtype=object).get_indexer(s.astype(str))
        out = np.where((idx < 0) | missing, OOV_INDEX, idx + 2).astype(np.int64)
        if not self.oov_bucket and (out == OOV_INDEX).any():
            first = int(np.flatnonzero(out == OOV_INDEX)[0])
            bad = values[first].as_py() if isinstance(values, pa.Array) else s.iloc[first]
            raise SpecError(f"column '{column}': unknown category {bad!r} and oov_bucket is false; "
                            "add it to the vocabulary or set oov_bucket: true")
        return out

    def _by_distinct(self, codes: np.ndarray, uniques: Any) -> np.ndarray:
        """Vocabulary positions (-1: not in it) of values given as codes into their distinct ``uniques`` (-1: missing)."""
        found = pd.Index(self.values, dtype=object).get_indexer(pd.Index(uniques, dtype=object))
        return np.where(codes < 0, -1, found[np.maximum(codes, 0)] if len(found) else -1)


def _flat_categories(col: pd.Series) -> pa.Array | pd.Series:
    """A categorical step field's values, row after row: arrow strings for an arrow list column of strings (what
    `Vocabulary` counts and looks up without a Python object per step), else `flatten_steps` as a Series."""
    lists = arrow_lists(col)
    if lists is not None and pa.types.is_string(lists.type.value_type):
        return pc.list_flatten(lists).combine_chunks()
    return pd.Series(flatten_steps(col))


@dataclass
class FittedTransforms:
    """Transforms fitted on training rows of one dataset spec.

    Example:
        >>> tf = FittedTransforms.fit(spec, train_df)
        >>> batch = tf.transform(test_df)            # tensors for a model
        >>> tf2 = FittedTransforms.from_dict(json.loads(json.dumps(tf.to_dict())))
    """

    spec: DatasetSpec
    scenarios: list[str]
    numeric: dict[str, NumericStats]
    vocab: dict[str, Vocabulary]

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, spec: DatasetSpec, df: pd.DataFrame) -> FittedTransforms:
        """Fit normalisation statistics and vocabularies on ``df`` (training rows only)."""
        numeric: dict[str, NumericStats] = {}
        vocab: dict[str, Vocabulary] = {}
        for f in spec.profile_numeric:
            numeric[f.name] = NumericStats.fit(f, _num(df[f.name]))
        for c in spec.profile_categorical:
            vocab[c.name] = Vocabulary.fit(c, df[c.name])
        for s in spec.sequences:
            for f in s.numeric:
                numeric[s.column(f.name)] = NumericStats.fit(f, _num(flatten_steps(df[s.column(f.name)])))
            for c in s.categorical:
                vocab[s.column(c.name)] = Vocabulary.fit(c, _flat_categories(df[s.column(c.name)]))
            if s.timestamp_field:
                hours = _hours_before(df, spec, s)
                numeric[s.column(HOURS_BEFORE)] = NumericStats.fit(
                    NumericFeature(HOURS_BEFORE, "log_standard"), hours)
        scenarios = sorted(df[spec.scenario].astype(str).unique().tolist())
        return cls(spec, scenarios, numeric, vocab)

    # ------------------------------------------------------------------ schema
    def sequence_numeric_fields(self, s: SequenceSpec) -> list[str]:
        names = [f.name for f in s.numeric]
        return names + ([HOURS_BEFORE] if s.timestamp_field else [])

    def _column_edges(self, columns: list[tuple[str, bool]]) -> tuple[tuple[float, ...], ...]:
        """Bin edges per numeric input column, in the tensors' layout: each value, then its missing flag
        (no edges) if nullable; ``()`` when no column has edges (transforms fitted before edges existed)."""
        out: list[tuple[float, ...]] = []
        for name, nullable in columns:
            out.append(tuple(self.numeric[name].edges))
            if nullable:
                out.append(())
        return tuple(out) if any(out) else ()

    @property
    def schema(self) -> InputSchema:
        spec = self.spec
        n_prof = len(spec.profile_numeric) + sum(f.nullable for f in spec.profile_numeric)
        seqs = []
        for s in spec.sequences:
            n_num = len(self.sequence_numeric_fields(s)) + sum(f.nullable for f in s.numeric)
            cards = tuple(self.vocab[s.column(c.name)].cardinality for c in s.categorical)
            columns = [(s.column(f.name), f.nullable) for f in s.numeric]
            columns += [(s.column(HOURS_BEFORE), False)] if s.timestamp_field else []
            seqs.append(SequenceSchema(s.name, n_num, cards, s.max_length, self._column_edges(columns)))
        return InputSchema(
            n_profile_numeric=n_prof,
            profile_cat_cardinalities=tuple(self.vocab[c.name].cardinality for c in spec.profile_categorical),
            sequences=tuple(seqs),
            profile_numeric_edges=self._column_edges([(f.name, f.nullable) for f in spec.profile_numeric]),
        )

    def scenario_index(self, values: pd.Series) -> np.ndarray:
        index = {s: i for i, s in enumerate(self.scenarios)}
        return values.astype(str).map(lambda v: index.get(v, -1)).to_numpy(dtype=np.int64)

    # ------------------------------------------------------------------ transform
    def transform(self, df: pd.DataFrame, *, require_label: bool = True) -> Batch:
        """Tensors for the rows of ``df`` (a prepared dataframe).

        Args:
            df: rows with the spec's columns.
            require_label: when False (serving) the label tensor is zeros.
        """
        spec = self.spec
        missing = [c for c in spec.feature_columns + [spec.scenario, spec.event_timestamp] if c not in df.columns]
        if missing:
            raise SpecError(f"column '{missing[0]}': missing from the input; the spec '{spec.name}' needs it")
        n = len(df)
        cols = []
        for f in spec.profile_numeric:
            x, miss = self.numeric[f.name].apply(_num(df[f.name]))
            cols.append(x)
            if f.nullable:
                cols.append(miss)
        profile_num = np.stack(cols, axis=1) if cols else np.zeros((n, 0), np.float32)
        cats = [self.vocab[c.name].apply(df[c.name].to_numpy(), c.name) for c in spec.profile_categorical]
        profile_cat = np.stack(cats, axis=1) if cats else np.zeros((n, 0), np.int64)
        seq_num, seq_cat, seq_mask = {}, {}, {}
        for s in spec.sequences:
            seq_num[s.name], seq_cat[s.name], seq_mask[s.name] = self._sequence(df, s)
        if require_label:
            label = df[spec.label].to_numpy(dtype=np.float32)
        else:
            label = np.zeros(n, np.float32)
        return Batch(
            profile_num=torch.from_numpy(profile_num),
            profile_cat=torch.from_numpy(profile_cat),
            seq_num={k: torch.from_numpy(v) for k, v in seq_num.items()},
            seq_cat={k: torch.from_numpy(v) for k, v in seq_cat.items()},
            seq_mask={k: torch.from_numpy(v) for k, v in seq_mask.items()},
            label=torch.from_numpy(label),
            scenario=torch.from_numpy(self.scenario_index(df[spec.scenario])),
        )

    def _sequence(self, df: pd.DataFrame, s: SequenceSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n, T = len(df), s.max_length
        lens = step_counts(df[s.column(s.field_names[0])])
        keep = np.minimum(lens, T)  # the newest T steps are kept if a row is longer
        # flat index of every kept step: row r, step j (0 = oldest kept)
        rows = np.repeat(np.arange(n), keep)
        offsets = np.concatenate([[0], np.cumsum(keep)])
        j = np.arange(offsets[-1]) - np.repeat(offsets[:-1], keep)
        src_offsets = np.concatenate([[0], np.cumsum(lens)])
        src = np.repeat(src_offsets[:-1] + lens - keep, keep) + j
        pos = j + (np.repeat(T - keep, keep) if s.padding == "left" else 0)
        cell = rows * T + pos  # the kept steps' cells of the (n, T) grid, as flat indices (computed once)
        mask = np.zeros((n, T), dtype=bool)
        mask.reshape(-1)[cell] = True

        num_fields: list[np.ndarray] = []
        for f in s.numeric:
            x, miss = self.numeric[s.column(f.name)].apply(_num(flatten_steps(df[s.column(f.name)]))[src])
            num_fields.append(x)
            if f.nullable:
                num_fields.append(miss)
        if s.timestamp_field:
            x, _ = self.numeric[s.column(HOURS_BEFORE)].apply(_hours_before(df, self.spec, s)[src])
            num_fields.append(x)
        seq_num = np.zeros((n, T, len(num_fields)), np.float32)
        grid = seq_num.reshape(n * T, len(num_fields))  # a view: writes land in seq_num
        for k, x in enumerate(num_fields):
            grid[cell, k] = x
        seq_cat = np.zeros((n, T, len(s.categorical)), np.int64)
        grid = seq_cat.reshape(n * T, len(s.categorical))
        for k, c in enumerate(s.categorical):
            col = s.column(c.name)
            flat = _flat_categories(df[col])
            kept = flat.take(pa.array(src)) if isinstance(flat, pa.Array) else flat.to_numpy()[src]
            grid[cell, k] = self.vocab[col].apply(kept, col)
        return seq_num, seq_cat, mask

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec.to_dict(),
            "scenarios": list(self.scenarios),
            "numeric": {k: {**vars(v), "edges": list(v.edges)} for k, v in self.numeric.items()},
            "vocab": {k: {"values": v.values, "oov_bucket": v.oov_bucket} for k, v in self.vocab.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FittedTransforms:
        return cls(
            spec=DatasetSpec.from_dict(d["spec"]),
            scenarios=list(d["scenarios"]),
            numeric={k: NumericStats(**{**v, "edges": [float(e) for e in v.get("edges", [])]})
                     for k, v in d["numeric"].items()},
            vocab={k: Vocabulary(list(v["values"]), bool(v["oov_bucket"])) for k, v in d["vocab"].items()},
        )


def _num(values: pd.Series | np.ndarray) -> np.ndarray:
    if isinstance(values, np.ndarray) and values.dtype.kind in "fiub":  # already numbers: to_numeric is a no-op
        return values.astype(float)
    return pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def _hours_before(df: pd.DataFrame, spec: DatasetSpec, s: SequenceSpec) -> np.ndarray:
    col = df[s.column(s.timestamp_field)]
    lens = step_counts(col)
    if not lens.sum():
        return np.zeros(0)
    steps = utc_naive(flatten_steps(col, lens))
    events = np.repeat(utc_naive(df[spec.event_timestamp]), lens)
    return (events - steps) / np.timedelta64(1, "h")


def utc_naive(values: Any) -> np.ndarray:
    """datetime64[ns] in UTC without a zone (fast arithmetic; tz-aware values are converted, naive ones are UTC)."""
    if isinstance(values, np.ndarray) and values.dtype.kind == "M":  # naive already: only the unit to set
        return values.astype("datetime64[ns]")
    s = pd.to_datetime(pd.Series(values), utc=True)
    return s.dt.tz_localize(None).to_numpy(dtype="datetime64[ns]")
