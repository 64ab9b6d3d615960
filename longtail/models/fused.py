"""Small fused operations of the models: LayerNorm over a narrow last dimension and masking of padded steps.

At the paper's widths (hidden size 15) ``nn.LayerNorm`` and ``masked_fill`` over ``(B, T, H)`` are
dominated by their per-row overhead in ATen; on float32 CPU tensors these run as one pass of the
native kernels (`longtail.models.kernels`), elsewhere (and inside
`longtail.models.kernels.reference_kernels`) as the torch operations. Both compute the same values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from longtail.models.kernels import differentiable_backward, fast_kernels_enabled, native_kernels

__all__ = ["LayerNorm", "zero_padding"]


def _native(x: torch.Tensor) -> bool:
    return x.dtype == torch.float32 and x.device.type == "cpu" and fast_kernels_enabled() and native_kernels() is not None


class _LayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        D = x.shape[-1]
        x = x.contiguous()
        n = x.numel() // D
        y = torch.empty_like(x)
        mean, rstd = x.new_empty(n), x.new_empty(n)
        native_kernels().layer_norm_forward(n, D, x.data_ptr(), weight.contiguous().data_ptr(),
                                            bias.contiguous().data_ptr(), eps, y.data_ptr(), mean.data_ptr(),
                                            rstd.data_ptr())
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.eps, ctx.bias = eps, bias
        return y

    @staticmethod
    def backward(ctx, g):
        x, weight, mean, rstd = ctx.saved_tensors
        if torch.is_grad_enabled():  # a second-order gradient: through F.layer_norm, as a graph
            return (*differentiable_backward(lambda a, b, c: F.layer_norm(a, (a.shape[-1],), b, c, ctx.eps),
                                             (x, weight, ctx.bias), g), None)
        D = x.shape[-1]
        g = g.contiguous()
        gx = torch.empty_like(x)
        gw, gb = torch.zeros_like(weight), torch.zeros_like(weight)
        native_kernels().layer_norm_backward(x.numel() // D, D, x.data_ptr(), weight.contiguous().data_ptr(),
                                             mean.data_ptr(), rstd.data_ptr(), g.data_ptr(), gx.data_ptr(),
                                             gw.data_ptr(), gb.data_ptr())
        return gx, gw, gb, None


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` over the last dimension (same parameters and state dict), fused on the CPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (len(self.normalized_shape) == 1 and self.elementwise_affine and self.bias is not None and _native(x)
                and x.numel()):
            return _LayerNorm.apply(x, self.weight, self.bias, self.eps)
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


class _KeepRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, keep):
        D = x.shape[-1]
        x = x.contiguous()
        y = torch.empty_like(x)
        native_kernels().keep_rows(x.numel() // D, D, x.data_ptr(), keep.data_ptr(), y.data_ptr())
        ctx.save_for_backward(keep)
        return y

    @staticmethod
    def backward(ctx, g):
        (keep,) = ctx.saved_tensors
        if torch.is_grad_enabled():  # a second-order gradient: the same select as torch operations
            return torch.where(keep.bool().unsqueeze(-1), g, 0.0), None
        D = g.shape[-1]
        g = g.contiguous()
        out = torch.empty_like(g)
        native_kernels().keep_rows(g.numel() // D, D, g.data_ptr(), keep.data_ptr(), out.data_ptr())
        return out, None


def zero_padding(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x`` (B, T, D) with the steps where ``mask`` (B, T) is False set to 0 (as ``masked_fill``: inf or
    NaN at padding does not leak)."""
    if _native(x) and x.dim() == mask.dim() + 1 and x.shape[:-1] == mask.shape and x.numel():
        return _KeepRows.apply(x, mask.to(torch.uint8).contiguous())
    return x.masked_fill(~mask.unsqueeze(-1), 0.0)
