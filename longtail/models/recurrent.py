"""A CPU-friendly stacked LSTM: every layer at once along the anti-diagonal, hand-written backward.

The paper's recurrent encoders are tiny (hidden size 15, 6 layers): one step of one layer is a
``(4H, H) @ (H, B)`` product and a few element-wise kernels on ``(4H, B)``. ``torch.nn.LSTM`` on
packed sequences runs every step of every layer as separate autograd nodes, so a training step
is dominated by per-operation overhead (thousands of tiny kernels), not by arithmetic.

Here the whole stack is one autograd node and runs as a *wavefront*: at wavefront step ``s``
layer ``l`` computes its time step ``t = s - l`` (it needs its own state at ``t - 1`` and the
layer below at ``t``, both from step ``s - 1``), so the active layers share one batched product
``(n, 4H, 2H+1) @ (n, 2H+1, B)`` (the biases ride on a constant input row) and one fused
element-wise step: ``T + L - 1`` steps instead of ``T · L``. The backward pass runs the same
wavefront in reverse with two batched products per step (input and weight gradients). The
element-wise steps run in C (`longtail.models.kernels`, built at first use) or, without a C
compiler, as torch operations; both compute the same function.

Outputs and gradients equal ``nn.LSTM``'s up to float rounding (``tests/test_models.py`` checks
both against it, for both element-wise implementations). Layout: ``(steps, features, batch)``.
The parameters are an ``nn.LSTM``'s (gate order i, f, g, o), so state dicts are unchanged.

Sequences are right-aligned by the callers (real steps first): an LSTM is causal, so a row's
output at its last real step does not depend on the padding after it.
"""

from __future__ import annotations

import torch
from torch import nn

from longtail.models.dropout import DropoutKey, new_key
from longtail.models.kernels import differentiable_backward, native_kernels

__all__ = ["lstm_stack"]


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


# ---------------------------------------------------------------------- element-wise steps
def _forward_step_torch(a, c_prev, c_new, tc, z_next, n_up, mask, tmp):
    """Torch version of ``lstm_forward_step`` (``lstm_kernels.c``): same arguments as tensors."""
    H = c_prev.shape[1]
    a[:, 2 * H:3 * H].mul_(2.0)  # tanh(g) = 2 sigmoid(2g) - 1 (torch's CPU tanh is slow)
    torch.sigmoid(a, out=a)
    a[:, 2 * H:3 * H].mul_(2.0).sub_(1.0)
    i, f, g, o = a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]
    torch.mul(f, c_prev, out=c_new)
    c_new.addcmul_(i, g)
    torch.mul(c_new, 2.0, out=tmp)
    torch.sigmoid(tmp, out=tc)
    tc.mul_(2.0).sub_(1.0)
    n = a.shape[0]
    h = z_next[:n, H:2 * H]
    torch.mul(o, tc, out=h)
    if n_up:
        if mask is None:
            z_next[1:n_up + 1, :H].copy_(h[:n_up])
        else:
            torch.mul(h[:n_up], mask, out=z_next[1:n_up + 1, :H])


def _backward_step_torch(acts, c_prev, tc, gz, n_up, mask, g_top, d, dc, gp, tmp):
    """Torch version of ``lstm_backward_step`` (``lstm_kernels.c``)."""
    n, G, _ = acts.shape
    H = G // 4
    if gz is None:
        d.zero_()
    else:
        d.copy_(gz[:n, H:2 * H])
        if n_up:
            if mask is None:
                d[:n_up].add_(gz[1:n_up + 1, :H])
            else:
                d[:n_up].addcmul_(gz[1:n_up + 1, :H], mask)
    if g_top is not None:
        d[n - 1].add_(g_top)
    i, f, g, o = acts[:, :H], acts[:, H:2 * H], acts[:, 2 * H:3 * H], acts[:, 3 * H:]
    torch.addcmul(o, o, o, value=-1.0, out=tmp)  # o (1 - o)
    tmp.mul_(tc)
    torch.mul(d, tmp, out=gp[:, 3 * H:])
    torch.mul(tc, tc, out=tmp)
    tmp.mul_(o).sub_(o).neg_()  # o (1 - tanh(c)²)
    dc.addcmul_(d, tmp)
    torch.addcmul(i, i, i, value=-1.0, out=tmp)
    tmp.mul_(g)
    torch.mul(dc, tmp, out=gp[:, :H])
    torch.addcmul(f, f, f, value=-1.0, out=tmp)
    tmp.mul_(c_prev)
    torch.mul(dc, tmp, out=gp[:, H:2 * H])
    torch.mul(g, g, out=tmp)
    tmp.mul_(i).sub_(i).neg_()  # i (1 - g²)
    torch.mul(dc, tmp, out=gp[:, 2 * H:3 * H])
    dc.mul_(f)


