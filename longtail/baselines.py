"""What a user would train instead, on the same rows and features: LightGBM, tuned LightGBM, an MLP.

`lightgbm_global` trains one LightGBM over every scenario (the scenario index as a categorical
feature) on exactly the inputs the neural models see: the fitted transforms' tensors of the
prepared rows (`flatten`: profile numerics, then each sequence step by step with padding as
missing, the number of real steps, then every categorical index). Transforms are fitted on TRAIN
rows, the number of boosting rounds is chosen by early stopping on VALID rows, and TEST rows are
only predicted, for reports. The benchmarks (``bench/baselines.py``) and the pipeline report (the
``LightGBM`` reference) both call it.

Two stronger references on exactly the same flattened inputs and the same TRAIN / VALID / TEST
protocol (TRAIN fits, VALID chooses, TEST is only predicted, once, for the report):

* `lightgbm_global_tuned`: the same global LightGBM with its hyperparameters chosen by TPE on the
  VALID AUC (`LGBM_SPACE`), through the project's HPO strategies (``longtail.hpo``);
* `mlp_global`: a plain MLP (two hidden layers) on the flat table, numerics with missing
  indicators, every categorical column (the scenario too) embedded, trained by `longtail.train.fit`
  (AdamW, cosine schedule), keeping the epoch with the best VALID AUC.

Example:
    >>> result = lightgbm_global(data, rounds=300)
    >>> result.per_scenario[["scenario", "auc"]]     # test AUC per scenario
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from longtail.data.prepared import PreparedData
from longtail.data.splits import TEST, TRAIN, VALID
from longtail.data.tensors import Batch
from longtail.data.transforms import FittedTransforms
from longtail.metrics import auc, per_scenario_auc

__all__ = ["LGBM_SPACE", "GlobalFeatures", "LightGBMResult", "MLPResult", "TunedLightGBMResult", "flatten", "global_features",
           "lightgbm_fit_predict", "lightgbm_global", "lightgbm_global_tuned", "mlp_global"]


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
    """Train LightGBM (binary, `lightgbm_train`'s default parameters) on TRAIN, early-stopped on
    VALID, and predict each of ``x_pred``.

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
    booster, kept = lightgbm_train(x_tr, y_tr, x_va, y_va, cats, rounds, seed, num_threads)
    return [booster.predict(x, num_iteration=kept) for x in x_pred], kept


def lightgbm_train(x_tr, y_tr, x_va, y_va, cats: list[int], rounds: int, seed: int, num_threads: int = 2,
                   params: dict[str, Any] | None = None) -> tuple[Any, int]:
    """Train LightGBM (binary) on TRAIN, early-stopped on VALID (30 rounds without a better VALID
    log-loss; VALID with one class: every round is kept).

    Args:
        params: LightGBM parameters over the defaults (learning_rate 0.05, num_leaves 31,
            min_data_in_leaf 20, feature_fraction 0.8, bagging 0.8 every round; fewer than 200
            TRAIN rows: num_leaves 7, min_data_in_leaf 5 unless ``params`` sets them).

    Returns:
        ``(the booster, the number of rounds kept)``.
    """
    import lightgbm as lgb

    base = {"objective": "binary", "learning_rate": 0.05, "num_leaves": 31, "min_data_in_leaf": 20,
            "feature_fraction": 0.8, "bagging_fraction": 0.8, "bagging_freq": 1, "seed": seed,
            "num_threads": num_threads, "verbose": -1, "deterministic": True, "force_row_wise": True}
    if len(x_tr) < 200:
        base.update(min_data_in_leaf=5, num_leaves=7)
    base.update(params or {})
    dataset_params = {k: base[k] for k in ("max_bin",) if k in base}
    dtr = lgb.Dataset(x_tr, y_tr, categorical_feature=cats, free_raw_data=False, params=dataset_params or None)
    callbacks = []
    valid_sets = []
    if len(np.unique(y_va)) == 2:
        valid_sets = [lgb.Dataset(x_va, y_va, categorical_feature=cats, reference=dtr)]
        callbacks = [lgb.early_stopping(30, verbose=False)]
    booster = lgb.train(base, dtr, num_boost_round=rounds, valid_sets=valid_sets, callbacks=callbacks)
    best = booster.best_iteration or None
    return booster, int(best or booster.current_iteration())


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
                    num_threads: int = 2, features: GlobalFeatures | None = None) -> LightGBMResult:
    """One LightGBM over every scenario, the scenario as a categorical feature (see the module docstring).

    Args:
        data: prepared rows with their split.
        scenarios: the scenarios to train and report on (default: all of ``data``).
        rounds: the most boosting rounds (early stopping on VALID picks how many are kept).
        seed: LightGBM's seed.
        num_threads: LightGBM's threads.
        features: `global_features(data, scenarios)` already built (several methods share one).

    Returns:
        The `LightGBMResult`.

    Raises:
        ValueError: there are no TRAIN rows, or they hold a single class.
    """
    t0 = time.perf_counter()
    g = features or global_features(data, scenarios, "LightGBM global")
    (p_test, p_valid), kept = lightgbm_fit_predict(g.x[TRAIN], g.y[TRAIN], g.x[VALID], g.y[VALID],
                                                   [g.x[TEST], g.x[VALID]], g.cats, rounds, seed, num_threads)
    return LightGBMResult(g.per_scenario(p_test, p_valid), kept, time.perf_counter() - t0,
                          {"rounds": rounds, "seed": seed, "num_threads": num_threads, "scenarios": g.scenarios})


