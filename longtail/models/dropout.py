"""Inverted dropout whose masks cost no random-number draws per element.

torch's CPU generator produces one random number per element of ``bernoulli_`` / ``torch.rand``,
and on models this small (hidden size 15) drawing the dropout masks costs as much as the layers
they mask. Here one 32-bit key is drawn from torch's default generator per mask, and element
``i`` is kept where a 32-bit integer hash of ``(key, i)`` is at least ``round(p · 2³²)``: the
decisions are as good as independent uniform draws for dropout, a seeded run is reproducible,
and the mask is never stored (the backward pass recomputes it). The C kernel
(`longtail.models.kernels`) and the torch fallback compute the same hash, so both give the same
masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from longtail.models.kernels import native_kernels

__all__ = ["Dropout", "DropoutKey", "dropout", "new_key"]

_M32 = 0xFFFFFFFF


@dataclass(frozen=True)
class DropoutKey:
    """One mask: element ``i`` is kept (times ``scale``) where ``hash(key, i) >= threshold``."""

    key: int
    threshold: int
    scale: float

    def factors(self, count: int, offset: int = 0, dtype: torch.dtype = torch.float32,
                device: torch.device | str = "cpu") -> torch.Tensor:
        """The factors (0 or ``scale``) of elements ``offset .. offset + count - 1`` (the torch version
        of ``draw`` in ``kernels.c``)."""
        x = torch.arange(offset, offset + count, dtype=torch.int64, device=device)
        x = (x * 0x9E3779B9 + self.key) & _M32
        x = x ^ (x >> 16)
        x = (x * 0x7FEB352D) & _M32
        x = x ^ (x >> 15)
        x = (x * 0x846CA68B) & _M32
        x = x ^ (x >> 16)
        return torch.where(x >= self.threshold, self.scale, 0.0).to(dtype)


def new_key(p: float) -> DropoutKey:
    """A fresh mask for dropout probability ``p`` (the key comes from torch's default generator)."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    threshold = min(round(p * 2**32), 2**32 - 1)
    return DropoutKey(int(torch.randint(0, 2**32, (1,), dtype=torch.int64)), threshold, 1.0 / (1.0 - p))


class _NativeDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, key):
        x = x.contiguous()
        y = torch.empty_like(x)
        native_kernels().dropout_apply(x.numel(), x.data_ptr(), y.data_ptr(), key.key, key.threshold, key.scale, 0)
        ctx.key = key
        return y

    @staticmethod
    def backward(ctx, grad):
        if torch.is_grad_enabled():  # a second-order gradient: the same mask as torch operations
            return grad * ctx.key.factors(grad.numel(), dtype=grad.dtype, device=grad.device).view(grad.shape), None
        grad = grad.contiguous()
        out = torch.empty_like(grad)
        k = ctx.key
        native_kernels().dropout_apply(grad.numel(), grad.data_ptr(), out.data_ptr(), k.key, k.threshold, k.scale, 0)
        return out, None


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Inverted dropout of ``x`` with probability ``p`` (identity when not ``training`` or ``p == 0``)."""
    if not training or p == 0.0:
        return x
    key = new_key(p)
    if x.dtype == torch.float32 and x.device.type == "cpu" and native_kernels() is not None:
        return _NativeDropout.apply(x, key)
    return x * key.factors(x.numel(), dtype=x.dtype, device=x.device).view(x.shape)


class Dropout(nn.Dropout):
    """``nn.Dropout`` (same arguments, no state) with the hashed masks of this module."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)
