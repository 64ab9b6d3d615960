"""What a user would train instead, on the same rows and features: LightGBM.

`lightgbm_global` trains one LightGBM over every scenario (the scenario index as a categorical
feature) on exactly the inputs the neural models see: the fitted transforms' tensors of the
prepared rows (`flatten`: profile numerics, then each sequence step by step with padding as
missing, the number of real steps, then every categorical index). Transforms are fitted on TRAIN
rows, the number of boosting rounds is chosen by early stopping on VALID rows, and TEST rows are
only predicted, for reports. The benchmarks (``bench/baselines.py``) and the pipeline report (the
``LightGBM`` reference) both call it.

Example:
    >>> result = lightgbm_global(data, rounds=300)
    >>> result.per_scenario[["scenario", "auc"]]     # test AUC per scenario
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from longtail.data.prepared import PreparedData
from longtail.data.splits import TEST, TRAIN, VALID
from longtail.data.tensors import Batch
from longtail.data.transforms import FittedTransforms
from longtail.metrics import auc, per_scenario_auc

__all__ = ["LightGBMResult", "flatten", "lightgbm_fit_predict", "lightgbm_global"]


def flatten(batch: Batch) -> tuple[np.ndarray, list[int]]:
    """The model inputs as one flat table: numerics, then categoricals (indices), step by step.

    Returns:
        (features (B, F) float32, positions of the categorical columns)
    """
    parts = [batch.profile_num.numpy()]
    cat_parts = [batch.profile_cat.numpy()]
    for name in batch.seq_num:
        B, T, _ = batch.seq_num[name].shape
        mask = batch.seq_mask[name].numpy()
        num = np.where(mask[..., None], batch.seq_num[name].numpy(), np.nan)  # padding is missing, not 0
        parts += [num.reshape(B, -1), mask.sum(1, keepdims=True).astype(np.float32)]
        cat_parts.append(batch.seq_cat[name].numpy().reshape(B, -1))
    num = np.concatenate(parts, axis=1)
    cat = np.concatenate(cat_parts, axis=1).astype(np.float32)
    return np.concatenate([num, cat], axis=1), list(range(num.shape[1], num.shape[1] + cat.shape[1]))


def lightgbm_fit_predict(x_tr, y_tr, x_va, y_va, x_pred: Sequence[np.ndarray], cats: list[int], rounds: int,
                         seed: int, num_threads: int = 2) -> tuple[list[np.ndarray], int]:
    """Train LightGBM (binary) on TRAIN, early-stopped on VALID, and predict each of ``x_pred``.

    Args:
        x_tr, y_tr / x_va, y_va: TRAIN and VALID features and labels (VALID with one class: no
            early stopping, every round is kept).
        x_pred: feature tables to predict.
        cats: positions of the categorical columns.
        rounds: the most boosting rounds.
        seed: the seed of LightGBM's bagging and feature sampling.
        num_threads: LightGBM's threads.

    Returns:
        ``(probabilities per table of x_pred, the number of rounds kept)``.
    """
    import lightgbm as lgb

    params = {"objective": "binary", "learning_rate": 0.05, "num_leaves": 31, "min_data_in_leaf": 20,
              "feature_fraction": 0.8, "bagging_fraction": 0.8, "bagging_freq": 1, "seed": seed,
              "num_threads": num_threads, "verbose": -1, "deterministic": True, "force_row_wise": True}
    if len(x_tr) < 200:
        params.update(min_data_in_leaf=5, num_leaves=7)
    dtr = lgb.Dataset(x_tr, y_tr, categorical_feature=cats, free_raw_data=False)
    callbacks = []
    valid_sets = []
    if len(np.unique(y_va)) == 2:
        valid_sets = [lgb.Dataset(x_va, y_va, categorical_feature=cats, reference=dtr)]
        callbacks = [lgb.early_stopping(30, verbose=False)]
    booster = lgb.train(params, dtr, num_boost_round=rounds, valid_sets=valid_sets, callbacks=callbacks)
    best = booster.best_iteration or None
    return [booster.predict(x, num_iteration=best) for x in x_pred], int(best or booster.current_iteration())


@dataclass
class LightGBMResult:
    """LightGBM global on a set of scenarios.

    Attributes:
        per_scenario: one row per scenario: ``scenario, n, positives, auc`` (TEST, for reports) and
            ``valid_auc`` (VALID; what early stopping saw).
        rounds: boosting rounds kept (chosen on VALID rows).
        seconds: training and prediction time.
        settings: rounds asked for, seed, threads, scenarios.
    """

    per_scenario: pd.DataFrame
    rounds: int
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (NaN AUCs as ``None``)."""
        rows = self.per_scenario.astype(object).where(self.per_scenario.notna(), None).to_dict("records")
        return {"per_scenario": rows, "rounds": self.rounds, "seconds": self.seconds, "settings": self.settings}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LightGBMResult:
        frame = pd.DataFrame(d["per_scenario"])
        for c in ("auc", "valid_auc"):
            if c in frame:
                frame[c] = pd.to_numeric(frame[c], errors="coerce")
        return cls(frame, int(d["rounds"]), float(d["seconds"]), dict(d.get("settings", {})))


