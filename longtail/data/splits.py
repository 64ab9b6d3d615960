"""Reproducible splits: test per scenario, validation from train, support/query of a scenario.

Every split is stratified by scenario and drawn from a generator seeded by (seed, the split's
name, the scenario's name), so adding a scenario never changes another scenario's split and the
same seed always gives the same rows. Splits are saved beside their outputs (`save_splits`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from longtail.io import atomic_path

TEST, TRAIN, VALID = "test", "train", "valid"
SUPPORT, QUERY = "support", "query"


def _rng(seed: int, purpose: str, scenario: str) -> np.random.Generator:
    h = int.from_bytes(hashlib.sha256(f"{purpose}/{scenario}".encode()).digest()[:8], "little")
    return np.random.default_rng([seed, h])


def assign_split(scenarios: pd.Series, *, seed: int, test_frac: float = 0.2, valid_frac: float = 0.1) -> np.ndarray:
    """Label each row train / valid / test, per scenario.

    ``test_frac`` of each scenario's rows (at least one row when the scenario has two or more)
    go to test, as in the paper's experiments; ``valid_frac`` of the remaining rows go to the
    validation split used for early stopping and NAS.

    Args:
        scenarios: the scenario of each row.
        seed: split seed.

    Returns:
        An array of split names, aligned with ``scenarios``.
    """
    if not 0 < test_frac < 1 or not 0 <= valid_frac < 1:
        raise ValueError(f"test_frac must be in (0,1) and valid_frac in [0,1); got {test_frac}, {valid_frac}")
    out = np.full(len(scenarios), TRAIN, dtype=object)
    values = scenarios.astype(str).to_numpy()
    for scen in sorted(set(values)):
        idx = np.flatnonzero(values == scen)
        perm = _rng(seed, "test", scen).permutation(idx)
        n_test = int(round(len(idx) * test_frac))
        if len(idx) >= 2:
            n_test = min(max(n_test, 1), len(idx) - 1)
        out[perm[:n_test]] = TEST
        rest = perm[n_test:]
        n_valid = int(round(len(rest) * valid_frac))
        if valid_frac > 0 and len(rest) >= 4:
            n_valid = max(n_valid, 1)
        out[_rng(seed, "valid", scen).permutation(rest)[:n_valid]] = VALID
    return out


def support_query(n_rows: int, *, seed: int, scenario: str, query_frac: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Split a scenario's training rows into support and query positions (paper Fig. 5).

    Returns:
        (support positions, query positions), both sorted, over ``range(n_rows)``.
    """
    if not 0 < query_frac < 1:
        raise ValueError(f"query_frac must be in (0,1), got {query_frac}")
    perm = _rng(seed, "query", scenario).permutation(n_rows)
    n_query = min(max(int(round(n_rows * query_frac)), 1), n_rows - 1) if n_rows >= 2 else 0
    return np.sort(perm[n_query:]), np.sort(perm[:n_query])


def save_splits(path: str | Path, keys: pd.DataFrame, split: np.ndarray, *, seed: int) -> Path:
    """Save the split of each row (its identifying keys plus the split name) as parquet, atomically."""
    df = keys.reset_index(drop=True).copy()
    df["split"] = split
    df["seed"] = seed
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)
    return Path(path)


def draw_protocol(scenarios: list[str], n_initial: int, seed: int) -> tuple[list[str], list[str]]:
    """The paper's protocol: ``n_initial`` scenarios drawn at random, and a random arrival order.

    Returns:
        (initial scenarios, arrival order of all scenarios), both from one generator seeded by ``seed``.
    """
    rng = np.random.default_rng(seed)
    pool = sorted(scenarios)
    initial = sorted(str(s) for s in rng.choice(pool, size=min(n_initial, len(pool)), replace=False))
    arrival = [str(s) for s in rng.permutation(pool)]
    return initial, arrival
