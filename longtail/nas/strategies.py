"""The paper's light strategies MeL and Ours (section V.A.2), one scenario at a time.

Both start from the scenario-specific heavy model θu (MeH's fine-tuned model, the teacher) and
its fitted transforms, and train on the scenario's TRAIN rows with the distillation loss of Eq. 5
(early stopping on VALID, evaluation on TEST):

* **MeL** (Meta-Light): the pre-defined light model — the teacher's architecture with a 3-layer
  encoder (``HeavyConfig(num_layers=3)``) — trained with distillation from θu.
* **Ours**: a budget-limited search (section III.D). The budget is the MeL model's FLOPs per
  sample × ``budget_fraction_of_mel`` (the paper: 1.0); a GDAS supernet is searched on TRAIN
  (weights) / VALID (architecture) with Eq. 5 + λ·expected FLOPs (Eq. 4); the most probable
  architecture within the budget is derived and retrained from scratch with distillation.

``run_light_for_scenarios`` runs both for every scenario of a finished MeH run folder.

Example:
    >>> from longtail.nas.strategies import LightConfig
    >>> LightConfig().space.num_layers, LightConfig().budget_fraction_of_mel
    (3, 1.0)
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import nn

from longtail.data.prepared import DataConfig, PreparedData
from longtail.data.splits import TEST, TRAIN, VALID
from longtail.data.tensors import Batch, InputSchema
from longtail.data.transforms import FittedTransforms
from longtail.io import atomic_write_json, safe_name
from longtail.metrics import auc, predict_proba
from longtail.model_folder import load_model_dir, save_model_dir
from longtail.models.flops import count_flops
from longtail.models.heavy import HeavyConfig, HeavyModel, build_model
from longtail.models.latency import measure_latency
from longtail.nas.derive import InfeasibleBudgetError, budget_from_reference, derive
from longtail.nas.distill import (
    distill_loss,
    distill_loss_fn,
    inherit_shared_parts,
    teacher_logits,
    train_light,
)
from longtail.nas.draw import draw_genotype
from longtail.nas.space import ArchSpace, Genotype
from longtail.nas.supernet import SearchConfig, build_supernet_model, search
from longtail.train import TrainConfig, fit, resolve_device, torch_threads

__all__ = ["LightConfig", "LightJobConfig", "LightResult", "heavy_costs", "load_light_model_dir", "mel_budget", "mel_config",
           "run_light_for_scenarios", "run_light_job", "run_light_scenario", "run_mel", "run_ours", "scaled_for_rows",
           "transfer_batch"]


@dataclass(frozen=True)
class LightConfig:
    """Settings of the light strategies (MeL and Ours).

    Args:
        space: search space of every behavior encoder (paper: 3 layers, width 15, 3 heads).
        search: GDAS search settings; its ``delta`` and ``temperature`` are replaced by this
            config's, so that search and retraining use one Eq. 5. The FLOPs term is the hinge
            (``flops_penalty="hinge"``: only expected FLOPs above the budget cost); with Eq. 4's
            linear term the search drifted to pooling layers far below the budget and lost
            accuracy (carrier VX, 5 epochs: test AUC 0.7004 at 105,796 FLOPs linear vs 0.7193
            at 347,956 FLOPs hinge, budget 485,776; ``search.flops_penalty=linear`` restores it).
        budget_fraction_of_mel: FLOPs budget of Ours as a multiple of the MeL model's FLOPs
            (the paper: 1.0, the pre-defined light model's FLOPs).
        delta: weight δ of the distillation term (Eq. 5).
        temperature: distillation temperature ``T``.
        train: training of the MeL model and retraining of the derived architecture.
        from_supernet: start the retraining from the supernet's weights instead of from scratch
            (the paper retrains from scratch).
        mel_encoder: encoder of the pre-defined light model (``lstm`` or ``bert``).
        mel_layers: encoder layers of the pre-defined light model (paper: 3).
        latency_repeats: timed batch-1 forward passes of the latency measure.
        min_steps: at least this many optimiser steps in training and in search, for scenarios
            so small that ``epochs`` passes make only a few (491 rows at batch 512 is one step an
            epoch): epochs and early-stopping patience are multiplied by the same factor
            (``scaled_for_rows``). 0 keeps the epochs as given (the paper).
        init_from_teacher: start the profile encoder, embeddings and head of MeL, of the supernet
            and of the retrained Ours model from θu's (``inherit_shared_parts``); only the
            behavior encoders start from scratch. The paper trains light models from scratch
            (``False``); starting the shared parts from θu helps scenarios with few rows.
        transfer_rows: add up to this many TRAIN rows of the *other* scenarios to the training
            (and search-weight) rows of MeL and Ours, labelled with θu's probabilities (a
            transfer set for the distillation: the light model learns θu's function on more
            inputs than the scenario's own few hundred rows). Early stopping, the architecture
            step of the search and evaluation use only the scenario's own rows. 0 (the paper)
            trains on the scenario's rows alone. See ``transfer_batch``. Measured (LSTM θu, 5 epochs,
            ``python bench/nas_transfer.py``): 16,384 rows lift MeL on YV/F9/AS from 0.7084/0.6778/
            0.8522 to 0.7278/0.6926/0.8828 test AUC, and Ours from the pre-trained supernet from
            0.6954/0.7285/0.8673 to 0.7350/0.7388/0.8913.
        transfer_seed: seed of the transfer-row sample (mixed with the scenario name).
        pretrain_epochs: when above 0, Ours starts from a light supernet pre-trained once on the
            pooled TRAIN/VALID rows of every scenario with the MeH run's final θ0 as teacher
            (``longtail.nas.pretrain``): the search continues from it on the scenario's rows with θu
            as teacher, and the derived model is fine-tuned from the supernet's weights (the
            starting weights kept when no epoch beats them on VALID). 0 (the paper) searches and
            retrains every scenario from scratch. Measured (LSTM, ``bench/nas_transfer.py``, no
            transfer set): Ours on YV/F9/AS/VX/9E goes from 0.6160/0.7103/0.8536/0.7193/0.7090
            (from scratch, ``bench/results/nas.md`` of the paper settings) to 0.6954/0.7285/0.8673/
            0.7287/0.7234 with 2 pre-training epochs. ``run_ours`` refuses a config with
            ``pretrain_epochs`` > 0 and no pre-trained supernet.
        pretrain_rows: at most this many pooled TRAIN rows for the pre-training (0: all; VALID
            rows at most a quarter as many).
        pretrain_seed: seed of the pooled-row sample.
        retrain_epochs: maximum epochs of the retraining (or fine-tuning) of Ours' derived model,
            with early stopping on VALID after ``train.patience`` epochs without a better AUC; 0
            uses ``train.epochs`` (the paper: 5, as MeL). MeL and the search keep ``train.epochs``
            and ``search.epochs``. Measured (LSTM θu, full flights): 5 more epochs of fine-tuning
            on top of the 5 of ``bench/results/nas.md`` lifted Ours on B6/DL/AA from 0.7681/0.7368/
            0.7309 to 0.7739/0.7416/0.7383 test AUC, the best VALID epoch being the last one; 20
            with ``retrain_lr_drops`` (below).
        select_on: what picks the kept epoch of Ours' derived model (and stops it early):
            ``distill``, the Eq. 5 loss against θu on the scenario's VALID rows plus up to
            ``transfer_rows // 4`` VALID rows of the other scenarios labelled by θu
            (``transfer_batch(split=VALID)``), or ``auc``, the AUC of the scenario's VALID rows
            (``fit``'s default, the paper's). A small scenario has a few dozen VALID rows with a
            handful of positives (HA: 27 rows, 1 positive; OO: 2 rows), whose AUC picks an epoch
            almost at random; the loss against θu on thousands of rows does not. Measured (LSTM
            θu rebuilt as ``make bench-meta`` does, bench-nas settings, ``python bench/nas_transfer.py
            --transfer 16384 --strategies OursP --select-on auc|distill``): test AUC auc -> distill
            on OO 0.5000 -> 0.8750, HA 0.3630 -> 0.3770, YV 0.7312 -> 0.7325, F9 0.7246 -> 0.7441,
            AS 0.8894 -> 0.9214, VX 0.7387 -> 0.7442, FL 0.7402 -> 0.7512, WN 0.7775 -> 0.7804.
        restarts: on a scenario with fewer than ``restart_below_rows`` TRAIN rows (and some VALID
            rows), Ours' search and fine-tuning run this many times, run ``k`` with the transfer-row
            sample and the training seed shifted by ``k``, and the model whose kept epoch scores
            best on VALID (the ``select_on`` score, on the same VALID rows for every run) is kept;
            the others are dropped. 1 runs once (the paper). A few hundred rows make one run's
            result largely chance: LSTM θu, bench-nas settings, ``python bench/nas_transfer.py
            --strategies OursP --select-on distill --seed 0|1|2`` gave test AUC OO 0.8750/1.0000/
            1.0000, YV 0.7325/0.7481/0.7418, HA 0.3770/0.3841/0.4005. Large scenarios vary far less
            and each run costs minutes there, hence the row bound.
        restart_below_rows: the TRAIN-row count under which ``restarts`` applies.
        retrain_lr_drops: the retraining (or fine-tuning) of Ours' derived model goes back to its
            best epoch and goes on at ``train.lr_drop_factor`` times the learning rate, instead of
            stopping, the first this many times its VALID score stops improving
            (``TrainConfig.lr_drops``), within ``retrain_epochs``. 0 (the paper) stops at once.
            MeL and the search do not drop. With 15 epochs and no drops, B6 and DL stopped after 11
            and 12 epochs with their VALID score still rising every few epochs; with 20 and 2 drops
            they ran all 20 and their kept epoch's VALID AUC rose (``python bench/nas_transfer.py
            --carriers B6,DL --transfer 16384 --strategies OursP --select-on distill`` with and
            without ``--retrain-epochs 15 --retrain-lr-drops 0``: B6 0.7668 -> 0.7676, DL 0.7615 ->
            0.7652). Measured with
            ``make bench-nas`` (LSTM θu, ``bench/results/nas.md``; 15 epochs and no drops before, 20
            and 2 drops after): every carrier with 1,000 or more TRAIN rows gained or stayed, UA
            0.7341 -> 0.7368, B6 0.7733 -> 0.7773, EV 0.7471 -> 0.7491, DL 0.7408 -> 0.7426, AA
            0.7437 -> 0.7468, MQ 0.7507 -> 0.7533, US 0.7738 -> 0.7791, 9E 0.7373 -> 0.7397, WN
            0.7804 -> 0.7804, VX 0.7442 -> 0.7446, FL 0.7512 -> 0.7520 test AUC; the five smaller
            ones moved both ways (F9 0.7431 -> 0.7375, YV 0.7443 -> 0.7485). The price is training
            time: the largest carriers now run all 20 epochs.
    """

    space: ArchSpace = field(default_factory=ArchSpace)
    search: SearchConfig = field(default_factory=lambda: SearchConfig(flops_penalty="hinge"))
    budget_fraction_of_mel: float = 1.0
    delta: float = 1.0
    temperature: float = 1.0
    train: TrainConfig = field(default_factory=TrainConfig)
    from_supernet: bool = False
    mel_encoder: str = "lstm"
    mel_layers: int = 3
    latency_repeats: int = 50
    init_from_teacher: bool = True
    min_steps: int = 100
    transfer_rows: int = 16384
    transfer_seed: int = 0
    pretrain_epochs: int = 2
    pretrain_rows: int = 0
    pretrain_seed: int = 0
    retrain_epochs: int = 20
    select_on: Literal["auc", "distill"] = "distill"
    restarts: int = 3
    restart_below_rows: int = 1000
    retrain_lr_drops: int = 2


@dataclass
class LightResult:
    """One light strategy's result on one scenario.

    Attributes:
        scenario: the scenario.
        strategy: ``MeL`` or ``Ours``.
        auc: test AUC (NaN when the test rows hold one class).
        flops: FLOPs per sample of the light model (``count_flops(...)["total"]``).
        budget: FLOPs budget (Ours; MeL reports its own FLOPs, the budget it defines).
        latency_ms: median batch-1 CPU latency on one thread.
        genotypes: sequence name -> genotype dict (Ours), ``None`` for MeL.
        seconds: wall time of the strategy (search, training, evaluation).
        info: extra facts (row counts, best validation AUC, FLOPs by part, search steps, ...).
        model: the trained light model (not part of the printed form).
    """

    scenario: str
    strategy: str
    auc: float
    flops: int
    budget: int
    latency_ms: float
    genotypes: dict[str, Any] | None
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)
    model: nn.Module | None = field(default=None, repr=False)


# ---------------------------------------------------------------------- shared pieces
def scaled_for_rows(light_cfg: LightConfig, n_rows: int, *, retrain: bool = False) -> tuple[TrainConfig, SearchConfig]:
    """Training and search settings for a scenario of ``n_rows`` training rows (``min_steps``).

    With ``retrain`` (Ours' derived model), the training starts from ``retrain_epochs`` epochs
    when that is set, instead of ``train.epochs``.

    Returns:
        ``(train, search)`` configs whose epochs (and training patience) are multiplied by
        ``ceil(min_steps / (epochs * steps per epoch))`` when that is above 1.
    """
    train, srch = light_cfg.train, light_cfg.search
    if retrain and light_cfg.retrain_epochs > 0:
        train = dataclasses.replace(train, epochs=light_cfg.retrain_epochs)
    if retrain and light_cfg.retrain_lr_drops > 0:
        train = dataclasses.replace(train, lr_drops=light_cfg.retrain_lr_drops)
    if light_cfg.min_steps <= 0 or n_rows <= 0:
        return train, srch

    def factor(epochs: int, batch: int) -> int:
        steps = max(1, epochs) * math.ceil(n_rows / batch)
        return max(1, math.ceil(light_cfg.min_steps / steps))

    k = factor(train.epochs, train.batch_size)
    train = dataclasses.replace(train, epochs=train.epochs * k, patience=train.patience * k)
    srch = dataclasses.replace(srch, epochs=srch.epochs * factor(srch.epochs, srch.batch_size))
    return train, srch


@dataclass
class _Splits:
    train: Batch
    valid: Batch | None
    test: Batch
    test_labels: Any


def _splits(transforms: FittedTransforms, data: PreparedData, scenario: str) -> _Splits:
    frames = {s: data.rows(s, [scenario]) for s in (TRAIN, VALID, TEST)}
    if not len(frames[TRAIN]) or not len(frames[TEST]):
        raise ValueError(f"scenario {scenario!r}: needs train and test rows, has {len(frames[TRAIN])} train "
                         f"and {len(frames[TEST])} test rows")
    valid = transforms.transform(frames[VALID]) if len(frames[VALID]) else None
    return _Splits(transforms.transform(frames[TRAIN]), valid, transforms.transform(frames[TEST]),
                   frames[TEST][data.spec.label].to_numpy())


def transfer_batch(teacher: nn.Module, transforms: FittedTransforms, data: PreparedData, scenario: str,
                   n_rows: int, seed: int = 0, split: str = TRAIN) -> Batch | None:
    """A transfer set for distillation: other scenarios' rows of one split labelled by the teacher.

    Draws up to ``n_rows`` rows uniformly (seeded by ``seed`` and the scenario's name, so each
    scenario gets its own reproducible sample) from the ``split`` rows (TRAIN for training) of
    every scenario but ``scenario``, and replaces their labels by θu's probabilities: on these
    rows the light model learns only what θu predicts, never the other scenarios' own outcomes.
    No TEST row of any scenario is ever used.

    Args:
        teacher: θu, the scenario-specific heavy model.
        transforms: θu's fitted transforms.
        data: prepared rows with their split.
        scenario: the scenario the light model is for (its rows are excluded).
        n_rows: the most rows to draw (0: none).
        seed: sample seed.
        split: the split drawn from (VALID for the selection rows of ``select_on="distill"``).

    Returns:
        The rows as a `Batch` with float labels in [0, 1], or ``None`` when there are none.
    """
    if n_rows <= 0:
        return None
    rows = data.rows(split)
    rows = rows[rows[data.spec.scenario].astype(str) != scenario]
    if not len(rows):
        return None
    rng = np.random.default_rng([seed, zlib.crc32(scenario.encode())])
    take = np.sort(rng.choice(len(rows), size=min(n_rows, len(rows)), replace=False))
    batch = transforms.transform(rows.iloc[take])
    return dataclasses.replace(batch, label=torch.sigmoid(teacher_logits(teacher, batch)).float())


def _training_rows(teacher: nn.Module, transforms: FittedTransforms, data: PreparedData, scenario: str,
                   splits: _Splits, light_cfg: LightConfig) -> tuple[Batch, int]:
    """The scenario's TRAIN rows plus the transfer set; returns ``(rows, transfer row count)``."""
    extra = transfer_batch(teacher, transforms, data, scenario, light_cfg.transfer_rows, light_cfg.transfer_seed)
    if extra is None:
        return splits.train, 0
    return Batch.concat([splits.train, extra]), len(extra)


def _evaluate(model: nn.Module, splits: _Splits, repeats: int) -> tuple[float, dict[str, int], float]:
    """Test AUC (NaN if undefined), FLOPs by part and median batch-1 latency (ms) of ``model``."""
    a = auc(splits.test_labels, predict_proba(model, splits.test))
    flops = count_flops(model)
    latency = measure_latency(model.cpu(), splits.test.index(slice(0, 1)), repeats=repeats)
    return (math.nan if a is None else float(a)), flops, latency["p50_ms"]


def mel_config(model_cfg: HeavyConfig, light_cfg: LightConfig) -> HeavyConfig:
    """The pre-defined light architecture: the teacher's widths with a ``mel_layers`` encoder.

    Args:
        model_cfg: the teacher's (scenario-specific heavy model's) config.
        light_cfg: light settings (``mel_encoder``, ``mel_layers``).

    Returns:
        The MeL model's ``HeavyConfig``.
    """
    changes: dict[str, Any] = {"num_layers": light_cfg.mel_layers, "encoder": light_cfg.mel_encoder}
    if light_cfg.mel_encoder != model_cfg.encoder:
        changes["encoder_kwargs"] = {}  # the teacher's extra arguments belong to its own encoder
    return dataclasses.replace(model_cfg, **changes)


def mel_budget(schema: InputSchema, model_cfg: HeavyConfig, light_cfg: LightConfig) -> tuple[int, int]:
    """The FLOPs of the MeL model and the budget of Ours derived from it.

    FLOPs are analytical, so an untrained MeL model of the same shape gives them.

    Args:
        schema: input shapes (the teacher's transforms' schema).
        model_cfg: the teacher's config.
        light_cfg: light settings (``budget_fraction_of_mel``).

    Returns:
        ``(mel_flops, budget)`` in FLOPs per sample.
    """
    reference = build_model(schema, mel_config(model_cfg, light_cfg))
    return count_flops(reference)["total"], budget_from_reference(reference, light_cfg.budget_fraction_of_mel)


def _selection_score(teacher: nn.Module, transforms: FittedTransforms, data: PreparedData, scenario: str,
                     splits: _Splits, light_cfg: LightConfig):
    """``fit``'s ``valid_score`` for ``light_cfg.select_on`` (``None``: the AUC of VALID)."""
    if light_cfg.select_on == "auc" or splits.valid is None:
        return None
    if light_cfg.select_on != "distill":
        raise ValueError(f"light.select_on is {light_cfg.select_on!r}; use 'auc' or 'distill'")
    rows = splits.valid
    extra = transfer_batch(teacher, transforms, data, scenario, light_cfg.transfer_rows // 4, light_cfg.transfer_seed,
                           split=VALID)
    if extra is not None:
        rows = Batch.concat([rows, extra])
    target = teacher_logits(teacher, rows)

    def score(model: nn.Module, _valid: Batch) -> float:
        # teacher_logits scores any model in chunks on its own device and returns CPU logits
        loss = distill_loss(teacher_logits(model, rows), target, rows.label.float(), light_cfg.delta,
                            light_cfg.temperature)
        return -float(loss)

    return score


# ---------------------------------------------------------------------- strategies
def run_mel(teacher_model: nn.Module, transforms: FittedTransforms, data: PreparedData, scenario: str,
            model_cfg: HeavyConfig, light_cfg: LightConfig) -> LightResult:
    """MeL: the pre-defined light model trained on one scenario with distillation from θu.

    Args:
        teacher_model: the scenario-specific heavy model θu (not modified; put in eval mode).
        transforms: θu's fitted transforms (shared by every θu of a MeH run).
        data: prepared rows with their split.
        scenario: the scenario to train and evaluate on.
        model_cfg: θu's config (the MeL model keeps its widths, with ``mel_layers`` layers).
        light_cfg: light settings.

    Returns:
        The ``LightResult`` (``budget`` is the MeL model's own FLOPs).
    """
    t0 = time.perf_counter()
    splits = _splits(transforms, data, scenario)
    cfg = mel_config(model_cfg, light_cfg)
    teacher_model.eval()
    train_rows, n_transfer = _training_rows(teacher_model, transforms, data, scenario, splits, light_cfg)
    train_cfg, _ = scaled_for_rows(light_cfg, len(train_rows))
    torch.manual_seed(train_cfg.seed)
    model = build_model(transforms.schema, cfg)
    if light_cfg.init_from_teacher:
        inherit_shared_parts(model, teacher_model)
    result = fit(model, train_rows, splits.valid, train_cfg,
                 loss_fn=distill_loss_fn(teacher_model, light_cfg.delta, light_cfg.temperature), description="MeL")
    test_auc, flops, latency = _evaluate(model, splits, light_cfg.latency_repeats)
    return LightResult(scenario, "MeL", test_auc, flops["total"], flops["total"], latency, None,
                       time.perf_counter() - t0,
                       {"n_train": len(splits.train), "n_transfer": n_transfer, "n_test": len(splits.test),
                        "best_valid_auc": result.best_valid_auc, "epochs_run": result.epochs_run,
                        "flops_by_part": flops, "config": cfg.to_dict()}, model)


@dataclass
class _OursRun:
    model: nn.Module
    result: Any
    derivation: Any
    searched: Any
    n_transfer: int
    score: float = 0.0


def _ours_once(teacher_model: nn.Module, transforms: FittedTransforms, data: PreparedData, scenario: str,
               splits: _Splits, model_cfg: HeavyConfig, light_cfg: LightConfig, budget: int, selection,
               pretrained: dict[str, torch.Tensor] | None) -> _OursRun:
    """One search, derivation and retraining of Ours with ``light_cfg``'s seeds (see ``run_ours``)."""
    schema = transforms.schema
    train_rows, n_transfer = _training_rows(teacher_model, transforms, data, scenario, splits, light_cfg)
    train_cfg, search_cfg = scaled_for_rows(light_cfg, len(train_rows), retrain=True)
    search_cfg = dataclasses.replace(search_cfg, delta=light_cfg.delta, temperature=light_cfg.temperature)

    torch.manual_seed(search_cfg.seed)
    supernet = build_supernet_model(schema, model_cfg, light_cfg.space)
    if pretrained is not None:
        supernet.load_state_dict(pretrained)
    elif light_cfg.init_from_teacher:
        inherit_shared_parts(supernet, teacher_model)

    # few-row scenarios may have no VALID rows; the architecture then steps on TRAIN (recorded)
    arch_split = splits.valid if splits.valid is not None else splits.train
    supernet.to(resolve_device(light_cfg.train.device))
    with torch_threads(light_cfg.train.threads):
        searched = search(supernet, train_rows, arch_split, search_cfg,
                          teacher_train=teacher_logits(teacher_model, train_rows),
                          teacher_valid=teacher_logits(teacher_model, arch_split), budget=budget)
    derivation = derive(supernet, budget)
    model, result = train_light(derivation.genotypes, schema, model_cfg, train_rows, splits.valid, teacher_model,
                                train_cfg, delta=light_cfg.delta, temperature=light_cfg.temperature,
                                supernet=supernet.cpu() if light_cfg.from_supernet or pretrained is not None else None,
                                init_from=teacher_model if light_cfg.init_from_teacher and pretrained is None else None,
                                description="Ours", score_initial=pretrained is not None, valid_score=selection)
    return _OursRun(model, result, derivation, searched, n_transfer)


def run_ours(teacher_model: nn.Module, transforms: FittedTransforms, data: PreparedData, scenario: str,
             model_cfg: HeavyConfig, light_cfg: LightConfig, out: str | Path | None = None,
             pretrained: dict[str, torch.Tensor] | None = None) -> LightResult:
    """Ours: budget-limited search, derivation within the MeL budget, retraining with distillation.

    On a scenario with fewer than ``light_cfg.restart_below_rows`` TRAIN rows this runs
    ``light_cfg.restarts`` times with shifted seeds and keeps the run whose model scores best on
    VALID (``info["restart_scores"]``, ``info["restart_kept"]``); only that one is written to ``out``.

    Args:
        teacher_model: the scenario-specific heavy model θu (not modified; put in eval mode).
        transforms: θu's fitted transforms.
        data: prepared rows with their split.
        scenario: the scenario to search, train and evaluate on.
        model_cfg: θu's config (profile encoder, head and embeddings of the light model).
        light_cfg: light settings (space, search, budget fraction, δ, T, training).
        out: when set, ``genotypes.json``, one ``genotype_<sequence>.png`` per sequence and the
            model folder ``model/`` (``load_light_model_dir``) are written there.
        pretrained: a pooled pre-trained supernet's state dict (``longtail.nas.pretrain``): the
            search starts from it instead of from θu's shared parts, and the derived model is
            fine-tuned from the searched supernet's weights.

    Returns:
        The ``LightResult``; ``flops <= budget`` always holds.

    Raises:
        InfeasibleBudgetError: the smallest architecture of the space exceeds the budget (raised
            before any search, naming the scenario, the budget and the MeL FLOPs).
        ValueError: ``light_cfg.pretrain_epochs`` > 0 but no ``pretrained`` supernet was given.
    """
    t0 = time.perf_counter()
    if light_cfg.pretrain_epochs > 0 and pretrained is None:
        raise ValueError(f"scenario {scenario!r}: light.pretrain_epochs is {light_cfg.pretrain_epochs} but no "
                         "pre-trained supernet was passed; get one with longtail.nas.pretrain.pretrained_supernet "
                         "(run_light_for_scenarios does), or set light.pretrain_epochs: 0 to search from scratch")
    if light_cfg.restarts < 1:
        raise ValueError(f"light.restarts is {light_cfg.restarts}; it counts runs per scenario, use 1 or more "
                         "(1: one run, the paper)")
    if light_cfg.retrain_lr_drops < 0:
        raise ValueError(f"light.retrain_lr_drops is {light_cfg.retrain_lr_drops}; use 0 (stop at the first "
                         "plateau, the paper) or more")
    splits = _splits(transforms, data, scenario)
    schema = transforms.schema
    mel_flops, budget = mel_budget(schema, model_cfg, light_cfg)
    teacher_model.eval()
    selection = _selection_score(teacher_model, transforms, data, scenario, splits, light_cfg)
    try:  # fail before spending the search: derivation is exact, so feasibility does not depend on it
        derive(build_supernet_model(schema, model_cfg, light_cfg.space), budget)
    except InfeasibleBudgetError as e:
        raise InfeasibleBudgetError(
            f"scenario {scenario!r}: budget {budget:,} FLOPs = {light_cfg.budget_fraction_of_mel} x MeL FLOPs "
            f"{mel_flops:,}; {e}. Raise light.budget_fraction_of_mel or shrink light.space") from e
    few = splits.valid is not None and len(splits.train) < light_cfg.restart_below_rows
    runs = light_cfg.restarts if few else 1
    best, scores = None, []
    for k in range(runs):
        cfg_k = light_cfg if k == 0 else dataclasses.replace(
            light_cfg, transfer_seed=light_cfg.transfer_seed + k,
            train=dataclasses.replace(light_cfg.train, seed=light_cfg.train.seed + k))
        run = _ours_once(teacher_model, transforms, data, scenario, splits, model_cfg, cfg_k, budget, selection,
                         pretrained)
        if runs > 1:  # the kept epoch's VALID score as fit recorded it; a run without one never wins
            kept = next((h for h in run.result.history if h["epoch"] == run.result.best_epoch), {})
            score = kept["valid_score"] if "valid_score" in kept else kept.get("valid_auc")
            run.score = -math.inf if score is None or not math.isfinite(score) else float(score)
            scores.append(run.score)
        if best is None or run.score > best.score:
            best = run
    model, result, derivation, searched, n_transfer = (best.model, best.result, best.derivation, best.searched,
                                                       best.n_transfer)
    test_auc, flops, latency = _evaluate(model, splits, light_cfg.latency_repeats)
    if flops["total"] > budget:  # derive's FLOPs must be count_flops'; a mismatch is a bug, not a data issue
        raise AssertionError(f"derived model has {flops['total']:,} FLOPs > budget {budget:,} (derive said "
                             f"{derivation.flops:,})")
    genotypes = {name: g.to_dict() for name, g in derivation.genotypes.items()}
    info = {"n_train": len(splits.train), "n_transfer": n_transfer, "n_test": len(splits.test),
            "best_valid_auc": result.best_valid_auc,
            "epochs_run": result.epochs_run, "flops_by_part": flops, "mel_flops": mel_flops,
            "within_budget": True, "log_prob": derivation.log_prob, "search_steps": len(searched.history),
            "arch_split": VALID if splits.valid is not None else TRAIN, "pretrained": pretrained is not None,
            "argmax_genotypes": {k: g.to_dict() for k, g in searched.argmax_genotypes.items()},
            "restarts": runs, "restart_scores": scores, "restart_kept": scores.index(best.score) if scores else 0}
    if out is not None:
        _save_ours(Path(out), model, transforms, model_cfg, derivation.genotypes, scenario, flops["total"], budget,
                   info)
    return LightResult(scenario, "Ours", test_auc, flops["total"], budget, latency, genotypes,
                       time.perf_counter() - t0, info, model)


def _save_ours(out: Path, model: nn.Module, transforms: FittedTransforms, model_cfg: HeavyConfig,
               genotypes: dict[str, Genotype], scenario: str, flops: int, budget: int, info: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    gdict = {name: g.to_dict() for name, g in genotypes.items()}
    atomic_write_json(out / "genotypes.json", {"scenario": scenario, "flops": flops, "budget": budget,
                                               "mel_flops": info["mel_flops"], "pretrained": info["pretrained"],
                                               "n_transfer": info["n_transfer"], "genotypes": gdict})
    for name, g in genotypes.items():
        draw_genotype(g, out / f"genotype_{safe_name(name)}.png",
                      title=f"{scenario} / {name}: {flops:,} FLOPs (budget {budget:,})")
    save_model_dir(out / "model", model, transforms, model_cfg,
                   {"kind": "light", "genotypes": gdict, "scenario": scenario, "flops": flops, "budget": budget})


def load_light_model_dir(path: str | Path) -> tuple[HeavyModel, FittedTransforms, dict[str, Any]]:
    """Load a light model folder written by ``run_ours`` (``model.json`` of kind ``light``).

    Same as :func:`longtail.model_folder.load_model_dir`, which loads every kind, but refuses a
    folder of another kind.

    Args:
        path: the ``model`` folder.

    Returns:
        ``(model in eval mode, transforms, model.json contents)``.
    """
    path = Path(path)
    info = json.loads((path / "model.json").read_text())
    if info.get("kind") != "light":
        raise ValueError(f"{path}: kind {info.get('kind')!r}, not a light model; use longtail.model_folder.load_model_dir")
    return load_model_dir(path)


def heavy_costs(teacher: nn.Module, transforms: FittedTransforms, data: PreparedData, scenario: str,
                repeats: int) -> tuple[int, float]:
    """FLOPs per sample and median batch-1 CPU latency (ms) of the heavy model, on one TEST row of ``scenario``."""
    one = transforms.transform(data.rows(TEST, [scenario]).iloc[:1])
    return count_flops(teacher)["total"], measure_latency(teacher.cpu(), one, repeats=repeats)["p50_ms"]


# ---------------------------------------------------------------------- runner
def run_light_scenario(teacher_dir: str | Path, data: PreparedData, scenario: str, light_cfg: LightConfig,
                       out: str | Path | None = None, pretrained: dict[str, torch.Tensor] | None = None
                       ) -> dict[str, Any]:
    """MeL and Ours for one scenario, distilled from the θu saved in ``teacher_dir``.

    ``pretrained`` is the pooled pre-trained supernet Ours starts from (``run_ours``).

    Returns:
        ``scenario, auc_mel, auc_ours, flops_heavy, flops_light, flops_ours, budget,
        latency_heavy_ms, latency_light_ms, latency_ours_ms, seconds_mel, seconds_ours, genotypes``.

    Raises:
        FileNotFoundError: ``teacher_dir`` holds no saved model.
    """
    folder = Path(teacher_dir)
    if not (folder / "model.json").exists():
        raise FileNotFoundError(f"{folder}: no θu for scenario {scenario!r}; was it onboarded by run_meh?")
    teacher, transforms, info = load_model_dir(folder)
    model_cfg = HeavyConfig.from_dict(info["config"])
    mel = run_mel(teacher, transforms, data, scenario, model_cfg, light_cfg)
    ours = run_ours(teacher, transforms, data, scenario, model_cfg, light_cfg, out=out, pretrained=pretrained)
    heavy_flops, heavy_ms = heavy_costs(teacher, transforms, data, scenario, light_cfg.latency_repeats)
    return {"scenario": scenario, "auc_mel": mel.auc, "auc_ours": ours.auc,
            "flops_heavy": heavy_flops, "flops_light": mel.flops,
            "flops_ours": ours.flops, "budget": ours.budget, "latency_heavy_ms": heavy_ms,
            "latency_light_ms": mel.latency_ms, "latency_ours_ms": ours.latency_ms,
            "seconds_mel": mel.seconds, "seconds_ours": ours.seconds, "genotypes": ours.genotypes}


def run_light_for_scenarios(meh_out_dir: str | Path, data: PreparedData, light_cfg: LightConfig,
                            scenarios: list[str] | None = None, out: str | Path | None = None,
                            log=None) -> pd.DataFrame:
    """MeL and Ours for every scenario whose θu a MeH run saved (``<meh_out_dir>/models/<scenario>``).

    Args:
        meh_out_dir: the output folder of ``run_meh``.
        data: the prepared rows with the same split as the MeH run.
        light_cfg: light settings.
        scenarios: scenarios to run (default: every scenario of ``data`` with a saved θu).
        out: when set, Ours' genotypes, pictures and model go to ``<out>/<scenario>/``, and the
            pooled pre-trained supernet (``light_cfg.pretrain_epochs`` > 0) is cached in
            ``<out>/pretrain/`` (computed once, before the first scenario, from ``<meh_out_dir>/theta0_final``).
        log: called with one line per scenario.

    Returns:
        One row per scenario: ``scenario, auc_mel, auc_ours, flops_heavy, flops_light, flops_ours,
        budget, latency_heavy_ms, latency_light_ms, latency_ours_ms, seconds_mel, seconds_ours``
        (``flops_light`` is the MeL model's).

    Raises:
        FileNotFoundError: a requested scenario has no saved θu.
    """
    models = Path(meh_out_dir) / "models"
    if scenarios is None:
        scenarios = [s for s in data.scenarios if (models / safe_name(s) / "model.json").exists()]
    missing = [s for s in scenarios if not (models / safe_name(s) / "model.json").exists()]
    if missing:  # before any pre-training or search is spent
        raise FileNotFoundError(f"{models}: no θu for scenarios {missing}; were they onboarded by run_meh?")
    pretrained = None
    if light_cfg.pretrain_epochs > 0 and scenarios:
        from longtail.nas.pretrain import pretrained_supernet, theta0_dir

        pretrained, _ = pretrained_supernet(theta0_dir(meh_out_dir), data, light_cfg,
                                            Path(out) / "pretrain" if out is not None else None, log=log)
    rows = []
    for scen in scenarios:
        row = run_light_scenario(models / safe_name(scen), data, scen, light_cfg,
                                 out=Path(out) / safe_name(scen) if out is not None else None, pretrained=pretrained)
        rows.append(row)
        if log:
            log(f"{scen}: MeL AUC {row['auc_mel']:.4f} ({row['flops_light']:,} FLOPs), Ours AUC "
                f"{row['auc_ours']:.4f} ({row['flops_ours']:,} FLOPs, budget {row['budget']:,})")
    return pd.DataFrame(rows, columns=["scenario", "auc_mel", "auc_ours", "flops_heavy", "flops_light", "flops_ours",
                                       "budget", "latency_heavy_ms", "latency_light_ms", "latency_ours_ms",
                                       "seconds_mel", "seconds_ours"])


# ---------------------------------------------------------------------- job
@dataclass(frozen=True)
class LightJobConfig:
    """The effective config of ``longtail nas light`` (saved as ``config.yaml`` in ``out``).

    Args:
        data: the table set and split (the same as the MeH run's, so θu saw no test row).
        meh_out: the MeH run folder whose ``models/<scenario>`` are the teachers.
        light: the light settings (space, search, budget, δ, T, training).
        scenarios: scenarios to run (empty: every scenario with a saved θu).
        out: job folder: ``per_scenario.csv``, ``<scenario>/`` (genotypes, pictures, model) and,
            last, ``metrics.json``.
        registry: when set, every Ours model is published there (kind ``light``) with its teacher
            in the lineage.
    """

    data: DataConfig = field(default_factory=DataConfig)
    meh_out: str = "runs/meh-lstm"
    light: LightConfig = field(default_factory=LightConfig)
    scenarios: tuple[str, ...] = ()
    out: str = "runs/light"
    registry: str = ""


def run_light_job(cfg: LightJobConfig, log=None) -> pd.DataFrame:
    """Run MeL and Ours for a MeH run's scenarios, write the table and publish the Ours models.

    Returns:
        The per-scenario table of `run_light_for_scenarios`.
    """
    from longtail.config import save_config
    from longtail.data.prepared import prepare
    from longtail.io import atomic_path

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    data = prepare(cfg.data)
    table = run_light_for_scenarios(cfg.meh_out, data, cfg.light, list(cfg.scenarios) or None, out=out, log=log)
    with atomic_path(out / "per_scenario.csv") as tmp:
        table.to_csv(tmp, index=False)
    published = []
    if cfg.registry:
        from longtail.registry import lineage, open_registry

        reg = open_registry(cfg.registry)
        for _, r in table.iterrows():
            scen = r["scenario"]
            v = reg.publish(f"{data.spec.name}.{safe_name(scen)}.light", out / safe_name(scen) / "model",
                            kind="light", scenario=scen,
                            metrics={"test_auc": None if math.isnan(r["auc_ours"]) else float(r["auc_ours"]),
                                     "flops": int(r["flops_ours"]), "budget": int(r["budget"]),
                                     "mel_test_auc": None if math.isnan(r["auc_mel"]) else float(r["auc_mel"]),
                                     "latency_ms_p50": float(r["latency_ours_ms"])},
                            lineage=lineage(data_split={"tables": cfg.data.tables, "seed": cfg.data.split_seed},
                                            teacher=str(Path(cfg.meh_out) / "models" / safe_name(scen))))
            published.append({"scenario": scen, "name": v.name, "version": v.version})
    atomic_write_json(out / "metrics.json", {
        "mean_auc_mel": float(table["auc_mel"].mean()), "mean_auc_ours": float(table["auc_ours"].mean()),
        "per_scenario": table.replace({np.nan: None}).to_dict(orient="records"), "published": published})
    return table
