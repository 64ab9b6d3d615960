"""Budget-limited NAS: operations, GDAS sampling, exact derivation, genotypes, distillation."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch.utils.flop_counter import FlopCounterMode

from longtail.data.tensors import Batch, InputSchema, SequenceSchema
from longtail.models.flops import count_flops
from longtail.models.heavy import HeavyConfig, build_model, step_input_size
from longtail.models.kernels import reference_kernels
from longtail.nas import (
    ArchSpace,
    Decision,
    Genotype,
    InfeasibleBudgetError,
    LayerGene,
    SearchConfig,
    SuperEncoder,
    brute_force,
    budget_from_reference,
    build_light_encoder,
    build_light_model,
    build_supernet_model,
    create_op,
    derive,
    distill_loss,
    genotype_flops,
    inherit_weights,
    list_ops,
    op_flops,
    search,
    solve,
    teacher_logits,
    train_light,
)
from longtail.nas.derive import model_decisions
from longtail.nas.supernet import (
    arch_parameters,
    expected_model_flops,
    gumbel_straight_through,
    max_model_flops,
    model_fixed_flops,
    weight_parameters,
)
from longtail.train import TrainConfig

SMALL = {"hidden_size": 6, "num_heads": 2, "profile_dims": (8,), "head_dims": (8,), "dropout": 0.0,
         "cat_embedding_dim": 3}


def random_supernet(schema: InputSchema, config: HeavyConfig):
    """A 3-layer supernet model whose architecture logits are random (not the uniform start)."""
    model = build_supernet_model(schema, config, ArchSpace(num_layers=3, hidden_size=6, num_heads=2))
    with torch.no_grad():
        for p in arch_parameters(model):
            p.normal_(0, 1)
    return model


def left_mask(lengths: torch.Tensor, T: int) -> torch.Tensor:
    return torch.arange(T).expand(len(lengths), T) >= (T - lengths).unsqueeze(1)  # (B, T)


def make_schema(T: int = 8, two: bool = False) -> InputSchema:
    seqs = [SequenceSchema("events", 2, (5,), T)]
    if two:
        seqs.append(SequenceSchema("weather", 3, (), T + 2))
    return InputSchema(2, (4,), tuple(seqs))


def make_batch(schema: InputSchema, n: int, seed: int) -> Batch:
    """Left-padded random rows; label = sign of the mean first numeric of the real 'events' steps."""
    g = torch.Generator().manual_seed(seed)
    seq_num, seq_cat, seq_mask = {}, {}, {}
    for s in schema.sequences:
        mask = left_mask(torch.randint(1, s.max_length + 1, (n,), generator=g), s.max_length)
        seq_mask[s.name] = mask
        seq_num[s.name] = torch.randn(n, s.max_length, s.n_numeric, generator=g) * mask.unsqueeze(-1)
        cats = [torch.randint(2, c, (n, s.max_length), generator=g) for c in s.cat_cardinalities]
        seq_cat[s.name] = (torch.stack(cats, -1) if cats else torch.zeros(n, s.max_length, 0, dtype=torch.long)) \
            * mask.unsqueeze(-1)
    first = seq_num["events"][..., 0]
    label = (first.sum(1) / seq_mask["events"].sum(1) > 0).float()
    return Batch(torch.randn(n, schema.n_profile_numeric, generator=g),
                 torch.randint(1, 4, (n, 1), generator=g), seq_num, seq_cat, seq_mask, label,
                 torch.zeros(n, dtype=torch.long))


def random_genotype(space: ArchSpace, rng: random.Random) -> Genotype:
    layers = []
    for i in range(space.num_layers):
        layers.append(LayerGene(rng.choice(space.ops), rng.randint(0, i),
                                tuple(r for r in range(i + 1) if rng.random() < 0.5)))
    return Genotype(tuple(layers), space.hidden_size, space.num_heads)


# ------------------------------------------------------------------------------ operations
@pytest.mark.unit
@pytest.mark.parametrize("name", list_ops())
def test_op_shape_mask_and_flops(name):
    torch.manual_seed(0)
    H, T = 6, 10
    op = create_op(name, H, num_heads=2)
    lengths = torch.tensor([0, T, 3, 7, 1])
    mask = left_mask(lengths, T)
    h = torch.randn(5, T, H) * mask.unsqueeze(-1)
    y = op(h, mask)
    assert y.shape == (5, T, H) and torch.isfinite(y).all()
    assert (y[~mask] == 0).all()
    scrambled = torch.where(mask.unsqueeze(-1), h, 1e3 * torch.randn(5, T, H))
    scrambled[0, :2] = float("nan")  # row 0 is all padding: NaN there must not leak either
    y_s = op(scrambled, mask)
    assert torch.isfinite(y_s).all() and torch.allclose(y_s, y, atol=1e-5)
    # the same contiguous real steps, right padded: same outputs at the same real steps
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
    h_r = h.gather(1, order.unsqueeze(-1).expand_as(h))
    mask_r = mask.gather(1, order)
    y_r = op(h_r, mask_r)
    assert torch.allclose(y_r[mask_r], y[mask], atol=1e-5)
    # analytical FLOPs == the counter (it counts conv, linear, explicit matmuls, unfused LSTM)
    with reference_kernels(), torch.backends.mkldnn.flags(enabled=False):
        counter = FlopCounterMode(display=False)
        with counter:
            op(torch.randn(1, T, H), torch.ones(1, T, dtype=torch.bool))
    assert counter.get_total_flops() == op_flops(name, T, H)


@pytest.mark.unit
def test_light_encoder_ignores_padding_and_counts_flops():
    rng = random.Random(0)
    space = ArchSpace(num_layers=3, hidden_size=6, num_heads=2)
    for _ in range(4):
        genotype = random_genotype(space, rng)
        torch.manual_seed(0)
        enc = build_light_encoder(genotype, input_size=4)
        mask = left_mask(torch.tensor([0, 8, 3, 5]), 8)
        x = torch.randn(4, 8, 4) * mask.unsqueeze(-1)
        y = enc(x, mask)
        noisy = torch.where(mask.unsqueeze(-1), x, 100 * torch.randn_like(x))
        assert y.shape == (4, 6) and torch.isfinite(y).all()
        assert torch.allclose(enc(noisy, mask), y, atol=1e-5), genotype
        with reference_kernels(), torch.backends.mkldnn.flags(enabled=False):
            counter = FlopCounterMode(display=False)
            with counter:
                enc(torch.randn(1, 8, 4), torch.ones(1, 8, dtype=torch.bool))
        assert counter.get_total_flops() == enc.flops(8) == genotype_flops(genotype, 4, 8)


# --------------------------------------------------------------------------------- GDAS
@pytest.mark.unit
def test_straight_through_runs_only_sampled_op_and_reaches_alpha():
    torch.manual_seed(0)
    space = ArchSpace(num_layers=3, hidden_size=6, num_heads=2)
    enc = SuperEncoder(space, input_size=4)
    calls: dict[tuple[int, str], int] = {}
    for i, layer in enumerate(enc.layers):
        for name, op in layer.ops.items():
            op.register_forward_hook(lambda m, a, o, key=(i, name): calls.__setitem__(key, calls.get(key, 0) + 1))
    mask = left_mask(torch.tensor([8, 3, 5]), 8)
    enc.train()
    for _ in range(5):
        calls.clear()
        enc.zero_grad()
        enc(torch.randn(3, 8, 4), mask).pow(2).sum().backward()
        sampled = {(i, g.op) for i, g in enumerate(enc.last_genotype.layers)}
        assert set(calls) == sampled and all(v == 1 for v in calls.values())
        for i in range(space.num_layers):
            assert enc.alpha_op.grad[i].abs().sum() > 0
            assert enc.alpha_residual[i].grad.abs().sum() > 0
            if i > 0:  # layer 0 has a single possible input
                assert enc.alpha_input[i].grad.abs().sum() > 0
    assert {id(p) for p in arch_parameters(enc)}.isdisjoint(id(p) for p in weight_parameters(enc))
    assert len(arch_parameters(enc)) == 1 + 2 * space.num_layers


@pytest.mark.unit
def test_gumbel_one_hot_forward_and_nan_is_refused():
    logits = torch.randn(5, requires_grad=True)
    hardw, index = gumbel_straight_through(logits, tau=0.5)
    assert torch.allclose(hardw.detach(), F.one_hot(torch.tensor(index), 5).float())
    hardw[index].backward()
    assert logits.grad.abs().sum() > 0
    with pytest.raises(FloatingPointError):
        gumbel_straight_through(torch.tensor([float("nan"), 0.0]), tau=1.0, max_tries=3)


@pytest.mark.model
def test_search_moves_alpha_and_flops_term_lowers_expected_flops():
    torch.manual_seed(0)
    schema = make_schema()
    config = HeavyConfig(**SMALL)
    space = ArchSpace(num_layers=2, hidden_size=6, num_heads=2, ops=("conv_1", "conv_9", "max_pool_3"))
    model = build_supernet_model(schema, config, space)
    train, valid = make_batch(schema, 256, 0), make_batch(schema, 128, 1)
    teacher = build_model(schema, HeavyConfig(encoder="lstm", num_layers=1, **SMALL))
    before = expected_model_flops(model).item()
    alpha0 = [p.detach().clone() for p in arch_parameters(model)]
    res = search(model, train, valid, SearchConfig(epochs=1, batch_size=64, max_steps=30, lambda_flops=50.0,
                                                   arch_lr=3e-3),
                 teacher_train=teacher_logits(teacher, train), teacher_valid=teacher_logits(teacher, valid))
    assert len(res.history) == 4 and all(math.isfinite(r["valid_loss"]) for r in res.history)
    assert res.history[0]["tau"] == 10.0 and res.history[-1]["tau"] == pytest.approx(0.1)
    assert any(not torch.equal(a, p) for a, p in zip(alpha0, arch_parameters(model), strict=True))
    assert expected_model_flops(model).item() < before
    assert set(res.argmax_genotypes) == {"events"}


@pytest.mark.model
def test_hinge_penalty_costs_only_expected_flops_above_the_budget():
    schema = make_schema()
    space = ArchSpace(num_layers=2, hidden_size=6, num_heads=2, ops=("conv_1", "conv_9", "max_pool_3"))
    train, valid = make_batch(schema, 256, 0), make_batch(schema, 128, 1)
    terms = {}
    for budget_scale in (10.0, 0.5):
        torch.manual_seed(0)
        model = build_supernet_model(schema, HeavyConfig(**SMALL), space)
        budget = int(expected_model_flops(model).item() * budget_scale)
        res = search(model, train, valid, SearchConfig(epochs=1, batch_size=64, max_steps=3, lambda_flops=50.0,
                                                       flops_penalty="hinge"), budget=budget)
        terms[budget_scale] = [r["flops_term"] for r in res.history]
    assert all(t == 0.0 for t in terms[10.0])  # well within the budget: no pressure at all
    assert all(t > 0.0 for t in terms[0.5])  # above it: the excess is penalised
    with pytest.raises(ValueError, match="flops_penalty"):
        search(build_supernet_model(schema, HeavyConfig(**SMALL), space), train, valid,
               SearchConfig(max_steps=1, flops_penalty="quadratic"))


# ---------------------------------------------------------------------------- derivation
def random_decisions(rng: random.Random, n: int) -> list[Decision]:
    out = []
    for k in range(n):
        m = rng.randint(1, 4)
        logits = [rng.gauss(0, 2) for _ in range(m)]
        z = math.log(sum(math.exp(v) for v in logits))
        costs = tuple(rng.choice([0, 0, rng.randint(0, 50)]) for _ in range(m))
        out.append(Decision(k, tuple(v - z for v in logits), costs))
    return out


@pytest.mark.unit
def test_solve_equals_brute_force_on_random_problems():
    rng = random.Random(0)
    for _ in range(300):
        decisions = random_decisions(rng, rng.randint(1, 6))
        fixed = rng.randint(0, 20)
        lo = fixed + sum(min(d.costs) for d in decisions)
        hi = fixed + sum(max(d.costs) for d in decisions)
        budget = rng.randint(lo - 5, hi + 5)
        if budget < lo:
            with pytest.raises(InfeasibleBudgetError, match=f"{lo:,}"):
                solve(decisions, budget, fixed)
            continue
        dp, bf = solve(decisions, budget, fixed), brute_force(decisions, budget, fixed)
        assert dp.log_prob == pytest.approx(bf.log_prob, abs=1e-9)
        assert dp.flops <= budget
        chosen_cost = fixed + sum(d.costs[dp.choices[d.key]] for d in decisions)
        chosen_lp = sum(d.log_probs[dp.choices[d.key]] for d in decisions)
        assert chosen_cost == dp.flops and chosen_lp == pytest.approx(dp.log_prob)


@pytest.mark.unit
def test_derive_on_supernet_equals_brute_force_and_respects_budgets():
    torch.manual_seed(0)
    schema = make_schema()
    config = HeavyConfig(**SMALL)
    space = ArchSpace(num_layers=2, hidden_size=6, num_heads=2,
                        ops=("conv_1", "conv_5", "lstm", "self_attention", "avg_pool_3"))
    model = build_supernet_model(schema, config, space)
    fixed, top = model_fixed_flops(model), max_model_flops(model)
    rng = random.Random(1)
    for _ in range(30):
        with torch.no_grad():
            for p in arch_parameters(model):
                p.normal_(0, 2)
        decisions = model_decisions(model)
        budget = rng.randint(fixed, top)
        result = derive(model, budget)
        assert result.log_prob == pytest.approx(brute_force(decisions, budget, fixed).log_prob, abs=1e-9)
        assert result.flops <= budget
        light = build_light_model(schema, config, result.genotypes)
        assert count_flops(light)["total"] == result.flops
    with pytest.raises(InfeasibleBudgetError, match=f"smallest architecture of the space needs {fixed:,}"):
        derive(model, fixed - 1)


@pytest.mark.unit
def test_every_budget_is_respected_with_two_sequences():
    torch.manual_seed(0)
    schema = make_schema(two=True)
    config = HeavyConfig(**SMALL)
    model = random_supernet(schema, config)
    fixed, top = model_fixed_flops(model), max_model_flops(model)
    previous = -math.inf
    for budget in torch.linspace(fixed, top, 40).long().tolist():
        result = derive(model, budget)
        assert result.flops <= budget and set(result.genotypes) == {"events", "weather"}
        assert result.log_prob >= previous - 1e-12  # a looser budget never gives a less probable architecture
        previous = result.log_prob
    assert derive(model, top).genotypes == {n: e.behavior_encoders[n].encoder.argmax_genotype()
                                            for n, e in [("events", model), ("weather", model)]}
    reference = build_model(schema, HeavyConfig(encoder="lstm", num_layers=3, **SMALL))
    budget = budget_from_reference(reference, 1.0)
    assert budget == count_flops(reference)["total"]
    assert derive(model, budget).flops <= budget


# ----------------------------------------------------------------------------- genotypes
@pytest.mark.unit
def test_genotype_json_round_trip_builds_same_encoder():
    g = Genotype((LayerGene("conv_3", 0), LayerGene("lstm", 1, (0, 1)), LayerGene("self_attention", 1, (2,))),
                 hidden_size=6, num_heads=2)
    text = g.to_json()
    assert Genotype.from_json(text) == g and Genotype.from_dict(g.to_dict()) == g
    torch.manual_seed(3)
    a = build_light_encoder(g, 4)
    torch.manual_seed(3)
    b = build_light_encoder(text, 4)
    assert a.state_dict().keys() == b.state_dict().keys()
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    x, mask = torch.randn(2, 8, 4), torch.ones(2, 8, dtype=torch.bool)
    assert torch.equal(a(x, mask), b(x, mask))
    assert ArchSpace.from_dict(ArchSpace().to_dict()) == ArchSpace()
    with pytest.raises(ValueError, match="input node"):
        Genotype((LayerGene("conv_3", 1),))
    with pytest.raises(ValueError, match="unknown operation"):
        Genotype((LayerGene("conv_4", 0),))


@pytest.mark.unit
def test_supernet_ignores_padding():
    torch.manual_seed(0)
    enc = SuperEncoder(ArchSpace(num_layers=3, hidden_size=6, num_heads=2), input_size=4)
    mask = left_mask(torch.tensor([0, 8, 3, 5]), 8)
    x = torch.randn(4, 8, 4) * mask.unsqueeze(-1)
    noisy = torch.where(mask.unsqueeze(-1), x, 100 * torch.randn_like(x))
    enc.eval()
    assert torch.allclose(enc(x, mask), enc(noisy, mask), atol=1e-5)
    enc.train()
    torch.manual_seed(1)
    y = enc(x, mask)
    torch.manual_seed(1)  # the same sampled architecture
    assert torch.allclose(enc(noisy, mask), y, atol=1e-5) and torch.isfinite(y).all()


@pytest.mark.unit
def test_inherited_light_model_equals_supernet_in_eval():
    torch.manual_seed(0)
    schema = make_schema(two=True)
    config = HeavyConfig(**SMALL)
    model = random_supernet(schema, config)
    genotypes = {n: model.behavior_encoders[n].encoder.argmax_genotype() for n in ("events", "weather")}
    light = build_light_model(schema, config, genotypes)
    inherit_weights(light, model)
    model.eval()
    light.eval()
    batch = make_batch(schema, 16, 0)
    with torch.no_grad():
        assert torch.allclose(light(batch), model(batch), atol=1e-6)


@pytest.mark.model
def test_light_model_learns_planted_signal_and_flops_match():
    torch.manual_seed(0)
    schema = make_schema()
    config = HeavyConfig(**SMALL)
    g = Genotype((LayerGene("conv_3", 0), LayerGene("max_pool_3", 1, (0,)), LayerGene("self_attention", 0, (1,))),
                 hidden_size=6, num_heads=2)
    train, test = make_batch(schema, 2048, 0), make_batch(schema, 512, 1)
    model = build_light_model(schema, config, {"events": g})
    seq = schema.sequences[0]
    assert count_flops(model)["total"] == (count_flops(model)["profile_encoder"] + count_flops(model)["head"]
                                           + genotype_flops(g, step_input_size(seq, config), seq.max_length))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(150):
        b = train.index(torch.randint(0, len(train), (128,), generator=gen))
        loss = F.binary_cross_entropy_with_logits(model(b), b.label)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        auc = roc_auc_score(test.label.numpy(), model(test).numpy())
    assert auc > 0.85, auc


# ---------------------------------------------------------------------------- distillation
@pytest.mark.unit
def test_distill_loss_delta_zero_is_bce_and_teacher_gets_no_gradient():
    torch.manual_seed(0)
    student = torch.randn(32, requires_grad=True)
    teacher = torch.randn(32, requires_grad=True)
    labels = torch.randint(0, 2, (32,)).float()
    assert torch.equal(distill_loss(student, teacher, labels, delta=0.0),
                       F.binary_cross_entropy_with_logits(student, labels))
    loss = distill_loss(student, teacher, labels, delta=0.5, temperature=2.0)
    expected = F.binary_cross_entropy_with_logits(student, labels) + 0.5 * F.binary_cross_entropy_with_logits(
        student / 2.0, torch.sigmoid(teacher.detach() / 2.0))
    assert torch.allclose(loss, expected)
    loss.backward()
    assert student.grad.abs().sum() > 0 and teacher.grad is None
    scaled = distill_loss(student, teacher, labels, delta=0.5, temperature=2.0, scale_t2=True)
    assert scaled > loss


@pytest.mark.model
def test_train_light_with_teacher_and_from_supernet():
    torch.manual_seed(0)
    schema = make_schema()
    config = HeavyConfig(**SMALL)
    train, valid = make_batch(schema, 512, 0), make_batch(schema, 256, 1)
    teacher = build_model(schema, HeavyConfig(encoder="lstm", num_layers=1, **SMALL))
    t = teacher_logits(teacher, valid, batch_size=100)
    assert t.shape == (256,) and not t.requires_grad
    supernet = build_supernet_model(schema, config, ArchSpace(num_layers=2, hidden_size=6, num_heads=2))
    genotypes = {"events": supernet.behavior_encoders["events"].encoder.argmax_genotype()}
    cfg = TrainConfig(epochs=2, batch_size=128, device="cpu", patience=5)
    for init in (None, supernet):
        model, res = train_light(genotypes, schema, config, train, valid, teacher, cfg, delta=0.5,
                                 temperature=2.0, supernet=init)
        assert res.epochs_run == 2 and res.best_valid_auc is not None
        assert model.behavior_encoders["events"].encoder.genotype == genotypes["events"]


@pytest.mark.unit
def test_architecture_picture_is_a_png(tmp_path):
    from longtail.nas.draw import draw_genotype

    g = Genotype((LayerGene("conv_3", 0), LayerGene("lstm", 1, (0,)), LayerGene("self_attention", 0, (1, 2))),
                 hidden_size=6, num_heads=2)
    out = draw_genotype(g, tmp_path / "arch" / "events.png", title="events")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert [p.name for p in out.parent.iterdir()] == ["events.png"]  # no temporary file left behind