# ---------------------------------------------------------------------- the wavefront
def _active(s: int, T: int, L: int) -> tuple[int, int]:
    """Layers ``[lo, hi)`` that have a time step at wavefront step ``s``."""
    return max(0, s - T + 1), min(L - 1, s) + 1


def _drop_slices(drop: DropoutKey | None, T: int, H: int, B: int, s: int, lo: int, n_up: int, lib, dtype):
    """The dropout of layers ``lo .. lo + n_up - 1``'s outputs at wavefront step ``s``.

    The mask of the whole stack is indexed as (L - 1, T, H, B) in time order (layer ``l``'s step
    ``s - l``), so consecutive layers of one wavefront step are ``(T - 1) · H · B`` elements apart.

    Returns:
        For the native kernels the argument tail ``(drop, key, threshold, scale, index, stride)``;
        for the torch steps the (n_up, H, B) factors, or ``None``.
    """
    stride, index = (T - 1) * H * B, (lo * T + s - lo) * H * B
    if lib is not None:
        if drop is None or not n_up:
            return (0, 0, 0, 1.0, 0, 0)
        return (1, drop.key, drop.threshold, drop.scale, index, stride)
    if drop is None or not n_up:
        return None
    return torch.stack([drop.factors(H * B, index + k * stride, dtype).view(H, B) for k in range(n_up)])


def _wavefront(xp0, w, drop, save: bool, lib):
    """The forward wavefront.

    Args:
        xp0: (T, 4H, B) the first layer's input projection plus its biases.
        w: (L, 4H, K) per layer ``[W_ih | W_hh | b_ih + b_hh]``, ``K = 2H + 1`` (layer 0's input
            weights and biases are zero: its input comes through ``xp0``).
        drop: the dropout draws of each layer's output at each step as the next layer's input
            (``dropout_draws``), or ``None``.
        save: keep what the backward pass needs.
        lib: the native kernels, or ``None``.

    Returns:
        ``(top (T, H, B), saved)``: the top layer's state after every step, and ``(z, acts, c, tc)``
        when ``save``.
    """
    T, G, B = xp0.shape
    L, K = w.shape[0], w.shape[2]
    H = G // 4
    S = T + L - 1
    # z[s, l] = [input of layer l at its step s - l ; its state after step s - l - 1 ; 1], c[s, l] its
    # cell state after step s - l - 1. Only the slots a step reads are initialised: layer 0's input
    # rows (its input comes through xp0), the ones row and each layer's zero initial state. Without
    # ``save`` two wavefront steps are kept (rolling) instead of all of them.
    steps = S + 1 if save else 2
    z = xp0.new_empty(steps, L, K, B)
    z[:, :, 2 * H] = 1.0
    z[:, 0, :H] = 0.0
    c = xp0.new_empty(steps, L, H, B)
    if save:
        for layer in range(L):
            z[layer, layer, H:2 * H] = 0.0
            c[layer, layer] = 0.0
    else:
        z[:, :, H:2 * H] = 0.0
        c.zero_()
    acts = xp0.new_empty(S if save else 1, L, G, B)  # sigmoid(i), sigmoid(f), tanh(g), sigmoid(o)
    tc = xp0.new_empty(S if save else 1, L, H, B)  # tanh(c)
    top = None if save else xp0.new_empty(T, H, B)
    tmp = None if lib is not None else xp0.new_empty(L, H, B)
    for s in range(S):
        lo, hi = _active(s, T, L)
        n, n_up = hi - lo, min(hi, L - 1) - lo
        m = _drop_slices(drop, T, H, B, s, lo, n_up, lib, xp0.dtype)
        now, nxt, here = (s, s + 1, s) if save else (s % 2, (s + 1) % 2, 0)
        if lib is not None:
            lib.lstm_forward_step(n, H, B, K, n_up, w[lo].data_ptr(), z[now, lo].data_ptr(),
                                  xp0[s].data_ptr() if lo == 0 else None, acts[here, lo].data_ptr(),
                                  c[now, lo].data_ptr(), c[nxt, lo].data_ptr(), tc[here, lo].data_ptr(),
                                  z[nxt, lo].data_ptr(), *m)
        else:
            a = acts[here, lo:hi]  # (n, 4H, B)
            torch.bmm(w[lo:hi], z[now, lo:hi], out=a)
            if lo == 0:
                a[0].add_(xp0[s])
            _forward_step_torch(a, c[now, lo:hi], c[nxt, lo:hi], tc[here, lo:hi], z[nxt, lo:], n_up, m, tmp[:n])
        if top is not None and hi == L:
            top[s - L + 1].copy_(z[nxt, L - 1, H:2 * H])
    if save:
        top = z[L:, L - 1, H:2 * H]  # (T, H, B): layer L - 1's step t is wavefront step t + L - 1
    return top, ((z, acts, c, tc) if save else None)


