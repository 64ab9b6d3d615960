"""A table set's rows prepared for training: joined point in time, validated and split per scenario."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from longtail.data.splits import assign_split
from longtail.data.tables import HOW_TO_MAKE, TableSet, TableSetError, cached_join
from longtail.spec import DatasetSpec, SpecError

__all__ = ["DataConfig", "PreparedData", "load_tables", "prepare"]


@dataclass(frozen=True)
class DataConfig:
    """Args:
    tables: the table-set folder (made by `longtail data import`, or `longtail data build` for the
        examples). No default: a command that needs a table set is given one.
    split_seed: seed of the test / validation splits.
    test_frac: test share of each scenario (the paper uses 20%).
    valid_frac: validation share of the remaining training rows.
    scenarios: restrict to these scenarios (empty: all).
    """

    tables: str = ""
    split_seed: int = 0
    test_frac: float = 0.2
    valid_frac: float = 0.1
    scenarios: tuple[str, ...] = ()


@dataclass
class PreparedData:
    """The joined, validated rows of a table set with their split."""

    spec: DatasetSpec
    frame: pd.DataFrame
    split: np.ndarray

    @property
    def scenarios(self) -> list[str]:
        sizes = self.frame[self.spec.scenario].astype(str).value_counts()
        return sorted(sizes.index, key=lambda s: (-sizes[s], s))

    def rows(self, split: str, scenarios: list[str] | None = None) -> pd.DataFrame:
        mask = self.split == split
        if scenarios is not None:
            mask &= self.frame[self.spec.scenario].astype(str).isin(scenarios).to_numpy()
        return self.frame[mask]


def load_tables(cfg: DataConfig) -> TableSet:
    """The table set ``cfg.tables`` names, checked before a run writes anything.

    Raises:
        TableSetError: ``data.tables`` is empty or not a complete table set; the message says how to
            import or build one.
    """
    if not str(cfg.tables).strip():
        raise TableSetError(f"data.tables is empty: no table set is the default. Pass --data DIR (or set "
                            f"data.tables); {HOW_TO_MAKE}")
    return TableSet.load(cfg.tables)


def prepare(cfg: DataConfig) -> PreparedData:
    """Load, join (point in time), validate and split a table set.

    With ``LONGTAIL_JOIN_CACHE`` set to a folder, the joined and validated frame is cached there
    (see `longtail.data.tables.cached_join`), so repeated preparation of the same set (HPO
    trials, benchmark runs) reads one parquet file instead of joining and validating again.

    Raises:
        TableSetError: no table set is named, or the folder is not a complete one (says how to make one).
        SpecError: when the joined rows do not satisfy the spec (names the column and the fix).
    """
    tables = load_tables(cfg)
    spec = tables.spec
    frame, validated = cached_join(tables)  # a cache only when LONGTAIL_JOIN_CACHE names one
    if cfg.scenarios:
        known = set(frame[spec.scenario].astype(str))
        unknown = sorted(set(cfg.scenarios) - known)
        if unknown:
            raise SpecError(f"data.scenarios: {unknown} not in column '{spec.scenario}'; known: {sorted(known)}")
        frame = frame[frame[spec.scenario].astype(str).isin(cfg.scenarios)].reset_index(drop=True)
    if not validated:
        spec.validate(frame)
    split = assign_split(frame[spec.scenario], seed=cfg.split_seed, test_frac=cfg.test_frac,
                         valid_frac=cfg.valid_frac)
    return PreparedData(spec, frame, split)


