"""Registry of the candidate operations of one searched layer (paper Fig. 6, section III.D).

Every operation maps ``(h (B, T, H), mask (B, T))`` to ``(B, T, H)``: stride 1, SAME padding,
width ``H -> H``. Padding never reaches a real step's output: inputs are zeroed at padded steps
on entry (convolutions then see zeros there, exactly like SAME zero padding), average pooling
divides by the number of real steps in its window, max pooling puts ``-inf`` at padded steps,
attention masks padded keys and the LSTM reads the real steps only (packed). Outputs at padded
steps are zeroed on exit.

Each operation has an analytical ``flops(T, H)`` per sample under the convention of
``longtail.models.flops`` (2 per multiply-add; biases, pooling, activations and element-wise
arithmetic 0). Registering an operation puts it under every test that parametrises over
``list_ops()``.

Example:
    >>> op = create_op("conv_3", hidden_size=15)
    >>> op(torch.randn(2, 8, 15), torch.ones(2, 8, dtype=torch.bool)).shape
    torch.Size([2, 8, 15])
    >>> op_flops("conv_3", seq_len=8, hidden_size=15) == 2 * 15 * 15 * 3 * 8
    True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from longtail.models.encoders import MultiHeadSelfAttention
from longtail.models.fused import zero_padding
from longtail.models.kernels import fast_kernels_enabled
from longtail.models.recurrent import lstm_stack

__all__ = ["OpSpec", "UnknownOpError", "create_op", "list_ops", "op_flops", "register_op"]


@dataclass(frozen=True)
class OpSpec:
    """One registered operation.

    Args:
        name: registry name (used in genotypes).
        build: ``build(hidden_size, num_heads) -> nn.Module``.
        flops: ``flops(seq_len, hidden_size) -> int`` per sample.
    """

    name: str
    build: Callable[[int, int], nn.Module]
    flops: Callable[[int, int], int]


_OPS: dict[str, OpSpec] = {}


class UnknownOpError(KeyError, ValueError):
    """An operation name that is not registered; the message lists the registered ones."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def register_op(name: str, build: Callable[[int, int], nn.Module], flops: Callable[[int, int], int]) -> OpSpec:
    """Register an operation under ``name``.

    Args:
        name: registry name.
        build: ``build(hidden_size, num_heads) -> nn.Module`` taking ``(h, mask)``.
        flops: analytical ``flops(seq_len, hidden_size) -> int`` per sample.

    Returns:
        The registered spec.

    Raises:
        ValueError: the name is already taken.
    """
    if name in _OPS:
        raise ValueError(f"operation {name!r} is already registered")
    spec = OpSpec(name, build, flops)
    _OPS[name] = spec
    return spec


def list_ops() -> list[str]:
    """Registered operation names, in registration order."""
    return list(_OPS)


def _spec(name: str) -> OpSpec:
    try:
        return _OPS[name]
    except KeyError:
        raise UnknownOpError(f"unknown operation {name!r}; registered: {list_ops()}") from None


def create_op(name: str, hidden_size: int, num_heads: int = 3) -> nn.Module:
    """Build operation ``name`` of width ``hidden_size``.

    Args:
        name: registered operation name.
        hidden_size: width ``H``.
        num_heads: attention heads (used by attention only; must divide ``H`` there).

    Returns:
        A module ``(h (B, T, H), mask (B, T)) -> (B, T, H)``.
    """
    return _spec(name).build(hidden_size, num_heads)


def op_flops(name: str, seq_len: int, hidden_size: int) -> int:
    """Analytical FLOPs per sample of operation ``name`` at padded length ``seq_len``."""
    return int(_spec(name).flops(seq_len, hidden_size))


