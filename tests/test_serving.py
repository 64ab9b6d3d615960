"""Serving: the shared predictor, the BentoML HTTP service and its gRPC front, on a real server on loopback.

The models are tiny (1 epoch) and trained on a small synthetic table set made here; they are
published and promoted in a registry the way the pipelines do (agnostic at the fallback pointer,
a light model for the largest scenario, a specific heavy model for the second).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import httpx
import pytest
from google.protobuf import struct_pb2
from tiny import build_tiny_registry

from longtail.data.synthetic import SyntheticConfig, build_synthetic
from longtail.online import (
    NotReadyError,
    Predictor,
    PredictRequest,
    RequestError,
    ServingConfig,
    UnknownScenarioError,
)
from longtail.online.rows import jsonable_row
from longtail.registry import lineage
from serving import longtail_serving_pb2 as pb
from serving import longtail_serving_pb2_grpc as pb_grpc
from serving.grpc_front import serve_grpc
from serving.launch import WORKING_DIR, ServiceProcess

pytestmark = pytest.mark.serving



@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    tables = build_synthetic(root / "tables", SyntheticConfig(n_scenarios=4, max_rows=600, min_rows=60, seed=0))
    return build_tiny_registry(tables.root, root / "models")


@pytest.fixture(scope="module")
def example(tiny):
    """One event's raw features and time (a row of the offline point-in-time join)."""
    spec = tiny.data.spec
    row = tiny.data.frame.iloc[7:8]
    return {"features": jsonable_row(spec, row), "event_timestamp": row[spec.event_timestamp].iloc[0].isoformat()}


@pytest.fixture(scope="module")
def server(tiny, tmp_path_factory):
    log = tmp_path_factory.mktemp("serving-log") / "service.log"
    svc = ServiceProcess([f"registry={tiny.registry.store.root}", "poll_seconds=0.3", "max_latency_ms=5"],
                         log_path=log)
    svc.start()
    try:
        yield svc
    finally:
        svc.stop()


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.grpc_target) as ch:
        yield pb_grpc.PredictorStub(ch)


def _struct(d: dict) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(d)
    return s


def _grpc_request(scenario: str, example: dict) -> pb.PredictRequest:
    return pb.PredictRequest(scenario=scenario, features=_struct(example["features"]),
                             event_timestamp=example["event_timestamp"])


# ---------------------------------------------------------------------- the predictor on its own
def test_predictor_serves_promoted_models_and_falls_back(tiny, example):
    p = Predictor(ServingConfig(registry=str(tiny.registry.store.root), poll_seconds=0))
    with pytest.raises(NotReadyError):
        p.predict(PredictRequest(tiny.light_scenario, **example))
    assert not p.ready
    p.start(background=False)
    assert p.ready
    light = p.predict(PredictRequest(tiny.light_scenario, **example))
    assert (light.model_kind, light.fallback) == ("light", False)
    assert light.model_name == f"light-{tiny.light_scenario}"
    heavy = p.predict(PredictRequest(tiny.heavy_scenario, **example))
    assert (heavy.model_kind, heavy.fallback) == ("specific", False)
    cold = p.predict(PredictRequest("a-new-scenario", **example))
    assert (cold.model_name, cold.model_kind, cold.fallback) == ("agnostic", "agnostic", True)
    assert 0.0 < cold.probability < 1.0


def test_predictor_refuses_unknown_scenarios_when_configured(tiny, example):
    p = Predictor(ServingConfig(registry=str(tiny.registry.store.root), poll_seconds=0,
                                unknown_scenario="refuse")).start(background=False)
    with pytest.raises(UnknownScenarioError, match="a-new-scenario") as e:
        p.predict(PredictRequest("a-new-scenario", **example))
    assert e.value.status == 404 and e.value.field == "scenario"
    assert p.predict(PredictRequest(tiny.light_scenario, **example)).fallback is False


@pytest.mark.parametrize("change, field", [
    ({"features": {"x1": "abc"}}, "features.x1"),
    ({"features": {"x1": None}}, "features.x1"),
    ({"features": {"segment": 3.5}}, "features.segment"),
    ({"features": {"actions__amount": 1.0}}, "features.actions__amount"),
    ({"features": {"actions__amount": [1.0]}}, "features.actions"),
    ({"features": {"actions__at": ["not a time"]}}, "features.actions__at[0]"),
    ({"features": {"nope": 1}}, "features.nope"),
    ({"drop": "x2"}, "features.x2"),
    ({"event_timestamp": "yesterday-ish"}, "event_timestamp"),
    ({"event_timestamp": "2000-01-01T00:00:00Z"}, "features.actions__at"),  # steps after the time: leakage
])
def test_invalid_features_name_the_field(tiny, example, change, field):
    p = Predictor(ServingConfig(registry=str(tiny.registry.store.root), poll_seconds=0)).start(background=False)
    features = dict(example["features"])
    features.update(change.get("features", {}))
    features.pop(change.get("drop", ""), None)
    ts = change.get("event_timestamp", example["event_timestamp"])
    with pytest.raises(RequestError) as e:
        p.predict(PredictRequest(tiny.light_scenario, features=features, event_timestamp=ts))
    assert e.value.field == field, str(e.value)
    assert field.split("[")[0] in str(e.value)