@dataclass
class GlobalFeatures:
    """The flat table of every split (`flatten` plus the scenario index as the last column)."""

    scenarios: list[str]
    rows: dict[str, pd.DataFrame]
    y: dict[str, np.ndarray]
    x: dict[str, np.ndarray]
    cats: list[int]  # the categorical columns, the scenario's (the last) included
    scenario_column: str

    def per_scenario(self, p_test: np.ndarray, p_valid: np.ndarray) -> pd.DataFrame:
        """``scenario, n, positives, auc`` (TEST) and ``valid_auc`` (VALID) per scenario."""
        per = per_scenario_auc(self.rows[TEST][self.scenario_column], self.y[TEST], p_test)
        valid_scen = self.rows[VALID][self.scenario_column].astype(str).to_numpy()
        per["valid_auc"] = [auc(self.y[VALID][valid_scen == s], p_valid[valid_scen == s]) for s in per["scenario"]]
        per["valid_auc"] = pd.to_numeric(per["valid_auc"], errors="coerce")
        return per.drop(columns="note")


def global_features(data: PreparedData, scenarios: Sequence[str] | None = None,
                    who: str = "LightGBM global") -> GlobalFeatures:
    """The flat table of every split of ``scenarios``: transforms fitted on TRAIN, `flatten`, the scenario index."""
    spec = data.spec
    scen = list(scenarios) if scenarios is not None else data.scenarios
    rows = {s: data.rows(s, scen) for s in (TRAIN, VALID, TEST)}
    y = {s: rows[s][spec.label].to_numpy() for s in rows}
    if not len(y[TRAIN]) or len(np.unique(y[TRAIN])) < 2:
        raise ValueError(f"{who}: the TRAIN rows of {scen} hold {len(y[TRAIN])} row(s) of "
                         f"{len(np.unique(y[TRAIN]))} class(es); it needs both classes")
    tf = FittedTransforms.fit(spec, rows[TRAIN])
    feats = {s: flatten(tf.transform(rows[s])) for s in rows}
    cats = feats[TRAIN][1]
    scenario_col = {s: tf.scenario_index(rows[s][spec.scenario]).astype(np.float32)[:, None] for s in rows}
    x = {s: np.concatenate([feats[s][0], scenario_col[s]], axis=1) for s in rows}
    return GlobalFeatures(scen, rows, y, x, cats + [x[TRAIN].shape[1] - 1], spec.scenario)


