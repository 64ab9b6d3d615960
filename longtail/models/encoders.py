"""Behavior encoders: embedded steps ``(B, T, D_in)`` + mask ``(B, T)`` -> one vector ``(B, H)``.

Contract of every encoder (tests check it for each registered name):

- padding never influences the output: values at masked-out steps are zeroed on entry and
  never reach a real step (any mask works, left or right padding);
- a row with no real step gives a finite output (zeros here);
- ``output_size`` is ``H`` and ``flops(T)`` is the analytical FLOPs per sample at padded
  length ``T`` under the convention of ``longtail.models.flops``.

The paper (section V.A.3) uses 6 layers for the heavy model and 3 for the light one, LSTM hidden
size 15, BERT hidden 15 and intermediate 32.
"""

from __future__ import annotations

import abc
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from longtail.models.registry import register_encoder

__all__ = ["BehaviorEncoder", "BertEncoder", "LSTMEncoder", "MultiHeadSelfAttention", "masked_mean"]


class BehaviorEncoder(nn.Module, abc.ABC):
    """Base class of behavior encoders.

    Attributes:
        input_size: width ``D_in`` of one embedded step.
        output_size: width ``H`` of the output vector.
    """

    input_size: int
    output_size: int

    @abc.abstractmethod
    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Encode a batch of sequences.

        Args:
            x: (B, T, D_in) float embedded steps.
            mask: (B, T) bool, True at real steps.

        Returns:
            (B, H) float.
        """

    @abc.abstractmethod
    def flops(self, seq_len: int) -> int:
        """Analytical FLOPs per sample at padded length ``seq_len`` (2 per multiply-add)."""


def masked_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real steps; zeros for a row without any.

    Args:
        h: (B, T, H).
        mask: (B, T) bool.

    Returns:
        (B, H).
    """
    m = mask.unsqueeze(-1).to(h.dtype)  # (B, T, 1)
    # element-wise product and sum (not a matmul), so that pooling costs 0 FLOPs in the counter too
    total = (h * m).sum(dim=1)  # (B, H)
    count = m.sum(dim=1).clamp(min=1.0)  # (B, 1)
    return total / count


