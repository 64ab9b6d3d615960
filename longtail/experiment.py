"""The main job of this stage: prepare a table set, train heavy models, evaluate them per scenario.

* ``global``: one heavy model on the training rows of all (selected) scenarios;
* ``single`` (SinH): one heavy model per scenario, on that scenario's rows only.

A run folder holds ``config.yaml`` (the effective config), ``splits.parquet``, one model folder per
trained model (``weights.pt`` state dict, ``model.json``, ``transforms.json``), ``per_scenario.csv``
and ``metrics.json``; ``metrics.json`` is written last, so a run folder without it is incomplete
and rerunning the same command resumes it from the per-epoch checkpoints.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from longtail.config import config_to_dict, save_config
from longtail.data.splits import TEST, TRAIN, VALID, assign_split, save_splits
from longtail.data.tables import TableSet, cached_join
from longtail.data.transforms import FittedTransforms
from longtail.io import atomic_path, atomic_write_json
from longtail.metrics import per_scenario_auc, predict_proba
from longtail.models.flops import count_flops
from longtail.models.heavy import HeavyConfig, build_model
from longtail.models.latency import measure_latency
from longtail.spec import DatasetSpec, SpecError
from longtail.train import TrainConfig, TrainResult, fit


@dataclass(frozen=True)
class DataConfig:
    """Args:
    tables: the table-set folder (built by `longtail data build`).
    split_seed: seed of the test / validation splits.
    test_frac: test share of each scenario (the paper uses 20%).
    valid_frac: validation share of the remaining training rows.
    scenarios: restrict to these scenarios (empty: all).
    """

    tables: str = "data/flights"
    split_seed: int = 0
    test_frac: float = 0.2
    valid_frac: float = 0.1
    scenarios: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrainJobConfig:
    """The effective config of a `longtail train` run (saved as config.yaml beside its outputs)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: HeavyConfig = field(default_factory=HeavyConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    strategy: Literal["global", "single"] = "global"
    latency_repeats: int = 50


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


def prepare(cfg: DataConfig) -> PreparedData:
    """Load, join (point in time), validate and split a table set.

    With ``LONGTAIL_JOIN_CACHE`` set to a folder, the joined and validated frame is cached there
    (see `longtail.data.tables.cached_join`), so repeated preparation of the same set (HPO
    trials, benchmark runs) reads one parquet file instead of joining and validating again.

    Raises:
        SpecError: when the joined rows do not satisfy the spec (names the column and the fix).
    """
    tables = TableSet.load(cfg.tables)
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


# ---------------------------------------------------------------------- model folders
def save_model_dir(path: str | Path, model: torch.nn.Module, transforms: FittedTransforms,
                   config: HeavyConfig, meta: dict[str, Any]) -> Path:
    """Save a model as weights (state dict only), its config and its fitted transforms."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path / "transforms.json", transforms.to_dict())
    with atomic_path(path / "weights.pt") as tmp:
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
    atomic_write_json(path / "model.json", {"kind": "heavy", "config": config.to_dict(),
                                            "schema": transforms.schema.to_dict(), **meta})
    return path


# How to rebuild the module of each model kind from its model.json; "module:function" so that a kind's
# code is imported only when such a folder is loaded. Each builder takes (schema, model.json dict).
MODEL_BUILDERS: dict[str, str] = {
    "heavy": "longtail.experiment:_build_heavy",
    "light": "longtail.nas.light:build_from_info",
}


def _build_heavy(schema, info: dict[str, Any]) -> torch.nn.Module:
    return build_model(schema, HeavyConfig.from_dict(info["config"]))


def load_model_dir(path: str | Path) -> tuple[torch.nn.Module, FittedTransforms, dict[str, Any]]:
    """Load a saved model folder of any kind (heavy, light) in eval mode.

    The module is rebuilt from ``model.json`` by the builder its ``kind`` names in
    `MODEL_BUILDERS`; weights are loaded with ``weights_only=True`` (never unpickles objects).

    Returns:
        ``(model, transforms, model.json contents)``.
    """
    import importlib

    path = Path(path)
    if not (path / "model.json").exists():
        raise FileNotFoundError(f"{path}: no model.json; not a saved model folder")
    info = json.loads((path / "model.json").read_text())
    kind = info.get("kind", "heavy")
    if kind not in MODEL_BUILDERS:
        raise ValueError(f"{path}/model.json: kind {kind!r} is not one of {sorted(MODEL_BUILDERS)}; "
                         "was it written by a newer longtail?")
    module, func = MODEL_BUILDERS[kind].split(":")
    transforms = FittedTransforms.from_dict(json.loads((path / "transforms.json").read_text()))
    model = getattr(importlib.import_module(module), func)(transforms.schema, info)
    model.load_state_dict(torch.load(path / "weights.pt", map_location="cpu", weights_only=True))
    model.eval()
    return model, transforms, info


# ---------------------------------------------------------------------- training
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


def safe_name(name: str) -> str:
    """A scenario name made safe for a folder name."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
