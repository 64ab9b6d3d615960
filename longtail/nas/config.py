"""Settings of the light strategies: MeL (the pre-defined light model) and Ours (budget-limited NAS).

Both distil the scenario-specific heavy model θu (Eq. 5) on the scenario's TRAIN rows, with early
stopping on its VALID rows. Ours searches the light behavior encoder within a FLOPs budget (the MeL
model's FLOPs × ``budget_fraction_of_mel``), derives the most probable architecture within it and
trains it. The defaults are the project's default recipe; `longtail.onboarding.recipe` names the
presets (``default``, ``paper``) and what each sets.

Example:
    >>> cfg = LightConfig(transfer=TransferConfig(rows=0), restarts=RestartConfig(runs=1))
    >>> cfg.space.num_layers, cfg.budget_fraction_of_mel, cfg.distill.delta
    (3, 1.0, 1.0)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from longtail.nas.distill import DistillConfig
from longtail.nas.space import ArchSpace
from longtail.nas.supernet import SearchConfig
from longtail.train import TrainConfig

__all__ = ["DistillConfig", "LightConfig", "MeLConfig", "PretrainConfig", "RestartConfig", "RetrainConfig",
           "TransferConfig"]


@dataclass(frozen=True)
class TransferConfig:
    """A transfer set for distillation: other scenarios' rows labelled with θu's probabilities.

    Args:
        rows: at most this many TRAIN rows of the *other* scenarios are added to Ours' training and
            search-weight rows, their labels replaced by θu's probabilities (the light model learns
            θu's function on more inputs than the scenario's own). Early stopping, the architecture
            step and evaluation use the scenario's own rows only. 0: no transfer set.
        seed: seed of the row sample (mixed with the scenario's name).
    """

    rows: int = 16384
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rows < 0:
            raise ValueError(f"light.transfer.rows is {self.rows}; use 0 (no transfer set) or more")


@dataclass(frozen=True)
class PretrainConfig:
    """Pooled pre-training of the light supernet (`longtail.nas.pretrain`).

    Args:
        epochs: when above 0, the supernet is searched once on the pooled TRAIN/VALID rows of the
            scenarios θ0 was built on, with θ0 as teacher; every scenario continues the search from
            it with θu as teacher and fine-tunes its derived model from the supernet's weights.
            0 searches and trains each scenario from scratch.
        rows: at most this many pooled TRAIN rows (0: all; VALID rows at most a quarter as many).
        seed: seed of the pooled-row sample.
    """

    epochs: int = 2
    rows: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.rows < 0:
            raise ValueError(f"light.pretrain: epochs {self.epochs} and rows {self.rows} must be >= 0")


@dataclass(frozen=True)
class RetrainConfig:
    """Training of Ours' derived architecture (after the search).

    Args:
        epochs: most epochs, early-stopped on VALID after ``train.patience`` epochs without a better
            score; 0 uses ``train.epochs``.
        lr_drops: at the first this many plateaus of the VALID score, go back to the best epoch and go
            on at ``train.lr_drop_factor`` times the learning rate instead of stopping
            (``TrainConfig.lr_drops``). 0 stops at the first plateau.
        select_on: what picks the kept epoch (and stops early): ``distill``, the Eq. 5 loss against θu
            on the scenario's VALID rows plus up to ``transfer.rows // 4`` VALID rows of the other
            scenarios labelled by θu, or ``auc``, the AUC of the scenario's VALID rows.
        from_supernet: start from the searched supernet's weights of the chosen operations even without
            a pre-trained supernet (with one, the derived model always starts from it).
    """

    epochs: int = 20
    lr_drops: int = 2
    select_on: Literal["auc", "distill"] = "distill"
    from_supernet: bool = False

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ValueError(f"light.retrain.epochs is {self.epochs}; use 0 (train.epochs) or more")
        if self.lr_drops < 0:
            raise ValueError(f"light.retrain.lr_drops is {self.lr_drops}; use 0 (stop at the first plateau) or more")
        if self.select_on not in ("auc", "distill"):
            raise ValueError(f"light.retrain.select_on is {self.select_on!r}; use 'auc' or 'distill'")


@dataclass(frozen=True)
class RestartConfig:
    """Repeated runs of Ours on small scenarios.

    Args:
        runs: on a scenario with fewer than ``below_rows`` TRAIN rows (and some VALID rows), the search
            and training of Ours run this many times, run ``k`` with the transfer sample's and the
            training's seeds shifted by ``k``; the model whose kept epoch scores best on VALID (the
            ``retrain.select_on`` score, the same VALID rows for every run) is kept. 1 runs once.
        below_rows: the TRAIN-row count under which ``runs`` applies.
    """

    runs: int = 3
    below_rows: int = 1000

    def __post_init__(self) -> None:
        if self.runs < 1:
            raise ValueError(f"light.restarts.runs is {self.runs}; it counts runs per scenario, use 1 or more "
                             "(1: one run)")


@dataclass(frozen=True)
class MeLConfig:
    """The pre-defined light model (MeL): the teacher's widths with a shallower encoder.

    Args:
        encoder: its behavior encoder (``lstm``, ``bert``, ...); empty: the teacher's encoder.
        layers: encoder layers (the paper: 3).
        hidden_size: its encoder width; 0: the teacher's (the paper's models are all 15 wide). A
            narrower encoder is how a wide one-layer teacher (the ``flat`` encoder) gets a light MeL;
            the profile encoder, embeddings and head keep the teacher's widths either way.
        transfer_rows: transfer-set rows of MeL's training (see `TransferConfig`; 0: none).
    """

    encoder: str = ""
    layers: int = 3
    hidden_size: int = 0
    transfer_rows: int = 0

    def __post_init__(self) -> None:
        if self.layers < 1:
            raise ValueError(f"light.mel.layers is {self.layers}; use 1 or more (the paper: 3)")
        if self.hidden_size < 0:
            raise ValueError(f"light.mel.hidden_size is {self.hidden_size}; use 0 (the teacher's) or a width >= 1")


@dataclass(frozen=True)
class LightConfig:
    """Settings of the light strategies (MeL and Ours).

    Args:
        space: search space of every behavior encoder (paper: 3 layers, width 15, 3 heads).
        search: GDAS search settings (epochs, learning rates, temperature schedule, FLOPs term).
        budget_fraction_of_mel: FLOPs budget of Ours as a multiple of the MeL model's FLOPs.
        distill: δ and temperature of Eq. 5, for the search, the pre-training and every training.
        train: training of MeL (and of Ours' derived model, with ``retrain`` on top).
        init_from_teacher: start the profile encoder, embeddings and head of MeL, of the supernet and
            of the derived model from θu's (`longtail.nas.distill.inherit_shared_parts`); only the
            behavior encoders start from scratch. ``False`` trains light models from scratch.
        min_steps: at least this many optimiser steps in training and in search for scenarios so small
            that ``epochs`` passes make only a few: epochs and early-stopping patience are multiplied by
            the same factor (``scaled_for_rows``). 0 keeps the epochs as given.
        transfer: the transfer set of Ours.
        pretrain: the pooled pre-training of the supernet.
        retrain: training of Ours' derived model.
        restarts: repeated runs of Ours on small scenarios.
        mel: the pre-defined light model.
        latency_repeats: timed batch-1 forward passes of the latency measure.
    """

    space: ArchSpace = field(default_factory=ArchSpace)
    search: SearchConfig = field(default_factory=SearchConfig)
    budget_fraction_of_mel: float = 1.0
    distill: DistillConfig = field(default_factory=DistillConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    init_from_teacher: bool = True
    min_steps: int = 100
    transfer: TransferConfig = field(default_factory=TransferConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    restarts: RestartConfig = field(default_factory=RestartConfig)
    mel: MeLConfig = field(default_factory=MeLConfig)
    latency_repeats: int = 50

    def __post_init__(self) -> None:
        if not self.budget_fraction_of_mel > 0:
            raise ValueError(f"light.budget_fraction_of_mel is {self.budget_fraction_of_mel}; use a factor > 0 "
                             "(1.0: the MeL model's FLOPs)")
        if self.min_steps < 0:
            raise ValueError(f"light.min_steps is {self.min_steps}; use 0 (epochs as given) or more")
