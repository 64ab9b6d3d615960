"""Agnostic → specific: fine-tune a copy of θ0 on a scenario's support set, feed its query loss back.

For scenario ``u`` (paper Fig. 5 and section III.C):

1. its training rows are split into a support set ``D_u^s`` and a query set ``D_u^q``
   (`longtail.data.scenario_rows.ScenarioRows`, ``MetaConfig.query_frac``); its validation rows
   serve for early stopping and its test rows for evaluation;
2. a copy of θ0 is fine-tuned on ``D_u^s`` into θu: Eq. 1 is one SGD step, a real fine-tune runs
   several epochs of Adam with early stopping (``MetaConfig.finetune``); ``inner="one_step"``
   runs Eq. 1 literally (one full-batch SGD step of rate ``gamma``);
3. the query loss ``L(D_u^q, θu)`` gives the feedback: its gradient at θu (first order, the
   default), or, for one inner step, the exact ``∇θ0 L(D_u^q, θ0 − γ∇L(D_u^s, θ0))``
   (``second_order=True``, differentiated through the inner step with ``torch.func``);
4. the θ0 store applies it with the conservative rule of `longtail.meta.update` (Eq. 2 / 3).

θ0 and every θu share one set of fitted transforms (fitted on the initial scenarios' training
rows), so parameters are comparable; a new scenario's rows go through θ0's transforms (unseen
categories map to the out-of-vocabulary index).

`specialise` is a pure function of plain inputs (a state dict, configs, the scenario's rows);
`longtail.onboarding` wires it with the light model and the references, once. `meta_train` is the paper's
"further extension": θ0 refreshed on the stored rows of every scenario seen so far.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call

from longtail.data.prepared import PreparedData
from longtail.data.scenario_rows import ScenarioRows
from longtail.data.splits import TRAIN, VALID
from longtail.data.tensors import Batch
from longtail.data.transforms import FittedTransforms
from longtail.meta.server import Theta0Server
from longtail.meta.update import MetaUpdate, UpdateRule, make_update_id
from longtail.metrics import auc, predict_proba
from longtail.models.heavy import HeavyConfig, HeavyModel, build_model
from longtail.train import TrainConfig, TrainResult, bce_loss, fit, resolve_device, torch_threads

Params = dict[str, torch.Tensor]

__all__ = ["MetaConfig", "Specialised", "create_theta0_store", "meta_train", "one_step_meta_gradient",
           "query_gradient", "refresh_theta0", "specialise", "theta0_context"]


def _finetune_default() -> TrainConfig:
    return TrainConfig(epochs=5, batch_size=512, lr=1e-3, patience=2)


def _refresh_default() -> TrainConfig:
    return TrainConfig(epochs=2, batch_size=512, lr=1e-3, patience=1)


@dataclass(frozen=True)
class MetaConfig:
    """Settings of onboarding scenarios onto θ0 (fine-tune, feedback, MeH protocol).

    Args:
        query_frac: share of a scenario's training rows held out as its query set.
        finetune: the inner fine-tune of θu on the support set (epochs, lr, patience, max_steps;
            early stopping on the scenario's validation rows).
        inner: ``finetune`` (the above) or ``one_step`` (Eq. 1 literally: one full-batch SGD
            step of rate ``gamma`` on the support set, without dropout).
        gamma: γ of Eq. 1, used when ``inner="one_step"``.
        second_order: differentiate the query loss through the inner step (exact Eq. 2 with
            θu = θ0 − γ∇L_s(θ0)); requires ``inner="one_step"``.
        update: η, trust region and staleness rule of the θ0 store (see `longtail.meta.update`).
        n_initial: scenarios drawn at random to initialise θ0 (the paper uses 8).
        seed: seed of the support/query split, the initial draw and the arrival order.
        refresh: training settings of the periodic meta-train refresh of θ0.

    Example:
        >>> cfg = MetaConfig(update=UpdateRule(eta=1e-3), finetune=TrainConfig(epochs=3))
        >>> MetaConfig(inner="one_step", second_order=True, gamma=0.05).second_order
        True
    """

    query_frac: float = 0.3
    finetune: TrainConfig = field(default_factory=_finetune_default)
    inner: Literal["finetune", "one_step"] = "finetune"
    gamma: float = 1e-2
    second_order: bool = False
    update: UpdateRule = field(default_factory=UpdateRule)
    n_initial: int = 8
    seed: int = 0
    refresh: TrainConfig = field(default_factory=_refresh_default)

    def __post_init__(self) -> None:
        if not 0 < self.query_frac < 1:
            raise ValueError(f"query_frac must be in (0, 1), got {self.query_frac}")
        if self.inner not in ("finetune", "one_step"):
            raise ValueError(f"inner must be 'finetune' or 'one_step', got {self.inner!r}")
        if self.second_order and self.inner != "one_step":
            raise ValueError("second_order=True differentiates through exactly one inner SGD step: "
                             "set inner='one_step' (and gamma), or keep second_order=False")
        if not self.gamma > 0:
            raise ValueError(f"gamma must be > 0, got {self.gamma}")
        if self.n_initial < 1:
            raise ValueError(f"n_initial must be >= 1, got {self.n_initial}")


# ---------------------------------------------------------------------- gradients
def _trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def query_gradient(model: torch.nn.Module, query: Batch, *, device: torch.device | str = "cpu",
                   batch_size: int = 4096) -> tuple[dict[str, torch.Tensor], float]:
    """First-order feedback: ``∇θ L(D^q, θ)`` at the model's current parameters (θu).

    The loss is the mean BCE over all query rows, in eval mode (no dropout: the feedback is a
    deterministic function of θu), accumulated over chunks of ``batch_size`` rows.

    Returns:
        (parameter name -> gradient on CPU, the query loss).
    """
    if len(query) == 0:
        raise ValueError("the query set is empty")
    params = _trainable(model)
    was_training = model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    n, total = len(query), 0.0
    for start in range(0, n, batch_size):
        part = query.index(slice(start, start + batch_size)).to(device)
        logits = model(part)  # (B,)
        loss = F.binary_cross_entropy_with_logits(logits, part.label, reduction="sum") / n
        loss.backward()
        total += float(loss.detach())
    grads = {k: (p.grad.detach().cpu().clone() if p.grad is not None else torch.zeros_like(p, device="cpu"))
             for k, p in params.items()}
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return grads, total


def one_step_meta_gradient(model: torch.nn.Module, support: Batch, query: Batch, gamma: float, *,
                           second_order: bool) -> tuple[Params, Params, float]:
    """Eq. 1 as one full-batch SGD step, then the gradient of the query loss (Eq. 2).

    ``θu = θ0 − γ ∇θ0 L(D^s, θ0)``; first order returns ``∇θ L(D^q, θ)|θ=θu``, second order the
    exact ``∇θ0 L(D^q, θu(θ0))`` (through the inner step, Hessian-vector terms included). Both run
    without dropout (eval mode) so that they are deterministic functions of θ0. The model's own
    parameters are not modified.

    Args:
        model: θ0 (any dtype / device; the batches must match it).
        support / query: the scenario's support and query tensors.
        gamma: γ, the inner learning rate.
        second_order: differentiate through the inner step.

    Returns:
        (gradient by parameter name, θu by parameter name (detached), query loss).
    """
    params = {k: p.detach().requires_grad_(True) for k, p in _trainable(model).items()}
    buffers = dict(model.named_buffers())
    names = list(params)
    was_training = model.training
    model.eval()
    # cuDNN's RNN kernels have no double backward; the native ones do
    with torch.backends.cudnn.flags(enabled=False) if second_order else contextlib.nullcontext():
        loss_s = bce_loss(functional_call(model, {**params, **buffers}, (support,)), support.label)
        g_s = torch.autograd.grad(loss_s, [params[k] for k in names], create_graph=second_order,
                                  allow_unused=True)
        theta_u = {k: params[k] - gamma * g if g is not None else params[k]
                   for k, g in zip(names, g_s, strict=True)}
        if not second_order:
            theta_u = {k: v.detach().requires_grad_(True) for k, v in theta_u.items()}
        loss_q = bce_loss(functional_call(model, {**theta_u, **buffers}, (query,)), query.label)
        wrt = params if second_order else theta_u
        g_q = torch.autograd.grad(loss_q, [wrt[k] for k in names], allow_unused=True)
    model.train(was_training)
    grads = {k: (g.detach() if g is not None else torch.zeros_like(params[k]))
             for k, g in zip(names, g_q, strict=True)}
    return grads, {k: v.detach() for k, v in theta_u.items()}, float(loss_q.detach())


# ---------------------------------------------------------------------- θu for one scenario
@dataclass
class Specialised:
    """A scenario-specific heavy model θu and its feedback to θ0.

    Attributes:
        scenario: the scenario.
        theta_u: the scenario-specific heavy model's state dict (CPU).
        query_gradient: parameter name -> feedback gradient (CPU), the ``g_u`` of Eq. 2.
        base_version: the θ0 version it was computed against.
        update_id: stable id of the feedback (same scenario and base version: same id).
        metrics: sizes, query loss, validation/test AUC of θ0 and θu, fine-tune epochs, seconds.
        record: the θ0 store's ledger record, once the feedback was submitted.
    """

    scenario: str
    theta_u: dict[str, torch.Tensor]
    query_gradient: dict[str, torch.Tensor]
    base_version: int
    update_id: str
    metrics: dict[str, Any]
    record: dict[str, Any] | None = None

    def to_update(self) -> MetaUpdate:
        """The feedback as a `MetaUpdate` for `Theta0Server.submit` / `apply_batch`."""
        info = {k: self.metrics[k] for k in ("n_support", "n_query", "query_loss") if k in self.metrics}
        return MetaUpdate(self.update_id, self.scenario, self.base_version, self.query_gradient, info)

    def build_model(self, transforms: FittedTransforms, model_cfg: HeavyConfig) -> HeavyModel:
        """θu as a module (eval mode)."""
        model = build_model(transforms.schema, model_cfg)
        model.load_state_dict(self.theta_u)
        return model.eval()


def _auc_of(model: torch.nn.Module, batch: Batch | None, device: torch.device) -> float | None:
    if batch is None or len(batch) == 0:
        return None
    return auc(batch.label.numpy(), predict_proba(model, batch, device=device))


def specialise(theta0_state: Mapping[str, torch.Tensor], model_cfg: HeavyConfig, rows: ScenarioRows,
               meta_cfg: MetaConfig, *, base_version: int = 0, update_id: str | None = None) -> Specialised:
    """Copy θ0, fine-tune it on the scenario's support set into θu, and compute the feedback.

    Args:
        theta0_state: θ0's state dict (version ``base_version``); not modified.
        model_cfg: θ0's architecture.
        rows: the scenario's rows under θ0's transforms (support/query split by ``meta_cfg``).
        meta_cfg: fine-tune and feedback settings.
        base_version: θ0's version, recorded with the feedback (the store's staleness rule uses it).
        update_id: id of the feedback (default: `make_update_id(scenario, base_version)`).

    Returns:
        The `Specialised` θu with its query gradient and metrics; nothing is submitted.
    """
    t0 = time.perf_counter()
    scenario = rows.scenario
    support, query = rows.support, rows.query
    ft = meta_cfg.finetune
    device = resolve_device(ft.device)
    model = build_model(rows.transforms.schema, model_cfg)
    model.load_state_dict(theta0_state)
    model.to(device)
    metrics: dict[str, Any] = {"n_train": len(rows.train), "n_support": len(support), "n_query": len(query),
                               "n_valid": 0 if rows.valid is None else len(rows.valid),
                               "n_test": 0 if rows.test is None else len(rows.test)}
    with torch_threads(ft.threads):
        metrics["valid_auc_theta0"] = _auc_of(model, rows.valid, device)
        metrics["test_auc_theta0"] = _auc_of(model, rows.test, device)
        if meta_cfg.inner == "finetune":
            result = fit(model, support, rows.valid, ft, description=f"fine-tune {scenario}")
            metrics.update(epochs_run=result.epochs_run, best_epoch=result.best_epoch, steps=result.steps)
            grads, q_loss = query_gradient(model, query, device=device)
        else:
            grads, theta_u, q_loss = one_step_meta_gradient(model, support.to(device), query.to(device),
                                                            meta_cfg.gamma, second_order=meta_cfg.second_order)
            with torch.no_grad():
                for k, p in model.named_parameters():
                    if k in theta_u:
                        p.copy_(theta_u[k])
            metrics.update(epochs_run=1, best_epoch=1, steps=1)
        metrics["query_loss"] = q_loss
        metrics["valid_auc"] = _auc_of(model, rows.valid, device)
        metrics["test_auc"] = _auc_of(model, rows.test, device)
    metrics["seconds"] = time.perf_counter() - t0
    return Specialised(
        scenario=scenario,
        theta_u={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        query_gradient={k: v.detach().cpu() for k, v in grads.items()},
        base_version=base_version,
        update_id=update_id or make_update_id(scenario, base_version),
        metrics=metrics,
    )


# ---------------------------------------------------------------------- θ0 stores of heavy models
def create_theta0_store(root, model: torch.nn.Module, transforms: FittedTransforms, model_cfg: HeavyConfig,
                        rule: UpdateRule, scenarios: Sequence[str]) -> Theta0Server:
    """Start a θ0 store whose version 0 is ``model``, recording its architecture and transforms.

    Args:
        root: the store folder (must not hold a store yet).
        model: the initial agnostic heavy model θ0.
        transforms: its fitted transforms (shared by every θu onboarded from the store).
        model_cfg: its architecture.
        rule: the update rule of the store.
        scenarios: the initial scenarios θ0 was trained on.

    Returns:
        The `Theta0Server`.
    """
    info = {"kind": "heavy", "model_config": model_cfg.to_dict(), "transforms": transforms.to_dict()}
    return Theta0Server.create(root, model.state_dict(), rule, info=info, scenarios=list(scenarios))


def theta0_context(server: Theta0Server) -> tuple[FittedTransforms, HeavyConfig]:
    """θ0's transforms and architecture, as recorded by `create_theta0_store`."""
    if "transforms" not in server.info or "model_config" not in server.info:
        raise ValueError(f"{server.root}: the store does not record θ0's transforms and model config; "
                         "create it with create_theta0_store")
    return (FittedTransforms.from_dict(server.info["transforms"]),
            HeavyConfig.from_dict(server.info["model_config"]))


