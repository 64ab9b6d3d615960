"""Distillation of the specific heavy model (teacher) into a light model (student), Eq. 5.

``L = BCE(y'_hard, y_hard) + δ · BCE(σ(student / T), σ(teacher / T))``, binary case: the
student's logit is the one-logit form of the paper's two-class cross-entropy.

Temperature scaling: we follow Eq. 5 as written and do **not** multiply the soft term by
``T²`` (Hinton et al. do, to keep its gradient scale independent of ``T``); pass
``scale_t2=True`` for that variant. With ``T = 1`` both are the same.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from longtail.data.tensors import Batch, InputSchema
from longtail.models.genotype import Genotype
from longtail.models.heavy import HeavyConfig
from longtail.train import TrainConfig, TrainResult, fit

__all__ = ["distill_loss", "distill_loss_fn", "inherit_shared_parts", "teacher_logits", "train_light",
           "with_teacher_logits"]


@dataclass(frozen=True)
class DistillConfig:
    """The distillation loss of Eq. 5.

    Args:
        delta: weight δ of the soft term (the teacher's probabilities); 0 trains on the labels only.
        temperature: temperature ``T`` of both logits in the soft term.
    """

    delta: float = 1.0
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.delta < 0 or not self.temperature > 0:
            raise ValueError(f"light.distill: delta {self.delta} must be >= 0 and temperature {self.temperature} > 0")


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                 delta: float = 1.0, temperature: float = 1.0, scale_t2: bool = False) -> torch.Tensor:
    """Eq. 5: hard-label BCE plus ``delta`` times BCE against the teacher's soft labels.

    Args:
        student_logits: (B,) student logits.
        teacher_logits: (B,) teacher logits (detached here: no gradient reaches the teacher).
        labels: (B,) float labels: hard in {0, 1}, or probabilities in [0, 1] for transfer rows
            (``longtail.nas.strategies.transfer_batch``).
        delta: weight δ of the soft term (0 gives plain BCE).
        temperature: softening temperature ``T`` (> 0) of both logits in the soft term.
        scale_t2: multiply the soft term by ``T²`` (Hinton's scaling; off by default, see module).

    Returns:
        Scalar loss.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    hard = F.binary_cross_entropy_with_logits(student_logits, labels)
    if delta == 0:
        return hard
    soft_target = torch.sigmoid(teacher_logits.detach() / temperature)  # (B,)
    soft = F.binary_cross_entropy_with_logits(student_logits / temperature, soft_target)
    if scale_t2:
        soft = soft * temperature**2
    return hard + delta * soft


def distill_loss_fn(teacher: nn.Module, delta: float = 1.0, temperature: float = 1.0):
    """``fit``'s ``loss_fn`` for Eq. 5 against ``teacher`` (in eval mode, as the callers put it).

    A batch that carries ``teacher_logits`` (`with_teacher_logits`: computed once for every epoch;
    ``fit`` shuffles them with their rows) is scored with them; otherwise the teacher scores the
    batch, without gradients, on the batch's device.
    """

    def loss_fn(student: nn.Module, batch: Batch) -> torch.Tensor:
        t = batch.teacher_logits
        if t is None:
            with torch.no_grad():
                t = teacher.to(batch.label.device)(batch)  # (B,)
        return distill_loss(student(batch), t, batch.label, delta, temperature)

    return loss_fn


def with_teacher_logits(teacher: nn.Module, batch: Batch) -> Batch:
    """``batch`` carrying the teacher's logits of its rows (kept when it already carries some).

    The teacher is in eval mode (no dropout), so its logits do not change between epochs: computing
    them once per set of rows gives the same loss as scoring every batch of every epoch, for a
    fraction of the teacher passes.
    """
    if batch.teacher_logits is not None:
        return batch
    return dataclasses.replace(batch, teacher_logits=teacher_logits(teacher, batch))


@torch.no_grad()
def teacher_logits(teacher: nn.Module, batch: Batch, batch_size: int = 4096) -> torch.Tensor:
    """Teacher logits of every row of ``batch`` (eval mode, no gradients, on the teacher's device).

    Args:
        teacher: the specific heavy model.
        batch: rows to score.
        batch_size: rows per forward pass.

    Returns:
        (B,) float logits on the CPU, aligned with the rows of ``batch``.
    """
    was_training = teacher.training
    teacher.eval()
    device = next(teacher.parameters()).device
    try:
        parts = [teacher(batch.index(slice(s, s + batch_size)).to(device)).float().cpu()
                 for s in range(0, len(batch), batch_size)]
    finally:
        teacher.train(was_training)
    return torch.cat(parts) if parts else torch.zeros(0)


def inherit_shared_parts(student: nn.Module, teacher: nn.Module) -> list[str]:
    """Start a light model's profile encoder, embeddings and head from the heavy teacher's (in place).

    Light and heavy models share everything but their behavior encoders (same widths), so the
    teacher's trained profile encoder, embeddings and prediction head can be copied over; the
    behavior encoders (``behavior_encoders.<seq>.encoder``) keep their own initialisation. A
    scenario with a few hundred rows then does not have to relearn the profile part from scratch.

    Args:
        student: the light (or supernet) model.
        teacher: the scenario-specific heavy model.

    Returns:
        The names of the copied parameters and buffers.
    """
    source, target = teacher.state_dict(), student.state_dict()
    copied = [k for k, v in target.items()
              if ".encoder." not in k and k in source and source[k].shape == v.shape]
    student.load_state_dict({**target, **{k: source[k].detach().clone() for k in copied}})
    return copied


def train_light(genotypes: Mapping[str, Genotype], schema: InputSchema, config: HeavyConfig, train: Batch,
                valid: Batch | None, teacher: nn.Module | None, train_cfg: TrainConfig, *,
                delta: float = 1.0, temperature: float = 1.0, supernet: nn.Module | None = None,
                init_from: nn.Module | None = None, **fit_kwargs: Any) -> tuple[nn.Module, TrainResult]:
    """Retrain a derived architecture with the distillation loss (from scratch, or from a supernet).

    Args:
        genotypes: sequence name -> derived genotype.
        schema: input shapes.
        config: profile/head architecture (as the supernet model's).
        train / valid: rows (valid drives early stopping, as in ``fit``).
        teacher: the specific heavy model; ``None`` trains on hard labels only.
        train_cfg: training settings (Adam lr 1e-3, batch 512, 5 epochs in the paper).
        delta: weight δ of the soft term.
        temperature: temperature ``T`` of the soft term.
        supernet: when given, the light model starts from the supernet's weights of the chosen
            operations (``inherit_weights``) instead of a random initialisation.
        init_from: when given (the heavy teacher), the profile encoder, embeddings and head start
            from its weights (``inherit_shared_parts``), after any supernet inheritance.
        **fit_kwargs: passed to ``longtail.train.fit`` (checkpoint_dir, on_epoch, ...).

    Returns:
        ``(light model, TrainResult)``.
    """
    from longtail.models.light import build_light_model, inherit_weights

    torch.manual_seed(train_cfg.seed)
    model = build_light_model(schema, config, genotypes)
    if supernet is not None:
        inherit_weights(model, supernet)
    if init_from is not None:
        inherit_shared_parts(model, init_from)
    if teacher is None:
        return model, fit(model, train, valid, train_cfg, **fit_kwargs)
    teacher.eval()
    return model, fit(model, with_teacher_logits(teacher, train), valid, train_cfg,
                      loss_fn=distill_loss_fn(teacher, delta, temperature), **fit_kwargs)