def lightgbm_global(data: PreparedData, scenarios: Sequence[str] | None = None, *, rounds: int = 1000, seed: int = 0,
                    num_threads: int = 2) -> LightGBMResult:
    """One LightGBM over every scenario, the scenario as a categorical feature (see the module docstring).

    Args:
        data: prepared rows with their split.
        scenarios: the scenarios to train and report on (default: all of ``data``).
        rounds: the most boosting rounds (early stopping on VALID picks how many are kept).
        seed: LightGBM's seed.
        num_threads: LightGBM's threads.

    Returns:
        The `LightGBMResult`.

    Raises:
        ValueError: there are no TRAIN rows, or they hold a single class.
    """
    t0 = time.perf_counter()
    spec = data.spec
    scen = list(scenarios) if scenarios is not None else data.scenarios
    rows = {s: data.rows(s, scen) for s in (TRAIN, VALID, TEST)}
    y = {s: rows[s][spec.label].to_numpy() for s in rows}
    if not len(y[TRAIN]) or len(np.unique(y[TRAIN])) < 2:
        raise ValueError(f"LightGBM global: the TRAIN rows of {scen} hold {len(y[TRAIN])} row(s) of "
                         f"{len(np.unique(y[TRAIN]))} class(es); it needs both classes")
    tf = FittedTransforms.fit(spec, rows[TRAIN])
    feats = {s: flatten(tf.transform(rows[s])) for s in rows}
    cats = feats[TRAIN][1]
    scenario_col = {s: tf.scenario_index(rows[s][spec.scenario]).astype(np.float32)[:, None] for s in rows}
    x = {s: np.concatenate([feats[s][0], scenario_col[s]], axis=1) for s in rows}
    (p_test, p_valid), kept = lightgbm_fit_predict(x[TRAIN], y[TRAIN], x[VALID], y[VALID], [x[TEST], x[VALID]],
                                                   cats + [x[TRAIN].shape[1] - 1], rounds, seed, num_threads)
    per = per_scenario_auc(rows[TEST][spec.scenario], y[TEST], p_test)
    valid_scen = rows[VALID][spec.scenario].astype(str).to_numpy()
    per["valid_auc"] = [auc(y[VALID][valid_scen == s], p_valid[valid_scen == s]) for s in per["scenario"]]
    per["valid_auc"] = pd.to_numeric(per["valid_auc"], errors="coerce")
    return LightGBMResult(per.drop(columns="note"), kept, time.perf_counter() - t0,
                          {"rounds": rounds, "seed": seed, "num_threads": num_threads, "scenarios": scen})
