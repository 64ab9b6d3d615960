"""The paper's light strategies MeL and Ours (section V.A.2), on one scenario's rows.

Both start from the scenario-specific heavy model θu (the teacher) and train on the scenario's
TRAIN rows (`longtail.data.scenario_rows.ScenarioRows`, transformed once with θu's transforms)
with the distillation loss of Eq. 5, early stopping on VALID and evaluation on TEST:

* **MeL** (Meta-Light): the pre-defined light model, the teacher's architecture with a shallower
  encoder (`mel_config`), trained with distillation from θu;
* **Ours**: a budget-limited search (section III.D). The budget is the MeL model's FLOPs per
  sample × ``budget_fraction_of_mel``; a GDAS supernet is searched on TRAIN (weights) / VALID
  (architecture) with Eq. 5 plus the FLOPs term; the most probable architecture within the budget
  is derived and trained with distillation.

Settings: `longtail.nas.config.LightConfig`. The whole onboarding of a scenario (θu, its feedback,
Ours, the references) is wired once, in `longtail.onboarding`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from longtail.data.scenario_rows import ScenarioRows
from longtail.data.splits import TRAIN, VALID
from longtail.data.tensors import Batch, InputSchema
from longtail.data.transforms import FittedTransforms
from longtail.io import atomic_write_json, safe_name
from longtail.metrics import auc, predict_proba
from longtail.model_folder import save_model_dir
from longtail.models.flops import count_flops
from longtail.models.genotype import Genotype
from longtail.models.heavy import HeavyConfig, build_model
from longtail.models.latency import measure_latency
from longtail.nas.config import LightConfig
from longtail.nas.derive import InfeasibleBudgetError, budget_from_reference, derive
from longtail.nas.distill import (
    distill_loss,
    distill_loss_fn,
    inherit_shared_parts,
    teacher_logits,
    train_light,
    with_teacher_logits,
)
from longtail.nas.draw import draw_genotype
from longtail.nas.supernet import SearchConfig, build_supernet_model, search
from longtail.train import TrainConfig, fit, resolve_device, torch_threads

__all__ = ["LightResult", "heavy_costs", "mel_budget", "mel_config", "run_mel", "run_ours", "scaled_for_rows",
           "transfer_batch"]


@dataclass
class LightResult:
    """One light strategy's result on one scenario.

    Attributes:
        scenario: the scenario.
        strategy: ``MeL`` or ``Ours``.
        auc: test AUC (NaN when the test rows hold one class); reported, never used to choose.
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

    With ``retrain`` (Ours' derived model), the training takes ``light_cfg.retrain``'s epochs (when
    set) and learning-rate drops instead of ``train``'s.

    Returns:
        ``(train, search)`` configs whose epochs (and training patience) are multiplied by
        ``ceil(min_steps / (epochs * steps per epoch))`` when that is above 1.
    """
    train, srch = light_cfg.train, light_cfg.search
    if retrain and light_cfg.retrain.epochs > 0:
        train = dataclasses.replace(train, epochs=light_cfg.retrain.epochs)
    if retrain and light_cfg.retrain.lr_drops > 0:
        train = dataclasses.replace(train, lr_drops=light_cfg.retrain.lr_drops)
    if light_cfg.min_steps <= 0 or n_rows <= 0:
        return train, srch

    def factor(epochs: int, batch: int) -> int:
        steps = max(1, epochs) * math.ceil(n_rows / batch)
        return max(1, math.ceil(light_cfg.min_steps / steps))

    k = factor(train.epochs, train.batch_size)
    train = dataclasses.replace(train, epochs=train.epochs * k, patience=train.patience * k)
    srch = dataclasses.replace(srch, epochs=srch.epochs * factor(srch.epochs, srch.batch_size))
    return train, srch


def transfer_batch(teacher: nn.Module, rows: ScenarioRows, n_rows: int, seed: int = 0,
                   split: str = TRAIN) -> Batch | None:
    """A transfer set for distillation: other scenarios' rows of one split labelled by the teacher.

    Draws up to ``n_rows`` rows (`ScenarioRows.others`: uniformly, seeded by ``seed`` and the
    scenario's name) from the ``split`` rows of every scenario but this one, and replaces their
    labels by θu's probabilities: on these rows the light model learns only what θu predicts, never
    the other scenarios' own outcomes. No TEST row of any scenario is ever used.

    Args:
        teacher: θu, the scenario-specific heavy model.
        rows: the scenario's rows (and the prepared data the others are drawn from).
        n_rows: the most rows to draw (0: none).
        seed: sample seed.
        split: the split drawn from (VALID for the selection rows of ``retrain.select_on="distill"``).

    Returns:
        The rows as a `Batch` with float labels in [0, 1], or ``None`` when there are none.
    """
    if split not in (TRAIN, VALID):
        raise ValueError(f"transfer rows come from TRAIN or VALID rows, not {split!r}")
    batch = rows.others(split, n_rows, seed)
    if batch is None:
        return None
    logits = teacher_logits(teacher, batch)
    return dataclasses.replace(batch, label=torch.sigmoid(logits).float(), teacher_logits=logits)


def _training_rows(teacher: nn.Module, rows: ScenarioRows, n_transfer: int, seed: int) -> tuple[Batch, int]:
    """The scenario's TRAIN rows plus a transfer set, carrying θu's logits (computed once here, for every
    epoch of the training and the search); returns ``(rows, transfer row count)``."""
    own = with_teacher_logits(teacher, rows.train)
    extra = transfer_batch(teacher, rows, n_transfer, seed)
    if extra is None:
        return own, 0
    return Batch.concat([own, extra]), len(extra)


def _evaluate(model: nn.Module, rows: ScenarioRows, repeats: int) -> tuple[float, dict[str, int], float]:
    """Test AUC (NaN if undefined), FLOPs by part and median batch-1 latency (ms) of ``model``."""
    a = auc(rows.test_labels, predict_proba(model, rows.test))
    flops = count_flops(model)
    latency = measure_latency(model.cpu(), rows.test.index(slice(0, 1)), repeats=repeats)
    return (math.nan if a is None else float(a)), flops, latency["p50_ms"]


def mel_config(model_cfg: HeavyConfig, light_cfg: LightConfig) -> HeavyConfig:
    """The pre-defined light architecture: the teacher's widths with ``light.mel``'s layers (and encoder,
    the teacher's when ``light.mel.encoder`` is empty; and encoder width, when ``light.mel.hidden_size``
    is set).

    Args:
        model_cfg: the teacher's (scenario-specific heavy model's) config.
        light_cfg: light settings (``mel.encoder``, ``mel.layers``).

    Returns:
        The MeL model's ``HeavyConfig``.
    """
    encoder = light_cfg.mel.encoder or model_cfg.encoder
    changes: dict[str, Any] = {"num_layers": light_cfg.mel.layers, "encoder": encoder}
    if light_cfg.mel.hidden_size:
        changes["hidden_size"] = light_cfg.mel.hidden_size
    if encoder != model_cfg.encoder:
        changes["encoder_kwargs"] = {}  # the teacher's extra arguments belong to its own encoder
    return dataclasses.replace(model_cfg, **changes)


def mel_budget(schema: InputSchema, model_cfg: HeavyConfig, light_cfg: LightConfig) -> tuple[int, int]:
    """The FLOPs of the MeL model and the budget of Ours derived from it.

    FLOPs are analytical, so an untrained MeL model of the same shape gives them (no MeL training
    is needed to know the budget).

    Returns:
        ``(mel_flops, budget)`` in FLOPs per sample.
    """
    reference = build_model(schema, mel_config(model_cfg, light_cfg))
    return count_flops(reference)["total"], budget_from_reference(reference, light_cfg.budget_fraction_of_mel)


def _selection_score(teacher: nn.Module, rows: ScenarioRows, light_cfg: LightConfig):
    """``fit``'s ``valid_score`` for ``light.retrain.select_on`` (``None``: the AUC of VALID)."""
    if light_cfg.retrain.select_on == "auc" or rows.valid is None:
        return None
    selection = rows.valid
    extra = transfer_batch(teacher, rows, light_cfg.transfer.rows // 4, light_cfg.transfer.seed, split=VALID)
    if extra is not None:
        selection = Batch.concat([selection, extra])
    target = teacher_logits(teacher, selection)
    delta, temperature = light_cfg.distill.delta, light_cfg.distill.temperature

    def score(model: nn.Module, _valid: Batch) -> float:
        # teacher_logits scores any model in chunks on its own device and returns CPU logits
        loss = distill_loss(teacher_logits(model, selection), target, selection.label.float(), delta, temperature)
        return -float(loss)

    return score


# ---------------------------------------------------------------------- strategies
def run_mel(teacher_model: nn.Module, rows: ScenarioRows, model_cfg: HeavyConfig,
            light_cfg: LightConfig) -> LightResult:
    """MeL: the pre-defined light model trained on one scenario with distillation from θu.

    Args:
        teacher_model: the scenario-specific heavy model θu (not modified; put in eval mode).
        rows: the scenario's rows under θu's transforms.
        model_cfg: θu's config (the MeL model keeps its widths, with ``light.mel``'s encoder).
        light_cfg: light settings (``train``, ``mel``, ``init_from_teacher``, ``min_steps``, ``distill``).

    Returns:
        The ``LightResult`` (``budget`` is the MeL model's own FLOPs).
    """
    t0 = time.perf_counter()
    cfg = mel_config(model_cfg, light_cfg)
    teacher_model.eval()
    train_rows, n_transfer = _training_rows(teacher_model, rows, light_cfg.mel.transfer_rows, light_cfg.transfer.seed)
    train_cfg, _ = scaled_for_rows(light_cfg, len(train_rows))
    torch.manual_seed(train_cfg.seed)
    model = build_model(rows.transforms.schema, cfg)
    if light_cfg.init_from_teacher:
        inherit_shared_parts(model, teacher_model)
    result = fit(model, train_rows, rows.valid, train_cfg,
                 loss_fn=distill_loss_fn(teacher_model, light_cfg.distill.delta, light_cfg.distill.temperature),
                 description="MeL")
    test_auc, flops, latency = _evaluate(model, rows, light_cfg.latency_repeats)
    return LightResult(rows.scenario, "MeL", test_auc, flops["total"], flops["total"], latency, None,
                       time.perf_counter() - t0,
                       {"n_train": len(rows.train), "n_transfer": n_transfer, "n_test": len(rows.test),
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


def _ours_once(teacher_model: nn.Module, rows: ScenarioRows, model_cfg: HeavyConfig, light_cfg: LightConfig,
               budget: int, selection, pretrained: dict[str, torch.Tensor] | None) -> _OursRun:
    """One search, derivation and training of Ours with ``light_cfg``'s seeds (see ``run_ours``)."""
    schema = rows.transforms.schema
    train_rows, n_transfer = _training_rows(teacher_model, rows, light_cfg.transfer.rows, light_cfg.transfer.seed)
    train_cfg, search_cfg = scaled_for_rows(light_cfg, len(train_rows), retrain=True)

    torch.manual_seed(search_cfg.seed)
    supernet = build_supernet_model(schema, model_cfg, light_cfg.space)
    if pretrained is not None:
        supernet.load_state_dict(pretrained)
    elif light_cfg.init_from_teacher:
        inherit_shared_parts(supernet, teacher_model)

    # few-row scenarios may have no VALID rows; the architecture then steps on TRAIN (recorded)
    arch_split = rows.valid if rows.valid is not None else rows.train
    supernet.to(resolve_device(light_cfg.train.device))
    with torch_threads(light_cfg.train.threads):
        searched = search(supernet, train_rows, arch_split, search_cfg,
                          teacher_train=train_rows.teacher_logits,
                          teacher_valid=teacher_logits(teacher_model, arch_split), budget=budget,
                          distill=light_cfg.distill)
    derivation = derive(supernet, budget)
    from_supernet = light_cfg.retrain.from_supernet or pretrained is not None
    model, result = train_light(derivation.genotypes, schema, model_cfg, train_rows, rows.valid, teacher_model,
                                train_cfg, delta=light_cfg.distill.delta, temperature=light_cfg.distill.temperature,
                                supernet=supernet.cpu() if from_supernet else None,
                                init_from=teacher_model if light_cfg.init_from_teacher and pretrained is None else None,
                                description="Ours", score_initial=pretrained is not None, valid_score=selection)
    return _OursRun(model, result, derivation, searched, n_transfer)


def run_ours(teacher_model: nn.Module, rows: ScenarioRows, model_cfg: HeavyConfig, light_cfg: LightConfig,
             out: str | Path | None = None, pretrained: dict[str, torch.Tensor] | None = None) -> LightResult:
    """Ours: budget-limited search, derivation within the MeL budget, training with distillation.

    On a scenario with fewer than ``light.restarts.below_rows`` TRAIN rows this runs
    ``light.restarts.runs`` times with shifted seeds and keeps the run whose model scores best on
    VALID (``info["restart_scores"]``, ``info["restart_kept"]``); only that one is written to ``out``.

    Args:
        teacher_model: the scenario-specific heavy model θu (not modified; put in eval mode).
        rows: the scenario's rows under θu's transforms.
        model_cfg: θu's config (profile encoder, head and embeddings of the light model).
        light_cfg: light settings (space, search, budget fraction, distillation, training).
        out: when set, the model folder (``load_model_dir``) is written there, with
            ``genotypes.json`` and one ``genotype_<sequence>.png`` per sequence beside its files.
        pretrained: a pooled pre-trained supernet's state dict (``longtail.nas.pretrain``): the
            search starts from it instead of from θu's shared parts, and the derived model is
            fine-tuned from the searched supernet's weights.

    Returns:
        The ``LightResult``; ``flops <= budget`` always holds.

    Raises:
        InfeasibleBudgetError: the smallest architecture of the space exceeds the budget (raised
            before any search, naming the scenario, the budget and the MeL FLOPs).
        ValueError: ``light.pretrain.epochs`` > 0 but no ``pretrained`` supernet was given.
    """
    t0 = time.perf_counter()
    scenario = rows.scenario
    if light_cfg.pretrain.epochs > 0 and pretrained is None:
        raise ValueError(f"scenario {scenario!r}: light.pretrain.epochs is {light_cfg.pretrain.epochs} but no "
                         "pre-trained supernet was passed; get one with longtail.nas.pretrain.pretrained_supernet, "
                         "or set light.pretrain.epochs: 0 to search from scratch")
    schema = rows.transforms.schema
    mel_flops, budget = mel_budget(schema, model_cfg, light_cfg)
    teacher_model.eval()
    selection = _selection_score(teacher_model, rows, light_cfg)
    try:  # fail before spending the search: derivation is exact, so feasibility does not depend on it
        derive(build_supernet_model(schema, model_cfg, light_cfg.space), budget)
    except InfeasibleBudgetError as e:
        raise InfeasibleBudgetError(
            f"scenario {scenario!r}: budget {budget:,} FLOPs = {light_cfg.budget_fraction_of_mel} x MeL FLOPs "
            f"{mel_flops:,}; {e}. Raise light.budget_fraction_of_mel or shrink light.space") from e
    few = rows.valid is not None and len(rows.train) < light_cfg.restarts.below_rows
    runs = light_cfg.restarts.runs if few else 1
    best, scores = None, []
    for k in range(runs):
        cfg_k = light_cfg if k == 0 else dataclasses.replace(
            light_cfg, transfer=dataclasses.replace(light_cfg.transfer, seed=light_cfg.transfer.seed + k),
            train=dataclasses.replace(light_cfg.train, seed=light_cfg.train.seed + k))
        run = _ours_once(teacher_model, rows, model_cfg, cfg_k, budget, selection, pretrained)
        if runs > 1:  # the kept epoch's VALID score as fit recorded it; a run without one never wins
            kept = next((h for h in run.result.history if h["epoch"] == run.result.best_epoch), {})
            score = kept["valid_score"] if "valid_score" in kept else kept.get("valid_auc")
            run.score = -math.inf if score is None or not math.isfinite(score) else float(score)
            scores.append(run.score)
        if best is None or run.score > best.score:
            best = run
    model, result, derivation, searched = best.model, best.result, best.derivation, best.searched
    test_auc, flops, latency = _evaluate(model, rows, light_cfg.latency_repeats)
    if flops["total"] > budget:  # derive's FLOPs must be count_flops'; a mismatch is a bug, not a data issue
        raise AssertionError(f"derived model has {flops['total']:,} FLOPs > budget {budget:,} (derive said "
                             f"{derivation.flops:,})")
    genotypes = {name: g.to_dict() for name, g in derivation.genotypes.items()}
    info = {"n_train": len(rows.train), "n_transfer": best.n_transfer, "n_test": len(rows.test),
            "best_valid_auc": result.best_valid_auc,
            "epochs_run": result.epochs_run, "flops_by_part": flops, "mel_flops": mel_flops,
            "within_budget": True, "log_prob": derivation.log_prob, "search_steps": len(searched.history),
            "arch_split": VALID if rows.valid is not None else TRAIN, "pretrained": pretrained is not None,
            "argmax_genotypes": {k: g.to_dict() for k, g in searched.argmax_genotypes.items()},
            "restarts": runs, "restart_scores": scores, "restart_kept": scores.index(best.score) if scores else 0}
    if out is not None:
        _save_ours(Path(out), model, rows.transforms, model_cfg, derivation.genotypes, scenario, flops["total"],
                   budget, info)
    return LightResult(scenario, "Ours", test_auc, flops["total"], budget, latency, genotypes,
                       time.perf_counter() - t0, info, model)


def _save_ours(out: Path, model: nn.Module, transforms: FittedTransforms, model_cfg: HeavyConfig,
               genotypes: dict[str, Genotype], scenario: str, flops: int, budget: int, info: dict[str, Any]) -> None:
    """One folder: the model (``model.json`` written last) with its genotypes and their pictures."""
    out.mkdir(parents=True, exist_ok=True)
    gdict = {name: g.to_dict() for name, g in genotypes.items()}
    atomic_write_json(out / "genotypes.json", {"scenario": scenario, "flops": flops, "budget": budget,
                                               "mel_flops": info["mel_flops"], "pretrained": info["pretrained"],
                                               "n_transfer": info["n_transfer"], "genotypes": gdict})
    for name, g in genotypes.items():
        draw_genotype(g, out / f"genotype_{safe_name(name)}.png",
                      title=f"{scenario} / {name}: {flops:,} FLOPs (budget {budget:,})")
    save_model_dir(out, model, transforms, model_cfg,
                   {"kind": "light", "genotypes": gdict, "scenario": scenario, "flops": flops, "budget": budget})


def heavy_costs(teacher: nn.Module, rows: ScenarioRows, repeats: int) -> tuple[int, float]:
    """FLOPs per sample and median batch-1 CPU latency (ms) of the heavy model, on one TEST row of the scenario."""
    return count_flops(teacher)["total"], measure_latency(teacher.cpu(), rows.test.index(slice(0, 1)),
                                                          repeats=repeats)["p50_ms"]
