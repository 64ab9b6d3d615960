"""Analytical FLOPs against ``torch.utils.flop_counter.FlopCounterMode``.

The counter and our convention both count 2 FLOPs per multiply-add of matrix products and
nothing else, so they must agree exactly wherever the counter sees the products: linear layers
(profile MLP, head), our attention (explicit matmuls) and the LSTM. The models' fast CPU paths
(the wavefront LSTM and fused attention of `longtail.models.kernels`, and oneDNN's fused LSTM) are
invisible to the counter, so every comparison runs the reference implementations
(``reference_kernels()``, with ``torch.backends.mkldnn.flags(enabled=False)``: the LSTM then
decomposes into addmm/mm per step and the counter sees every gate product). The LSTM formula is also checked against the
hand-computed figure of ``reference/ALGORITHMS.md`` (nn.LSTM(15, 15), T = 128: 460,800).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from longtail.data.tensors import Batch, InputSchema, SequenceSchema
from longtail.models import (
    BertEncoder,
    HeavyConfig,
    LSTMEncoder,
    build_behavior_encoder,
    build_model,
    count_flops,
    encoder_flops,
    list_encoders,
)
from longtail.models.kernels import reference_kernels

ENCODERS = list_encoders()


def schema_of(max_length: int = 12) -> InputSchema:
    return InputSchema(
        n_profile_numeric=4,
        profile_cat_cardinalities=(6, 30),
        sequences=(
            SequenceSchema("events", n_numeric=3, cat_cardinalities=(9,), max_length=max_length),
            SequenceSchema("weather", n_numeric=5, cat_cardinalities=(), max_length=max_length // 2),
        ),
    )


def full_batch_of_one(schema: InputSchema) -> Batch:
    """One row whose sequences are full: every padded step is real, as the FLOPs convention assumes."""
    g = torch.Generator().manual_seed(0)
    seq_num, seq_cat, seq_mask = {}, {}, {}
    for s in schema.sequences:
        T = s.max_length
        seq_num[s.name] = torch.randn(1, T, s.n_numeric, generator=g)
        seq_cat[s.name] = torch.stack([torch.randint(2, c, (1, T), generator=g) for c in s.cat_cardinalities], -1) \
            if s.cat_cardinalities else torch.zeros(1, T, 0, dtype=torch.long)
        seq_mask[s.name] = torch.ones(1, T, dtype=torch.bool)
    return Batch(
        profile_num=torch.randn(1, schema.n_profile_numeric, generator=g),
        profile_cat=torch.stack([torch.randint(2, c, (1,), generator=g) for c in schema.profile_cat_cardinalities], 1),
        seq_num=seq_num, seq_cat=seq_cat, seq_mask=seq_mask,
        label=torch.zeros(1), scenario=torch.zeros(1, dtype=torch.long),
    )


def counted(fn) -> int:
    """FLOPs the counter sees while ``fn()`` runs, with the LSTM's fused kernel off."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="TF32 acceleration on top of oneDNN")  # torch noise
        with reference_kernels(), torch.backends.mkldnn.flags(enabled=False), torch.no_grad(), \
                FlopCounterMode(display=False) as fc:
            fn()
    return fc.get_total_flops()


def small(encoder: str) -> HeavyConfig:
    return HeavyConfig(encoder=encoder, num_layers=2, hidden_size=12, intermediate_size=20, num_heads=4,
                       dropout=0.0, profile_dims=(16, 8), head_dims=(8, 4))


@pytest.mark.unit
def test_lstm_formula_matches_reference_figure():
    # ALGORITHMS.md: nn.LSTM(15, 15) on (1, 128, 15) is 128 * 2 * 4 * 15 * (15 + 15) = 460,800
    assert LSTMEncoder(input_size=15, hidden_size=15, num_layers=1).flops(128) == 460_800


@pytest.mark.unit
def test_paper_heavy_encoder_flops():
    # hand-computed for step width 8, 6 layers, hidden 15 (BERT: intermediate 32):
    # LSTM 2*4*15*(8+15)*T + 5 * 2*4*15*30*T = 20,760 T
    # BERT 2*T*8*15 + 6 * (2T(4*15^2 + 2*15*32) + 4 T^2 15) = 22,560 T + 360 T^2
    lstm = LSTMEncoder(input_size=8, hidden_size=15, num_layers=6)
    bert = BertEncoder(input_size=8, hidden_size=15, num_layers=6, intermediate_size=32, num_heads=3)
    assert [lstm.flops(t) for t in (16, 24)] == [332_160, 498_240]
    assert [bert.flops(t) for t in (16, 24)] == [453_120, 748_800]


@pytest.mark.unit
@pytest.mark.parametrize("name", ENCODERS)
def test_encoder_flops_equal_counter(name):
    seq = SequenceSchema("x", n_numeric=7, cat_cardinalities=(), max_length=10)
    enc = build_behavior_encoder(seq, small(name)).eval()
    for T in (1, 6, 10):
        x, mask = torch.randn(1, T, 7), torch.ones(1, T, dtype=torch.bool)
        assert counted(lambda x=x, mask=mask: enc(x, mask)) == enc.flops(T), (name, T)


