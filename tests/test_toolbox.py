"""The heavy model's toolbox: piecewise-linear numeric embeddings (bin edges fitted with the
transforms, on TRAIN rows only, saved with them) and the ``flat`` behavior encoder, trained, saved,
loaded and served identically."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from longtail.data.prepared import DataConfig, PreparedData, prepare
from longtail.data.splits import TRAIN
from longtail.data.synthetic import SyntheticConfig, build_synthetic
from longtail.data.tensors import InputSchema, SequenceSchema
from longtail.data.transforms import CLIP, N_EDGES, FittedTransforms, NumericStats
from longtail.model_folder import load_model_dir, save_model_dir
from longtail.models.heavy import HeavyConfig, build_model
from longtail.models.numeric import PiecewiseLinearEmbedding
from longtail.spec import NumericFeature

PLE_FLAT = HeavyConfig(encoder="flat", num_layers=2, hidden_size=16, numeric_embedding="ple",
                       numeric_embedding_dim=4, profile_dims=(16,), head_dims=(16,), dropout=0.0)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> PreparedData:
    tables = build_synthetic(tmp_path_factory.mktemp("toolbox") / "tables",
                             SyntheticConfig(n_scenarios=3, max_rows=300, min_rows=80, seed=3))
    return prepare(DataConfig(tables=str(tables.root)))


@pytest.fixture(scope="module")
def transforms(data) -> FittedTransforms:
    return FittedTransforms.fit(data.spec, data.rows(TRAIN))


def _numeric_columns(spec) -> list[str]:
    return [f.name for f in spec.profile_numeric] + [s.column(f.name) for s in spec.sequences for f in s.numeric]


# ------------------------------------------------------------------------------------------- edges
@pytest.mark.unit
def test_edges_are_fitted_on_train_rows_only(data, transforms):
    spec = data.spec
    changed = data.frame.copy()
    other = data.split != TRAIN
    for col in _numeric_columns(spec):
        if col in (f.name for f in spec.profile_numeric):
            changed.loc[other, col] = changed.loc[other, col] * 100 + 7
        else:
            changed.loc[other, col] = changed.loc[other, col].map(lambda v: np.asarray(v, dtype=float) * 100 + 7)
    name = spec.profile_numeric[0].name
    assert not np.allclose(changed.loc[other, name], data.frame.loc[other, name])
    refit = FittedTransforms.fit(spec, PreparedData(spec, changed, data.split).rows(TRAIN))
    assert refit.to_dict() == transforms.to_dict()
    assert refit.schema == transforms.schema
    # and the check can fail: changing TRAIN rows changes the edges
    train = data.split == TRAIN
    changed.loc[train, name] = changed.loc[train, name] ** 3
    moved = FittedTransforms.fit(spec, PreparedData(spec, changed, data.split).rows(TRAIN))
    assert moved.numeric[name].edges != transforms.numeric[name].edges


@pytest.mark.unit
def test_edges_are_quantiles_of_the_normalised_values(data, transforms):
    spec = data.spec
    train = data.rows(TRAIN)
    for f in spec.profile_numeric:
        stats = transforms.numeric[f.name]
        edges = stats.edges
        assert 2 <= len(edges) <= N_EDGES and edges == sorted(set(edges))
        raw = train[f.name].to_numpy(dtype=float)
        z = np.clip((raw[np.isfinite(raw)] - stats.center) / stats.scale, -CLIP, CLIP)
        want = np.unique(np.quantile(z, np.linspace(0, 1, N_EDGES)).astype(np.float32))
        assert edges == [float(v) for v in want]
    # in the space the model receives: the training tensors' values lie within the first and last edge
    batch = transforms.transform(train)
    j = 0
    for f in spec.profile_numeric:
        edges = transforms.numeric[f.name].edges
        x = batch.profile_num[:, j]
        known = batch.profile_num[:, j + 1] == 0 if f.nullable else torch.ones_like(x, dtype=torch.bool)
        assert edges[0] == float(x[known].min()) and float(x[known].max()) == edges[-1]  # quantiles 0 and 1
        j += 2 if f.nullable else 1


@pytest.mark.unit
def test_schema_edges_follow_the_tensor_layout(data, transforms):
    spec, schema = data.spec, transforms.schema
    want = []
    for f in spec.profile_numeric:
        want.append(tuple(transforms.numeric[f.name].edges))
        if f.nullable:
            want.append(())  # missing flag: no edges
    assert schema.profile_numeric_edges == tuple(want)
    assert len(schema.profile_numeric_edges) == schema.n_profile_numeric
    for s, seq in zip(spec.sequences, schema.sequences, strict=True):
        assert len(seq.numeric_edges) == seq.n_numeric
        first = transforms.numeric[s.column(s.numeric[0].name)].edges
        assert seq.numeric_edges[0] == tuple(first)
        if s.timestamp_field:
            assert seq.numeric_edges[-1] == tuple(transforms.numeric[s.column("hours_before")].edges)


@pytest.mark.unit
def test_constant_and_empty_columns_get_one_or_no_edge():
    f = NumericFeature("x", "standard")
    assert NumericStats.fit(f, np.full(50, 3.0)).edges == [0.0]
    assert NumericStats.fit(f, np.array([np.nan, np.inf])).edges == []
    # normalisation "none": the values themselves, clipped to ±CLIP as the model receives them
    e = NumericStats.fit(NumericFeature("y", "none"), np.linspace(-100, 100, 101)).edges
    assert e[0] == -CLIP and e[-1] == CLIP and len(e) < N_EDGES  # the clipped tails share one edge each


@pytest.mark.unit
def test_transforms_and_schema_json_round_trip(transforms):
    d = json.loads(json.dumps(transforms.to_dict()))
    back = FittedTransforms.from_dict(d)
    assert back.to_dict() == transforms.to_dict() and back.schema == transforms.schema
    schema = transforms.schema
    assert InputSchema.from_dict(json.loads(json.dumps(schema.to_dict()))) == schema


@pytest.mark.unit
def test_old_dicts_load_without_edges(data, transforms):
    d = json.loads(json.dumps(transforms.to_dict()))
    for v in d["numeric"].values():
        del v["edges"]
    old = FittedTransforms.from_dict(d)
    assert all(s.edges == [] for s in old.numeric.values())
    assert old.schema.profile_numeric_edges == () and all(s.numeric_edges == () for s in old.schema.sequences)
    rows = data.rows(TRAIN).head(50)
    a, b = old.transform(rows), transforms.transform(rows)
    assert torch.equal(a.profile_num, b.profile_num)
    assert all(torch.equal(a.seq_num[k], b.seq_num[k]) for k in a.seq_num)
    s = transforms.schema.to_dict()
    del s["profile_numeric_edges"]
    for seq in s["sequences"]:
        del seq["numeric_edges"]
    assert InputSchema.from_dict(s) == old.schema
    # a PLE model needs edges: the error says why and what to do
    with pytest.raises(ValueError, match="fitted before bin edges existed; retrain"):
        build_model(old.schema, PLE_FLAT)
    build_model(old.schema, HeavyConfig(encoder="flat"))  # without PLE an old schema builds


@pytest.mark.unit
def test_schema_refuses_edges_that_do_not_fit():
    with pytest.raises(ValueError, match="profile_numeric_edges: 1 columns of bin edges for 2 numeric inputs"):
        InputSchema(2, (), (), profile_numeric_edges=((0.0, 1.0),))
    with pytest.raises(ValueError, match="numeric_edges.*not strictly increasing"):
        SequenceSchema("s", 1, (), 4, numeric_edges=((1.0, 0.0),))


# --------------------------------------------------------------------------------------------- PLE
@pytest.mark.unit
def test_ple_values_at_and_between_edges():
    ple = PiecewiseLinearEmbedding([(0.0, 1.0, 3.0), (), (-1.0, 1.0)], dim=2)
    x = torch.tensor([[-1.0, 0.0, 0.5, 1.0, 2.0, 3.0, 5.0]]).T  # (7, 1) values of column 0
    xs = torch.cat([x, x, x], dim=1)  # the same values in all three columns
    enc = ple.encode(xs)  # (7, 3, Kmax=2)
    # column 0: bins [0, 1] (open to the left) and [1, 3] (open to the right)
    want0 = torch.tensor([[-1, 0], [0, 0], [0.5, 0], [1, 0], [1, 0.5], [1, 1], [1, 2]], dtype=torch.float32)
    assert torch.equal(enc[:, 0], want0)
    # column 1 (no edges): the value itself, one bin; column 2 (one bin): affine, open on both sides
    assert torch.equal(enc[:, 1], torch.stack([x[:, 0], torch.zeros(7)], 1))
    assert torch.equal(enc[:, 2], torch.stack([(x[:, 0] + 1) / 2, torch.zeros(7)], 1))
    assert ple.output_size == 6 and ple.flops() == 2 * 3 * 2 * 2


@pytest.mark.unit
def test_ple_equals_a_loop_of_per_column_linear_maps():
    torch.manual_seed(0)
    edges = [tuple(np.linspace(-2, 2, 16).tolist()), (), (0.0, 0.5), (0.0,), tuple(np.linspace(-1, 3, 6).tolist())]
    ple = PiecewiseLinearEmbedding(edges, dim=3)
    x2 = torch.randn(9, 5) * 3
    x3 = torch.randn(4, 6, 5) * 3
    for x in (x2, x3):
        enc = ple.encode(x)
        want = []
        for f, k in enumerate(ple.bins):
            lin = nn.Linear(k, 3)
            lin.weight.data = ple.weight[f, :k].T
            lin.bias.data = ple.bias[f]
            want.append(torch.relu(lin(enc[..., f, :k])))
        torch.testing.assert_close(ple(x), torch.cat(want, dim=-1), rtol=1e-6, atol=1e-6)
        assert ple(x).shape == (*x.shape[:-1], 15)
    assert not any("left" in k or "mask" in k for k in ple.state_dict())  # the edges come from the schema


# ------------------------------------------------------------------------------------------- config
@pytest.mark.unit
def test_config_knobs_round_trip_and_are_checked():
    d = json.loads(json.dumps(PLE_FLAT.to_dict()))
    assert HeavyConfig.from_dict(d) == PLE_FLAT
    old = {k: v for k, v in HeavyConfig().to_dict().items() if not k.startswith("numeric_embedding")}
    assert HeavyConfig.from_dict(old).numeric_embedding == "none"
    with pytest.raises(ValueError, match=r"numeric_embedding='PLE' is not one of \['none', 'ple'\]"):
        HeavyConfig(numeric_embedding="PLE")
    with pytest.raises(ValueError, match="numeric_embedding_dim must be an int >= 1"):
        HeavyConfig(numeric_embedding="ple", numeric_embedding_dim=0)


@pytest.mark.unit
def test_default_config_ignores_edges_and_adds_no_weights(data, transforms):
    schema = transforms.schema
    bare = InputSchema.from_dict({**schema.to_dict(), "profile_numeric_edges": [],
                                  "sequences": [{**s, "numeric_edges": []} for s in schema.to_dict()["sequences"]]})
    batch = transforms.transform(data.rows(TRAIN).head(40))
    outs = []
    for sch in (schema, bare):
        torch.manual_seed(0)
        model = build_model(sch, HeavyConfig(num_layers=1, hidden_size=6)).eval()
        assert not any("numeric" in k for k in model.state_dict())
        with torch.no_grad():
            outs.append(model(batch))
    assert torch.equal(outs[0], outs[1])


@pytest.mark.unit
def test_ple_changes_the_step_width(transforms):
    from longtail.models.heavy import step_input_size

    seq = transforms.schema.sequences[0]
    model = build_model(transforms.schema, PLE_FLAT)
    enc = model.behavior_encoders[seq.name]
    assert enc.input_size == step_input_size(seq, PLE_FLAT) == enc.encoder.input_size
    assert step_input_size(seq, PLE_FLAT) - step_input_size(seq, HeavyConfig()) == seq.n_numeric * (4 - 1)


# ------------------------------------------------------------------------------- train, save, load
@pytest.mark.model
def test_ple_flat_model_trains_saves_and_loads_identically(data, transforms, tmp_path):
    torch.manual_seed(0)
    model = build_model(transforms.schema, PLE_FLAT)
    train = transforms.transform(data.rows(TRAIN))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = nn.BCEWithLogitsLoss()

    def full_loss() -> float:
        model.eval()
        with torch.no_grad():
            loss = float(loss_fn(model(train), train.label))
        model.train()
        return loss

    before = full_loss()
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        b = train.index(torch.randint(0, len(train), (128,), generator=g))
        loss = loss_fn(model(b), b.label)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = full_loss()
    assert after < before - 0.01, (before, after)

    folder = save_model_dir(tmp_path / "m", model, transforms, PLE_FLAT, {"scenarios": data.scenarios})
    loaded, tf2, info = load_model_dir(folder)
    assert HeavyConfig.from_dict(info["config"]) == PLE_FLAT and tf2.schema == transforms.schema
    model.eval()
    batch = tf2.transform(data.rows(TRAIN).head(64))
    with torch.no_grad():
        assert torch.equal(loaded(batch), model(batch))


@pytest.mark.serving
def test_ple_flat_model_is_served_by_a_compiled_graph(data, transforms):
    from longtail.online import ServingEncoder
    from longtail.online.forward import GraphCache, _has_onnxruntime

    torch.manual_seed(0)
    model = build_model(transforms.schema, PLE_FLAT).eval()
    forward = GraphCache("auto").compile(model, ServingEncoder(transforms), {"kind": "test"})
    assert forward.backend == ("onnxruntime" if _has_onnxruntime() else "torchscript")


def test_the_toolbox_preset_builds_a_light_mel_of_the_same_family(transforms):
    from longtail.models.flops import count_flops
    from longtail.nas.config import LightConfig, MeLConfig
    from longtail.nas.strategies import mel_config
    from longtail.onboarding.recipe import Recipe

    recipe = Recipe.from_preset("toolbox")
    assert (recipe.model.encoder, recipe.model.numeric_embedding) == ("flat", "ple")
    assert (recipe.train.optimizer, recipe.train.schedule) == ("adamw", "cosine")
    mel = mel_config(recipe.model, recipe.light)
    assert (mel.encoder, mel.num_layers, mel.hidden_size) == ("flat", 1, 32)
    assert (mel.profile_dims, mel.head_dims, mel.numeric_embedding) == (recipe.model.profile_dims,
                                                                          recipe.model.head_dims, "ple")
    heavy = count_flops(build_model(transforms.schema, recipe.model))["total"]
    light = count_flops(build_model(transforms.schema, mel))["total"]
    assert light < heavy
    # hidden_size 0 keeps the teacher's width (the paper's presets), and bad values name the key
    assert mel_config(recipe.model, LightConfig(mel=MeLConfig(layers=2))).hidden_size == 128
    for bad, key in [({"hidden_size": -1}, "light.mel.hidden_size"), ({"layers": 0}, "light.mel.layers")]:
        with pytest.raises(ValueError, match=key):
            MeLConfig(**bad)


@pytest.mark.slow
def test_a_toolbox_onboarding_gives_a_light_model_within_budget_that_serves_compiled(data, transforms, tmp_path):
    """The toolbox preset end to end on small data: θ0 (flat + PLE), θu, MeL and Ours within MeL's budget,
    and Ours (searched encoders on embedded steps) served by ONNX Runtime with the eager probabilities."""
    from longtail.config import config_from_dict
    from longtail.data.scenario_rows import ScenarioRows
    from longtail.metrics import predict_proba
    from longtail.onboarding import Recipe, Theta0, onboard
    from longtail.online import ServingEncoder
    from longtail.online.forward import GraphCache
    from longtail.train_job import train_heavy

    small = {"model": {"hidden_size": 64, "profile_dims": [16], "head_dims": [16], "numeric_embedding_dim": 4},
             "train": {"epochs": 1}, "meta": {"finetune": {"epochs": 1}},
             "light": {"mel": {"hidden_size": 32}, "train": {"epochs": 1}, "search": {"epochs": 1}, "min_steps": 0,
                       "latency_repeats": 2, "pretrain": {"epochs": 0}, "transfer": {"rows": 0},
                       "retrain": {"epochs": 0}, "restarts": {"runs": 1}}}
    recipe = config_from_dict(Recipe, {"preset": "toolbox", **small}, "recipe")
    assert recipe.model.encoder == "flat" and recipe.light.mel.layers == 1
    scenarios = data.scenarios
    theta0_run = train_heavy(data, scenarios[:2], recipe.model, recipe.train)
    save_model_dir(tmp_path / "theta0", theta0_run.model, theta0_run.transforms, recipe.model, {})
    theta0 = Theta0.from_model_dir(tmp_path / "theta0")
    rows = ScenarioRows.build(data, scenarios[2], theta0.transforms, query_frac=recipe.meta.query_frac,
                              seed=recipe.meta.seed)
    done = onboard(theta0, rows, recipe, out=tmp_path / "onboard", references=("MeL",))
    assert done.mel is not None and done.ours is not None
    assert 0 < done.ours.flops <= done.mel.flops < done.heavy_flops
    model, tf, _ = load_model_dir(done.paths["ours"])
    encoder = ServingEncoder(tf)
    test = rows.test
    forward = GraphCache("auto").compile(model.eval(), encoder, {"kind": "test"})
    assert forward.backend == "onnxruntime"
    got = 1 / (1 + np.exp(-forward(encoder.stack(_encoded_rows(encoder, data, tf, scenarios[2]))).astype(np.float64)))
    np.testing.assert_allclose(got, predict_proba(model, test), rtol=0, atol=1e-6)


def _encoded_rows(encoder, data, transforms, scenario):
    """The scenario's TEST rows as the service encodes them from raw request values."""
    from longtail.data.splits import TEST
    from longtail.online.encoder import parse_time_ns
    from longtail.online.rows import jsonable_row

    frame = data.rows(TEST, [scenario])
    spec = data.spec
    return [encoder.encode(scenario, parse_time_ns(frame[spec.event_timestamp].iloc[i].isoformat(), "t"),
                           jsonable_row(spec, frame.iloc[i:i + 1])) for i in range(len(frame))]
