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

from longtail.models.dropout import Dropout, DropoutKey, new_key
from longtail.models.fused import LayerNorm, zero_padding
from longtail.models.kernels import differentiable_backward, fast_kernels_enabled, native_kernels
from longtail.models.recurrent import lstm_stack
from longtail.models.registry import register_encoder

__all__ = ["BehaviorEncoder", "BertEncoder", "FlatEncoder", "LSTMEncoder", "MultiHeadSelfAttention", "attend", "masked_mean"]


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
    # a select rather than a product: NaN or inf at padding must not leak either
    return zero_padding(x, mask)


@register_encoder("lstm")
class LSTMEncoder(BehaviorEncoder):
    """Stacked LSTM; the output is the top layer's hidden state after the newest real step.

    Real steps are first moved to the front of each row (order kept), so that the output is the
    state after each row's last real step whatever the padding side (an LSTM is causal: the steps
    after it never reach it). On the CPU the stack runs as the wavefront kernel of
    `longtail.models.recurrent` (the same function as ``nn.LSTM``, several times faster on these
    sizes); on CUDA the rows are packed for cuDNN. A row without real steps gives zeros.

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
        if not x.is_cuda and fast_kernels_enabled():
            steps = max(int(lengths.max()), 1) if B else 1  # no step after the longest row's last
            top = lstm_stack(self.lstm, x[:, :steps].permute(1, 2, 0))  # (T', H, B)
            h = top[(lengths - 1).clamp(min=0), :, torch.arange(B, device=x.device)]  # (B, H) at each last step
            return torch.where((lengths > 0).unsqueeze(-1), h, torch.zeros_like(h))
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
    """Multi-head self-attention over real keys (deterministic, countable).

    On the CPU (float32) the scores, key mask, softmax, dropout of the probabilities and weighted
    values run as one fused kernel (`longtail.models.kernels`: heads this small, 5 wide, are
    dominated by per-operation overhead as separate products); elsewhere, and inside
    `longtail.models.kernels.reference_kernels`, as explicit matrix products. Both compute the
    same function with the same dropout masks.

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
        self.dropout = Dropout(dropout)

    def forward(self, h: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """Attend over the real steps only.

        Args:
            h: (B, T, H).
            key_mask: (B, T) bool, True at real steps (only these are attended to).

        Returns:
            (B, T, H).
        """
        qkv = self.qkv(h)  # (B, T, 3H)
        p = self.dropout.p if self.training else 0.0
        key = new_key(p) if p > 0 else None
        if (qkv.dtype == torch.float32 and qkv.device.type == "cpu" and fast_kernels_enabled()
                and native_kernels() is not None):
            ctx = _FusedAttention.apply(qkv, key_mask, self.num_heads, key)  # (B, T, H)
        else:
            ctx = attend(qkv, key_mask, self.num_heads, key)
        return self.out(ctx)

    def flops(self, seq_len: int) -> int:
        """qkv and output projections plus the score and value products."""
        T, H = seq_len, self.hidden_size
        return 2 * T * H * 3 * H + 2 * T * T * H + 2 * T * T * H + 2 * T * H * H


def attend(qkv: torch.Tensor, key_mask: torch.Tensor, num_heads: int, key: DropoutKey | None) -> torch.Tensor:
    """Multi-head attention over real keys from the projections, as explicit products.

    Args:
        qkv: (B, T, 3H) the q, k and v projections side by side.
        key_mask: (B, T) bool, True at real steps.
        num_heads: heads (dividing H).
        key: the dropout mask of the probabilities, or ``None``.

    Returns:
        (B, T, H) the heads' weighted values side by side.
    """
    B, T, G = qkv.shape
    H, nh = G // 3, num_heads
    hd = H // nh
    q, k, v = qkv.split(H, dim=-1)  # 3 x (B, T, H)
    q = (q * (1.0 / math.sqrt(hd))).view(B, T, nh, hd).transpose(1, 2)  # (B, nh, T, hd), scaled here:
    k = k.view(B, T, nh, hd).transpose(1, 2)  # T/hd times fewer values than the scores
    v = v.view(B, T, nh, hd).transpose(1, 2)
    scores = q @ k.transpose(-2, -1)  # (B, nh, T, T)
    # a finite minimum, not -inf: a row with no real key then gets a uniform (finite) softmax
    # instead of NaN, and a masked key's weight underflows to exactly 0 in any other row
    scores = scores.masked_fill(~key_mask[:, None, None, :], torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1)  # (B, nh, T, T)
    if key is not None:
        probs = probs * key.factors(probs.numel(), dtype=probs.dtype, device=probs.device).view(probs.shape)
    ctx = probs @ v  # (B, nh, T, hd)
    return ctx.transpose(1, 2).reshape(B, T, H)  # (B, T, H)


class _FusedAttention(torch.autograd.Function):
    """``MultiHeadSelfAttention._attend`` as the native kernels ``attention_forward`` / ``_backward``."""

    @staticmethod
    def forward(ctx, qkv, key_mask, num_heads, key):
        B, T, G = qkv.shape
        H = G // 3
        qkv = qkv.contiguous()
        keys = key_mask.to(torch.uint8).contiguous()
        out = qkv.new_empty(B, T, H)
        probs = qkv.new_empty(B, num_heads, T, T)
        drop = (1, key.key, key.threshold, key.scale) if key is not None else (0, 0, 0, 1.0)
        native_kernels().attention_forward(B, T, num_heads, H // num_heads, qkv.data_ptr(), keys.data_ptr(),
                                           out.data_ptr(), probs.data_ptr(), *drop)
        ctx.save_for_backward(qkv, keys, probs)
        ctx.num_heads, ctx.drop, ctx.key, ctx.mask = num_heads, drop, key, key_mask
        return out

    @staticmethod
    def backward(ctx, grad):
        qkv, keys, probs = ctx.saved_tensors
        if torch.is_grad_enabled():  # a second-order gradient: through the explicit products, as a graph
            (g,) = differentiable_backward(lambda q: attend(q, ctx.mask, ctx.num_heads, ctx.key), (qkv,), grad)
            return g, None, None, None
        B, T, G = qkv.shape
        grad = grad.contiguous()
        grad_qkv = torch.empty_like(qkv)
        native_kernels().attention_backward(B, T, ctx.num_heads, G // 3 // ctx.num_heads, qkv.data_ptr(),
                                            keys.data_ptr(), probs.data_ptr(), grad.data_ptr(), grad_qkv.data_ptr(),
                                            *ctx.drop)
        return grad_qkv, None, None, None


class _BertLayer(nn.Module):
    """Post-LN Transformer block: ``LN(h + attn(h))`` then ``LN(h + FFN(h))``."""

    def __init__(self, hidden_size: int, num_heads: int, intermediate_size: int, dropout: float):
        super().__init__()
        self.attention = MultiHeadSelfAttention(hidden_size, num_heads, dropout)
        self.attn_norm = LayerNorm(hidden_size)
        self.ffn_in = nn.Linear(hidden_size, intermediate_size)
        self.ffn_out = nn.Linear(intermediate_size, hidden_size)
        self.ffn_norm = LayerNorm(hidden_size)
        self.dropout = Dropout(dropout)

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
        self.embed_norm = LayerNorm(hidden_size)
        self.dropout = Dropout(dropout)
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


def newest_last(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The real steps of each row moved to its end, in their order (left padding), without a sort.

    Each step's new position is computed from running counts (the newest real step goes to
    ``T - 1``, padded steps to the front, in order) and the steps are scattered there: a
    permutation of each row, exportable to ONNX (which has no stable sort).

    Args:
        x: (B, T, D).
        mask: (B, T) bool, True at real steps.

    Returns:
        ``(x, mask)`` permuted: (B, T, D) and (B, T) with the real steps last.
    """
    B, T, D = x.shape
    m = mask.long()
    seen = m.cumsum(1)  # real steps up to and including each step
    at_or_after = seen[:, -1:] - seen + m  # real steps at or after each step (1 at the newest real one)
    pads_so_far = (1 - m).cumsum(1)  # padded steps up to and including each step
    target = torch.where(mask, T - at_or_after, pads_so_far - 1)  # (B, T) a permutation of 0..T-1
    out = torch.zeros_like(x).scatter(1, target.unsqueeze(-1).expand(B, T, D), x)
    return out, torch.zeros_like(mask).scatter(1, target, mask)


@register_encoder("flat")
class FlatEncoder(BehaviorEncoder):
    """An MLP over the whole padded sequence: the steps flattened side by side, with the mask.

    Padded steps are zeroed and the real steps moved to the end of each row (newest at position
    ``max_length - 1``, so left and right padding of the same steps give the same input); the
    ``(B, max_length, D_in)`` steps are flattened to ``max_length * D_in`` inputs, the
    ``max_length`` mask values (1 at real steps) appended, and ``num_layers`` x (Linear -> ReLU
    -> dropout) of width ``hidden_size`` follow. Every position has its own weights (no sharing
    over time, unlike the LSTM or BERT). A row without real steps gives zeros. Sequences shorter
    than ``max_length`` are read as left-padded to it (the first layer uses the weights of the
    newest ``T`` positions only: the others would multiply zeros); of a longer one, only the
    newest ``max_length`` steps are read.

    Args:
        input_size: width ``D_in`` of one embedded step.
        max_length: padded length the first layer is sized for (the sequence's ``max_length``).
        hidden_size: width of every layer (the output width).
        num_layers: layers.
        dropout: dropout after each activation.

    Example:
        >>> enc = FlatEncoder(input_size=8, max_length=16, hidden_size=32, num_layers=2)
        >>> enc(torch.randn(2, 16, 8), torch.ones(2, 16, dtype=torch.bool)).shape
        torch.Size([2, 32])
    """

    def __init__(self, input_size: int, max_length: int = 128, hidden_size: int = 15, num_layers: int = 6,
                 dropout: float = 0.0):
        super().__init__()
        if min(input_size, max_length, hidden_size, num_layers) < 1:
            raise ValueError("input_size, max_length, hidden_size and num_layers of FlatEncoder must be >= 1")
        self.input_size = input_size
        self.max_length = max_length
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.output_size = hidden_size
        # first layer inputs: max_length * input_size step values (step-major), then max_length mask values
        self.layers = nn.ModuleList(
            nn.Linear(max_length * (input_size + 1) if i == 0 else hidden_size, hidden_size) for i in range(num_layers)
        )
        self.dropout = Dropout(dropout)

    def _first(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        z = torch.cat([x.reshape(B, T * D), mask.to(x.dtype)], dim=1)  # (B, T * (D + 1))
        layer = self.layers[0]
        if T == self.max_length:
            return layer(z)
        L = self.max_length  # a shorter sequence: the weights of its T newest positions
        w = torch.cat([layer.weight[:, (L - T) * D:L * D], layer.weight[:, L * D + L - T:]], dim=1)
        return F.linear(z, w, layer.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = _zero_padding(x, mask)
        x, mask = newest_last(x, mask)
        if x.shape[1] > self.max_length:  # only the newest max_length steps
            x, mask = x[:, -self.max_length:], mask[:, -self.max_length:]
        h = self._first(x, mask)
        for i, layer in enumerate(self.layers):
            if i:
                h = layer(h)
            h = self.dropout(torch.relu(h))  # (B, H)
        real = mask.any(dim=1, keepdim=True)  # (B, 1)
        return torch.where(real, h, torch.zeros_like(h))

    def flops(self, seq_len: int) -> int:
        """``2 * min(T, max_length) * (D_in + 1) * H`` for the first layer plus ``2 * H^2`` per further layer."""
        t, H = min(seq_len, self.max_length), self.hidden_size
        return 2 * t * (self.input_size + 1) * H + (self.num_layers - 1) * 2 * H * H