def test_missing_categories_are_served_like_offline(tiny, example):
    """A null category (real data has them: flights' plane_manufacturer) maps to the OOV index online
    as it does offline, instead of being refused."""
    from longtail.metrics import predict_proba

    spec = tiny.data.spec
    p = Predictor(ServingConfig(registry=str(tiny.registry.store.root), poll_seconds=0)).start(background=False)
    cats = [c.name for c in spec.profile_categorical]
    assert cats, "the synthetic spec has a profile categorical"
    seq_cat = [s.column(c.name) for s in spec.sequences for c in s.categorical]
    features = dict(example["features"], **{cats[0]: None})
    if seq_cat and features[seq_cat[0]]:
        features[seq_cat[0]] = [None, *features[seq_cat[0]][1:]]
    got = p.predict(PredictRequest(tiny.light_scenario, features=features,
                                   event_timestamp=example["event_timestamp"]))
    slot, _ = p.resolve(tiny.light_scenario)
    offline = tiny.data.frame.iloc[7:8].copy()
    offline[cats[0]] = None
    if seq_cat and len(offline[seq_cat[0]].iloc[0]):
        steps = offline[seq_cat[0]].iloc[0].copy().astype(object)
        steps[0] = None
        offline.at[offline.index[0], seq_cat[0]] = steps
    want = float(predict_proba(slot.model, slot.transforms.transform(offline))[0])
    assert got.probability == pytest.approx(want, abs=1e-6)


# ---------------------------------------------------------------------- HTTP
def test_http_predict_light_and_fallback(http, tiny, example):
    r = http.post("/predict", json={"scenario": tiny.light_scenario, **example})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["scenario"] == tiny.light_scenario and body["model_kind"] == "light"
    assert body["served_by"] == "scenario" and isinstance(body["model_version"], int)
    r = http.post("/predict", json={"scenario": "cold-start", **example})
    assert r.status_code == 200, r.text
    assert (r.json()["served_by"], r.json()["model_name"], r.json()["fallback"]) == ("fallback", "agnostic", True)


def test_http_batch_matches_single(http, tiny, example):
    items = [{"scenario": s, **example} for s in (tiny.light_scenario, tiny.heavy_scenario, "cold-start")]
    r = http.post("/predict_batch", json={"requests": items})
    assert r.status_code == 200, r.text
    batch = r.json()
    assert [b["scenario"] for b in batch] == [i["scenario"] for i in items]
    for item, b in zip(items, batch, strict=True):
        single = http.post("/predict", json=item).json()
        assert single["probability"] == pytest.approx(b["probability"], abs=1e-6)
        assert single["model_name"] == b["model_name"]


@pytest.mark.parametrize("body, field", [
    ({"scenario": "s00"}, "features"),
    ({"features": {}}, "scenario"),
    ({"scenario": "", "features": {}}, "scenario"),
    ({"scenario": "s00", "features": {"x1": 1}}, "features."),
    ({"scenario": "s00", "features": "x1=1"}, "features"),
    ({"scenario": "s00", "entity": {"user_id": 1}}, "entity"),
    ({"scenario": ["s00"], "features": {}}, "scenario"),
])
def test_http_invalid_input_is_4xx_naming_the_field(http, body, field):
    r = http.post("/predict", json=body)
    assert 400 <= r.status_code < 500, r.text
    assert field in r.text


def test_http_batch_error_names_the_item(http, tiny, example):
    good = {"scenario": tiny.light_scenario, **example}
    bad = {**good, "features": {**example["features"], "x2": "oops"}}
    r = http.post("/predict_batch", json={"requests": [good, bad]})
    assert r.status_code == 400
    assert r.json()["field"] == "requests[1].features.x2"
    assert http.post("/predict_batch", json={"requests": []}).status_code == 400


def test_http_garbage_is_4xx_not_5xx(http):
    for content, ctype in [(b"{not json", "application/json"), (b"\xff\xfe", "application/json"),
                           (b"[1, 2]", "application/json"), (b"scenario=s00", "text/plain")]:
        r = http.post("/predict", content=content, headers={"content-type": ctype})
        assert 400 <= r.status_code < 500, (content, r.status_code, r.text)


