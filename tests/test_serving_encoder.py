"""The serving hot path against the training path: the compiled encoder gives the tensors that
``FittedTransforms.transform`` gives (exactly), and every compiled forward gives the eager model's
probabilities (to 1e-6), on real flights rows (one month, carriers AA/MQ/UA, untrained models: parity
needs no training); invalid input is refused with the same field and message as the prepared-row path.
"""

from __future__ import annotations

import dataclasses
import json
import random

import numpy as np
import pandas as pd
import pytest
import torch

from longtail.data import flights as F
from longtail.data.prepared import DataConfig, prepare
from longtail.data.splits import TRAIN
from longtail.data.transforms import FittedTransforms
from longtail.metrics import predict_proba
from longtail.models.genotype import Genotype, LayerGene
from longtail.models.heavy import HeavyConfig, build_model
from longtail.models.light import build_light_model
from longtail.online import RequestError, ServingEncoder
from longtail.online.encoder import parse_time_ns
from longtail.online.forward import GraphCache
from longtail.online.rows import build_row, check_vocabularies, jsonable_row, parse_time

pytestmark = pytest.mark.serving

LIGHT = Genotype((LayerGene("conv_3", 0), LayerGene("avg_pool_3", 1, (0,)), LayerGene("conv_3", 2, (1,))),
                 hidden_size=15, num_heads=3)


@pytest.fixture(scope="module")
def flights(tmp_path_factory):
    tables = F.build_flights(tmp_path_factory.mktemp("flights") / "set", months=(1,))
    data = prepare(DataConfig(tables=str(tables.root), scenarios=("AA", "MQ", "UA")))
    transforms = FittedTransforms.fit(data.spec, data.rows(TRAIN))
    return data, transforms


@pytest.fixture(scope="module")
def rows(flights):
    """A sample of events with the awkward cases real rows have: no aircraft history, unknown planes
    (null categories and numbers), missing weather values."""
    data, _ = flights
    spec = data.spec
    frame = data.frame
    sample = frame.sample(300, random_state=0)
    empty = frame[frame["aircraft__dep_delay"].map(len) == 0].head(20)
    sample = pd.concat([sample, empty]).drop_duplicates("flight_id")
    assert (sample["aircraft__dep_delay"].map(len) == 0).any()
    assert sample["plane_manufacturer"].isna().any() and sample["plane_age"].isna().any()
    assert sample["weather__wind_gust"].map(lambda v: np.isnan(v).any()).any()
    requests = [json.loads(json.dumps({"scenario": str(r[spec.scenario]),
                                       "features": jsonable_row(spec, sample.iloc[i:i + 1]),
                                       "event_timestamp": r[spec.event_timestamp].isoformat()}))
                for i, (_, r) in enumerate(sample.iterrows())]  # through JSON: what a client sends
    return sample, requests


def _encode(encoder: ServingEncoder, requests: list[dict]) -> list:
    return [encoder.encode(q["scenario"], parse_time_ns(q["event_timestamp"], "event_timestamp"), q["features"])
            for q in requests]


def test_encoder_gives_the_training_tensors_on_flights_rows(flights, rows):
    data, transforms = flights
    sample, requests = rows
    encoder = ServingEncoder(transforms)
    got = encoder.batch(_encode(encoder, requests))
    want = transforms.transform(sample, require_label=False)
    for f in dataclasses.fields(want):
        g, w = getattr(got, f.name), getattr(want, f.name)
        if w is None:  # optional fields (teacher_logits): absent from both
            assert g is None, f.name
            continue
        for key in (g if isinstance(g, dict) else [None]):
            a, b = (g[key], w[key]) if key is not None else (g, w)
            assert a.dtype == b.dtype and torch.equal(a, b), (f.name, key)
    # and the same as the prepared-row path of the old service, request by request
    for q, row in zip(requests[:10], _encode(encoder, requests[:10]), strict=True):
        prepared = build_row(data.spec, q["scenario"], parse_time(q["event_timestamp"], "e"), q["features"])
        one = transforms.transform(prepared, require_label=False)
        assert torch.equal(encoder.batch([row]).seq_num["weather"], one.seq_num["weather"])
        assert torch.equal(encoder.batch([row]).profile_num, one.profile_num)


def _encoded(flights, rows):
    """The transforms, their serving encoder, the requests it encoded and the training path's batch of them."""
    _, transforms = flights
    sample, requests = rows
    encoder = ServingEncoder(transforms)
    return transforms, encoder, _encode(encoder, requests), transforms.transform(sample, require_label=False)