# ---------------------------------------------------------------------- LightGBM tuned by TPE
# The search space of `lightgbm_global_tuned` (``lgbm.<name>`` sets LightGBM's parameter <name>).
LGBM_SPACE: dict[str, Any] = {
    "name": "lgbm_global",
    "description": "LightGBM global (binary): tree size, step, leaf size, sampling, regularisation, binning",
    "hyperparameters": [
        {"name": "lgbm.num_leaves", "type": "int", "low": 7, "high": 255},
        {"name": "lgbm.learning_rate", "type": "logfloat", "low": 0.01, "high": 0.3},
        {"name": "lgbm.min_data_in_leaf", "type": "int", "low": 5, "high": 300},
        {"name": "lgbm.feature_fraction", "type": "float", "low": 0.3, "high": 1.0, "step": 0.05},
        {"name": "lgbm.bagging_fraction", "type": "float", "low": 0.5, "high": 1.0, "step": 0.05},
        {"name": "lgbm.lambda_l1", "type": "logfloat", "low": 1.0e-3, "high": 10.0},
        {"name": "lgbm.lambda_l2", "type": "logfloat", "low": 1.0e-3, "high": 10.0},
        {"name": "lgbm.max_bin", "values": [63, 127, 255, 511]},
        {"name": "lgbm.cat_smooth", "type": "logfloat", "low": 1.0, "high": 100.0},
    ],
}


@dataclass
class TunedLightGBMResult(LightGBMResult):
    """`lightgbm_global_tuned`: the best trial's model on TEST.

    Attributes:
        best_params: LightGBM parameters of the best trial (by VALID AUC).
        trials: one record per trial: ``trial, params, valid_auc`` (None: failed), ``rounds``
            (kept by early stopping), ``seconds``, ``reason`` (why it failed, else "").
    """

    best_params: dict[str, Any] = field(default_factory=dict)
    trials: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "best_params": self.best_params, "trials": self.trials}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TunedLightGBMResult:
        base = LightGBMResult.from_dict(d)
        return cls(base.per_scenario, base.rounds, base.seconds, base.settings, dict(d.get("best_params", {})),
                   list(d.get("trials", [])))