def test_readiness_and_metrics_per_scenario(http, tiny, example):
    assert http.get("/readyz").status_code == 200
    http.post("/predict", json={"scenario": tiny.light_scenario, **example})
    metrics = http.get("/metrics").text
    assert f'scenario="{tiny.light_scenario}"' in metrics
    assert "longtail_predictions_total" in metrics and "longtail_batch_size_bucket" in metrics
    models = http.post("/models", json={}).json()
    assert set(models["scenarios"]) == {tiny.light_scenario, tiny.heavy_scenario}
    assert models["fallback"]["model_name"] == "agnostic"


# ---------------------------------------------------------------------- gRPC
def test_grpc_gives_the_same_predictions_as_http(http, stub, tiny, example):
    for scenario in (tiny.light_scenario, tiny.heavy_scenario, "cold-start"):
        over_http = http.post("/predict", json={"scenario": scenario, **example}).json()
        over_grpc = stub.Predict(_grpc_request(scenario, example), timeout=30)
        assert over_grpc.probability == pytest.approx(over_http["probability"], abs=1e-6)
        assert (over_grpc.model_name, over_grpc.model_version, over_grpc.fallback) == (
            over_http["model_name"], over_http["model_version"], over_http["fallback"])
    batch = stub.PredictBatch(pb.PredictBatchRequest(requests=[_grpc_request(tiny.light_scenario, example)] * 3))
    assert len(batch.predictions) == 3


def test_grpc_invalid_argument_names_the_field(stub, tiny, example):
    bad = dict(example, features={**example["features"], "x1": "abc"})
    with pytest.raises(grpc.RpcError) as e:
        stub.Predict(_grpc_request(tiny.light_scenario, bad), timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "features.x1" in e.value.details()
    assert ("longtail-field", "features.x1") in tuple(e.value.trailing_metadata())


def test_grpc_refused_scenario_is_not_found(tiny, example):
    p = Predictor(ServingConfig(registry=str(tiny.registry.store.root), poll_seconds=0,
                                unknown_scenario="refuse")).start()
    server = serve_grpc(p, "127.0.0.1", port := _port())
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            with pytest.raises(grpc.RpcError) as e:
                pb_grpc.PredictorStub(ch).Predict(_grpc_request("cold-start", example), timeout=30)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        server.stop(grace=None)
        p.close()


def _port() -> int:
    from serving.launch import free_port

    return free_port()


# ---------------------------------------------------------------------- hot reload (last: it changes the registry)
def test_hot_reload_without_restart_or_dropped_requests(http, tiny, example):
    scenario = tiny.light_scenario
    before = http.post("/predict", json={"scenario": scenario, **example}).json()
    statuses: list[int] = []
    versions: list[int] = []
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(base_url=str(http.base_url), timeout=30) as c:
            while not stop.is_set():
                r = c.post("/predict", json={"scenario": scenario, **example})
                statuses.append(r.status_code)
                if r.status_code == 200:
                    versions.append(r.json()["model_version"])

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        mv = tiny.registry.publish(before["model_name"], Path(tiny.folders["light"]), kind="light",
                                   scenario=scenario, metrics={}, lineage=lineage())
        tiny.registry.promote(scenario, *mv.ref)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (not versions or versions[-1] != mv.version):
            time.sleep(0.1)
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert statuses and set(statuses) == {200}, f"dropped or failed requests: {set(statuses)}"
    assert versions[0] == before["model_version"] and versions[-1] == mv.version
    after = http.post("/predict", json={"scenario": scenario, **example}).json()
    assert after["model_version"] == mv.version
    assert after["probability"] == pytest.approx(before["probability"], abs=1e-6)  # same weights, new version


def test_generated_grpc_code_matches_the_proto(tmp_path):
    """serving/longtail_serving_pb2*.py are generated from the .proto in the repo; regenerate and compare."""
    import importlib.resources

    from grpc_tools import protoc

    well_known = importlib.resources.files("grpc_tools") / "_proto"
    rc = protoc.main(["protoc", f"-I{WORKING_DIR}", f"-I{well_known}", f"--python_out={tmp_path}",
                      f"--grpc_python_out={tmp_path}", str(WORKING_DIR / "serving" / "longtail_serving.proto")])
    assert rc == 0
    for name in ("longtail_serving_pb2.py", "longtail_serving_pb2_grpc.py"):
        assert (tmp_path / "serving" / name).read_text() == (WORKING_DIR / "serving" / name).read_text(), (
            f"serving/{name} is stale: python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. "
            "serving/longtail_serving.proto")