# ---------------------------------------------------------------------- meta-train (periodic refresh)
def meta_train(data: PreparedData, scenarios_seen: Sequence[str], theta0_state: Mapping[str, torch.Tensor],
               transforms: FittedTransforms, model_cfg: HeavyConfig,
               train_cfg: TrainConfig) -> tuple[dict[str, torch.Tensor], TrainResult]:
    """Refresh θ0 on the stored training rows of every scenario seen so far.

    A few epochs of `fit` from the current θ0 (not from scratch) on the pooled training rows,
    early-stopped on the pooled validation rows; the transforms stay θ0's.

    Args:
        data: the stored rows.
        scenarios_seen: the scenarios θ0 has learnt from (initial ones and onboarded ones).
        theta0_state: the current θ0.
        transforms / model_cfg: θ0's transforms and architecture.
        train_cfg: epochs, learning rate, patience of the refresh.

    Returns:
        (the refreshed state dict on CPU, the training result).
    """
    scenarios = [s for s in dict.fromkeys(scenarios_seen) if s in set(data.scenarios)]
    if not scenarios:
        raise ValueError("meta_train: none of the scenarios seen so far has rows in the data")
    train_df = data.rows(TRAIN, scenarios)
    valid_df = data.rows(VALID, scenarios)
    model = build_model(transforms.schema, model_cfg)
    model.load_state_dict(copy.deepcopy(dict(theta0_state)))
    valid = transforms.transform(valid_df) if len(valid_df) else None
    result = fit(model, transforms.transform(train_df), valid, train_cfg, description="meta-train θ0")
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, result