@pytest.mark.unit
def test_fused_lstm_is_invisible_or_exact():
    """With oneDNN on, the counter reports 0 for nn.LSTM's fused kernel on CPU builds (or, elsewhere, the formula)."""
    enc = LSTMEncoder(input_size=5, hidden_size=6, num_layers=2).eval()
    x, mask = torch.randn(1, 9, 5), torch.ones(1, 9, dtype=torch.bool)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="TF32 acceleration on top of oneDNN")
        with reference_kernels(), torch.backends.mkldnn.flags(enabled=True), torch.no_grad(), \
                FlopCounterMode(display=False) as fc:
            enc(x, mask)
    assert fc.get_total_flops() in (0, enc.flops(9))


@pytest.mark.unit
@pytest.mark.parametrize("name", ENCODERS)
def test_model_flops_equal_counter_by_part(name):
    schema = schema_of()
    model = build_model(schema, small(name)).eval()
    batch = full_batch_of_one(schema)
    flops = count_flops(model, schema)
    assert set(flops) == {"profile_encoder", "behavior_encoders.events", "behavior_encoders.weather", "head", "total"}
    assert flops["total"] == sum(v for k, v in flops.items() if k != "total")

    assert counted(lambda: model.profile_encoder(batch.profile_num, batch.profile_cat)) == flops["profile_encoder"]
    for s in schema.sequences:
        enc = model.behavior_encoders[s.name]
        part = counted(lambda enc=enc, n=s.name: enc(batch.seq_num[n], batch.seq_cat[n], batch.seq_mask[n]))
        assert part == flops[f"behavior_encoders.{s.name}"]
    head_in = torch.randn(1, model.head[0][0].in_features)
    assert counted(lambda: model.head(head_in)) == flops["head"]
    assert counted(lambda: model(batch)) == flops["total"]


@pytest.mark.unit
def test_profile_and_head_are_linear_sums():
    schema = schema_of()
    cfg = small("lstm")
    model = build_model(schema, cfg)
    p_in = model.profile_encoder.input_size  # 4 numerics + embeddings of 6 and 30 categories
    assert p_in == 4 + 4 + 11
    flops = count_flops(model)
    assert flops["profile_encoder"] == 2 * (p_in * 16 + 16 * 8)
    head_in = 8 + 12 + 12
    assert flops["head"] == 2 * (head_in * 8 + 8 * 4 + 4 * 1)


@pytest.mark.unit
def test_sequence_flops_use_padded_length():
    cfg = small("lstm")
    short, long = count_flops(build_model(schema_of(8), cfg)), count_flops(build_model(schema_of(16), cfg))
    for s in ("events", "weather"):
        assert long[f"behavior_encoders.{s}"] == 2 * short[f"behavior_encoders.{s}"]


@pytest.mark.unit
def test_encoder_without_flops_is_refused():
    with pytest.raises(TypeError, match="flops"):
        encoder_flops(nn.Identity(), 8)


def schema_with_edges(max_length: int = 12) -> InputSchema:
    """`schema_of` with bin edges: columns of 16, 5, 2 edges, missing flags and a constant column (none or one)."""
    def edges(k: int) -> tuple[float, ...]:
        return tuple(float(v) for v in torch.linspace(-2.0, 3.0, k)) if k else ()

    return InputSchema(
        n_profile_numeric=4,
        profile_cat_cardinalities=(6, 30),
        sequences=(
            SequenceSchema("events", 3, (9,), max_length, numeric_edges=(edges(16), (), edges(5))),
            SequenceSchema("weather", 5, (), max_length // 2,
                           numeric_edges=(edges(2), edges(7), (), (0.5,), edges(16))),
        ),
        profile_numeric_edges=(edges(5), (), edges(16), edges(3)),
    )


@pytest.mark.unit
@pytest.mark.parametrize("name", ["flat", "lstm", "bert"])
def test_ple_model_flops_equal_counter_by_part(name):
    schema = schema_with_edges()
    cfg = HeavyConfig.from_dict({**small(name).to_dict(), "numeric_embedding": "ple", "numeric_embedding_dim": 3})
    model = build_model(schema, cfg).eval()
    batch = full_batch_of_one(schema)
    flops = count_flops(model, schema)
    # the embeddings by hand: 2 * F * Kmax * dim per row (profile) or per step (sequences), Kmax = 15 bins here
    assert model.profile_encoder.numeric.flops() == 2 * 4 * 15 * 3
    assert model.profile_encoder.input_size == 4 * 3 + 4 + 11
    for s in schema.sequences:
        enc = model.behavior_encoders[s.name]
        assert flops[f"behavior_encoders.{s.name}"] == encoder_flops(enc.encoder, s.max_length) + \
            2 * s.n_numeric * 15 * 3 * s.max_length
        part = counted(lambda enc=enc, n=s.name: enc(batch.seq_num[n], batch.seq_cat[n], batch.seq_mask[n]))
        assert part == flops[f"behavior_encoders.{s.name}"], s.name
    assert counted(lambda: model.profile_encoder(batch.profile_num, batch.profile_cat)) == flops["profile_encoder"]
    assert counted(lambda: model(batch)) == flops["total"]


@pytest.mark.unit
def test_flat_encoder_flops_by_hand():
    seq = SequenceSchema("x", n_numeric=7, cat_cardinalities=(), max_length=10)
    enc = build_behavior_encoder(seq, small("flat"))  # 2 layers of 12
    assert enc.flops(10) == 2 * 10 * (7 + 1) * 12 + 2 * 12 * 12
    assert enc.flops(4) == 2 * 4 * (7 + 1) * 12 + 2 * 12 * 12
    assert enc.flops(30) == enc.flops(10)  # only the newest max_length steps are read