def _zero_padding(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # masked_fill rather than a product: NaN or inf at padding must not leak either
    return x.masked_fill(~mask.unsqueeze(-1), 0.0)


@register_encoder("lstm")
class LSTMEncoder(BehaviorEncoder):
    """Stacked LSTM; the output is the top layer's hidden state after the newest real step.

    Real steps are first moved to the front of each row (order kept), then packed, so that the
    LSTM reads exactly the real steps whatever the padding side. A row without real steps is
    given length 1 (pack needs it) and its output is replaced by zeros.

    Args:
        input_size: width of one embedded step.
        hidden_size: LSTM hidden size (15 in the paper).
        num_layers: stacked layers (6 heavy, 3 light in the paper).
        dropout: dropout between stacked layers (ignored for one layer).

    Example:
        >>> enc = LSTMEncoder(input_size=8, hidden_size=15, num_layers=6)
        >>> enc(torch.randn(2, 16, 8), torch.ones(2, 16, dtype=torch.bool)).shape
        torch.Size([2, 15])
    """

    def __init__(self, input_size: int, hidden_size: int = 15, num_layers: int = 6, dropout: float = 0.0):
        super().__init__()
        if input_size < 1 or hidden_size < 1 or num_layers < 1:
            raise ValueError("input_size, hidden_size and num_layers must be >= 1")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.output_size = hidden_size
        self.lstm = nn.LSTM(
            input_size, hidden_size, num_layers=num_layers, batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        x = _zero_padding(x, mask)
        # stable sort of "is padding": real steps first, in their original order
        order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)  # (B, T)
        x = x.gather(1, order.unsqueeze(-1).expand(B, T, D))  # (B, T, D) real steps at the front
        lengths = mask.sum(dim=1)  # (B,)
        packed = pack_padded_sequence(x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        _, (h_n, _) = self.lstm(packed)  # h_n: (L, B, H), rows in the input order
        h = h_n[-1]  # (B, H)
        return torch.where((lengths > 0).unsqueeze(-1), h, torch.zeros_like(h))

    def flops(self, seq_len: int) -> int:
        """``sum over layers of 2 * 4 * H * (D_l + H) * T`` (input and recurrent gate matmuls)."""
        H = self.hidden_size
        total = 0
        for layer in range(self.num_layers):
            d_in = self.input_size if layer == 0 else H
            total += 2 * 4 * H * (d_in + H) * seq_len
        return total


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention written with explicit matmuls (deterministic, countable).

    Args:
        hidden_size: model width ``H``.
        num_heads: heads; must divide ``H``.
        dropout: dropout on the attention probabilities.
    """

    def __init__(self, hidden_size: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if hidden_size % num_heads != 0:
            raise ValueError(f"num_heads={num_heads} must divide hidden_size={hidden_size}")
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.out = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """Attend over the real steps only.

        Args:
            h: (B, T, H).
            key_mask: (B, T) bool, True at real steps (only these are attended to).

        Returns:
            (B, T, H).
        """
        B, T, H = h.shape
        nh, hd = self.num_heads, self.head_dim
        q, k, v = self.qkv(h).split(H, dim=-1)  # 3 x (B, T, H)
        q = q.view(B, T, nh, hd).transpose(1, 2)  # (B, nh, T, hd)
        k = k.view(B, T, nh, hd).transpose(1, 2)
        v = v.view(B, T, nh, hd).transpose(1, 2)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(hd)  # (B, nh, T, T)
        # a finite minimum, not -inf: a row with no real key then gets a uniform (finite) softmax
        # instead of NaN, and a masked key's weight underflows to exactly 0 in any other row
        scores = scores.masked_fill(~key_mask[:, None, None, :], torch.finfo(scores.dtype).min)
        probs = self.dropout(torch.softmax(scores, dim=-1))  # (B, nh, T, T)
        ctx = probs @ v  # (B, nh, T, hd)
        ctx = ctx.transpose(1, 2).reshape(B, T, H)  # (B, T, H)
        return self.out(ctx)

    def flops(self, seq_len: int) -> int:
        """qkv and output projections plus the score and value products."""
        T, H = seq_len, self.hidden_size
        return 2 * T * H * 3 * H + 2 * T * T * H + 2 * T * T * H + 2 * T * H * H


class _BertLayer(nn.Module):
    """Post-LN Transformer block: ``LN(h + attn(h))`` then ``LN(h + FFN(h))``."""

    def __init__(self, hidden_size: int, num_heads: int, intermediate_size: int, dropout: float):
        super().__init__()
        self.attention = MultiHeadSelfAttention(hidden_size, num_heads, dropout)
        self.attn_norm = nn.LayerNorm(hidden_size)
        self.ffn_in = nn.Linear(hidden_size, intermediate_size)
        self.ffn_out = nn.Linear(intermediate_size, hidden_size)
        self.ffn_norm = nn.LayerNorm(hidden_size)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.attn_norm(h + self.dropout(self.attention(h, mask)))  # (B, T, H)
        ffn = self.ffn_out(self.dropout(F.gelu(self.ffn_in(h))))  # (B, T, H)
        return self.ffn_norm(h + self.dropout(ffn))

    def flops(self, seq_len: int) -> int:
        H, inter = self.ffn_in.in_features, self.ffn_in.out_features
        return self.attention.flops(seq_len) + 2 * seq_len * H * inter * 2


@register_encoder("bert")
class BertEncoder(BehaviorEncoder):
    """BERT-style Transformer encoder; the output is the mean over real steps of the top layer.

    Steps are projected to ``hidden_size`` and given a learned positional embedding counted
    back from the newest real step (position 0 = newest), so left and right padding of the same
    steps give the same positions. Padded keys are masked in every attention.

    Args:
        input_size: width of one embedded step.
        hidden_size: model width (15 in the paper).
        num_layers: Transformer blocks (6 heavy, 3 light in the paper).
        intermediate_size: FFN width (32 in the paper).
        num_heads: attention heads; must divide ``hidden_size`` (3 divides the paper's 15).
        dropout: dropout on embeddings, attention probabilities and block outputs.
        max_length: size of the positional table; steps older than ``max_length - 1`` before the
            newest share the last position.

    Example:
        >>> enc = BertEncoder(input_size=8, hidden_size=15, num_layers=6, intermediate_size=32)
        >>> enc(torch.randn(2, 16, 8), torch.ones(2, 16, dtype=torch.bool)).shape
        torch.Size([2, 15])
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int = 15,
        num_layers: int = 6,
        intermediate_size: int = 32,
        num_heads: int = 3,
        dropout: float = 0.0,
        max_length: int = 128,
    ):
        super().__init__()
        if min(input_size, hidden_size, num_layers, intermediate_size, num_heads, max_length) < 1:
            raise ValueError("all sizes of BertEncoder must be >= 1")
        if hidden_size % num_heads != 0:
            raise ValueError(f"num_heads={num_heads} must divide hidden_size={hidden_size}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.intermediate_size = intermediate_size
        self.num_heads = num_heads
        self.max_length = max_length
        self.output_size = hidden_size
        self.input_proj = nn.Linear(input_size, hidden_size)
        self.position = nn.Embedding(max_length, hidden_size)
        nn.init.normal_(self.position.weight, std=0.02)  # BERT's initialiser range
        self.embed_norm = nn.LayerNorm(hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            _BertLayer(hidden_size, num_heads, intermediate_size, dropout) for _ in range(num_layers)
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = _zero_padding(x, mask)
        # steps at or after each step (reverse cumulative sum): newest real step -> 1
        after = mask.flip(1).long().cumsum(1).flip(1)  # (B, T)
        pos = (after - 1).clamp(min=0, max=self.max_length - 1).masked_fill(~mask, 0)  # (B, T)
        h = self.input_proj(x) + self.position(pos)  # (B, T, H)
        h = self.dropout(self.embed_norm(h))
        for layer in self.layers:
            h = layer(h, mask)  # (B, T, H)
        return masked_mean(h, mask)  # (B, H)

    def flops(self, seq_len: int) -> int:
        """Input projection plus, per block, ``2T(4H^2 + 2HI) + 4T^2 H``."""
        emb = 2 * seq_len * self.input_size * self.hidden_size
        return emb + sum(layer.flops(seq_len) for layer in self.layers)