def refresh_theta0(server: Theta0Server, data: PreparedData, train_cfg: TrainConfig | None = None, *,
                   scenarios: Sequence[str] | None = None) -> dict[str, Any]:
    """The meta-train command: refresh the store's current θ0 on all scenarios seen, commit a version.

    Feedback that arrives while it trains is kept (see `Theta0Server.commit_refresh`).

    Args:
        server: the θ0 store (made by `create_theta0_store`).
        data: the stored rows of the scenarios.
        train_cfg: refresh settings (default ``MetaConfig().refresh``).
        scenarios: train on these instead of ``server.scenarios_seen()``.

    Returns:
        The new version's ledger record, with ``train`` (epochs run, best validation AUC) added.
    """
    train_cfg = train_cfg or MetaConfig().refresh
    transforms, model_cfg = theta0_context(server)
    base_version, state = server.load()
    seen = list(scenarios) if scenarios is not None else server.scenarios_seen()
    seen = [s for s in seen if s in set(data.scenarios)]
    new_state, result = meta_train(data, seen, state, transforms, model_cfg, train_cfg)
    record = server.commit_refresh(new_state, base_version, scenarios=seen)
    return {**record, "train": {"epochs_run": result.epochs_run, "best_valid_auc": result.best_valid_auc,
                                "rows": int(np.sum([len(data.rows(TRAIN, [s])) for s in seen]))}}
