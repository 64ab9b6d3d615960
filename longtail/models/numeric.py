"""Piecewise-linear embeddings of numeric inputs (PLE, Gorishniy et al. 2022, "On Embeddings for
Numerical Features in Tabular Deep Learning").

A numeric column with bin edges ``e_0 < e_1 < ... < e_K`` (fitted on training rows by
`longtail.data.transforms.NumericStats`, in the normalised space the model receives) is encoded
as ``K`` values, one per bin ``[e_{k-1}, e_k]`` (``k = 1..K``)::

    t_k = (x - e_{k-1}) / (e_k - e_{k-1})   clamped to [0, 1], except:
          the first bin is open to the left (no lower clamp: values below e_0 go negative),
          the last bin is open to the right (no upper clamp: values above e_K go above 1)

(so a column with a single bin is the affine map ``(x - e_0) / (e_1 - e_0)``). Then each
column has its own ``Linear(K, dim)`` followed by ReLU. A column without bins (a missing flag,
a constant column: fewer than two edges) is encoded as the value itself, one bin, and gets a
per-column ``Linear(1, dim)`` + ReLU: every column gives ``dim`` outputs, so
``output_size = F * dim``, column by column in input order.

All columns run at once: the encodings are padded to ``Kmax`` bins, ``(N, F, Kmax)`` with padded
bins masked to 0, and multiplied with a ``(F, Kmax, dim)`` weight as one batched product
(exportable to ONNX: Sub, Div, Max, Min, Mul, MatMul, Add, Relu).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["PiecewiseLinearEmbedding"]


class PiecewiseLinearEmbedding(nn.Module):
    """Piecewise-linear encoding of each numeric column, then a per-column ``Linear(K, dim)`` + ReLU.

    Args:
        edges_per_column: for each of the ``F`` input columns, its sorted bin edges (fewer than two:
            the column is passed through as one value into its linear map).
        dim: output width per column.

    Shapes:
        ``(B, F) -> (B, F * dim)`` and ``(B, T, F) -> (B, T, F * dim)``.

    Example:
        >>> ple = PiecewiseLinearEmbedding([(-1.0, 0.0, 1.0), ()], dim=4)
        >>> ple(torch.zeros(3, 2)).shape
        torch.Size([3, 8])
    """

    def __init__(self, edges_per_column: Sequence[Sequence[float]], dim: int):
        super().__init__()
        if dim < 1:
            raise ValueError(f"numeric_embedding_dim must be >= 1, got {dim}")
        columns = [tuple(float(e) for e in col) for col in edges_per_column]
        if not columns:
            raise ValueError("PiecewiseLinearEmbedding needs at least one column")
        self.n_columns = len(columns)
        self.dim = dim
        self.bins = [max(len(c) - 1, 1) for c in columns]  # bins per column (1 for a passed-through column)
        self.max_bins = max(self.bins)
        F, K = self.n_columns, self.max_bins
        left = torch.zeros(F, K)  # lower edge of each bin (0 for a passed-through column and for padding)
        width = torch.ones(F, K)
        lower = torch.zeros(F, K)  # clamp bounds of each bin's value
        upper = torch.ones(F, K)
        mask = torch.zeros(F, K)
        for f, col in enumerate(columns):
            k = self.bins[f]
            mask[f, :k] = 1.0
            lower[f, 0] = -math.inf  # the first bin is open to the left
            upper[f, k - 1] = math.inf  # the last bin is open to the right
            if len(col) >= 2:
                e = torch.tensor(col, dtype=torch.float32)
                left[f, :k] = e[:-1]
                width[f, :k] = e[1:] - e[:-1]
        # fixed by the edges (the transforms'), not learned: rebuilt from the schema, not saved in the state dict
        self.register_buffer("left", left, persistent=False)
        self.register_buffer("width", width, persistent=False)
        self.register_buffer("lower", lower, persistent=False)
        self.register_buffer("upper", upper, persistent=False)
        self.register_buffer("bin_mask", mask, persistent=False)
        # nn.Linear's initialisation per column: U(-1/sqrt(K_f), 1/sqrt(K_f)); padded bins' weights 0
        bound = torch.tensor([1.0 / math.sqrt(k) for k in self.bins]).view(F, 1, 1)
        self.weight = nn.Parameter((torch.rand(F, K, dim) * 2 - 1) * bound * mask.unsqueeze(-1))
        self.bias = nn.Parameter((torch.rand(F, dim) * 2 - 1) * bound.view(F, 1))
        self.output_size = F * dim

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The piecewise-linear encoding: ``(..., F) -> (..., F, Kmax)`` (padded bins 0)."""
        t = (x.unsqueeze(-1) - self.left) / self.width  # (..., F, Kmax)
        t = torch.minimum(torch.maximum(t, self.lower), self.upper)
        return t * self.bin_mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x (..., F) float. Returns: (..., F * dim)."""
        lead = x.shape[:-1]
        F, K = self.n_columns, self.max_bins
        enc = self.encode(x).reshape(-1, F, K).transpose(0, 1)  # (F, N, Kmax)
        out = torch.matmul(enc, self.weight).transpose(0, 1) + self.bias  # (N, F, dim)
        return torch.relu(out).reshape(*lead, F * self.dim)

    def flops(self) -> int:
        """FLOPs per input row (per step of a sequence): the batched product at the padded bin count,
        ``2 * F * Kmax * dim`` (the encoding, bias and ReLU are element-wise: 0)."""
        return 2 * self.n_columns * self.max_bins * self.dim

    def extra_repr(self) -> str:
        return f"columns={self.n_columns}, max_bins={self.max_bins}, dim={self.dim}"