def lightgbm_global_tuned(data: PreparedData, scenarios: Sequence[str] | None = None, *, trials: int = 20,
                          seed: int = 0, rounds: int = 1000, num_threads: int = 2, algorithm: str = "tpe",
                          space: dict[str, Any] | None = None,
                          log: Callable[[str], None] | None = None,
                          features: GlobalFeatures | None = None) -> TunedLightGBMResult:
    """LightGBM global (as `lightgbm_global`) with its hyperparameters searched on VALID.

    Each trial trains on TRAIN with the proposed parameters (over `lightgbm_train`'s defaults),
    early-stopped on VALID, and is scored by the AUC of all VALID rows together; the strategy
    (``longtail.hpo.algorithms``, ask/tell) proposes the next. The best trial's booster is the
    one kept: TEST is predicted once, by it, after the search.

    The search runs in-process through the strategy's ask/tell interface rather than through
    `longtail.hpo.runner.TrialRunner`: the runner starts a fresh process per trial (a spawned
    interpreter, or a command) that would have to rebuild or unpickle the flat feature tables each
    time, and its parallel slots, median stopping and journal add nothing to a LightGBM that
    already uses every thread. The budget means the same: ``trials`` asks, each told its value.

    Args:
        data: prepared rows with their split.
        scenarios: the scenarios to train and report on (default: all of ``data``).
        trials: how many parameter sets to try (at least 1).
        seed: the strategy's seed and LightGBM's.
        rounds: the most boosting rounds of each trial (early stopping on VALID picks how many).
        num_threads: LightGBM's threads.
        algorithm: a registered strategy (``tpe``; ``random``, ``racos``, ``cmaes`` also work).
        space: a search space in `longtail.hpo.space.SearchSpace.from_dict` form whose targets are
            ``lgbm.<LightGBM parameter>`` (default `LGBM_SPACE`).
        log: called with one line per trial.
        features: `global_features(data, scenarios)` already built.

    Returns:
        The `TunedLightGBMResult` (per-scenario AUC, best parameters, every trial).

    Raises:
        ValueError: ``trials`` below 1, a space target outside ``lgbm.``, or TRAIN rows of a
            single class.
    """
    from longtail.hpo.algorithms import create_algorithm
    from longtail.hpo.space import SearchSpace

    if trials < 1:
        raise ValueError(f"lightgbm_global_tuned: trials is {trials}; use 1 or more (default 20)")
    t0 = time.perf_counter()
    search_space = SearchSpace.from_dict(space if space is not None else LGBM_SPACE)
    bad = [p.target for p in search_space if not p.target.startswith("lgbm.")]
    if bad:
        raise ValueError(f"lightgbm_global_tuned: space targets {bad} are not LightGBM parameters; "
                         "name them lgbm.<parameter>, e.g. lgbm.num_leaves")
    g = features or global_features(data, scenarios, "LightGBM global tuned")
    alg = create_algorithm(algorithm, search_space, seed=seed, max_trials=trials)
    history: list[dict[str, Any]] = []
    best: tuple[float, Any, int, dict[str, Any]] | None = None
    for _ in range(trials):
        suggestion = alg.ask()
        if suggestion is None:  # a finite space is exhausted
            break
        params = {k.removeprefix("lgbm."): v for k, v in search_space.overrides(suggestion.params).items()}
        t = time.perf_counter()
        value, kept, reason = None, 0, ""
        try:
            booster, kept = lightgbm_train(g.x[TRAIN], g.y[TRAIN], g.x[VALID], g.y[VALID], g.cats, rounds, seed,
                                           num_threads, params)
            value = auc(g.y[VALID], booster.predict(g.x[VALID], num_iteration=kept))
        except Exception as e:  # noqa: BLE001 - a failed trial is recorded and the search goes on
            reason = f"{type(e).__name__}: {e}"
        alg.tell(suggestion.trial_id, value)
        history.append({"trial": suggestion.trial_id, "params": params, "valid_auc": value, "rounds": kept,
                        "seconds": time.perf_counter() - t, "reason": reason})
        if value is not None and (best is None or value > best[0]):
            best = (value, booster, kept, params)
        if log:
            log(f"trial {suggestion.trial_id}: valid AUC {value if value is None else round(value, 4)}, "
                f"{kept} rounds, {params}")
    if best is None:
        raise RuntimeError(f"lightgbm_global_tuned: every one of {len(history)} trials failed or VALID holds one "
                           f"class (first reason: {history[0]['reason'] if history else 'no trial'}); check the "
                           "space and the VALID rows")
    _, booster, kept, params = best
    p_test = booster.predict(g.x[TEST], num_iteration=kept)
    p_valid = booster.predict(g.x[VALID], num_iteration=kept)
    return TunedLightGBMResult(g.per_scenario(p_test, p_valid), kept, time.perf_counter() - t0,
                               {"rounds": rounds, "seed": seed, "num_threads": num_threads, "trials": trials,
                                "algorithm": algorithm, "space": search_space.to_dict(), "scenarios": g.scenarios},
                               params, history)


