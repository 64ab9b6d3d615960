"""The update of θ0 from query feedback (paper Eq. 2 and 3), conservative and staleness-aware.

A worker onboarding scenario ``u`` fine-tunes a copy of θ0 version ``b_u`` into θu and sends back
the query gradient ``g_u = ∇θ L(D_u^q, θ)`` evaluated at ``θ = θu`` (first order), or
``∇θ0 L(D_u^q, θ0 − γ∇L(D_u^s, θ0))`` (second order, one inner step). The server applies it to
its *current* version ``c`` with this rule (``‖·‖`` is the L2 norm over all parameter tensors of
the gradient, concatenated; ``θ0^c`` is the current version)::

    s_u      = c − b_u                                      staleness (versions since b_u)
    dropped  if s_u > max_staleness or g_u is not finite    (recorded with the reason)
    η_u      = η · staleness_decay ** s_u                   rebase: older feedback counts less
    step_u   = η_u · g_u
    k_u      = min(1, max_update_frac · ‖θ0^c‖ / ‖step_u‖)  trust region of one scenario
    θ0^{c+1} = θ0^c − Σ_u k_u · step_u                      one u: Eq. 2; U at once: Eq. 3

So one scenario moves θ0 by at most ``max_update_frac · ‖θ0‖`` per update, whatever its size
or shift (the query loss is a per-scenario mean, so a huge scenario weighs no more than a small
one in Eq. 3 either), and a stale gradient is applied to the newer version it is rebased onto,
scaled down geometrically with its staleness, or dropped, explicitly, past ``max_staleness``.
With ``s_u = 0`` and a trust region that does not bind, the update is exactly Eq. 2:
``θ0 − η · g_u``.

Everything here is pure tensor arithmetic; the versioned store that applies it under a lock is
`longtail.meta.server`.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["APPLIED", "DROPPED", "DUPLICATE", "MetaUpdate", "StepPlan", "UpdateRule", "apply_steps",
           "make_update_id", "param_norm", "plan_step"]

APPLIED, DROPPED, DUPLICATE = "applied", "dropped", "duplicate"
_ID = re.compile(r"^[A-Za-z0-9._@+-]{1,200}$")


@dataclass(frozen=True)
class UpdateRule:
    """How query feedback moves θ0 (see the module docstring for the exact formulas).

    Args:
        eta: η of Eq. 2/3, the step on the query gradient; conservative by design (the paper
            sets it so that no later scenario dominates θ0).
        max_update_frac: ρ, the trust region: one scenario's step is scaled down to at most
            ``ρ · ‖θ0‖`` (0 or a negative value: no trust region).
        staleness_decay: factor per version of staleness applied to η when a gradient computed
            against an older version is rebased onto the current one (1: no decay).
        max_staleness: gradients more than this many versions old are dropped (recorded).
    """

    eta: float = 1e-2
    max_update_frac: float = 1e-2
    staleness_decay: float = 0.5
    max_staleness: int = 4

    def __post_init__(self) -> None:
        if not self.eta > 0:
            raise ValueError(f"eta must be > 0, got {self.eta}")
        if not 0 < self.staleness_decay <= 1:
            raise ValueError(f"staleness_decay must be in (0, 1], got {self.staleness_decay}")
        if self.max_staleness < 0:
            raise ValueError(f"max_staleness must be >= 0, got {self.max_staleness}")


@dataclass
class MetaUpdate:
    """One scenario's feedback to θ0.

    Attributes:
        update_id: unique and stable id (a retried worker sends the same id: applied once).
        scenario: the scenario it comes from.
        base_version: the θ0 version the gradient was computed against.
        gradient: parameter name -> gradient tensor (CPU), the ``g_u`` of the module docstring.
        info: plain, JSON-safe facts recorded in the ledger (query loss, sizes, ...).
    """

    update_id: str
    scenario: str
    base_version: int
    gradient: dict[str, torch.Tensor]
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _ID.match(self.update_id):
            raise ValueError(f"update_id {self.update_id!r}: use 1-200 characters of [A-Za-z0-9._@+-] "
                             "(make_update_id builds one from any scenario name)")
        if self.base_version < 0:
            raise ValueError(f"base_version must be >= 0, got {self.base_version}")


def make_update_id(scenario: str, base_version: int, tag: str = "") -> str:
    """A stable id for the feedback of ``scenario`` computed against ``base_version``.

    The same scenario onboarded against the same version (a retried pod) gets the same id, so
    the server applies it once; a short hash keeps ids of names that sanitise alike distinct.
    """
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", scenario)[:80] or "_"
    digest = hashlib.sha256(f"{scenario}\0{tag}".encode()).hexdigest()[:8]
    suffix = "+" + re.sub(r"[^A-Za-z0-9._-]", "_", tag)[:40] if tag else ""
    return f"{safe}-{digest}@v{base_version}{suffix}"


def param_norm(tensors: Mapping[str, torch.Tensor], names: Sequence[str] | None = None) -> float:
    """L2 norm of the named tensors concatenated (float64 accumulation)."""
    names = list(tensors) if names is None else list(names)
    total = 0.0
    for n in names:
        total += float(tensors[n].detach().double().pow(2).sum())
    return math.sqrt(total)


@dataclass
class StepPlan:
    """What the rule decided for one update against one current version (JSON-safe fields)."""

    status: str  # APPLIED or DROPPED
    staleness: int
    eta_eff: float = 0.0  # η_u
    scale: float = 0.0  # k_u
    step_norm: float = 0.0  # ‖k_u · η_u · g_u‖, the distance this update moves θ0
    grad_norm: float = 0.0  # ‖g_u‖
    theta_norm: float = 0.0  # ‖θ0^c‖
    reason: str = ""

    @property
    def coef(self) -> float:
        """The multiplier of ``g_u`` in ``θ0 − coef · g_u``."""
        return self.eta_eff * self.scale

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def check_gradient(theta: Mapping[str, torch.Tensor], gradient: Mapping[str, torch.Tensor]) -> None:
    """Raise ``ValueError`` unless every gradient tensor names a floating θ0 tensor of its shape."""
    for name, g in gradient.items():
        if name not in theta:
            raise ValueError(f"gradient names {name!r}, which θ0 does not have (another architecture?)")
        t = theta[name]
        if tuple(g.shape) != tuple(t.shape):
            raise ValueError(f"gradient {name!r} has shape {tuple(g.shape)}, θ0 has {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"θ0 tensor {name!r} is not floating point; it takes no gradient")


def plan_step(update: MetaUpdate, current_version: int, theta: Mapping[str, torch.Tensor],
              rule: UpdateRule) -> StepPlan:
    """Decide how ``update`` applies to θ0 version ``current_version`` (weights ``theta``).

    Args:
        update: the feedback, computed against ``update.base_version``.
        current_version: the version it is applied to (>= its base version).
        theta: the current θ0 state dict.
        rule: η, trust region and staleness settings.

    Returns:
        A `StepPlan`: applied (with η_u, k_u and the step's norm) or dropped (with the reason).

    Raises:
        ValueError: when the gradient does not fit θ0 or comes from a version not yet made.
    """
    check_gradient(theta, update.gradient)
    staleness = current_version - update.base_version
    if staleness < 0:
        raise ValueError(f"update {update.update_id}: base version {update.base_version} is newer than the "
                         f"current version {current_version}; it was computed against another θ0 store")
    theta_norm = param_norm(theta, list(update.gradient))
    if staleness > rule.max_staleness:
        return StepPlan(DROPPED, staleness, theta_norm=theta_norm,
                        reason=f"stale: computed against v{update.base_version}, current v{current_version}; "
                               f"staleness {staleness} > max_staleness {rule.max_staleness}")
    grad_norm = param_norm(update.gradient)
    if not math.isfinite(grad_norm):
        return StepPlan(DROPPED, staleness, theta_norm=theta_norm, grad_norm=grad_norm,
                        reason="non-finite gradient")
    eta_eff = rule.eta * rule.staleness_decay**staleness
    raw = eta_eff * grad_norm
    scale = 1.0
    if rule.max_update_frac > 0 and raw > rule.max_update_frac * theta_norm:
        scale = rule.max_update_frac * theta_norm / raw
    return StepPlan(APPLIED, staleness, eta_eff=eta_eff, scale=scale, step_norm=raw * scale,
                    grad_norm=grad_norm, theta_norm=theta_norm)


def apply_steps(theta: Mapping[str, torch.Tensor],
                steps: Sequence[tuple[float, Mapping[str, torch.Tensor]]]) -> dict[str, torch.Tensor]:
    """``θ − Σ coef · g`` over ``steps`` (pairs of coef and gradient), as a new state dict.

    Tensors without a gradient (buffers, frozen parameters) are copied unchanged.
    """
    new = {k: v.detach().clone() for k, v in theta.items()}
    for coef, grad in steps:
        for name, g in grad.items():
            new[name] = new[name] - coef * g.to(new[name].dtype)
    return new
