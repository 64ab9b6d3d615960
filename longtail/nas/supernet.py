"""GDAS supernet of the light behavior encoder and the budget-aware search (paper Eq. 4, 7-9).

Each decision (operation of a layer, input of a layer, each residual bit) has architecture
logits ``alpha``. In training mode every forward pass samples one architecture with the
Gumbel-softmax trick and the straight-through estimator (GDAS)::

    probs = softmax((log_softmax(alpha) + g) / tau),  g ~ Gumbel(0, 1)
    index = argmax(probs);  hardw = one_hot(index) - probs.detach() + probs
    out   = hardw[index] * op_index(x)          # only the sampled operation runs

so the forward value is that of the sampled architecture while ``alpha`` receives gradients
(Eq. 8 is the same form). Residual bits are 2-way decisions (off, on); their term
``hardw[on] * node`` is always added: its forward value is exactly 0 or 1 times the node, and
its gradient reaches both logits either way. In eval mode the most probable choices are used
(no noise). ``tau`` decays linearly (10 -> 0.1). Weights are updated on the train split (Adam
lr 1e-3) and ``alpha`` on the validation split (Adam lr 3e-4, betas (0.5, 0.999), wd 1e-3), in
alternation; the architecture loss adds ``lambda_flops`` times the expected FLOPs of the whole
model (differentiable in ``alpha``) divided by the budget (or by the largest FLOPs in the space).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from longtail.data.tensors import Batch, InputSchema
from longtail.models.flops import linear_flops, numeric_embedding_flops, profile_flops
from longtail.models.fused import LayerNorm, zero_padding
from longtail.models.heavy import HeavyConfig, HeavyModel, step_input_size
from longtail.models.light import AttentiveSum, encoder_fixed_flops, genotype_flops
from longtail.models.ops import create_op, op_flops
from longtail.nas.distill import DistillConfig, distill_loss
from longtail.nas.space import ArchSpace, Genotype, LayerGene
from longtail.train import tune_allocator

__all__ = [
    "SearchConfig",
    "SearchResult",
    "SuperEncoder",
    "arch_parameters",
    "build_supernet_model",
    "expected_model_flops",
    "gumbel_straight_through",
    "search",
    "super_encoders",
    "weight_parameters",
]

ARCH_PREFIX = "alpha_"


def gumbel_straight_through(logits: torch.Tensor, tau: float, max_tries: int = 100) -> tuple[torch.Tensor, int]:
    """Sample one choice of a decision with Gumbel-softmax and the straight-through estimator.

    Args:
        logits: (K,) architecture logits of one decision.
        tau: temperature (> 0).
        max_tries: resamples allowed when the noise makes ``probs`` inf or NaN.

    Returns:
        ``(hardw (K,), index)``: ``hardw`` is one-hot in value with gradients of the soft probs.
    """
    for _ in range(max_tries):
        gumbel = -torch.empty_like(logits).exponential_().log()  # Gumbel(0, 1)
        probs = torch.softmax((torch.log_softmax(logits, dim=-1) + gumbel) / tau, dim=-1)  # (K,)
        if torch.isfinite(probs).all():
            break
    else:
        raise FloatingPointError("Gumbel-softmax gave inf/NaN probabilities on every try; check alpha")
    index = int(probs.argmax())
    one_hot = torch.zeros_like(probs)
    one_hot[index] = 1.0
    return one_hot - probs.detach() + probs, index


class _SuperLayer(nn.Module):
    def __init__(self, ops: tuple[str, ...], hidden_size: int, num_heads: int):
        super().__init__()
        self.ops = nn.ModuleDict({name: create_op(name, hidden_size, num_heads) for name in ops})
        self.norm = LayerNorm(hidden_size)


class SuperEncoder(nn.Module):
    """Supernet of one sequence's behavior encoder: every candidate of ``space`` plus ``alpha``.

    Args:
        space: the search space.
        input_size: step width ``D_in``.

    Attributes:
        tau: Gumbel-softmax temperature (set by the search loop).
        last_genotype: the architecture of the last forward pass.

    Example:
        >>> enc = SuperEncoder(ArchSpace(num_layers=2, hidden_size=6), input_size=4)
        >>> enc(torch.randn(3, 8, 4), torch.ones(3, 8, dtype=torch.bool)).shape
        torch.Size([3, 6])
    """

    def __init__(self, space: ArchSpace, input_size: int):
        super().__init__()
        H, N = space.hidden_size, space.num_layers
        self.space = space
        self.input_size = input_size
        self.output_size = H
        self.proj = nn.Linear(input_size, H)
        self.layers = nn.ModuleList(_SuperLayer(space.ops, H, space.num_heads) for _ in range(N))
        self.readout = AttentiveSum(H)
        # small random logits (as GDAS): near-uniform probabilities, ties broken
        self.alpha_op = nn.Parameter(1e-3 * torch.randn(N, len(space.ops)))  # (N, n_ops)
        self.alpha_input = nn.ParameterList(nn.Parameter(1e-3 * torch.randn(i + 1)) for i in range(N))
        self.alpha_residual = nn.ParameterList(nn.Parameter(1e-3 * torch.randn(i + 1, 2)) for i in range(N))
        self.tau = 10.0
        self.last_genotype: Genotype | None = None

    def _choose(self, logits: torch.Tensor) -> tuple[torch.Tensor, int]:
        if self.training:
            return gumbel_straight_through(logits, self.tau)
        index = int(logits.argmax())  # eval: the most probable choice, no noise
        one_hot = torch.zeros_like(logits)
        one_hot[index] = 1.0
        return one_hot, index

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        nodes = [zero_padding(self.proj(zero_padding(x, mask)), mask)]  # node 0: (B, T, H)
        genes = []
        for i, layer in enumerate(self.layers):
            w_in, j = self._choose(self.alpha_input[i])
            w_op, k = self._choose(self.alpha_op[i])
            op = self.space.ops[k]
            out = w_op[k] * layer.ops[op](w_in[j] * nodes[j], mask)  # (B, T, H); only the sampled op runs
            residual = []
            for r in range(i + 1):
                w_r, on = self._choose(self.alpha_residual[i][r])
                out = out + w_r[1] * nodes[r]  # value: 0 or 1 times the node; gradient reaches alpha either way
                if on:
                    residual.append(r)
            nodes.append(zero_padding(layer.norm(out), mask))
            genes.append(LayerGene(op, j, tuple(residual)))
        self.last_genotype = Genotype(tuple(genes), self.space.hidden_size, self.space.num_heads)
        return self.readout(nodes[1:], mask)  # (B, H)

    def op_costs(self, seq_len: int) -> list[int]:
        """FLOPs per sample of each candidate operation (order of ``space.ops``)."""
        return [op_flops(name, seq_len, self.space.hidden_size) for name in self.space.ops]

    def fixed_flops(self, seq_len: int) -> int:
        """FLOPs of the encoder that no decision changes (projection, attentive sum)."""
        return encoder_fixed_flops(self.input_size, seq_len, self.space.hidden_size, self.space.num_layers)

    def expected_flops(self, seq_len: int) -> torch.Tensor:
        """Expected FLOPs under ``softmax(alpha)`` (differentiable in ``alpha_op``).

        Input choices and residual adds cost 0 under the FLOPs convention, so only the
        operation logits enter.

        Returns:
            Scalar tensor.
        """
        costs = torch.tensor(self.op_costs(seq_len), dtype=self.alpha_op.dtype, device=self.alpha_op.device)
        probs = torch.softmax(self.alpha_op, dim=-1)  # (N, n_ops)
        return (probs * costs).sum() + self.fixed_flops(seq_len)

    def argmax_genotype(self) -> Genotype:
        """The most probable architecture, without any budget."""
        genes = []
        for i in range(self.space.num_layers):
            residual = tuple(r for r in range(i + 1) if int(self.alpha_residual[i][r].argmax()) == 1)
            genes.append(LayerGene(self.space.ops[int(self.alpha_op[i].argmax())],
                                   int(self.alpha_input[i].argmax()), residual))
        return Genotype(tuple(genes), self.space.hidden_size, self.space.num_heads)

    def flops(self, seq_len: int) -> int:
        """FLOPs of the most probable architecture (``argmax_genotype``)."""
        return genotype_flops(self.argmax_genotype(), self.input_size, seq_len)


def build_supernet_model(schema: InputSchema, config: HeavyConfig, space: ArchSpace) -> HeavyModel:
    """A model with the heavy model's profile encoder and head and one supernet per sequence.

    Args:
        schema: input shapes.
        config: profile/head architecture and embeddings (encoder settings unused).
        space: the search space of every sequence's encoder.

    Returns:
        A ``HeavyModel`` whose behavior encoders are ``SuperEncoder`` s.
    """
    encoders = {s.name: SuperEncoder(space, step_input_size(s, config)) for s in schema.sequences}
    return HeavyModel(schema, config, encoders)


def super_encoders(model: HeavyModel) -> dict[str, tuple[SuperEncoder, int]]:
    """Sequence name -> ``(supernet, padded length T)`` of a supernet model."""
    out = {}
    for seq in model.schema.sequences:
        enc = model.behavior_encoders[seq.name].encoder
        if not isinstance(enc, SuperEncoder):
            raise TypeError(f"sequence {seq.name!r} has no SuperEncoder (got {type(enc).__name__})")
        out[seq.name] = (enc, seq.max_length)
    return out


def _outside_flops(model: HeavyModel) -> int:
    """FLOPs outside the supernets: profile encoder, head and the sequences' numeric embeddings."""
    steps = sum(numeric_embedding_flops(model.behavior_encoders[s.name]) * s.max_length for s in model.schema.sequences)
    return profile_flops(model.profile_encoder) + linear_flops(model.head) + steps


