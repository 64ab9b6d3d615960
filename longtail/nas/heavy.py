"""NAS for the agnostic heavy model (paper Fig. 4, the second candidate for θ0).

The light-model machinery with no teacher and a loose (or no) FLOPs bound: a supernet with the
pre-defined heavy model's profile encoder and head is searched on the pooled training rows of the
initial scenarios (weights on train, architecture on validation, hard labels only), the most
probable architecture within the bound is derived exactly, and the result is a ``HeavyConfig``
naming the ``searched`` encoder with one genotype per sequence (``searched_config``). That config
trains, fine-tunes, stores and serves like any other heavy model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from longtail.data.prepared import PreparedData
from longtail.data.splits import TRAIN, VALID
from longtail.data.transforms import FittedTransforms
from longtail.models.heavy import HeavyConfig
from longtail.models.light import searched_config
from longtail.nas.derive import derive
from longtail.nas.space import ArchSpace
from longtail.nas.supernet import SearchConfig, build_supernet_model, max_model_flops, search
from longtail.train import resolve_device, torch_threads

__all__ = ["HeavySearchConfig", "HeavySearchResult", "search_heavy"]


@dataclass(frozen=True)
class HeavySearchConfig:
    """Settings of the heavy-model search.

    Args:
        space: the per-sequence search space (deeper than the light one: 6 layers like the
            pre-defined heavy model, width 15, 3 heads).
        search: GDAS settings; ``delta`` is unused (no teacher).
        budget_flops: FLOPs per sample the derived model may use (0: no bound, the most probable
            architecture of the whole space).
        threads: torch threads while searching.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
    """

    space: ArchSpace = field(default_factory=lambda: ArchSpace(num_layers=6))
    search: SearchConfig = field(default_factory=lambda: SearchConfig(lambda_flops=0.01, flops_penalty="linear"))
    budget_flops: int = 0
    threads: int = 1
    device: str = "auto"


@dataclass
class HeavySearchResult:
    """What the search found.

    Attributes:
        config: the ``HeavyConfig`` of the derived architecture (encoder ``searched``).
        flops: FLOPs per sample of the derived model.
        budget: the bound used for the derivation (the space's largest FLOPs when unbounded).
        log_prob: joint log-probability of the derived architecture (Eq. 9).
        seconds: wall time of the search.
        info: search steps, the row counts and the argmax genotypes.
    """

    config: HeavyConfig
    flops: int
    budget: int
    log_prob: float
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)


def search_heavy(data: PreparedData, scenarios: list[str], base: HeavyConfig, cfg: HeavySearchConfig,
                 transforms: FittedTransforms | None = None, log=None) -> HeavySearchResult:
    """Search a heavy behavior encoder on the pooled rows of ``scenarios``.

    Args:
        data: prepared rows with their split.
        scenarios: the initial scenarios (pooled).
        base: profile encoder, head and embedding settings of the searched model.
        cfg: search settings.
        transforms: fitted transforms to use (default: fitted on the pooled training rows, as
            ``train_heavy`` does, so that the searched model trains on the same inputs).
        log: called with one progress line at the start and the end.

    Returns:
        The `HeavySearchResult`.

    Raises:
        ValueError: the scenarios have no training rows.
    """
    t0 = time.perf_counter()
    train_df, valid_df = data.rows(TRAIN, scenarios), data.rows(VALID, scenarios)
    if not len(train_df):
        raise ValueError(f"scenarios {scenarios}: no training rows to search a heavy model on")
    transforms = transforms or FittedTransforms.fit(data.spec, train_df)
    train = transforms.transform(train_df)
    valid = transforms.transform(valid_df) if len(valid_df) else train
    torch.manual_seed(cfg.search.seed)
    supernet = build_supernet_model(transforms.schema, base, cfg.space)
    bound = int(cfg.budget_flops) or max_model_flops(supernet)
    if log:
        log(f"heavy NAS: {len(train_df)} train / {len(valid_df)} valid rows of {len(scenarios)} scenarios, "
            f"{cfg.space.num_layers}-layer space, bound {bound:,} FLOPs")
    supernet.to(resolve_device(cfg.device))
    with torch_threads(cfg.threads):
        searched = search(supernet, train, valid, cfg.search, budget=bound)
    supernet.cpu()
    derivation = derive(supernet, bound)
    config = searched_config(base, derivation.genotypes)
    seconds = time.perf_counter() - t0
    if log:
        log(f"heavy NAS: derived {derivation.flops:,} FLOPs/sample in {seconds:.0f}s")
    return HeavySearchResult(config, derivation.flops, bound, derivation.log_prob, seconds, {
        "search_steps": len(searched.history), "n_train": len(train_df), "n_valid": len(valid_df),
        "genotypes": {k: g.to_dict() for k, g in derivation.genotypes.items()},
        "argmax_genotypes": {k: g.to_dict() for k, g in searched.argmax_genotypes.items()}})
