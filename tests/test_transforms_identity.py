"""The transforms' vectorised helpers give exactly what the plain versions give (same arrays, same dtypes).

Serving reproduces `FittedTransforms.transform` bit for bit, so these fast paths must not change a
single value: each is compared with the straightforward version on awkward inputs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from longtail.data.transforms import CLIP, NumericStats, Vocabulary, _flat_categories, _num
from longtail.spec import CategoricalFeature, SpecError, arrow_lists, flatten_steps, step_counts


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.kind == "O":
        return all(x is y or x == y or (pd.isna(x) and pd.isna(y)) for x, y in zip(a, b, strict=True))
    return np.array_equal(a, b, equal_nan=a.dtype.kind == "f")


@pytest.mark.unit
@pytest.mark.parametrize("rows", [
    [np.array([1.0, 2.0]), np.array([]), np.array([3.0])],
    [[], [], []],
    [np.array([1, 2]), [], np.array([3.5])],  # int and float rows (and a python list)
    [np.array(["a", "b"]), np.array([], dtype=object), np.array(["c"])],
    [np.array(["2013-01-01T00:00"], dtype="datetime64[ns]"), [], np.array(["2013-01-02"], dtype="datetime64[ns]")],
    [np.array([1.0, np.nan]), [None, 2.0]],  # mixed element types: the object fallback
    [],
])
def test_flatten_steps_equals_the_plain_loop(rows):
    col = pd.Series(rows, dtype=object)
    parts = [v for v in col if len(v)]
    try:
        plain = np.concatenate(parts) if parts else np.array([], dtype=float)
    except (ValueError, TypeError):
        plain = np.concatenate([np.asarray(v, dtype=object) for v in parts])
    assert _same(flatten_steps(col), plain)
    assert _same(flatten_steps(col.to_numpy()), plain)
    assert _same(flatten_steps(col, step_counts(col)), plain)
    assert list(step_counts(col)) == [len(v) for v in rows]


@pytest.mark.unit
def test_num_and_clip_are_unchanged():
    for values in (np.array([1, 2, 3]), np.array([1.5, np.nan, -np.inf]), np.array([True, False]),
                   np.array(["1", "x", None], dtype=object)):
        plain = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        assert _same(_num(values), plain)
    stats = NumericStats("standard", 0.5, 0.01, True)
    x = np.array([-1e9, -0.0, 0.0, 0.5, np.nan, np.inf, 1e9])
    got, miss = stats.apply(x)
    z = (x - 0.5) / 0.01
    expect = np.clip(np.where(~np.isfinite(z), 0.0, z), -CLIP, CLIP).astype(np.float32)
    assert _same(got, expect) and _same(miss, (~np.isfinite(z)).astype(np.float32))


@pytest.mark.unit
def test_vocabulary_lookup_by_distinct_values_is_unchanged():
    vocab = Vocabulary(["JFK", "LGA", "1"], oov_bucket=True)
    cases = [np.array(["LGA", "JFK", "EWR", None, "LGA"], dtype=object),
             np.array([1, "1", 2.0, None, np.nan], dtype=object),  # not all strings: the per-value path
             np.array([], dtype=object)]
    for values in cases:
        s = pd.Series(values, dtype=object)
        idx = pd.Index(vocab.values, dtype=object).get_indexer(s.astype(str))
        plain = np.where((idx < 0) | s.isna().to_numpy(), 1, idx + 2).astype(np.int64)
        assert _same(vocab.apply(values, "c"), plain)


def _arrow_column(rows: list, type_: pa.DataType) -> pd.Series:
    return pd.Series(pd.arrays.ArrowExtensionArray(pa.array(rows, type_)))


@pytest.mark.unit
@pytest.mark.parametrize(("rows", "type_"), [
    ([[1.0, 2.0], [], [3.0, None]], pa.list_(pa.float64())),  # a null step: NaN, as in the cells parquet gives
    ([[1, 2], [], [3]], pa.list_(pa.int64())),
    ([["a", None], [], ["c"]], pa.list_(pa.string())),
    ([[pd.Timestamp("2013-01-01")], [], [pd.Timestamp("2013-01-02 05:00")]], pa.list_(pa.timestamp("ns"))),
    ([[], []], pa.list_(pa.float64())),
    ([], pa.list_(pa.float64())),
])
def test_arrow_list_columns_flatten_and_count_as_their_cells_do(rows, type_):
    """A sequence column read as arrow lists gives what the same column of numpy cells gives."""
    col = _arrow_column(rows, type_)
    assert arrow_lists(col) is not None
    cells = pd.Series(list(col.to_numpy()), dtype=object)  # what parquet gave before: a numpy array per row
    assert list(step_counts(col)) == list(step_counts(cells)) == [len(r) for r in rows]
    assert _same(flatten_steps(col), flatten_steps(cells))
    assert _same(flatten_steps(col, step_counts(col)), flatten_steps(cells))


@pytest.mark.unit
def test_vocabularies_of_arrow_strings_equal_the_object_path():
    rows = [["LGA", "JFK", None], [], ["EWR", "LGA", "LGA"], ["JFK"]]
    col = _arrow_column(rows, pa.list_(pa.string()))
    cells = pd.Series(list(col.to_numpy()), dtype=object)
    flat = _flat_categories(col)
    assert isinstance(flat, pa.Array)
    for c in (CategoricalFeature("origin"), CategoricalFeature("origin", min_count=2),
              CategoricalFeature("origin", max_size=1)):
        fitted = Vocabulary.fit(c, flat)
        assert fitted == Vocabulary.fit(c, _flat_categories(cells))
        assert _same(fitted.apply(flat, "c"), fitted.apply(flatten_steps(cells), "c"))
    closed = Vocabulary(["LGA", "JFK"], oov_bucket=False)
    for values in (flat, flatten_steps(cells)):
        with pytest.raises(SpecError, match=r"column 'c': unknown category None and oov_bucket is false"):
            closed.apply(values, "c")
