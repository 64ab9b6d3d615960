"""The models' fast CPU paths compute the same functions as their references.

Each fast path (the wavefront LSTM, the fused attention, LayerNorm and padding mask, the hashed
dropout) is compared with the plain torch implementation on values and gradients, for the native
C kernels (when this machine can build them) and for the torch fallback that runs without a C
compiler.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from longtail.models import kernels
from longtail.models.dropout import Dropout, dropout, new_key
from longtail.models.encoders import BertEncoder, LSTMEncoder, MultiHeadSelfAttention
from longtail.models.fused import LayerNorm, zero_padding
from longtail.models.kernels import native_kernels, reference_kernels
from longtail.models.ops import create_op
from longtail.models.recurrent import lstm_stack

NATIVE = [False, True] if native_kernels() is not None else [False]


def grads(out: torch.Tensor, inputs) -> list[torch.Tensor]:
    weight = torch.linspace(-1, 1, out.numel()).view(out.shape)  # a loss that weighs every output differently
    return list(torch.autograd.grad((out * weight).sum(), list(inputs)))


@pytest.mark.unit
@pytest.mark.parametrize("native", NATIVE)
@pytest.mark.parametrize(("layers", "steps", "batch"), [(1, 5, 3), (3, 9, 4), (6, 24, 70), (4, 2, 1)])
def test_wavefront_lstm_equals_nn_lstm(native, layers, steps, batch):
    torch.manual_seed(0)
    dtypes = [torch.float32] if native else [torch.float32, torch.float64]
    for dtype in dtypes:
        lstm = torch.nn.LSTM(7, 5, num_layers=layers).to(dtype)
        x = torch.randn(steps, batch, 7, dtype=dtype, requires_grad=True)
        ref, _ = lstm(x)
        out = lstm_stack(lstm, x.permute(0, 2, 1), native=native).permute(0, 2, 1)
        tol = 1e-5 if dtype == torch.float32 else 1e-12
        assert torch.allclose(out, ref, atol=tol)
        for a, b in zip(grads(out, [x, *lstm.parameters()]), grads(ref, [x, *lstm.parameters()]), strict=True):
            assert torch.allclose(a, b, atol=tol * 10)
        with torch.no_grad():  # the inference path keeps two wavefront steps only
            assert torch.allclose(lstm_stack(lstm, x.permute(0, 2, 1), native=native).permute(0, 2, 1), ref, atol=tol)


@pytest.mark.unit
def test_wavefront_lstm_dropout_is_the_same_in_c_and_torch():
    if len(NATIVE) < 2:
        pytest.skip("no C compiler here: only the torch steps run")
    lstm = torch.nn.LSTM(6, 5, num_layers=4, dropout=0.3).train()
    x = torch.randn(9, 6, 8, requires_grad=True)
    results = []
    for native in (True, False):
        torch.manual_seed(3)
        out = lstm_stack(lstm, x, native=native)
        results.append((out, grads(out, [x, *lstm.parameters()])))
    assert torch.allclose(results[0][0], results[1][0], atol=1e-6)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    torch.manual_seed(3)
    dropped = lstm_stack(lstm, x)
    lstm.eval()
    assert not torch.allclose(dropped, lstm_stack(lstm, x))  # dropout did act in training mode


@pytest.mark.unit
def test_lstm_encoder_fast_path_equals_packed_reference():
    enc = LSTMEncoder(input_size=4, hidden_size=6, num_layers=3).eval()
    x = torch.randn(5, 7, 4, requires_grad=True)
    mask = torch.tensor([[0] * 7, [1] * 7, [0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 1]]).bool()
    fast = enc(x, mask)
    with reference_kernels():
        ref = enc(x, mask)
    assert torch.allclose(fast, ref, atol=1e-5)
    assert torch.equal(fast[0], torch.zeros(6))  # no real step: zeros
    for a, b in zip(grads(fast, [x, *enc.parameters()]), grads(ref, [x, *enc.parameters()]), strict=True):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.unit
def test_recurrent_op_fast_path_equals_reference():
    op = create_op("lstm", hidden_size=6)
    h = torch.randn(4, 8, 6, requires_grad=True)
    mask = torch.rand(4, 8) > 0.3
    mask[0] = False
    fast = op(h, mask)
    with reference_kernels():
        ref = op(h, mask)
    assert torch.allclose(fast, ref, atol=1e-5)
    for a, b in zip(grads(fast, [h, *op.parameters()]), grads(ref, [h, *op.parameters()]), strict=True):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.unit
@pytest.mark.parametrize("p", [0.0, 0.3])
def test_fused_attention_equals_explicit_products(p):
    att = MultiHeadSelfAttention(15, 3, dropout=p).train()
    h = torch.randn(6, 9, 15, requires_grad=True)
    mask = torch.rand(6, 9) > 0.3
    mask[0] = False  # a row without real keys attends uniformly, finite
    mask[1] = True
    results = []
    for reference in (False, True):
        torch.manual_seed(1)  # the same dropout key on both paths
        with reference_kernels() if reference else torch.enable_grad():
            out = att(h, mask)
        results.append((out, grads(out, [h, *att.parameters()])))
    assert torch.isfinite(results[0][0]).all()
    assert torch.allclose(results[0][0], results[1][0], atol=1e-5)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.unit
def test_bert_encoder_fast_path_equals_reference():
    enc = BertEncoder(input_size=4, hidden_size=6, num_layers=2, intermediate_size=8, num_heads=2, max_length=7).eval()
    x = torch.randn(3, 7, 4)
    mask = torch.tensor([[1] * 7, [0, 0, 0, 1, 1, 1, 1], [0] * 7]).bool()
    fast = enc(x, mask)
    with reference_kernels():
        ref = enc(x, mask)
    assert torch.allclose(fast, ref, atol=1e-5)


@pytest.mark.unit
def test_fused_layer_norm_and_padding_mask():
    norm = LayerNorm(15)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    x = torch.randn(4, 6, 15, requires_grad=True)
    fast = norm(x)
    ref = F.layer_norm(x, (15,), norm.weight, norm.bias, norm.eps)
    assert torch.allclose(fast, ref, atol=1e-5)
    for a, b in zip(grads(fast, [x, norm.weight, norm.bias]), grads(ref, [x, norm.weight, norm.bias]), strict=True):
        assert torch.allclose(a, b, atol=1e-4)
    assert set(norm.state_dict()) == {"weight", "bias"}  # the same state dict as nn.LayerNorm
    mask = torch.rand(4, 6) > 0.5
    noisy = x.detach().clone()
    noisy[~mask] = float("nan")
    zeroed = zero_padding(noisy, mask)
    assert torch.equal(zeroed[~mask], torch.zeros_like(zeroed[~mask]))  # NaN at padding does not leak
    assert torch.equal(zeroed[mask], noisy[mask])


@pytest.mark.unit
def test_hashed_dropout_rate_reproducibility_and_gradient():
    x = torch.ones(200_000, requires_grad=True)
    torch.manual_seed(0)
    y = dropout(x, 0.1)
    assert abs(float((y == 0).float().mean()) - 0.1) < 0.005
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / 0.9))
    torch.manual_seed(0)
    assert torch.equal(dropout(x, 0.1), y)  # seeded: the same mask
    torch.manual_seed(0)
    key = new_key(0.1)
    assert torch.equal(key.factors(x.numel()), y.detach())  # the torch hash is the kernel's
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # the gradient passes through the same mask
    layer = Dropout(0.5).eval()
    assert layer(x) is x
    with pytest.raises(ValueError, match="dropout probability"):
        new_key(1.0)


@pytest.mark.unit
def test_without_native_kernels_everything_still_runs(monkeypatch):
    monkeypatch.setenv(kernels.ENV_DISABLE, "0")
    kernels.native_kernels.cache_clear()
    try:
        assert kernels.native_kernels() is None
        torch.manual_seed(0)
        enc = LSTMEncoder(input_size=3, hidden_size=4, num_layers=2)
        x, mask = torch.randn(2, 5, 3), torch.ones(2, 5, dtype=torch.bool)
        enc(x, mask).sum().backward()
        att = MultiHeadSelfAttention(6, 2, dropout=0.2)
        att(torch.randn(2, 5, 6), mask).sum().backward()
        with pytest.raises(RuntimeError, match="native"):
            lstm_stack(enc.lstm, x.permute(1, 2, 0), native=True)
    finally:
        monkeypatch.delenv(kernels.ENV_DISABLE)
        kernels.native_kernels.cache_clear()


@pytest.mark.unit
def test_second_order_gradients_go_through_the_references():
    """create_graph=True (second-order meta-learning) gives the reference's second derivatives."""
    torch.manual_seed(0)
    enc = BertEncoder(input_size=4, hidden_size=6, num_layers=1, intermediate_size=8, num_heads=2, max_length=5)
    lstm_enc = LSTMEncoder(input_size=4, hidden_size=5, num_layers=2).eval()
    x = torch.randn(3, 5, 4)
    mask = torch.tensor([[1] * 5, [0, 0, 1, 1, 1], [0] * 5]).bool()
    for module in (enc.eval(), lstm_enc):
        params = list(module.parameters())
        results = []
        for reference in (False, True):
            with reference_kernels() if reference else torch.enable_grad():
                out = module(x, mask).square().sum()
                first = torch.autograd.grad(out, params, create_graph=True)
                second = torch.autograd.grad(sum(g.square().sum() for g in first), params, allow_unused=True)
            results.append([torch.zeros_like(p) if g is None else g for g, p in zip(second, params, strict=True)])
        for a, b in zip(*results, strict=True):
            assert torch.allclose(a, b, atol=1e-4), type(module).__name__
