"""Behaviour of the encoders (every registered one) and of the heavy model of Fig. 2."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from sklearn.metrics import roc_auc_score
from torch import nn

from longtail.data.tensors import Batch, InputSchema, SequenceSchema
from longtail.models import (
    HeavyConfig,
    HeavyModel,
    LSTMEncoder,
    UnknownEncoderError,
    build_behavior_encoder,
    build_model,
    create_encoder,
    list_encoders,
    measure_latency,
    register_encoder,
    step_input_size,
)
from longtail.models.encoders import BehaviorEncoder

ENCODERS = list_encoders()
SMALL = dict(num_layers=2, hidden_size=12, intermediate_size=16, num_heads=3, dropout=0.0,
             profile_dims=(16, 8), head_dims=(16, 8))


# ---------------------------------------------------------------------------------------- helpers
def make_schema(max_length: int = 8) -> InputSchema:
    """Two profile numerics and categoricals; two sequences of different lengths and fields."""
    return InputSchema(
        n_profile_numeric=3,
        profile_cat_cardinalities=(5, 7),
        sequences=(
            SequenceSchema("events", n_numeric=2, cat_cardinalities=(6, 4), max_length=max_length),
            SequenceSchema("weather", n_numeric=3, cat_cardinalities=(), max_length=max_length + 2),
        ),
    )


def make_batch(schema: InputSchema, n: int, seed: int = 0, padding: str = "left",
               lengths: dict[str, torch.Tensor] | None = None) -> Batch:
    """Random batch; row 0 has no step, row 1 a full sequence, others random lengths."""
    g = torch.Generator().manual_seed(seed)
    seq_num, seq_cat, seq_mask = {}, {}, {}
    for s in schema.sequences:
        T = s.max_length
        lens = lengths[s.name] if lengths else torch.randint(0, T + 1, (n,), generator=g)
        if lengths is None:
            lens[0], lens[1 % n] = 0, T
        steps = torch.arange(T).expand(n, T)
        if padding == "left":
            mask = steps >= (T - lens).unsqueeze(1)
        else:
            mask = steps < lens.unsqueeze(1)
        num = torch.randn(n, T, s.n_numeric, generator=g) * mask.unsqueeze(-1)
        cat = torch.stack([torch.randint(2, c, (n, T), generator=g) for c in s.cat_cardinalities], -1) \
            if s.cat_cardinalities else torch.zeros(n, T, 0, dtype=torch.long)
        seq_num[s.name], seq_cat[s.name], seq_mask[s.name] = num, cat * mask.unsqueeze(-1), mask
    return Batch(
        profile_num=torch.randn(n, schema.n_profile_numeric, generator=g),
        profile_cat=torch.stack([torch.randint(1, c, (n,), generator=g) for c in schema.profile_cat_cardinalities], 1),
        seq_num=seq_num, seq_cat=seq_cat, seq_mask=seq_mask,
        label=torch.randint(0, 2, (n,), generator=g).float(),
        scenario=torch.zeros(n, dtype=torch.long),
    )


def to_right_padding(batch: Batch) -> Batch:
    """Same real steps, same order, moved to the front of each row."""
    out = Batch(batch.profile_num, batch.profile_cat, {}, {}, {}, batch.label, batch.scenario)
    for name, mask in batch.seq_mask.items():
        order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)  # (B, T)
        out.seq_mask[name] = mask.gather(1, order)
        for src, dst in ((batch.seq_num, out.seq_num), (batch.seq_cat, out.seq_cat)):
            t = src[name]
            dst[name] = t.gather(1, order.unsqueeze(-1).expand_as(t))
    return out


def scramble_padding(batch: Batch, seed: int = 1) -> Batch:
    """Random values (numeric and valid category indices) at every padded step."""
    g = torch.Generator().manual_seed(seed)
    out = Batch(batch.profile_num, batch.profile_cat, {}, {}, dict(batch.seq_mask), batch.label, batch.scenario)
    for name, mask in batch.seq_mask.items():
        pad = ~mask.unsqueeze(-1)
        num, cat = batch.seq_num[name], batch.seq_cat[name]
        out.seq_num[name] = torch.where(pad, 100 * torch.randn(num.shape, generator=g), num)
        out.seq_cat[name] = torch.where(pad, torch.randint(1, 4, cat.shape, generator=g), cat)
    return out


def small_config(encoder: str, **kw) -> HeavyConfig:
    return HeavyConfig(encoder=encoder, **{**SMALL, **kw})


def small_encoder(name: str, input_size: int = 5, max_length: int = 10) -> nn.Module:
    seq = SequenceSchema("x", n_numeric=input_size, cat_cardinalities=(), max_length=max_length)
    return build_behavior_encoder(seq, small_config(name))


# --------------------------------------------------------------------------------------- registry
@pytest.mark.unit
def test_registry_has_paper_encoders():
    assert {"lstm", "bert"} <= set(ENCODERS)
    assert isinstance(create_encoder("lstm", input_size=4), LSTMEncoder)


@pytest.mark.unit
def test_unknown_encoder_names_registered_ones():
    with pytest.raises(UnknownEncoderError) as err:
        create_encoder("nope", input_size=4)
    assert isinstance(err.value, KeyError) and isinstance(err.value, ValueError)
    for name in ENCODERS:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="lstm"):
        build_model(make_schema(), HeavyConfig(encoder="transformerr"))


@pytest.mark.unit
def test_register_requires_flops_and_unique_name():
    with pytest.raises(TypeError, match="flops"):
        @register_encoder("no_flops")
        class NoFlops(nn.Module):
            def forward(self, x, mask):
                return x.mean(1)

    with pytest.raises(ValueError, match="already registered"):
        @register_encoder("lstm")
        class Other(BehaviorEncoder):
            def forward(self, x, mask):
                return x.mean(1)

            def flops(self, seq_len):
                return 0

    assert "no_flops" not in list_encoders()


# --------------------------------------------------------------------------------------- encoders
@pytest.mark.unit
@pytest.mark.parametrize("name", ENCODERS)
def test_encoder_ignores_padding_and_side(name):
    torch.manual_seed(0)
    enc = small_encoder(name).eval()
    B, T, D = 6, 10, 5
    lens = torch.tensor([0, 10, 1, 4, 7, 9])
    left = torch.arange(T).expand(B, T) >= (T - lens).unsqueeze(1)  # (B, T)
    x = torch.randn(B, T, D)
    with torch.no_grad():
        out = enc(x, left)  # (B, H)
        noisy = torch.where(left.unsqueeze(-1), x, torch.full_like(x, float("nan")))
        assert torch.equal(enc(noisy, left), out)
        assert torch.equal(enc(torch.where(left.unsqueeze(-1), x, 1e3 * torch.randn_like(x)), left), out)
        # right padding of the same steps
        order = torch.argsort((~left).to(torch.int8), dim=1, stable=True)
        right = left.gather(1, order)
        x_right = x.gather(1, order.unsqueeze(-1).expand_as(x))
        torch.testing.assert_close(enc(x_right, right), out, atol=1e-6, rtol=0)
    assert out.shape == (B, enc.output_size)
    assert torch.isfinite(out).all()
    assert torch.equal(out[0], torch.zeros_like(out[0]))  # no step -> zeros


@pytest.mark.unit
@pytest.mark.parametrize("name", ENCODERS)
def test_encoder_all_rows_empty_is_finite_and_has_gradients(name):
    enc = small_encoder(name)
    x = torch.randn(3, 10, 5, requires_grad=True)
    out = enc(x, torch.zeros(3, 10, dtype=torch.bool))
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in enc.parameters() if p.grad is not None)


@pytest.mark.unit
@pytest.mark.parametrize("name", ENCODERS)
def test_encoder_flops_positive_and_grow_with_length(name):
    enc = small_encoder(name)
    assert 0 < enc.flops(4) < enc.flops(8)
    assert isinstance(enc.flops(8), int)


# ------------------------------------------------------------------------------------------ model
@pytest.mark.unit
@pytest.mark.parametrize("name", ENCODERS)
def test_model_ignores_padding_values_and_side(name):
    torch.manual_seed(0)
    schema = make_schema()
    model = build_model(schema, small_config(name)).eval()
    batch = make_batch(schema, 12)
    with torch.no_grad():
        out = model(batch)  # (B,)
        assert out.shape == (12,)
        assert torch.isfinite(out).all()
        assert torch.equal(model(scramble_padding(batch)), out)
        torch.testing.assert_close(model(to_right_padding(batch)), out, atol=1e-6, rtol=0)
        # a batch of rows that all have no step at all
        empty = make_batch(schema, 4, lengths={s.name: torch.zeros(4, dtype=torch.long) for s in schema.sequences})
        assert torch.isfinite(model(empty)).all()


@pytest.mark.unit
@pytest.mark.parametrize("name", ENCODERS)
def test_model_deterministic_under_seed(name):
    schema = make_schema()
    batch = make_batch(schema, 8)
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        model = build_model(schema, small_config(name, dropout=0.1))  # train mode: dropout on
        outs.append(model(batch))
    assert torch.equal(outs[0], outs[1])


@pytest.mark.unit
def test_paper_heavy_defaults_build():
    cfg = HeavyConfig()
    assert (cfg.encoder, cfg.num_layers, cfg.hidden_size, cfg.intermediate_size) == ("lstm", 6, 15, 32)
    assert cfg.hidden_size % cfg.num_heads == 0
    schema = make_schema()
    for name in ("lstm", "bert"):
        model = build_model(schema, HeavyConfig(encoder=name)).eval()
        assert isinstance(model, HeavyModel)
        core = model.behavior_encoders["events"].encoder
        assert core.num_layers == 6 and core.output_size == 15
        assert model(make_batch(schema, 3)).shape == (3,)


@pytest.mark.unit
def test_config_round_trip_and_overrides():
    cfg = HeavyConfig(encoder="bert", profile_dims="128, 32", head_dims=[256, 16], cat_embedding_dim=4,
                      sequence_overrides={"weather": {"encoder": "lstm", "num_layers": 1}})
    assert cfg.profile_dims == (128, 32) and cfg.head_dims == (256, 16)
    d = cfg.to_dict()
    assert d["profile_dims"] == [128, 32]
    assert HeavyConfig.from_dict(yaml.safe_load(yaml.safe_dump(d))) == cfg
    assert HeavyConfig.from_dict(json.loads(json.dumps(d))) == cfg
    with pytest.raises(ValueError, match="unknown"):
        HeavyConfig.from_dict({**d, "hiden_size": 3})
    with pytest.raises(ValueError, match="unknown keys"):
        HeavyConfig(sequence_overrides={"weather": {"layers": 2}})
    name, kwargs = cfg.encoder_settings("weather")
    assert name == "lstm" and kwargs["num_layers"] == 1 and "num_heads" not in kwargs
    model = build_model(make_schema(), cfg)
    assert model.behavior_encoders["events"].encoder.registry_name == "bert"
    assert model.behavior_encoders["weather"].encoder.num_layers == 1
    with pytest.raises(ValueError, match="unknown sequence"):
        build_model(make_schema(), HeavyConfig(sequence_overrides={"nope": {"num_layers": 1}}))


@pytest.mark.unit
def test_prebuilt_encoder_replaces_registry_one():
    schema = make_schema()
    cfg = small_config("bert")
    width = step_input_size(schema.sequences[0], cfg)
    custom = LSTMEncoder(input_size=width, hidden_size=4, num_layers=1)
    model = build_model(schema, cfg, encoders={"events": custom})
    assert model.behavior_encoders["events"].encoder is custom
    assert model.head[0][0].in_features == model.profile_encoder.output_size + 4 + 12
    assert model(make_batch(schema, 5)).shape == (5,)
    with pytest.raises(ValueError, match="width"):
        build_model(schema, cfg, encoders={"events": LSTMEncoder(input_size=width + 1)})


@pytest.mark.unit
def test_describe_counts_parameters():
    model = build_model(make_schema(), small_config("lstm"))
    d = model.describe()
    assert d["n_parameters"] == sum(p.numel() for p in model.parameters())
    assert sum(d["n_parameters_by_part"].values()) == d["n_parameters"]
    assert d["behavior_encoders"]["events"]["encoder"] == "lstm"
    yaml.safe_dump(d)  # plain types only


@pytest.mark.unit
def test_measure_latency_restores_state():
    schema = make_schema()
    model = build_model(schema, small_config("lstm"))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    res = measure_latency(model, make_batch(schema, 1), repeats=5, warmup=1)
    assert {"p50_ms", "p90_ms", "mean_ms"} <= set(res)
    assert 0 < res["p50_ms"] <= res["p90_ms"]
    assert model.training and torch.get_num_threads() == 2
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------- planted signal
def planted_task(n: int, seed: int) -> tuple[InputSchema, Batch]:
    """Label = sign of the newest real step's first numeric; everything else is noise."""
    schema = InputSchema(2, (4,), (SequenceSchema("events", 2, (5,), 8),))
    g = torch.Generator().manual_seed(seed)
    lengths = {"events": torch.randint(1, 9, (n,), generator=g)}
    batch = make_batch(schema, n, seed=seed, lengths=lengths)
    batch.label = (batch.seq_num["events"][:, -1, 0] > 0).float()  # left padding: newest step last
    return schema, batch


@pytest.mark.model
@pytest.mark.parametrize("name", ENCODERS)
def test_model_learns_newest_step_signal(name):
    torch.manual_seed(0)
    schema, train = planted_task(2048, seed=0)
    _, test = planted_task(1024, seed=1)
    model = build_model(schema, small_config(name))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = nn.BCEWithLogitsLoss()
    g = torch.Generator().manual_seed(0)
    for _ in range(120):
        idx = torch.randint(0, len(train), (128,), generator=g)
        b = train.index(idx)
        loss = loss_fn(model(b), b.label)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        auc = roc_auc_score(test.label.numpy(), model(test).numpy())
    print(f"{name}: AUC {auc:.3f}")
    assert auc > 0.8, f"{name}: AUC {auc:.3f}"