# ---------------------------------------------------------------------- MLP on the flat table
@dataclass
class _FlatInputs:
    """How `mlp_global` turns the flat table into tensors, fitted on TRAIN."""

    num_cols: np.ndarray  # positions of the numeric columns
    mean: np.ndarray
    std: np.ndarray
    flag_cols: np.ndarray  # numeric columns (positions into num_cols) that get a missing indicator
    cat_cols: np.ndarray
    cardinality: np.ndarray  # per categorical column: TRAIN's largest index + 2 (the last: unseen)

    @classmethod
    def fit(cls, x: np.ndarray, cats: list[int]) -> _FlatInputs:
        cat_cols = np.asarray(cats, dtype=np.int64)
        num_cols = np.setdiff1d(np.arange(x.shape[1]), cat_cols)
        num = x[:, num_cols].astype(np.float64)
        present = ~np.isnan(num)
        count = present.sum(0)
        mean = np.where(count > 0, np.nansum(num, 0) / np.maximum(count, 1), 0.0)
        var = np.where(count > 0, np.nansum((num - mean) ** 2, 0) / np.maximum(count, 1), 1.0)
        std = np.sqrt(var)
        std = np.where(std > 1e-12, std, 1.0)
        flag_cols = np.flatnonzero((~present).any(0))
        cat = np.nan_to_num(x[:, cat_cols], nan=-1.0)
        cardinality = np.maximum(cat.max(0), 0).astype(np.int64) + 2 if len(cat_cols) else np.zeros(0, np.int64)
        return cls(num_cols, mean.astype(np.float32), std.astype(np.float32), flag_cols, cat_cols, cardinality)

    def batch(self, x: np.ndarray, y: np.ndarray, scenario: np.ndarray) -> Batch:
        import torch

        num = (x[:, self.num_cols] - self.mean) / self.std
        missing = np.isnan(num)
        num = np.concatenate([np.where(missing, 0.0, num), missing[:, self.flag_cols]], axis=1).astype(np.float32)
        cat = np.nan_to_num(x[:, self.cat_cols], nan=-1.0).astype(np.int64)
        unseen = self.cardinality - 1
        cat = np.where((cat < 0) | (cat > unseen), unseen, cat)
        empty: dict[str, torch.Tensor] = {}
        return Batch(torch.from_numpy(num), torch.from_numpy(np.ascontiguousarray(cat)), empty, dict(empty),
                     dict(empty), torch.from_numpy(np.asarray(y, dtype=np.float32)),
                     torch.from_numpy(np.asarray(scenario, dtype=np.int64)))


def _flat_mlp(n_num: int, cardinality: np.ndarray, hidden: Sequence[int], dropout: float):
    import torch
    from torch import nn

    from longtail.models.heavy import default_embedding_dim

    class FlatMLP(nn.Module):
        """Numerics and one embedding per categorical column (tables shared by columns of one width)."""

        def __init__(self) -> None:
            super().__init__()
            widths = np.array([default_embedding_dim(int(c)) for c in cardinality], dtype=np.int64)
            self.groups = sorted(set(widths.tolist()))
            self.tables = nn.ModuleList()
            for i, w in enumerate(self.groups):
                cols = np.flatnonzero(widths == w)
                cards = cardinality[cols]
                self.register_buffer(f"cols{i}", torch.from_numpy(cols))
                self.register_buffer(f"offsets{i}", torch.from_numpy(np.concatenate([[0], np.cumsum(cards)[:-1]])))
                self.tables.append(nn.Embedding(int(cards.sum()), w))
            layers: list[nn.Module] = []
            width = n_num + int(widths.sum())
            for h in hidden:
                layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
                width = h
            layers.append(nn.Linear(width, 1))
            self.net = nn.Sequential(*layers)

        def forward(self, batch: Batch) -> torch.Tensor:
            parts = [batch.profile_num]
            for i, table in enumerate(self.tables):
                idx = batch.profile_cat[:, getattr(self, f"cols{i}")] + getattr(self, f"offsets{i}")
                parts.append(table(idx).flatten(1))
            return self.net(torch.cat(parts, dim=1)).squeeze(-1)

    return FlatMLP()


