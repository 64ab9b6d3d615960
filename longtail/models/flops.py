"""Analytical FLOPs per sample: the serving budget of light models is written in these units.

Convention (used for every operation in this package):

- 2 FLOPs per multiply-add, the same unit as ``torch.utils.flop_counter.FlopCounterMode``;
- counted: matrix products — linear layers (``2 * in * out`` per row), convolutions, LSTM gate
  matmuls (``2 * 4 * H * (D_in + H)`` per step and layer), attention projections and the score
  (``Q K^T``) and value (``P V``) products (``2 * T^2 * H`` each), the per-column maps of a
  piecewise-linear numeric embedding (``2 * F * Kmax * dim`` per row or step, at the padded bin
  count it computes);
- not counted (0): biases, normalisation, activations, softmax, pooling, masking, element-wise
  arithmetic and embedding lookups;
- sequence encoders are counted at the padded length ``T = max_length``: serving pads to it, so
  this is the per-sample cost a budget must hold for the longest history.

``FlopCounterMode`` agrees exactly with the reference implementations
(`longtail.models.kernels.reference_kernels`): linear layers, our attention (explicit matmuls),
and LSTMs when oneDNN's fused kernel is off (``torch.backends.mkldnn.flags(enabled=False)``). It
cannot see inside fused kernels (ours or oneDNN's), which is why budgets use these formulas, not
the counter.
"""

from __future__ import annotations

from torch import nn

from longtail.data.tensors import InputSchema
from longtail.models.numeric import PiecewiseLinearEmbedding

__all__ = ["count_flops", "encoder_flops", "linear_flops", "numeric_embedding_flops", "profile_flops",
           "sequence_flops"]


def linear_flops(module: nn.Module) -> int:
    """FLOPs of one input row through every ``nn.Linear`` inside ``module``.

    Right for modules that apply each linear layer once per sample (MLPs: the profile encoder
    and the prediction head); sequence encoders must use their own ``flops(T)``.

    Args:
        module: any module.

    Returns:
        ``sum(2 * in_features * out_features)``.
    """
    return sum(2 * m.in_features * m.out_features for m in module.modules() if isinstance(m, nn.Linear))


def numeric_embedding_flops(module: nn.Module) -> int:
    """FLOPs of one input row (one step of a sequence) through the numeric embeddings inside ``module``.

    Args:
        module: any module (0 when it holds no ``PiecewiseLinearEmbedding``).

    Returns:
        ``sum(embedding.flops())``.
    """
    return sum(m.flops() for m in module.modules() if isinstance(m, PiecewiseLinearEmbedding))


def profile_flops(profile_encoder: nn.Module) -> int:
    """FLOPs per sample of a profile encoder: its MLP and its numeric embedding (embedding lookups are 0)."""
    return linear_flops(profile_encoder) + numeric_embedding_flops(profile_encoder)


def sequence_flops(sequence_encoder: nn.Module, seq_len: int) -> int:
    """FLOPs per sample of a ``SequenceEncoder`` at padded length ``seq_len``: its encoder core plus its
    numeric embedding once per step (step embedding lookups are 0)."""
    embedding = getattr(sequence_encoder, "numeric", None)
    per_step = embedding.flops() if embedding is not None else 0
    return encoder_flops(sequence_encoder.encoder, seq_len) + per_step * seq_len


def encoder_flops(encoder: nn.Module, seq_len: int) -> int:
    """Analytical FLOPs per sample of a behavior encoder at padded length ``seq_len``.

    Args:
        encoder: a module with a ``flops(T) -> int`` method (every registered encoder has one).
        seq_len: padded sequence length ``T``.

    Returns:
        FLOPs per sample.

    Raises:
        TypeError: the encoder has no ``flops`` method.
    """
    fn = getattr(encoder, "flops", None)
    if not callable(fn):
        raise TypeError(f"{type(encoder).__name__} has no flops(T) method; it cannot be budgeted")
    return int(fn(seq_len))


def count_flops(model: nn.Module, schema: InputSchema | None = None) -> dict[str, int]:
    """FLOPs per sample of a heavy (Fig. 2) model, total and by part.

    Args:
        model: a ``HeavyModel`` (anything with ``profile_encoder``, ``behavior_encoders`` of
            ``SequenceEncoder`` and ``head``).
        schema: gives each sequence's padded length; defaults to ``model.schema``.

    Returns:
        ``{"profile_encoder": ..., "behavior_encoders.<sequence>": ... (one per sequence),
        "head": ..., "total": ...}``, all ints.
    """
    schema = schema or model.schema
    out = {"profile_encoder": profile_flops(model.profile_encoder)}
    for seq in schema.sequences:
        # step embeddings are lookups (0); the numeric embedding (if any) and the encoder core hold the products
        out[f"behavior_encoders.{seq.name}"] = sequence_flops(model.behavior_encoders[seq.name], seq.max_length)
    out["head"] = linear_flops(model.head)
    out["total"] = sum(out.values())
    return out
