"""Onboarding one scenario: the whole flow, written once.

    θ0 ──copy, fine-tune on the support set──► θu ──query loss──► feedback for θ0 (Eq. 2)
                                               │ teacher
                                               ▼
                     budget-limited NAS + distillation ──► Ours, the light model that serves
                     (optional references: MeL, the pre-defined light model; SinH, a heavy
                      model trained on the scenario alone)

`onboard` is the one function that wires these steps. The pipelines' onboarding stage, the CLI
(``longtail meta run``, ``longtail nas light``) and the benchmarks call it with a `Recipe`; the
scenario's rows come prepared once (`ScenarioRows`, under θ0's transforms, which θu and its light
models share). Every choice inside (kept epoch, restart, architecture) is made on VALID rows;
TEST rows are only scored for the report.

Example:
    >>> theta0 = Theta0.from_model_dir("runs/meh/theta0_final")
    >>> rows = ScenarioRows.build(data, "OO", theta0.transforms, query_frac=0.3, seed=0)
    >>> done = onboard(theta0, rows, Recipe.from_preset("paper"), out="runs/onboard/OO", references=("MeL",))
    >>> done.summary()["auc"]        # test AUC per strategy, for the report
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from longtail.data.prepared import PreparedData
from longtail.data.scenario_rows import ScenarioRows
from longtail.data.transforms import FittedTransforms
from longtail.io import atomic_path, atomic_write_json
from longtail.meta.finetune import Specialised, specialise
from longtail.metrics import auc, predict_proba
from longtail.model_folder import load_model_dir, save_model_dir
from longtail.models.heavy import HeavyConfig, build_model
from longtail.nas.strategies import LightResult, heavy_costs, run_mel, run_ours
from longtail.onboarding.recipe import Recipe
from longtail.train import TrainConfig
from longtail.train_job import evaluate_heavy, train_heavy

__all__ = ["REFERENCES", "Onboarding", "Theta0", "onboard", "sinh_reference"]

REFERENCES = ("MeL", "SinH")


@dataclass(frozen=True)
class Theta0:
    """The agnostic heavy model an onboarding starts from.

    Attributes:
        state: its state dict.
        transforms: its fitted transforms (every θu and light model of it shares them).
        config: its architecture.
        version: its version in the θ0 store (0 for a model folder).
    """

    state: Mapping[str, torch.Tensor]
    transforms: FittedTransforms
    config: HeavyConfig
    version: int = 0

    @classmethod
    def from_store(cls, server: Any, version: int | None = None) -> Theta0:
        """θ0 of a `longtail.meta.server.Theta0Server` (the current version by default)."""
        from longtail.meta.finetune import theta0_context

        transforms, config = theta0_context(server)
        v, state = server.load(version)
        return cls(state, transforms, config, v)

    @classmethod
    def from_model_dir(cls, path: str | Path, version: int = 0) -> Theta0:
        """θ0 saved as a model folder (``save_model_dir``)."""
        model, transforms, info = load_model_dir(path)
        return cls(model.state_dict(), transforms, HeavyConfig.from_dict(info["config"]), version)

    def build(self) -> nn.Module:
        """θ0 as a module (eval mode)."""
        model = build_model(self.transforms.schema, self.config)
        model.load_state_dict(dict(self.state))
        return model.eval()


@dataclass
class Onboarding:
    """Everything one onboarding produced.

    Attributes:
        scenario: the scenario.
        theta0_version: the θ0 version it started from.
        theta_u: the scenario-specific heavy model (the teacher of the light models).
        specialised: θu's fine-tune and its feedback for θ0 (``None`` when θu was given).
        ours: the light model (``None`` when the light step was off).
        mel: the MeL reference (``None`` unless asked for).
        sinh: the SinH reference's facts (``None`` unless asked for).
        heavy_flops / heavy_latency_ms: θu's FLOPs per sample and batch-1 CPU latency.
        valid_auc: VALID AUC per model (what selection sees; ``None`` when undefined).
        paths: the artifacts written (``theta_u``, ``ours``, ``feedback``), when ``out`` was set.
        seconds: wall time per step.
        n_rows: TRAIN, VALID and TEST row counts of the scenario.
    """

    scenario: str
    theta0_version: int
    theta_u: nn.Module
    specialised: Specialised | None
    ours: LightResult | None
    mel: LightResult | None
    sinh: dict[str, Any] | None
    heavy_flops: int
    heavy_latency_ms: float
    valid_auc: dict[str, float | None]
    paths: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    n_rows: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """A JSON-safe summary: TEST AUC per strategy (for reports), VALID AUC, FLOPs, latency, artifacts."""
        spec = self.specialised
        test_auc = {"theta0": spec.metrics["test_auc_theta0"] if spec else None,
                    "MeH": spec.metrics["test_auc"] if spec else None,
                    "Ours": _num(self.ours.auc) if self.ours else None}
        flops = {"heavy": self.heavy_flops}
        latency = {"heavy": self.heavy_latency_ms}
        if self.ours is not None:
            flops.update(Ours=self.ours.flops, budget=self.ours.budget, MeL=self.ours.info["mel_flops"])
            latency["Ours"] = self.ours.latency_ms
        if self.mel is not None:
            test_auc["MeL"] = _num(self.mel.auc)
            flops["MeL"] = self.mel.flops
            latency["MeL"] = self.mel.latency_ms
        if self.sinh is not None:
            test_auc["SinH"] = self.sinh["auc"]
            self.valid_auc.setdefault("SinH", self.sinh["valid_auc"])
        out = {"scenario": self.scenario, "theta0_version": self.theta0_version,
               "update_id": spec.update_id if spec else None, **{f"n_{k}": v for k, v in self.n_rows.items()},
               "auc": test_auc, "valid_auc": self.valid_auc, "flops": flops, "latency_ms": latency,
               "genotypes": self.ours.genotypes if self.ours else None,
               "restarts": ({k: self.ours.info[k] for k in ("restarts", "restart_kept", "restart_scores")}
                            if self.ours else None),
               "paths": self.paths, "seconds": self.seconds}
        return out


def _num(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and np.isnan(x)) else float(x)


def _valid_auc(model: nn.Module, rows: ScenarioRows) -> float | None:
    if rows.valid is None:
        return None
    return auc(rows.valid.label.numpy(), predict_proba(model, rows.valid))


def onboard(theta0: Theta0, rows: ScenarioRows, recipe: Recipe, *, out: str | Path | None = None,
            teacher: nn.Module | None = None, light: bool = True, references: Sequence[str] = (),
            pretrained: dict[str, torch.Tensor] | None = None, log=None) -> Onboarding:
    """Onboard one scenario: θu from θ0 and its feedback, then Ours, then the references asked for.

    Args:
        theta0: the agnostic model (its transforms must be ``rows``' transforms).
        rows: the scenario's rows, prepared once (`ScenarioRows.build` with ``recipe.meta``'s
            ``query_frac`` and ``seed``).
        recipe: every setting (a preset with overrides).
        out: when set, the artifacts are written there: ``theta_u/`` (model folder), ``feedback.pt``
            and ``feedback.json`` (θ0's feedback), ``ours/`` (the light model folder with its
            genotypes and their pictures).
        teacher: a θu fine-tuned before (e.g. by a MeH run): used instead of fine-tuning one here;
            no feedback is computed then.
        light: run the light step (Ours); off for the MeH protocol, which onboards θu only.
        references: references to train besides: ``MeL`` (the pre-defined light model distilled from
            θu) and ``SinH`` (θ0's architecture trained on this scenario's rows alone, with
            ``recipe.train`` and transforms fitted on its own TRAIN rows).
        pretrained: the light supernet pre-trained on the pooled rows with θ0 as teacher, which Ours
            continues from (required when ``recipe.light.pretrain.epochs`` > 0;
            `longtail.nas.pretrain.pretrained_supernet`).
        log: called with one line per step.

    Returns:
        The `Onboarding`.

    Raises:
        ValueError: an unknown reference, or transforms that are not θ0's.
    """
    unknown = sorted(set(references) - set(REFERENCES))
    if unknown:
        raise ValueError(f"references {unknown}: use any of {list(REFERENCES)}")
    if rows.transforms.to_dict() != theta0.transforms.to_dict():
        raise ValueError(f"scenario {rows.scenario!r}: its rows were transformed with other transforms than θ0's; "
                         "build them with ScenarioRows.build(data, scenario, theta0.transforms, ...)")
    say = log or (lambda _m: None)
    out = Path(out) if out is not None else None
    scenario, seconds, paths = rows.scenario, {}, {}
    model_cfg = theta0.config

    t0 = time.perf_counter()
    specialised = None
    if teacher is None:
        say(f"{scenario}: fine-tune θu from θ0 v{theta0.version}")
        specialised = specialise(theta0.state, model_cfg, rows, recipe.meta, base_version=theta0.version)
        teacher = specialised.build_model(rows.transforms, model_cfg)
        if out is not None:
            paths.update(_save_theta_u(out, teacher, rows.transforms, model_cfg, specialised))
    teacher.eval()
    seconds["theta_u"] = time.perf_counter() - t0

    ours = None
    if light:
        t0 = time.perf_counter()
        say(f"{scenario}: Ours (budget-limited NAS, distilled from θu)")
        ours = run_ours(teacher, rows, model_cfg, recipe.light, out=out / "ours" if out is not None else None,
                        pretrained=pretrained)
        if out is not None:
            paths["ours"] = str(out / "ours")
        seconds["ours"] = time.perf_counter() - t0

    mel = sinh = None
    if "MeL" in references:
        t0 = time.perf_counter()
        say(f"{scenario}: MeL reference (pre-defined light model distilled from θu)")
        mel = run_mel(teacher, rows, model_cfg, recipe.light)
        seconds["MeL"] = time.perf_counter() - t0
    if "SinH" in references:
        t0 = time.perf_counter()
        say(f"{scenario}: SinH reference (its own heavy model, θ0's architecture and training)")
        sinh = sinh_reference(rows.data, scenario, model_cfg, recipe.train)
        seconds["SinH"] = time.perf_counter() - t0

    heavy_flops, heavy_ms = heavy_costs(teacher, rows, recipe.light.latency_repeats)
    valid = {"theta0": specialised.metrics["valid_auc_theta0"] if specialised else None,
             "MeH": specialised.metrics["valid_auc"] if specialised else _valid_auc(teacher, rows)}
    if ours is not None:
        valid["Ours"] = _valid_auc(ours.model, rows)
    if mel is not None:
        valid["MeL"] = _valid_auc(mel.model, rows)
    return Onboarding(scenario, theta0.version, teacher, specialised, ours, mel, sinh, heavy_flops, heavy_ms, valid,
                      paths, seconds, {"train": len(rows.train), "valid": 0 if rows.valid is None else len(rows.valid),
                                       "test": len(rows.test)})


def sinh_reference(data: PreparedData, scenario: str, model_cfg: HeavyConfig, train_cfg: TrainConfig,
                   out: str | Path | None = None) -> dict[str, Any]:
    """SinH: a heavy model trained on one scenario's own rows, with transforms fitted on its TRAIN rows.

    Args:
        data: prepared rows holding the scenario's.
        scenario: the scenario.
        model_cfg: the architecture (θ0's, for a fair comparison with MeH).
        train_cfg: the training (θ0's).
        out: when set, the model folder (with resumable checkpoints) is written there.

    Returns:
        ``{"auc": test AUC or None, "valid_auc": best VALID AUC, "seconds": ..., "model": module}``.
    """
    trained = train_heavy(data, [scenario], model_cfg, train_cfg, out, description=f"SinH {scenario}")
    per = evaluate_heavy(trained.model, trained.transforms, data, [scenario])
    a = float(per["auc"].iloc[0]) if len(per) else None
    return {"auc": _num(a), "valid_auc": trained.result.best_valid_auc, "seconds": trained.seconds,
            "model": trained.model}


def _save_theta_u(out: Path, teacher: nn.Module, transforms: FittedTransforms, model_cfg: HeavyConfig,
                  spec: Specialised) -> dict[str, str]:
    """θu's model folder and its feedback (``feedback.pt`` first, ``feedback.json`` last)."""
    save_model_dir(out / "theta_u", teacher, transforms, model_cfg,
                   {"scenarios": [spec.scenario], "strategy": "MeH", "theta0_store_version": spec.base_version,
                    "valid_auc": spec.metrics["valid_auc"]})
    with atomic_path(out / "feedback.pt") as tmp:
        torch.save(spec.query_gradient, tmp)
    atomic_write_json(out / "feedback.json", {"update_id": spec.update_id, "scenario": spec.scenario,
                                              "base_version": spec.base_version, "info": spec.to_update().info})
    return {"theta_u": str(out / "theta_u"), "feedback": str(out / "feedback.json")}