def test_compiled_forwards_give_the_eager_probabilities_on_flights_rows(flights, rows):
    transforms, encoder, encoded, batch = _encoded(flights, rows)
    names = [s.name for s in transforms.schema.sequences]
    torch.manual_seed(0)
    light = build_light_model(transforms.schema, HeavyConfig(num_layers=3), {n: LIGHT for n in names}).eval()
    light2 = build_light_model(transforms.schema, HeavyConfig(num_layers=3), {n: LIGHT for n in names}).eval()
    heavy = build_model(transforms.schema, HeavyConfig()).eval()
    auto = GraphCache("auto")
    cases = [(light, auto, "onnxruntime"), (light2, auto, "onnxruntime"), (heavy, auto, "torchscript"),
             (light, GraphCache("torchscript"), "torchscript"), (light, GraphCache("eager"), "eager")]
    for model, graphs, backend in cases:
        forward = graphs.compile(model, encoder, {"kind": "test"})
        assert forward.backend == backend
        want = predict_proba(model, batch)
        got = 1 / (1 + np.exp(-forward(encoder.stack(encoded)).astype(np.float64)))
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, err_msg=backend)
        for i in (0, 7, len(encoded) - 1):  # batch 1, as single requests are served
            one = 1 / (1 + np.exp(-forward(encoder.stack([encoded[i]])).astype(np.float64)))
            assert one[0] == pytest.approx(want[i], abs=1e-6)
    assert len(auto) == 2, "both light models share one compiled graph; the heavy model has its own"


def test_ple_flat_model_compiles_to_onnx_and_gives_the_eager_probabilities(flights, rows):
    """The piecewise-linear numeric embedding and the flat encoder export (no fallback to TorchScript)."""
    transforms, encoder, encoded, batch = _encoded(flights, rows)
    torch.manual_seed(0)
    model = build_model(transforms.schema, HeavyConfig(encoder="flat", num_layers=2, hidden_size=32,
                                                       numeric_embedding="ple", profile_dims=(32,),
                                                       head_dims=(32,))).eval()
    for graphs, backend in ((GraphCache("auto"), "onnxruntime"), (GraphCache("torchscript"), "torchscript")):
        forward = graphs.compile(model, encoder, {"kind": "test"})
        assert forward.backend == backend
        want = predict_proba(model, batch)
        got = 1 / (1 + np.exp(-forward(encoder.stack(encoded)).astype(np.float64)))
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, err_msg=backend)
        one = 1 / (1 + np.exp(-forward(encoder.stack([encoded[3]])).astype(np.float64)))
        assert one[0] == pytest.approx(want[3], abs=1e-6)