def _zero(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # masked_fill, not a product: inf or NaN at padding must not leak either
    return zero_padding(h, mask)


class Conv(nn.Module):
    """1-D convolution ``H -> H``, stride 1, SAME padding, then ReLU.

    Args:
        hidden_size: width ``H``.
        kernel_size: odd kernel size.
        dilation: 1 (standard) or 2 (dilated).
    """

    def __init__(self, hidden_size: int, kernel_size: int, dilation: int = 1):
        super().__init__()
        self.conv = nn.Conv1d(hidden_size, hidden_size, kernel_size, dilation=dilation,
                              padding=dilation * (kernel_size - 1) // 2)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        y = self.conv(_zero(h, mask).transpose(1, 2)).transpose(1, 2)  # (B, T, H)
        return _zero(F.relu(y), mask)


class AvgPool(nn.Module):
    """Average over the real steps of a window of ``kernel_size`` steps (padding excluded)."""

    def __init__(self, kernel_size: int = 3):
        super().__init__()
        self.kernel_size = kernel_size

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        k = self.kernel_size
        m = mask.unsqueeze(1).to(h.dtype)  # (B, 1, T)
        total = F.avg_pool1d(_zero(h, mask).transpose(1, 2), k, 1, k // 2, count_include_pad=True)  # (B, H, T)
        count = F.avg_pool1d(m, k, 1, k // 2, count_include_pad=True)  # (B, 1, T)
        # a real step always counts itself, so count > 0 wherever the output is kept
        return _zero((total / count.clamp(min=1e-6)).transpose(1, 2), mask)


class MaxPool(nn.Module):
    """Max over the real steps of a window of ``kernel_size`` steps (``-inf`` at padding)."""

    def __init__(self, kernel_size: int = 3):
        super().__init__()
        self.kernel_size = kernel_size

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        k = self.kernel_size
        x = h.masked_fill(~mask.unsqueeze(-1), float("-inf")).transpose(1, 2)  # (B, H, T)
        y = F.max_pool1d(x, k, 1, k // 2).transpose(1, 2)  # (B, T, H); -inf only at padded steps
        return _zero(y, mask)


class Recurrent(nn.Module):
    """Unidirectional LSTM ``H -> H`` over the real steps only, one output per real step.

    Real steps are moved to the front of each row (order kept), run through the LSTM (on the CPU
    the wavefront kernel of `longtail.models.recurrent`, on CUDA packed for cuDNN) and put back at
    the steps they came from, so left and right padding give the same outputs.
    """

    def __init__(self, hidden_size: int):
        super().__init__()
        self.lstm = nn.LSTM(hidden_size, hidden_size, batch_first=True)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, T, H = h.shape
        order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)  # (B, T) real steps first
        index = order.unsqueeze(-1).expand(B, T, H)
        x = _zero(h, mask).gather(1, index)  # (B, T, H)
        if not x.is_cuda and fast_kernels_enabled():  # the CPU wavefront kernel (causal: steps after a row's last real one never reach it)
            y = lstm_stack(self.lstm, x.permute(1, 2, 0)).permute(2, 0, 1)  # (B, T, H) real steps first
            y = torch.zeros_like(y).scatter(1, index, y)  # back to the original steps
            return _zero(y, mask)
        lengths = mask.sum(dim=1).clamp(min=1).cpu()  # pack needs >= 1; empty rows are zeroed below
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        y, _ = pad_packed_sequence(out, batch_first=True, total_length=T)  # (B, T, H) real steps first
        y = torch.zeros_like(y).scatter(1, index, y)  # back to the original steps
        return _zero(y, mask)


class SelfAttention(nn.Module):
    """Multi-head self-attention over real keys (explicit matmuls, countable)."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.attention = MultiHeadSelfAttention(hidden_size, num_heads)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return _zero(self.attention(_zero(h, mask), mask), mask)  # (B, T, H)


def _conv_flops(kernel_size: int) -> Callable[[int, int], int]:
    return lambda T, H: 2 * H * H * kernel_size * T


def _register_builtins() -> None:
    for k in (1, 3, 5, 7, 9):
        register_op(f"conv_{k}", lambda H, nh, k=k: Conv(H, k, 1), _conv_flops(k))
    for k in (3, 5, 7, 9):
        register_op(f"dil_conv_{k}", lambda H, nh, k=k: Conv(H, k, 2), _conv_flops(k))
    register_op("avg_pool_3", lambda H, nh: AvgPool(3), lambda T, H: 0)
    register_op("max_pool_3", lambda H, nh: MaxPool(3), lambda T, H: 0)
    register_op("lstm", lambda H, nh: Recurrent(H), lambda T, H: 2 * 4 * H * (H + H) * T)
    register_op("self_attention", lambda H, nh: SelfAttention(H, nh),
                lambda T, H: 2 * T * H * 3 * H + 4 * T * T * H + 2 * T * H * H)


_register_builtins()