def model_fixed_flops(model: HeavyModel) -> int:
    """FLOPs of a supernet model that no decision changes: profile encoder, head, numeric embeddings, projections."""
    fixed = _outside_flops(model)
    return fixed + sum(enc.fixed_flops(T) for enc, T in super_encoders(model).values())


def expected_model_flops(model: HeavyModel) -> torch.Tensor:
    """Expected FLOPs per sample of the whole light model under ``softmax(alpha)`` (differentiable)."""
    fixed = _outside_flops(model)
    return sum((enc.expected_flops(T) for enc, T in super_encoders(model).values()), torch.tensor(float(fixed)))


def max_model_flops(model: HeavyModel) -> int:
    """Largest FLOPs per sample of any architecture of the supernet model."""
    extra = sum(max(enc.op_costs(T)) * enc.space.num_layers for enc, T in super_encoders(model).values())
    return model_fixed_flops(model) + extra


def arch_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The architecture logits ``alpha`` of every supernet in ``model``."""
    return [p for n, p in model.named_parameters() if any(part.startswith(ARCH_PREFIX) for part in n.split("."))]


def weight_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter of ``model`` except the architecture logits."""
    arch = {id(p) for p in arch_parameters(model)}
    return [p for p in model.parameters() if id(p) not in arch]