def _iso_cases(seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    cases = ["2013-01-01T05:00:00+00:00", "2013-01-01 05:00:00", "2013-01-01T05:00Z", "2024-02-29T23:59:59.999999999Z",
             "2023-02-29T00:00:00Z", "2013-13-01T00:00:00Z", "2013-01-01T24:00:00Z", "2013-01-01T05:00:60Z",
             "2013-01-01T05:00:00+05:30", "2013-01-01T05:00:00-09:45", "2013-01-01T05:00:00+24:00",
             "1677-09-21T00:12:43.145224193Z", "1677-09-21T00:12:43.145224192Z", "2262-04-11T23:47:16.854775807Z",
             "2262-04-11T23:47:16.854775808Z", "2013-01-01", "2013-01-01T05", "yesterday", "", "2013-01-01T05:00:00.1234567891Z",
             "2013-1-1T05:00:00Z", "2013-01-01t05:00:00z"]
    for _ in range(300):
        frac = "" if rng.random() < 0.3 else "." + "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 9)))
        tz = rng.choice(["", "Z", "+00:00", f"+{rng.randint(0, 14):02d}:{rng.choice([0, 30, 45]):02d}",
                         f"-{rng.randint(0, 12):02d}:00"])
        cases.append(f"{rng.randint(1970, 2100):04d}-{rng.randint(1, 12):02d}-{rng.randint(1, 31):02d}"
                     f"{rng.choice('T ')}{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}"
                     f"{frac}{tz}")
    return cases


@pytest.mark.unit
@pytest.mark.parametrize("text", _iso_cases())
def test_times_parse_as_pandas_parses_them(text):
    try:
        want = parse_time(text, "t").value
    except RequestError as e:
        with pytest.raises(RequestError) as got:
            parse_time_ns(text, "t")
        assert str(got.value) == str(e)
        return
    assert parse_time_ns(text, "t") == want


def _bad_inputs(spec, example: dict) -> list[tuple[str, dict]]:
    f = example["features"]
    seq = spec.sequences[0]
    num, cat, ts = seq.column(seq.numeric[0].name), seq.column(seq.categorical[0].name), seq.column(seq.timestamp_field)
    n = len(f[num])
    nullable = next(x.name for x in spec.profile_numeric if x.nullable)
    strict = next(x.name for x in spec.profile_numeric if not x.nullable)
    profile_cat = spec.profile_categorical[0].name
    return [
        ("a string number", {**f, strict: "1.5"}),
        ("a bool", {**f, strict: True}),
        ("null, not nullable", {**f, strict: None}),
        ("10^400", {**f, strict: 10**400}),
        ("10^400, nullable", {**f, nullable: -10**400}),
        ("infinite", {**f, strict: float("inf")}),
        ("NaN, not nullable", {**f, strict: float("nan")}),
        ("a float category", {**f, profile_cat: 3.5}),
        ("a list profile value", {**f, strict: [1.0]}),
        ("a step 10^400", {**f, num: [10**400] + f[num][1:]}),
        ("a step string", {**f, num: ["x"] + f[num][1:]}),
        ("a step null", {**f, num: [None] + f[num][1:]}),
        ("a step inf", {**f, num: f[num][:-1] + [float("inf")]}),
        ("a step bool category", {**f, cat: [True] + f[cat][1:]}),
        ("a bad step time", {**f, ts: ["soon"] + f[ts][1:]}),
        ("steps not a list", {**f, num: 1.0}),
        ("a dict of steps", {**f, num: {"a": 1}}),
        ("one step fewer", {**f, num: f[num][:-1]}),
        ("type error and length", {**f, num: f[num][:-1], cat: [1.5] * (n - 1)}),
        ("too many steps", {**f, **{c: (f[c] * (seq.max_length // max(n, 1) + 1))[:seq.max_length + 1]
                                    for c in seq.columns}}),
        ("a step after the event", {**f, ts: f[ts][:-1] + ["2099-01-01T00:00:00Z"]}),
        ("an unknown feature", {**f, "nope": 1}),
        ("a missing feature", {k: v for k, v in f.items() if k != strict}),
        ("not an object", [1, 2]),
    ]


def _errors(fn) -> tuple[str, str] | None:
    try:
        fn()
    except RequestError as e:
        return e.field, str(e)
    return None


@pytest.mark.unit
def test_the_encoder_refuses_what_the_prepared_row_path_refuses(synthetic_tables, synthetic_frame):
    spec = synthetic_tables.spec
    transforms = FittedTransforms.fit(spec, synthetic_frame)
    encoder = ServingEncoder(transforms)
    row = synthetic_frame[synthetic_frame["actions__amount"].map(len) >= 2].iloc[:1]
    event = row[spec.event_timestamp].iloc[0]
    example = {"features": jsonable_row(spec, row)}
    for case, features in _bad_inputs(spec, example):
        def old(features=features):
            df = build_row(spec, "s00", event, features)
            check_vocabularies(transforms, df)

        want = _errors(old)
        got = _errors(lambda features=features: encoder.encode("s00", event.value, features))
        assert want is not None, f"{case}: the prepared-row path accepts it"
        assert got == want, case


@pytest.mark.unit
def test_closed_vocabularies_refuse_unknown_values_as_before(flights, rows):
    _, transforms = flights
    _, requests = rows
    encoder = ServingEncoder(transforms)
    q = requests[0]
    features = {**q["features"], "weekday": "Funday"}  # weekday has no out-of-vocabulary bucket
    with pytest.raises(RequestError) as e:
        encoder.encode(q["scenario"], None, features)
    prepared = build_row(transforms.spec, q["scenario"], parse_time(q["event_timestamp"], "e"), features)
    with pytest.raises(RequestError) as old:
        check_vocabularies(transforms, prepared)
    assert (e.value.field, str(e.value)) == (old.value.field, str(old.value))
    assert e.value.field == "features.weekday"


def test_models_share_a_graph_whatever_their_bin_edges_unless_they_embed_with_them(flights):
    """Every scenario's transforms have their own bin edges (in model.json's schema); only a model with a
    piecewise-linear embedding computes with them, so only such models need a graph of their own."""
    _, transforms = flights
    other = FittedTransforms.from_dict(transforms.to_dict())  # the same vocabularies, other edges
    for stats in other.numeric.values():
        stats.edges = [e + 0.01 for e in stats.edges]
    assert other.schema.profile_numeric_edges != transforms.schema.profile_numeric_edges
    names = [s.name for s in transforms.schema.sequences]
    ple = HeavyConfig(encoder="flat", num_layers=1, hidden_size=8, numeric_embedding="ple", numeric_embedding_dim=2,
                      profile_dims=(8,), head_dims=(8,))
    graphs = GraphCache("auto")
    for tf in (transforms, other):
        info = {"kind": "light", "config": HeavyConfig(num_layers=3).to_dict(), "schema": tf.schema.to_dict()}
        light = build_light_model(tf.schema, HeavyConfig(num_layers=3), {n: LIGHT for n in names}).eval()
        assert graphs.compile(light, ServingEncoder(tf), info).backend == "onnxruntime"
    assert len(graphs) == 1, "light models of one shape share one graph"
    for tf in (transforms, other):
        info = {"kind": "heavy", "config": ple.to_dict(), "schema": tf.schema.to_dict()}
        graphs.compile(build_model(tf.schema, ple).eval(), ServingEncoder(tf), info)
    assert len(graphs) == 3, "a PLE model's edges are constants of its graph"
