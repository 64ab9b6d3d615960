"""Heavy models on a table set: train and evaluate per scenario (``longtail train``, ``longtail evaluate``).

* ``global``: one heavy model on the training rows of all (selected) scenarios;
* ``single`` (SinH): one heavy model per scenario, on that scenario's rows only.

A run folder holds ``config.yaml`` (the effective config), ``splits.parquet``, one model folder per
trained model (``weights.pt`` state dict, ``model.json``, ``transforms.json``), ``per_scenario.csv``
and ``metrics.json``; ``metrics.json`` is written last, so a run folder without it is incomplete
and rerunning the same command resumes it from the per-epoch checkpoints.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from longtail.config import config_to_dict, save_config
from longtail.data.prepared import DataConfig, PreparedData, load_tables, prepare
from longtail.data.splits import TEST, TRAIN, VALID, save_splits
from longtail.data.transforms import FittedTransforms
from longtail.io import atomic_path, atomic_write_json, safe_name
from longtail.metrics import per_scenario_auc, predict_proba
from longtail.model_folder import save_model_dir
from longtail.models.flops import count_flops
from longtail.models.heavy import HeavyConfig, build_model
from longtail.models.latency import measure_latency
from longtail.train import TrainConfig, TrainResult, fit

__all__ = ["Trained", "TrainJobConfig", "cost_of", "evaluate_heavy", "run_train", "train_heavy"]


@dataclass(frozen=True)
class TrainJobConfig:
    """The effective config of a `longtail train` run (saved as config.yaml beside its outputs)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: HeavyConfig = field(default_factory=HeavyConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    strategy: Literal["global", "single"] = "global"
    latency_repeats: int = 50


@dataclass
class Trained:
    model: torch.nn.Module
    transforms: FittedTransforms
    result: TrainResult
    seconds: float


def train_heavy(data: PreparedData, scenarios: list[str], model_cfg: HeavyConfig, train_cfg: TrainConfig,
                out: str | Path | None = None, *, show_progress: bool = False, description: str = "train",
                log=None, on_epoch=None) -> Trained:
    """Fit transforms on the training rows of ``scenarios`` and train a heavy model on them.

    Args:
        data: prepared rows.
        scenarios: the scenarios whose training rows are used.
        out: when set, the model folder (and its resumable checkpoint) is written there.
        log: when set, called with one line per epoch (loss, validation AUC, elapsed time).
        on_epoch: when set, called with each epoch's record (see `longtail.train.fit`).
    """
    t0 = time.perf_counter()
    train_df = data.rows(TRAIN, scenarios)
    valid_df = data.rows(VALID, scenarios)
    transforms = FittedTransforms.fit(data.spec, train_df)
    torch.manual_seed(train_cfg.seed)
    model = build_model(transforms.schema, model_cfg)
    result = fit(model, transforms.transform(train_df), transforms.transform(valid_df) if len(valid_df) else None,
                 train_cfg, checkpoint_dir=Path(out) / "checkpoints" if out else None,
                 show_progress=show_progress, description=description,
                 on_epoch=_epoch_callback(log, on_epoch, description, t0))
    seconds = time.perf_counter() - t0
    if out is not None:
        save_model_dir(out, model, transforms, model_cfg, {
            "scenarios": scenarios, "train_rows": len(train_df), "valid_rows": len(valid_df),
            "best_valid_auc": result.best_valid_auc, "epochs_run": result.epochs_run,
            "train_seconds": seconds,
        })
    return Trained(model, transforms, result, seconds)


def _epoch_callback(log, callback, description: str, t0: float):
    if log is None and callback is None:
        return None

    def on_epoch(rec: dict[str, Any]) -> None:
        if log is not None:
            auc_txt = "n/a" if rec["valid_auc"] is None else f"{rec['valid_auc']:.4f}"
            log(f"{description}: epoch {rec['epoch']} train loss {rec['train_loss']:.4f}, valid AUC {auc_txt} "
                f"({time.perf_counter() - t0:.0f}s)")
        if callback is not None:
            callback(rec)

    return on_epoch


def evaluate_heavy(model: torch.nn.Module, transforms: FittedTransforms, data: PreparedData,
                   scenarios: list[str]) -> pd.DataFrame:
    """Per-scenario test AUC of one model over ``scenarios``."""
    test_df = data.rows(TEST, scenarios)
    p = predict_proba(model, transforms.transform(test_df))
    return per_scenario_auc(test_df[data.spec.scenario], test_df[data.spec.label].to_numpy(), p)


def cost_of(model: torch.nn.Module, transforms: FittedTransforms, data: PreparedData,
            repeats: int = 50) -> dict[str, Any]:
    """FLOPs per sample (analytical) and batch-1 CPU latency of a model."""
    one = transforms.transform(data.rows(TEST).iloc[:1])
    flops = count_flops(model, transforms.schema)
    lat = measure_latency(model.cpu(), one, repeats=repeats)
    return {"flops": flops, "latency": lat}


def run_train(cfg: TrainJobConfig, out: str | Path, *, show_progress: bool = False,
              log=print) -> dict[str, Any]:
    """Train and evaluate (``global`` or ``single``), writing the run folder.

    Returns:
        The metrics written to ``metrics.json`` (overall and per scenario).
    """
    out = Path(out)
    load_tables(cfg.data)  # a missing table set fails here, before the run folder exists
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    t0 = time.perf_counter()
    log(f"preparing {cfg.data.tables} ...")
    data = prepare(cfg.data)
    keys = data.frame[[*data.spec.entity_keys, data.spec.scenario]]
    save_splits(out / "splits.parquet", keys, data.split, seed=cfg.data.split_seed)
    scenarios = data.scenarios
    log(f"{len(data.frame)} rows, {len(scenarios)} scenarios; prepared in {time.perf_counter() - t0:.1f}s")
    tables = []
    models: dict[str, Any] = {}
    if cfg.strategy == "global":
        tr = train_heavy(data, scenarios, cfg.model, cfg.train, out / "models" / "global",
                         show_progress=show_progress, description="global heavy", log=log)
        tables.append(evaluate_heavy(tr.model, tr.transforms, data, scenarios))
        models["global"] = {"train_seconds": tr.seconds, "best_valid_auc": tr.result.best_valid_auc,
                            "epochs_run": tr.result.epochs_run,
                            **cost_of(tr.model, tr.transforms, data, cfg.latency_repeats)}
    else:
        for i, scen in enumerate(scenarios):
            tr = train_heavy(data, [scen], cfg.model, cfg.train, out / "models" / safe_name(scen),
                             show_progress=show_progress, description=f"SinH {scen} ({i + 1}/{len(scenarios)})",
                             log=log)
            tables.append(evaluate_heavy(tr.model, tr.transforms, data, [scen]))
            models[scen] = {"train_seconds": tr.seconds, "best_valid_auc": tr.result.best_valid_auc,
                            "epochs_run": tr.result.epochs_run}
    per = pd.concat(tables, ignore_index=True)
    per = per.sort_values(["n", "scenario"], ascending=[False, True]).reset_index(drop=True)
    with atomic_path(out / "per_scenario.csv") as tmp:
        per.to_csv(tmp, index=False)
    metrics = {
        "strategy": cfg.strategy,
        "dataset": data.spec.name,
        "mean_auc": float(per["auc"].mean()),
        "scenarios_with_auc": int(per["auc"].notna().sum()),
        "per_scenario": per.replace({np.nan: None}).to_dict(orient="records"),
        "models": models,
        "wall_seconds": time.perf_counter() - t0,
        "config": config_to_dict(cfg),
    }
    atomic_write_json(out / "metrics.json", metrics)
    return metrics