@dataclass(frozen=True)
class SearchConfig:
    """Settings of the GDAS search.

    Args:
        epochs: passes over the train split.
        batch_size: rows per step (both splits).
        lr: Adam learning rate of the weights (paper: 1e-3).
        arch_lr: Adam learning rate of ``alpha`` (GDAS: 3e-4).
        arch_betas: Adam betas of ``alpha``.
        arch_weight_decay: weight decay of ``alpha``.
        tau_max / tau_min: temperature at the first and last step (linear decay).
        lambda_flops: weight λ of the normalised expected FLOPs (Eq. 4).
        flops_penalty: ``hinge`` (λ · max(0, E[FLOPs] / budget − 1): only expected FLOPs above the
            budget cost, so the search does not drift to the cheapest operations when the budget
            allows better ones) or ``linear`` (Eq. 4: λ · E[FLOPs] / budget, every FLOP costs). The
            derivation enforces the budget either way.
        max_steps: stop after this many steps (0 = no limit).
        max_grad_norm: gradient clipping of the weights (0 = off).
        seed: seed of shuffling and sampling.
    """

    epochs: int = 5
    batch_size: int = 512
    lr: float = 1e-3
    arch_lr: float = 3e-4
    arch_betas: tuple[float, float] = (0.5, 0.999)
    arch_weight_decay: float = 1e-3
    tau_max: float = 10.0
    tau_min: float = 0.1
    lambda_flops: float = 0.1
    flops_penalty: Literal["linear", "hinge"] = "hinge"
    max_steps: int = 0
    max_grad_norm: float = 5.0
    seed: int = 0