@dataclass
class MLPResult:
    """`mlp_global` on a set of scenarios.

    Attributes:
        per_scenario: one row per scenario: ``scenario, n, positives, auc`` (TEST, for reports) and
            ``valid_auc`` (VALID).
        best_epoch: the kept epoch (the best VALID AUC of all VALID rows together).
        seconds: feature building, training and prediction time.
        settings: every knob, the scenarios, the input widths.
        history: `longtail.train.fit`'s per-epoch records (train loss, VALID AUC, lr).
    """

    per_scenario: pd.DataFrame
    best_epoch: int
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (NaN AUCs as ``None``)."""
        rows = self.per_scenario.astype(object).where(self.per_scenario.notna(), None).to_dict("records")
        return {"per_scenario": rows, "best_epoch": self.best_epoch, "seconds": self.seconds,
                "settings": self.settings, "history": self.history}


def mlp_global(data: PreparedData, scenarios: Sequence[str] | None = None, *, seed: int = 0, epochs: int = 8,
               hidden: Sequence[int] = (256, 128), dropout: float = 0.1, lr: float = 1e-3,
               weight_decay: float = 1e-2, batch_size: int = 512, warmup_frac: float = 0.0, threads: int = 2,
               device: str = "auto", show_progress: bool = False,
               features: GlobalFeatures | None = None) -> MLPResult:
    """A plain MLP over every scenario on LightGBM's inputs (see the module docstring).

    Inputs: the flat table of `lightgbm_global` (`flatten` plus the scenario index). Numeric
    columns are standardised by TRAIN's mean and standard deviation of their present values, then
    missing values (absent numerics, sequence padding) become 0, and every numeric column with a
    missing value in TRAIN gets a 0/1 missing-indicator column. Each categorical column (the
    scenario's too) gets its own embedding, ``default_embedding_dim(cardinality)`` wide (the heavy
    model's rule), with one extra
    row for indices unseen in TRAIN. Hidden layers: Linear, ReLU, Dropout per width of ``hidden``.

    Training: `longtail.train.fit` with AdamW (decoupled ``weight_decay``), a cosine schedule over
    all ``epochs`` (after ``warmup_frac`` of linear warm-up), batches of ``batch_size`` TRAIN rows;
    every epoch is scored by the AUC of all VALID rows together and the best epoch's weights are
    kept (no early stop: the schedule runs to its end). TEST is predicted once, by the kept weights.
    Deterministic for a seed (initialisation, shuffling, dropout) on a given device.

    Args:
        data: prepared rows with their split.
        scenarios: the scenarios to train and report on (default: all of ``data``).
        seed: the seed of initialisation, shuffling and dropout.
        epochs: epochs of the schedule (the kept one is chosen on VALID).
        hidden: widths of the hidden layers.
        dropout: dropout after every hidden layer.
        lr: AdamW's peak learning rate.
        weight_decay: AdamW's decoupled weight decay.
        batch_size: rows per step.
        warmup_frac: fraction of the steps of linear warm-up before the cosine decay.
        threads: torch CPU threads while training (2: both cores of a 2-core machine).
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        show_progress: draw a progress bar over the steps.
        features: `global_features(data, scenarios)` already built.

    Returns:
        The `MLPResult`.

    Raises:
        ValueError: TRAIN rows of a single class, or a bad training knob (named as ``train.<key>``).
    """
    import torch

    from longtail.metrics import predict_proba
    from longtail.train import TrainConfig, fit, resolve_device, torch_threads

    t0 = time.perf_counter()
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, patience=epochs,
                      seed=seed, device=device, threads=threads, optimizer="adamw", schedule="cosine",
                      warmup_frac=warmup_frac)
    g = features or global_features(data, scenarios, "MLP global")
    inputs = _FlatInputs.fit(g.x[TRAIN], g.cats)
    scen_col = g.x[TRAIN].shape[1] - 1
    batches = {s: inputs.batch(g.x[s], g.y[s], np.nan_to_num(g.x[s][:, scen_col], nan=-1)) for s in g.x}
    n_num = int(batches[TRAIN].profile_num.shape[1])
    with torch_threads(threads):
        torch.manual_seed(seed)
        model = _flat_mlp(n_num, inputs.cardinality, hidden, dropout)
        result = fit(model, batches[TRAIN], batches[VALID], cfg, show_progress=show_progress, description="MLP global")
        dev = resolve_device(device)
        p_test, p_valid = (predict_proba(model, batches[s], device=dev) for s in (TEST, VALID))
    settings = {"seed": seed, "epochs": epochs, "hidden": list(hidden), "dropout": dropout, "lr": lr,
                "weight_decay": weight_decay, "batch_size": batch_size, "warmup_frac": warmup_frac,
                "threads": threads, "scenarios": g.scenarios, "numeric_inputs": n_num,
                "categorical_inputs": len(inputs.cat_cols)}
    return MLPResult(g.per_scenario(p_test, p_valid), result.best_epoch, time.perf_counter() - t0, settings,
                     result.history)
