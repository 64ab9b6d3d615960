"""Recipes: every setting of a scenario's onboarding, as named presets.

A `Recipe` holds the heavy model θ0 (and the SinH reference) is built and trained with, the
fine-tune of θu and its feedback (`longtail.meta.finetune.MetaConfig`) and the light strategies
(`longtail.nas.config.LightConfig`). It is chosen by name (``preset``) and any field can still
be overridden: in YAML ``recipe: {preset: paper, light: {train: {epochs: 3}}}``, on the command
line ``--recipe paper --set recipe.light.train.epochs=3``.

Presets (what each sets; their measured figures are in ``bench/results/nas.md`` and the docs):

* ``default``: the project's recipe. Ours continues the search from a light supernet pre-trained
  on the pooled rows with θ0 as teacher (``light.pretrain``), adds a transfer set of other
  scenarios' rows labelled by θu (``light.transfer``), starts the shared parts of every light
  model from θu (``light.init_from_teacher``), gives small scenarios at least ``light.min_steps``
  optimiser steps, searches with the hinge FLOPs term, fine-tunes the derived model for up to
  ``light.retrain.epochs`` with learning-rate drops at plateaus, keeps the epoch with the lowest
  distillation loss on VALID rows, and reruns small scenarios (``light.restarts``), keeping the run
  that scores best on VALID rows.
* ``paper``: exactly the paper's settings. Ours is searched and trained from scratch on the
  scenario's own rows (no pre-training, no transfer set, no teacher initialisation, no extra
  steps, no restarts, epoch kept by VALID AUC) with Eq. 4's linear FLOPs term; MeL is the
  pre-defined light model trained from scratch.

Both share the heavy model (the paper's 6-layer LSTM, hidden 15), its training and the fine-tune of θu.

* ``toolbox``: the ``default`` light strategies on another heavy model: a ``flat`` behavior encoder
  (an MLP over every step) with piecewise-linear numeric embeddings, trained with AdamW, weight
  decay and a cosine schedule, the epoch kept on VALID rows; θu fine-tunes it at a tenth of its
  learning rate. MeL (and so Ours' FLOPs budget) is the same model with a 32-wide encoder. The
  model a user would build for tabular data with short histories, not one tuned to any dataset.

Example:
    >>> Recipe.from_preset("paper").light.transfer.rows
    0
    >>> Recipe().preset, Recipe() == Recipe.from_preset("default")
    ('default', True)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from longtail.meta.finetune import MetaConfig
from longtail.models.heavy import HeavyConfig
from longtail.nas.config import (
    LightConfig,
    MeLConfig,
    PretrainConfig,
    RestartConfig,
    RetrainConfig,
    TransferConfig,
)
from longtail.nas.supernet import SearchConfig
from longtail.train import TrainConfig

__all__ = ["PRESETS", "Recipe"]


@dataclass(frozen=True)
class Recipe:
    """Every setting of onboarding a scenario, starting from a named preset.

    Args:
        preset: the preset the other fields start from (``default``, ``paper`` or ``toolbox``, see
            `PRESETS`).
        model: the heavy architecture of θ0 (and of the SinH reference).
        train: training of θ0 on the initial scenarios (and of SinH).
        meta: the fine-tune of θu on the support set, the query feedback and θ0's update rule.
        light: MeL and Ours (search space, budget, distillation, training).
    """

    preset: str = "default"
    model: HeavyConfig = field(default_factory=HeavyConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    light: LightConfig = field(default_factory=LightConfig)

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"recipe.preset {self.preset!r} is not a preset; use one of {sorted(PRESETS)}")

    @classmethod
    def from_preset(cls, name: str) -> Recipe:
        """The preset ``name``.

        Raises:
            ValueError: ``name`` is not a preset (the message lists them).
        """
        if name not in PRESETS:
            raise ValueError(f"{name!r} is not a recipe preset; use one of {sorted(PRESETS)}")
        return PRESETS[name]()


def _default() -> Recipe:
    return Recipe(preset="default")


def _paper() -> Recipe:
    light = LightConfig(
        search=SearchConfig(flops_penalty="linear"),
        init_from_teacher=False,
        min_steps=0,
        transfer=TransferConfig(rows=0),
        pretrain=PretrainConfig(epochs=0),
        retrain=RetrainConfig(epochs=0, lr_drops=0, select_on="auc", from_supernet=False),
        restarts=RestartConfig(runs=1),
    )
    return Recipe(preset="paper", light=light)


TOOLBOX_MODEL = HeavyConfig(encoder="flat", num_layers=1, hidden_size=128, numeric_embedding="ple",
                            numeric_embedding_dim=8, profile_dims=(128,), head_dims=(256, 128), dropout=0.1)
TOOLBOX_TRAIN = TrainConfig(epochs=8, batch_size=512, lr=1e-3, optimizer="adamw", weight_decay=1e-2,
                            schedule="cosine", warmup_frac=0.05, patience=3)


def _toolbox() -> Recipe:
    finetune = TrainConfig(epochs=3, batch_size=512, lr=1e-4, optimizer="adamw", weight_decay=1e-2,
                           schedule="cosine", patience=1)
    # MeL: the teacher with a 32-wide encoder (the budget of Ours): the same family, light
    light = LightConfig(mel=MeLConfig(layers=1, hidden_size=32))
    return Recipe(preset="toolbox", model=TOOLBOX_MODEL, train=TOOLBOX_TRAIN, meta=MetaConfig(finetune=finetune),
                  light=light)


PRESETS: dict[str, Callable[[], Recipe]] = {"default": _default, "paper": _paper, "toolbox": _toolbox}
