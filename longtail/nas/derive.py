"""Exact derivation of the most probable architecture within a FLOPs budget (paper Eq. 9).

After the search each decision ``d`` has probabilities ``P'_d = softmax(alpha_d)``. We want the
architecture (one choice per decision, over every sequence's encoder) of maximal joint
probability ``prod_d P'_d(choice_d)`` whose total FLOPs per sample — the whole light model:
profile encoder + head + every sequence's encoder — is within the budget.

FLOPs are additive over decisions with integer costs (an operation's FLOPs depend only on it;
inputs and residual adds cost 0; the rest is a constant), so this is a multiple-choice
knapsack: maximise ``sum log P`` subject to ``sum cost <= budget``. We solve it exactly by
dynamic programming over decisions on the set of reachable total costs, keeping only the Pareto
frontier (a partial choice that costs at least as much as another and is no more probable can
never complete to a better architecture, since both face the same remaining decisions). The
frontier holds at most ``prod_d |distinct costs of d|`` entries and in practice far fewer.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import torch

from longtail.models.flops import count_flops
from longtail.models.genotype import Genotype, LayerGene
from longtail.models.heavy import HeavyModel
from longtail.nas.supernet import model_fixed_flops, super_encoders

__all__ = [
    "Decision",
    "Derivation",
    "InfeasibleBudgetError",
    "brute_force",
    "budget_from_reference",
    "derive",
    "model_decisions",
    "solve",
]


class InfeasibleBudgetError(ValueError):
    """No architecture of the space fits the FLOPs budget."""


@dataclass(frozen=True)
class Decision:
    """One categorical decision: log-probability and integer FLOPs cost of each choice.

    Args:
        key: identifies the decision (e.g. ``("events", "op", 0)``).
        log_probs: log-probability of each choice.
        costs: FLOPs per sample each choice adds.
    """

    key: Hashable
    log_probs: tuple[float, ...]
    costs: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.log_probs or len(self.log_probs) != len(self.costs):
            raise ValueError(f"decision {self.key!r}: log_probs and costs must be non-empty and equally long")


@dataclass
class Derivation:
    """The derived architecture.

    Attributes:
        choices: decision key -> chosen index.
        flops: total FLOPs per sample (fixed part included).
        log_prob: joint log-probability.
        budget: the budget it was derived under.
        genotypes: sequence name -> genotype (set by ``derive``).
    """

    choices: dict[Hashable, int]
    flops: int
    log_prob: float
    budget: int
    genotypes: dict[str, Genotype] = field(default_factory=dict)


def _min_flops(decisions: Sequence[Decision], fixed: int) -> int:
    return fixed + sum(min(d.costs) for d in decisions)


def _infeasible(budget: int, smallest: int) -> InfeasibleBudgetError:
    return InfeasibleBudgetError(f"no architecture fits the budget of {budget:,} FLOPs per sample; the smallest "
                                 f"architecture of the space needs {smallest:,} FLOPs per sample")


def solve(decisions: Sequence[Decision], budget: int, fixed: int = 0) -> Derivation:
    """Exact maximal joint probability within ``budget`` (DP on the cost/probability Pareto frontier).

    Args:
        decisions: the decisions.
        budget: FLOPs per sample allowed (inclusive).
        fixed: FLOPs no decision changes.

    Returns:
        The best ``Derivation`` (ties: the cheaper one).

    Raises:
        InfeasibleBudgetError: even the cheapest choices exceed the budget.
    """
    budget = int(budget)
    smallest = _min_flops(decisions, fixed)
    if smallest > budget:
        raise _infeasible(budget, smallest)
    # frontier: cost -> (log_prob, choices), strictly increasing log_prob with cost
    frontier: list[tuple[int, float, tuple[int, ...]]] = [(int(fixed), 0.0, ())]
    for d in decisions:
        best: dict[int, tuple[float, tuple[int, ...]]] = {}
        for cost, lp, chosen in frontier:
            for i, (lpi, ci) in enumerate(zip(d.log_probs, d.costs, strict=True)):
                c = cost + int(ci)
                if c > budget:
                    continue
                v = lp + float(lpi)
                if c not in best or v > best[c][0]:
                    best[c] = (v, (*chosen, i))
        frontier = []
        for c in sorted(best):
            v, chosen = best[c]
            if not frontier or v > frontier[-1][1]:
                frontier.append((c, v, chosen))
    cost, lp, chosen = frontier[-1]  # the most probable (and cheapest among equals)
    return Derivation({d.key: i for d, i in zip(decisions, chosen, strict=True)}, cost, lp, budget)


def brute_force(decisions: Sequence[Decision], budget: int, fixed: int = 0) -> Derivation:
    """Reference solver: enumerate every architecture (small spaces only; for tests).

    Args:
        decisions: the decisions.
        budget: FLOPs per sample allowed.
        fixed: FLOPs no decision changes.

    Returns:
        The best ``Derivation``.

    Raises:
        InfeasibleBudgetError: nothing fits.
    """
    best: tuple[float, int, tuple[int, ...]] | None = None
    for chosen in itertools.product(*(range(len(d.costs)) for d in decisions)):
        cost = fixed + sum(d.costs[i] for d, i in zip(decisions, chosen, strict=True))
        if cost > budget:
            continue
        lp = sum(d.log_probs[i] for d, i in zip(decisions, chosen, strict=True))
        if best is None or lp > best[0] or (lp == best[0] and cost < best[1]):
            best = (lp, cost, chosen)
    if best is None:
        raise _infeasible(int(budget), _min_flops(decisions, fixed))
    lp, cost, chosen = best
    return Derivation({d.key: i for d, i in zip(decisions, chosen, strict=True)}, cost, lp, int(budget))


def model_decisions(model: HeavyModel) -> list[Decision]:
    """The decisions of a supernet model with ``log softmax(alpha)`` (Eq. 9) and per-choice FLOPs.

    Args:
        model: a supernet model.

    Returns:
        Decisions keyed ``(sequence, "op", layer)``, ``(sequence, "input", layer)`` and
        ``(sequence, "residual", layer, node)`` (choice 0 = off, 1 = on); only operations cost FLOPs.
    """
    out = []
    with torch.no_grad():
        for name, (enc, T) in super_encoders(model).items():
            costs = tuple(enc.op_costs(T))
            for i in range(enc.space.num_layers):
                out.append(Decision((name, "op", i), tuple(torch.log_softmax(enc.alpha_op[i], -1).tolist()), costs))
                lp_in = tuple(torch.log_softmax(enc.alpha_input[i], -1).tolist())
                out.append(Decision((name, "input", i), lp_in, (0,) * len(lp_in)))
                for r in range(i + 1):
                    lp_r = tuple(torch.log_softmax(enc.alpha_residual[i][r], -1).tolist())
                    out.append(Decision((name, "residual", i, r), lp_r, (0, 0)))
    return out


def derive(model: HeavyModel, budget: int) -> Derivation:
    """The most probable architecture of a searched supernet model within ``budget``.

    Args:
        model: a supernet model after ``search``.
        budget: FLOPs per sample of the whole light model (``budget_from_reference`` converts a
            fraction of a reference model's FLOPs).

    Returns:
        The ``Derivation`` with one genotype per sequence; ``flops`` equals ``count_flops`` of
        ``build_light_model(schema, config, derivation.genotypes)``.

    Raises:
        InfeasibleBudgetError: no architecture fits (the message names the smallest FLOPs).
    """
    decisions = model_decisions(model)
    result = solve(decisions, budget, model_fixed_flops(model))
    for name, (enc, _) in super_encoders(model).items():
        genes = []
        for i in range(enc.space.num_layers):
            residual = tuple(r for r in range(i + 1) if result.choices[(name, "residual", i, r)] == 1)
            genes.append(LayerGene(enc.space.ops[result.choices[(name, "op", i)]],
                                   result.choices[(name, "input", i)], residual))
        result.genotypes[name] = Genotype(tuple(genes), enc.space.hidden_size, enc.space.num_heads)
    return result


def budget_from_reference(reference: HeavyModel, fraction: float = 1.0) -> int:
    """A budget as a fraction of a reference model's FLOPs per sample (the paper: 1.0 × the light model).

    Args:
        reference: e.g. the pre-defined 3-layer light model.
        fraction: multiplier (> 0).

    Returns:
        ``floor(fraction * count_flops(reference)["total"])``.
    """
    if not fraction > 0 or math.isinf(fraction):
        raise ValueError(f"fraction must be a positive finite number, got {fraction}")
    return int(math.floor(fraction * count_flops(reference)["total"]))
