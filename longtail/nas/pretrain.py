"""Pooled pre-training of the light supernet: the light counterpart of the agnostic model θ0.

MeH owes most of its accuracy on a small scenario to θ0, trained on the pooled rows of many
scenarios before it is fine-tuned on the scenario's own (``bench/results/meta.md``: θ0 alone
already scores within 0.01 of θu on most carriers). A light model searched and trained on a
scenario's few hundred rows has no such start. ``pretrain_supernet`` gives it one: the GDAS
supernet of the light space is searched once on the pooled TRAIN rows of every scenario
(weights) and their VALID rows (architecture), with θ0 as the distillation teacher and the same
FLOPs term and budget as the per-scenario search. Each scenario then continues the search from
it on its own rows with θu as teacher, derives its architecture within the budget and
fine-tunes the derived model from the supernet's weights (``run_ours(pretrained=...)``).

Only TRAIN and VALID rows are used, never TEST rows. The result is cached under a key of
everything it depends on (settings, θ0's weights, the rows), so a job or benchmark over many
scenarios pays for it once and a rerun with other settings never reads a stale one.

Example:
    >>> from longtail.nas.pretrain import pretrain_key
    >>> len(pretrain_key({"a": 1}, b"weights", "rows"))
    16
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from longtail.config import config_to_dict
from longtail.data.prepared import PreparedData
from longtail.data.splits import TRAIN, VALID
from longtail.data.tensors import Batch
from longtail.data.transforms import FittedTransforms
from longtail.io import atomic_path, atomic_write_json
from longtail.model_folder import load_model_dir
from longtail.models.heavy import HeavyConfig, HeavyModel
from longtail.nas.config import LightConfig
from longtail.nas.distill import inherit_shared_parts, teacher_logits
from longtail.nas.strategies import mel_budget
from longtail.nas.supernet import build_supernet_model, search
from longtail.train import resolve_device, torch_threads

__all__ = ["PRETRAIN_FILE", "load_pretrained", "pooled_batch", "pretrain_key", "pretrain_supernet",
           "pretrained_supernet", "theta0_dir"]

PRETRAIN_FILE = "supernet.pt"


def theta0_dir(meh_out: str | Path) -> Path:
    """The final agnostic model θ0 of a MeH run folder (``<meh_out>/theta0_final``).

    Raises:
        FileNotFoundError: the folder holds no saved θ0 (names the fix).
    """
    folder = Path(meh_out) / "theta0_final"
    if not (folder / "model.json").exists():
        raise FileNotFoundError(
            f"{folder}: no θ0 model folder; light.pretrain.epochs > 0 pre-trains the light supernet with the "
            "MeH run's final θ0 as teacher. Point meh_out at a finished MeH run (run_meh writes theta0_final) "
            "or set light.pretrain.epochs: 0")
    return folder


def pooled_batch(data: PreparedData, transforms: FittedTransforms, split: str, max_rows: int, seed: int) -> Batch:
    """Rows of ``split`` pooled over every scenario, at most ``max_rows`` drawn uniformly (0: all).

    Raises:
        ValueError: the split has no rows.
    """
    rows = data.rows(split)
    if not len(rows):
        raise ValueError(f"no {split} rows to pre-train the light supernet on; check the data's split")
    if 0 < max_rows < len(rows):
        take = np.sort(np.random.default_rng(seed).choice(len(rows), size=max_rows, replace=False))
        rows = rows.iloc[take]
    return transforms.transform(rows)


def _light_settings(light_cfg: LightConfig) -> dict[str, Any]:
    """The settings the pre-trained supernet depends on (not the per-scenario ones)."""
    d = config_to_dict(light_cfg)
    return {"space": d["space"], "search": d["search"], "budget_fraction_of_mel": d["budget_fraction_of_mel"],
            "distill": d["distill"], "mel": {k: d["mel"][k] for k in ("encoder", "layers")},
            "pretrain": d["pretrain"]}


def _rows_fingerprint(data: PreparedData) -> str:
    """A digest of which rows are TRAIN and VALID (scenario, label and split of every row)."""
    frame = pd.DataFrame({"scenario": data.frame[data.spec.scenario].astype(str).to_numpy(),
                          "label": data.frame[data.spec.label].to_numpy(), "split": data.split})
    return f"{len(frame)}:{int(pd.util.hash_pandas_object(frame, index=False).sum()) & (2 ** 64 - 1):x}"


def pretrain_key(settings: dict[str, Any], theta0_weights: bytes, rows: str) -> str:
    """A 16-hex-digit key of the settings, the teacher's weights and the rows."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    h.update(hashlib.sha256(theta0_weights).digest())
    h.update(rows.encode())
    return h.hexdigest()[:16]