def _reference_stack(xp0: torch.Tensor, w: torch.Tensor, drop: DropoutKey | None) -> torch.Tensor:
    """The function `_wavefront` computes, layer by layer as plain differentiable torch operations."""
    T, G, B = xp0.shape
    L, H = w.shape[0], G // 4
    factors = None if drop is None else drop.factors((L - 1) * T * H * B, dtype=xp0.dtype).view(L - 1, T, H, B)
    inputs = None
    for layer in range(L):
        h = xp0.new_zeros(H, B)
        c = xp0.new_zeros(H, B)
        outs = []
        for t in range(T):
            if layer == 0:
                g = xp0[t] + w[0, :, H:2 * H] @ h
            else:
                g = w[layer, :, :H] @ inputs[t] + w[layer, :, H:2 * H] @ h + w[layer, :, 2 * H:]
            i, f, o = torch.sigmoid(g[:H]), torch.sigmoid(g[H:2 * H]), torch.sigmoid(g[3 * H:])
            c = f * c + i * torch.tanh(g[2 * H:3 * H])
            h = o * torch.tanh(c)
            outs.append(h)
        seq = torch.stack(outs)  # (T, H, B)
        inputs = seq * factors[layer] if factors is not None and layer < L - 1 else seq
    return seq


class _LSTMStack(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xp0, w, drop, lib_flag):
        lib = native_kernels() if lib_flag else None
        top, (z, acts, c, tc) = _wavefront(xp0, w, drop, True, lib)
        ctx.save_for_backward(xp0, w, z, acts, c, tc)
        ctx.drop, ctx.lib_flag = drop, lib_flag
        return top.clone()

    @staticmethod
    def backward(ctx, grad_top):
        xp0, w, z, acts, c, tc = ctx.saved_tensors
        drop = ctx.drop
        if torch.is_grad_enabled():  # a second-order gradient: through the reference, as a graph
            return (*differentiable_backward(lambda a, b: _reference_stack(a, b, drop), (xp0, w), grad_top),
                    None, None)
        lib = native_kernels() if ctx.lib_flag else None
        S, L, G, B = acts.shape
        K, H = w.shape[2], G // 4
        T = S - L + 1
        grad_top = grad_top.contiguous()
        grad_w = torch.zeros_like(w)  # (L, 4H, K)
        grad_xp0 = acts.new_empty(T, G, B)
        # d loss / d z at wavefront steps s + 1 (row (s + 1) % 2) and s; a layer's slots stay zero
        # until it is first active, which is what its last time step needs
        grad_z = acts.new_zeros(2, L, K, B)
        dc = acts.new_zeros(L, H, B)  # d loss / d c, carried to each layer's previous step
        if lib is None:
            w_t = w.transpose(1, 2)  # (L, K, 4H)
            gp_all, d_all, tmp = acts.new_empty(L, G, B), acts.new_empty(L, H, B), acts.new_empty(L, H, B)
        else:
            d_all = acts.new_empty(H, B)
        for s in range(S - 1, -1, -1):
            lo, hi = _active(s, T, L)
            n, n_up = hi - lo, min(hi, L - 1) - lo
            gz = grad_z[(s + 1) % 2, lo:] if s < S - 1 else None
            m = _drop_slices(drop, T, H, B, s, lo, n_up, lib, acts.dtype)
            g_top = grad_top[s - L + 1] if hi == L else None
            if lib is not None:
                lib.lstm_backward_step(n, H, B, K, n_up, w[lo].data_ptr(), z[s, lo].data_ptr(),
                                       acts[s, lo].data_ptr(), c[s, lo].data_ptr(), tc[s, lo].data_ptr(), _ptr(gz),
                                       *m, _ptr(g_top), d_all.data_ptr(), dc[lo].data_ptr(),
                                       grad_z[s % 2, lo].data_ptr(), grad_w[lo].data_ptr(),
                                       grad_xp0[s].data_ptr() if lo == 0 else None)
                continue
            gp = gp_all[:n]
            _backward_step_torch(acts[s, lo:hi], c[s, lo:hi], tc[s, lo:hi], gz, n_up, m, g_top, d_all[:n],
                                 dc[lo:hi], gp, tmp[:n])
            torch.bmm(w_t[lo:hi], gp, out=grad_z[s % 2, lo:hi])
            grad_w[lo:hi].baddbmm_(gp, z[s, lo:hi].transpose(1, 2))
            if lo == 0:
                grad_xp0[s].copy_(gp[0])  # layer 0's step t is wavefront step t
        return grad_xp0, grad_w, None, None


