"""One scenario's rows as tensors, transformed once for a whole onboarding.

θ0, every θu fine-tuned from it and their light models share θ0's fitted transforms, so a
scenario's rows are transformed once: its TRAIN rows (support and query sets are index views of
them), VALID and TEST rows. Transfer sets (other scenarios' rows, labelled by θu for distillation)
are drawn from the same prepared data on demand; each draw is transformed once and kept.

Example:
    >>> rows = ScenarioRows.build(data, "OO", transforms, query_frac=0.3, seed=0)
    >>> len(rows.support) + len(rows.query) == len(rows.train)
    True
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from longtail.data.prepared import PreparedData
from longtail.data.splits import TEST, TRAIN, VALID, support_query
from longtail.data.tensors import Batch
from longtail.data.transforms import FittedTransforms

__all__ = ["ScenarioRows"]


@dataclass
class ScenarioRows:
    """A scenario's rows under one set of fitted transforms.

    Attributes:
        scenario: the scenario.
        data: the prepared rows it was built from (the scenario's and, for transfer sets and
            references, the other scenarios').
        transforms: the fitted transforms of every tensor here (θ0's).
        train: every TRAIN row of the scenario, in the prepared data's order.
        valid / test: its VALID and TEST rows (``None`` when it has none).
        support_idx / query_idx: positions in ``train`` of the support and query sets (Fig. 5).
    """

    scenario: str
    data: PreparedData
    transforms: FittedTransforms
    train: Batch
    valid: Batch | None
    test: Batch | None
    support_idx: torch.Tensor
    query_idx: torch.Tensor
    _samples: dict[tuple[str, int, int], Batch | None] = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, data: PreparedData, scenario: str, transforms: FittedTransforms, *, query_frac: float,
              seed: int) -> ScenarioRows:
        """Transform the scenario's rows once and split its TRAIN rows into support and query sets.

        Args:
            data: prepared rows with their split, holding at least this scenario's.
            scenario: the scenario.
            transforms: the fitted transforms (θ0's).
            query_frac: share of the TRAIN rows held out as the query set.
            seed: seed of the support/query split.

        Raises:
            ValueError: the scenario has fewer than 2 TRAIN rows (no support/query split) or no TEST rows.
        """
        frames = {s: data.rows(s, [scenario]) for s in (TRAIN, VALID, TEST)}
        n_train = len(frames[TRAIN])
        if n_train < 2:
            raise ValueError(f"scenario {scenario!r} has {n_train} training rows; at least 2 are needed to split "
                             "support and query sets")
        if not len(frames[TEST]):
            raise ValueError(f"scenario {scenario!r} has no test rows; it needs train and test rows "
                             f"({n_train} train rows)")
        support, query = support_query(n_train, seed=seed, scenario=scenario, query_frac=query_frac)
        return cls(scenario, data, transforms, transforms.transform(frames[TRAIN]),
                   transforms.transform(frames[VALID]) if len(frames[VALID]) else None,
                   transforms.transform(frames[TEST]),
                   torch.as_tensor(support, dtype=torch.long), torch.as_tensor(query, dtype=torch.long))

    @property
    def support(self) -> Batch:
        """The support set ``D_u^s`` (θu is fine-tuned on it)."""
        return self.train.index(self.support_idx)

    @property
    def query(self) -> Batch:
        """The query set ``D_u^q`` (its loss is θ0's feedback)."""
        return self.train.index(self.query_idx)

    @property
    def test_labels(self) -> np.ndarray:
        return self.test.label.numpy() if self.test is not None else np.zeros(0)

    def frame(self, split: str) -> pd.DataFrame:
        """The scenario's raw prepared rows of one split (for a reference model with transforms of its own)."""
        return self.data.rows(split, [self.scenario])

    def others(self, split: str, n_rows: int, seed: int) -> Batch | None:
        """Up to ``n_rows`` rows of ``split`` of every *other* scenario, drawn uniformly, as tensors.

        The draw is seeded by ``seed`` and the scenario's name (each scenario gets its own
        reproducible sample) and transformed once; the same arguments return the same batch.

        Returns:
            The rows with their own labels, or ``None`` when there are none (or ``n_rows`` is 0).
        """
        key = (split, int(n_rows), int(seed))
        if key not in self._samples:
            self._samples[key] = self._draw(split, n_rows, seed)
        return self._samples[key]

    def _draw(self, split: str, n_rows: int, seed: int) -> Batch | None:
        if n_rows <= 0:
            return None
        rows = self.data.rows(split)
        rows = rows[rows[self.data.spec.scenario].astype(str) != self.scenario]
        if not len(rows):
            return None
        rng = np.random.default_rng([seed, zlib.crc32(self.scenario.encode())])
        take = np.sort(rng.choice(len(rows), size=min(n_rows, len(rows)), replace=False))
        return self.transforms.transform(rows.iloc[take])