def pretrain_supernet(theta0: torch.nn.Module, transforms: FittedTransforms, data: PreparedData,
                      model_cfg: HeavyConfig, light_cfg: LightConfig, budget: int, log=None) -> tuple[HeavyModel, dict]:
    """Search the light supernet on the pooled rows with θ0 as teacher (see the module doc).

    Args:
        theta0: the agnostic heavy model (the teacher; its profile encoder, embeddings and head
            start the supernet's, ``inherit_shared_parts``).
        transforms: θ0's fitted transforms (shared by every θu of the MeH run).
        data: prepared rows with their split.
        model_cfg: θ0's config (profile encoder and head of the light model).
        light_cfg: the light settings: ``pretrain.epochs`` passes of the search over the pooled TRAIN
            rows (at most ``pretrain.rows``, 0 = all; VALID rows at most a quarter as many), its
            ``search`` settings with its ``distill`` δ and T, and the FLOPs term normalised by ``budget``.
        budget: the FLOPs budget per sample (the MeL model's FLOPs × ``budget_fraction_of_mel``).
        log: called with a line when the search starts and ends.

    Returns:
        ``(supernet model on the CPU, facts)`` with facts ``n_train, n_valid, steps, seconds``.
    """
    t0 = time.perf_counter()
    seed = light_cfg.pretrain.seed
    train = pooled_batch(data, transforms, TRAIN, light_cfg.pretrain.rows, seed)
    valid = pooled_batch(data, transforms, VALID, light_cfg.pretrain.rows // 4, seed + 1)
    cfg = dataclasses.replace(light_cfg.search, epochs=light_cfg.pretrain.epochs)
    theta0.eval()
    torch.manual_seed(cfg.seed)
    supernet = build_supernet_model(transforms.schema, model_cfg, light_cfg.space)
    inherit_shared_parts(supernet, theta0)
    distill = light_cfg.distill.delta > 0  # δ = 0: hard labels only, the teacher is not needed
    if log:
        log(f"pre-training the light supernet on {len(train):,} pooled TRAIN rows ({len(valid):,} VALID), "
            f"{cfg.epochs} epochs")

    def progress(record: dict[str, Any], steps: int) -> None:
        if log and (record["step"] % max(1, steps // 10) == 0 or record["step"] == steps):
            log(f"pre-training step {record['step']}/{steps}: train loss {record['train_loss']:.4f}, "
                f"valid loss {record['valid_loss']:.4f}, {time.perf_counter() - t0:.0f}s")

    supernet.to(resolve_device(light_cfg.train.device))
    with torch_threads(light_cfg.train.threads):
        result = search(supernet, train, valid, cfg,
                        teacher_train=teacher_logits(theta0, train) if distill else None,
                        teacher_valid=teacher_logits(theta0, valid) if distill else None, budget=budget,
                        distill=light_cfg.distill, on_step=progress)
    facts = {"n_train": len(train), "n_valid": len(valid), "steps": len(result.history),
             "seconds": time.perf_counter() - t0,
             "argmax_genotypes": {k: g.to_dict() for k, g in result.argmax_genotypes.items()}}
    if log:
        log(f"pre-trained the light supernet in {facts['seconds']:.0f}s ({facts['steps']} steps)")
    return supernet.cpu(), facts


def load_pretrained(path: str | Path) -> dict[str, torch.Tensor]:
    """The supernet state dict of a pre-training file written by ``pretrained_supernet``."""
    return torch.load(Path(path), map_location="cpu", weights_only=True)["state"]


def pretrained_supernet(theta0: str | Path, data: PreparedData, light_cfg: LightConfig, cache_dir: str | Path | None,
                        log=None) -> tuple[dict[str, torch.Tensor], Path | None]:
    """The pooled pre-trained supernet for a θ0, computed once and cached.

    The file ``<cache_dir>/<key>/supernet.pt`` (with ``facts.json`` beside it) is written
    atomically after the search; a later call with the same settings, θ0 and rows reads it.

    Args:
        theta0: the teacher's model folder (a MeH run's ``theta0_final``, ``theta0_dir``; the
            pipelines' ``theta0_init``).
        data: prepared rows with the split θ0 and the θu were trained with; every scenario in it
            is pooled.
        light_cfg: the light settings (``pretrain.epochs`` > 0).
        cache_dir: folder of pre-trained supernets (``None``: compute, do not cache).
        log: progress lines.

    Returns:
        ``(supernet state dict, path of the file or None)``.
    """
    folder = Path(theta0)
    if not (folder / "model.json").exists():
        raise FileNotFoundError(f"{folder}: no θ0 model folder to pre-train the light supernet with "
                                "(set light.pretrain.epochs: 0 to search from scratch)")
    if light_cfg.pretrain.epochs <= 0:
        raise ValueError(f"light.pretrain.epochs is {light_cfg.pretrain.epochs}; pre-training needs at least 1 epoch")
    key = pretrain_key(_light_settings(light_cfg), (folder / "weights.pt").read_bytes(), _rows_fingerprint(data))
    path = Path(cache_dir) / key / PRETRAIN_FILE if cache_dir is not None else None
    if path is not None and path.exists():
        if log:
            log(f"light supernet pre-trained before: {path}")
        return load_pretrained(path), path
    theta0, transforms, info = load_model_dir(folder)
    model_cfg = HeavyConfig.from_dict(info["config"])
    _, budget = mel_budget(transforms.schema, model_cfg, light_cfg)
    supernet, facts = pretrain_supernet(theta0, transforms, data, model_cfg, light_cfg, budget, log=log)
    if path is None:
        return supernet.state_dict(), None
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path.parent / "facts.json", {**facts, "budget": budget, "theta0": str(folder),
                                                   "settings": _light_settings(light_cfg)})
    with atomic_path(path) as tmp:  # written last: its presence means the pre-training finished
        torch.save({"state": supernet.state_dict(), "budget": budget}, tmp)
    return supernet.state_dict(), path