@dataclass
class SearchResult:
    """What a search leaves: per-step records and the final argmax genotypes (no budget)."""

    history: list[dict[str, Any]] = field(default_factory=list)
    argmax_genotypes: dict[str, Genotype] = field(default_factory=dict)


def _batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    while True:
        order = torch.randperm(n, generator=generator)
        for s in range(0, n, batch_size):
            yield order[s:s + batch_size]


def search(model: HeavyModel, train: Batch, valid: Batch, cfg: SearchConfig, *,
           teacher_train: torch.Tensor | None = None, teacher_valid: torch.Tensor | None = None,
           budget: int | None = None, distill: DistillConfig | None = None,
           on_step: Callable[[dict[str, Any], int], None] | None = None) -> SearchResult:
    """GDAS search: alternate weight steps (train split) and ``alpha`` steps (validation split).

    Args:
        model: a supernet model (``build_supernet_model``), trained in place on the device of
            its parameters (rows are moved there batch by batch).
        train / valid: the two splits.
        cfg: search settings.
        teacher_train / teacher_valid: (N,) precomputed teacher logits aligned with the rows
            (``teacher_logits``); ``None`` uses hard labels only.
        budget: FLOPs per sample; normalises the FLOPs term (default: the largest FLOPs of the space).
        distill: δ and temperature of the Eq. 5 loss against the teacher logits (default δ 1, T 1).
        on_step: called after every step with the step's record and the total number of steps
            (progress of a long search).

    Returns:
        The ``SearchResult``.
    """
    distill = distill or DistillConfig()
    tune_allocator()
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    arch, weights = arch_parameters(model), weight_parameters(model)
    w_opt = torch.optim.Adam(weights, lr=cfg.lr)
    a_opt = torch.optim.Adam(arch, lr=cfg.arch_lr, betas=cfg.arch_betas, weight_decay=cfg.arch_weight_decay)
    norm = float(budget or max_model_flops(model))
    encs = [enc for enc, _ in super_encoders(model).values()]
    steps = cfg.epochs * max(1, math.ceil(len(train) / cfg.batch_size))
    if cfg.max_steps:
        steps = min(steps, cfg.max_steps)
    train_idx, valid_idx = _batches(len(train), cfg.batch_size, g), _batches(len(valid), cfg.batch_size, g)
    result = SearchResult()

    device = next(model.parameters()).device

    def loss_on(data: Batch, teacher: torch.Tensor | None, idx: torch.Tensor) -> torch.Tensor:
        b = data.index(idx).to(device)
        logits = model(b)  # (b,)
        if teacher is None:
            return distill_loss(logits, logits, b.label, delta=0.0)
        return distill_loss(logits, teacher[idx].to(device), b.label, distill.delta, distill.temperature)

    model.train()
    for step in range(steps):
        tau = cfg.tau_max - (cfg.tau_max - cfg.tau_min) * step / max(steps - 1, 1)
        for enc in encs:
            enc.tau = tau
        w_loss = loss_on(train, teacher_train, next(train_idx))
        w_opt.zero_grad(set_to_none=True)
        a_opt.zero_grad(set_to_none=True)
        w_loss.backward()
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(weights, cfg.max_grad_norm)
        w_opt.step()

        a_task = loss_on(valid, teacher_valid, next(valid_idx))
        flops_term = expected_model_flops(model) / norm
        if cfg.flops_penalty == "hinge":
            flops_term = torch.relu(flops_term - 1.0)
        elif cfg.flops_penalty != "linear":
            raise ValueError(f"search.flops_penalty must be 'linear' or 'hinge', got {cfg.flops_penalty!r}")
        a_loss = a_task + cfg.lambda_flops * flops_term
        w_opt.zero_grad(set_to_none=True)
        a_opt.zero_grad(set_to_none=True)
        a_loss.backward()
        a_opt.step()
        result.history.append({"step": step + 1, "tau": tau, "train_loss": w_loss.item(),
                               "valid_loss": a_task.item(), "flops_term": flops_term.item()})
        if on_step:
            on_step(result.history[-1], steps)
    result.argmax_genotypes = {name: enc.argmax_genotype() for name, (enc, _) in super_encoders(model).items()}
    return result