def lstm_stack(lstm: nn.LSTM, x: torch.Tensor, *, native: bool | None = None) -> torch.Tensor:
    """All layers of ``lstm`` over ``x`` from a zero state; the top layer's state after every step.

    Dropout between layers follows ``nn.LSTM``: applied to each layer's output but the last's, in
    training mode only (with the hashed masks of `longtail.models.dropout`, so they differ from
    ``nn.LSTM``'s draws).

    Args:
        lstm: the module holding the parameters (unidirectional, with biases, no projection;
            ``batch_first`` is ignored).
        x: (T, D, B) the input steps, feature-major.
        native: use the compiled element-wise kernels (``None``: when they are available and ``x``
            is float32 on the CPU).

    Returns:
        (T, H, B).
    """
    if lstm.bidirectional or not lstm.bias or lstm.proj_size:
        raise ValueError("lstm_stack supports unidirectional LSTMs with biases and no projection")
    T, D, B = x.shape
    H, L = lstm.hidden_size, lstm.num_layers
    if native is None:
        native = x.dtype == torch.float32 and x.device.type == "cpu" and native_kernels() is not None
    elif native and native_kernels() is None:
        raise RuntimeError("the native LSTM kernels are not available (no C compiler, or LONGTAIL_NATIVE_KERNELS=0)")
    p = [[getattr(lstm, f"{kind}_l{k}") for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")] for k in range(L)]
    x = x.contiguous()
    xp0 = torch.baddbmm((p[0][2] + p[0][3])[None, :, None], p[0][0].expand(T, 4 * H, D), x)  # (T, 4H, B)
    w = torch.stack([torch.cat([torch.zeros_like(p[0][1]) if k == 0 else p[k][0], p[k][1],
                                (torch.zeros_like(p[0][2]) if k == 0 else p[k][2] + p[k][3])[:, None]], dim=1)
                     for k in range(L)])  # (L, 4H, 2H + 1)
    drop = new_key(lstm.dropout) if L > 1 and lstm.dropout > 0 and lstm.training else None
    if torch.is_grad_enabled() and (x.requires_grad or any(t.requires_grad for t in lstm.parameters())):
        return _LSTMStack.apply(xp0, w, drop, bool(native))
    with torch.no_grad():
        return _wavefront(xp0, w, drop, False, native_kernels() if native else None)[0]
