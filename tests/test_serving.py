"""Serving: the shared predictor, the BentoML HTTP service and its gRPC front, on a real server on loopback.

The models are tiny (1 epoch) and trained on a small synthetic table set made here; they are
published and promoted in a registry the way the pipelines do (agnostic at the fallback pointer,
a light model for the largest scenario, a specific heavy model for the second).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import grpc
import httpx
import pandas as pd
import pytest
from google.protobuf import struct_pb2
from tiny import build_tiny_registry

from longtail.data.synthetic import SyntheticConfig, build_synthetic
from longtail.online import (
    ModelUnavailableError,
    NotReadyError,
    Predictor,
    PredictRequest,
    RequestError,
    ServingConfig,
    UnknownScenarioError,
)
from longtail.online.rows import jsonable_row
from longtail.registry import ModelRegistry, lineage, open_registry
from serving import longtail_serving_pb2 as pb
from serving import longtail_serving_pb2_grpc as pb_grpc
from serving.grpc_front import serve_grpc
from serving.launch import WORKING_DIR, ServiceProcess, free_port

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
def test_the_request_schemas_wait_for_the_fallback_like_a_request(tiny):
    import asyncio

    p = Predictor(ServingConfig(registry=str(tiny.registry.store.root), poll_seconds=0, start_wait_seconds=0))
    assert p.request_schemas() is None  # nothing loaded: nothing to describe
    with pytest.raises(NotReadyError):  # a worker still starting says so instead of describing less
        asyncio.run(p.arequest_schemas())
    p.start(background=False)
    served = asyncio.run(p.arequest_schemas())
    assert served == p.request_schemas() and served["features"]["required"] == tiny.data.spec.feature_columns


def test_predictor_serves_promoted_models_and_falls_back(tiny, example):
    p = Predictor(ServingConfig(registry=str(tiny.registry.store.root), poll_seconds=0, start_wait_seconds=0))
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
        # a numpy array of steps per cell, editable (the join's arrow list column is not, cell by cell)
        offline[seq_cat[0]] = pd.Series(list(offline[seq_cat[0]].to_numpy()), index=offline.index, dtype=object)
        steps = offline[seq_cat[0]].iloc[0].copy().astype(object)
        steps[0] = None
        offline.at[offline.index[0], seq_cat[0]] = steps
    model, transforms, _ = tiny.registry.load(slot.name, slot.version)
    want = float(predict_proba(model, transforms.transform(offline))[0])
    assert got.probability == pytest.approx(want, abs=1e-6)


def _config(tiny, **kw) -> ServingConfig:
    return ServingConfig(registry=str(tiny.registry.store.root), poll_seconds=0, **kw)


def test_models_load_on_first_request_and_readiness_waits_only_for_the_fallback(tiny, example):
    p = Predictor(_config(tiny, preload=False)).start(background=False)
    assert p.ready
    models = p.models()
    assert models["fallback"]["state"] == "loaded"
    assert {m["state"] for m in models["scenarios"].values()} == {"not_loaded"}
    p.predict(PredictRequest(tiny.light_scenario, **example))
    states = {s: m["state"] for s, m in p.models()["scenarios"].items()}
    assert states == {tiny.light_scenario: "loaded", tiny.heavy_scenario: "not_loaded"}


def test_the_model_cache_is_bounded_by_memory(tiny, example):
    p = Predictor(_config(tiny, preload=False, model_cache_mb=1e-6)).start(background=False)  # room for one
    first = p.predict(PredictRequest(tiny.light_scenario, **example)).probability
    p.predict(PredictRequest(tiny.heavy_scenario, **example))
    models = p.models()
    assert models["cache"]["models"] == 2  # the pinned fallback and the most recent model
    assert models["scenarios"][tiny.light_scenario]["state"] == "not_loaded"  # dropped, least recently used
    assert p.predict(PredictRequest(tiny.light_scenario, **example)).probability == first  # loads again


class _CountingStore:
    def __init__(self, store):
        self._store, self.keys = store, []

    @property
    def reads(self) -> int:
        return len(self.keys)

    @reads.setter
    def reads(self, value: int) -> None:
        self.keys = []

    def get_with_etag(self, key):
        self.keys.append(key)
        return self._store.get_with_etag(key)

    def get_bytes(self, key):
        self.keys.append(key)
        return self._store.get_bytes(key)

    def __getattr__(self, name):
        return getattr(self._store, name)


def test_a_poll_is_one_read_of_the_serving_index(tiny):
    counting = _CountingStore(tiny.registry.store)
    p = Predictor(_config(tiny, preload=False), registry=ModelRegistry(counting)).start(background=False)
    assert p.index_source == "index"
    counting.reads = 0
    assert p.refresh() == []
    assert counting.reads == 1


def test_an_s3_registry_is_served_with_one_read_per_poll(tiny, example, monkeypatch):
    """The same lazy loading, index and hot reload on S3 (a real S3-protocol server on loopback)."""
    import uuid

    from s3server import S3Server

    from longtail.registry.store import make_s3_client

    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with S3Server() as endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        make_s3_client(endpoint).create_bucket(Bucket="serving")
        uri = f"s3://serving/{uuid.uuid4().hex}"
        reg = open_registry(uri)
        agn = reg.publish("agnostic", tiny.folders["agnostic"], kind="agnostic", metrics={}, lineage=lineage())
        reg.promote("_default", *agn.ref)
        light = reg.publish("light-x", tiny.folders["light"], kind="light", scenario=tiny.light_scenario,
                            metrics={}, lineage=lineage())
        reg.promote(tiny.light_scenario, *light.ref)
        counting = _CountingStore(reg.store)
        p = Predictor(ServingConfig(registry=uri, poll_seconds=0, preload=False),
                      registry=ModelRegistry(counting)).start(background=False)
        first = p.predict(PredictRequest(tiny.light_scenario, **example))
        assert (first.model_name, first.model_version, p.index_source) == ("light-x", 1, "index")
        again = reg.publish("light-x", tiny.folders["light"], kind="light", scenario=tiny.light_scenario,
                            metrics={}, lineage=lineage())
        counting.reads = 0
        assert p.refresh() == [] and counting.keys == ["index/serving.json"]  # a poll: one GET
        reg.promote(tiny.light_scenario, *again.ref)
        counting.reads = 0
        assert p.refresh() == [tiny.light_scenario]
        assert [k for k in counting.keys if not k.startswith("models/")] == ["index/serving.json"]  # + the new model
        after = p.predict(PredictRequest(tiny.light_scenario, **example))
        assert after.model_version == 2 and after.probability == pytest.approx(first.probability, abs=1e-12)


def _corrupt_copy(tiny, dest: Path) -> str:
    """A copy of the tiny registry whose light model's weights no longer match their checksum."""
    shutil.copytree(tiny.registry.store.root, dest)
    reg = open_registry(dest)
    name, version = reg.serving(tiny.light_scenario)
    weights = dest / "models" / name / "versions" / str(version) / "files" / "weights.pt"
    weights.write_bytes(weights.read_bytes()[:-16] + b"\0" * 16)
    return f"{name} v{version}"


def test_corrupt_weights_make_their_scenario_degraded_not_fallback(tiny, example, tmp_path):
    which = _corrupt_copy(tiny, tmp_path / "registry")
    p = Predictor(ServingConfig(registry=str(tmp_path / "registry"), poll_seconds=0)).start(background=False)
    with pytest.raises(ModelUnavailableError, match="IntegrityError") as e:
        p.predict(PredictRequest(tiny.light_scenario, **example))
    assert e.value.status == 503 and e.value.field == "scenario" and which in str(e.value)
    degraded = p.health()["degraded"]
    assert set(degraded) == {tiny.light_scenario} and "IntegrityError" in degraded[tiny.light_scenario]["error"]
    assert p.models()["scenarios"][tiny.light_scenario]["state"] == "failed"
    assert p.predict(PredictRequest("a-new-scenario", **example)).fallback  # the others are served


def test_a_new_version_that_fails_to_load_leaves_the_old_one_serving(tiny, example, tmp_path):
    shutil.copytree(tiny.registry.store.root, tmp_path / "registry")
    reg = open_registry(tmp_path / "registry")
    p = Predictor(ServingConfig(registry=str(tmp_path / "registry"), poll_seconds=0)).start(background=False)
    req = PredictRequest(tiny.light_scenario, **example)
    before = p.predict(req)
    mv = reg.publish(before.model_name, tiny.folders["light"], kind="light", scenario=tiny.light_scenario,
                     metrics={}, lineage=lineage())
    weights = tmp_path / "registry" / "models" / mv.name / "versions" / str(mv.version) / "files" / "weights.pt"
    weights.write_bytes(b"not the published bytes")
    reg.promote(tiny.light_scenario, *mv.ref)
    assert p.refresh() == [tiny.light_scenario]
    after = p.predict(req)
    assert (after.model_version, after.probability) == (before.model_version, before.probability)
    described = p.models()["scenarios"][tiny.light_scenario]
    assert described["state"] == "loaded" and described["model_version"] == before.model_version
    assert described["pending"]["model_version"] == mv.version and "IntegrityError" in described["pending"]["error"]
    degraded = p.health()["degraded"][tiny.light_scenario]
    assert degraded["serving"] == {"model_name": before.model_name, "model_version": before.model_version}


def test_queued_requests_are_batched_without_waiting(tiny, example):
    p = Predictor(_config(tiny, preload=False)).start()
    try:
        slot, _ = p.resolve(tiny.light_scenario)
        sizes: list[int] = []
        p.observer = lambda event, data: sizes.append(data["size"]) if event == "batch" else None
        entered, gate = threading.Event(), threading.Event()
        run = slot.forward._run

        def held(arrays):  # the first forward pass waits until the others are queued behind it
            if not entered.is_set():
                entered.set()
                assert gate.wait(10)
            return run(arrays)

        slot.forward._run = held
        req = PredictRequest(tiny.light_scenario, **example)
        threads = [threading.Thread(target=p.predict, args=(req,))]
        threads[0].start()
        assert entered.wait(10)
        threads += [threading.Thread(target=p.predict, args=(req,)) for _ in range(4)]
        for t in threads[1:]:
            t.start()
        deadline = time.monotonic() + 10
        while p._queue.qsize() < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        gate.set()
        for t in threads:
            t.join(10)
        slot.forward._run = run
        assert sizes == [1, 4]  # the first alone, at once; the four queued meanwhile in one forward pass
    finally:
        p.close()


def test_an_integer_too_large_for_a_float_fails_only_its_item(tiny, example):
    p = Predictor(_config(tiny, preload=False)).start(background=False)
    features = {**example["features"], "x1": 10**400}
    with pytest.raises(RequestError) as e:
        p.predict(PredictRequest(tiny.light_scenario, features=features, event_timestamp=example["event_timestamp"]))
    assert e.value.field == "features.x1"
    good = PredictRequest(tiny.light_scenario, **example)
    out = p.predict_many([good, PredictRequest(tiny.light_scenario, features=features), good])
    assert isinstance(out[1], RequestError) and out[1].field == "requests[1].features.x1"
    assert out[0].probability == out[2].probability


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
    ({"scenario": "s00", "entity": {"user_id": True}}, "entity.user_id"),
    ({"scenario": ["s00"], "features": {}}, "scenario"),
    ({"scenario": "s00", "features": {}, "event_timestamp": "9999-12-31T00:00:00Z"}, "event_timestamp"),  # no int64 ns
])
def test_http_invalid_input_is_4xx_naming_the_field(http, body, field):
    r = http.post("/predict", json=body)
    assert 400 <= r.status_code < 500, r.text
    assert field in r.text


def test_http_batch_item_error_fails_only_its_item(http, tiny, example):
    good = {"scenario": tiny.light_scenario, **example}
    bad = {**good, "features": {**example["features"], "x2": "oops"}}
    r = http.post("/predict_batch", json={"requests": [good, bad, good]})
    assert r.status_code == 200, r.text
    first, failed, last = r.json()
    assert failed["status"] == 400 and failed["error"] == "RequestError"
    assert failed["field"] == "requests[1].features.x2" and "requests[1].features.x2" in failed["message"]
    assert first["probability"] == pytest.approx(last["probability"], abs=1e-12) and "error" not in first
    assert http.post("/predict_batch", json={"requests": []}).status_code == 400  # the call itself is invalid
    # a time no int64 of nanoseconds holds fails its item alone (it was a 500 for the whole call)
    far = {**good, "event_timestamp": "9999-12-31T00:00:00Z"}
    r = http.post("/predict_batch", json={"requests": [good, far]})
    assert r.status_code == 200 and r.json()[1]["field"] == "requests[1].event_timestamp", r.text
    # an item the schema itself refuses (an entity key's value must be a string or a number) refuses the call
    r = http.post("/predict_batch", json={"requests": [good, {"scenario": "s00", "entity": {"user_id": False}}]})
    assert r.status_code == 400 and r.json()["field"].startswith("requests[1].entity.user_id"), r.text


def _with_big_integer(body: dict, column: str) -> bytes:
    """A JSON body whose ``column`` holds 10^400: a valid JSON integer no 64-bit float can hold."""
    text = json.dumps(body)
    marker = "__BIG__"
    return text.replace(f'"{marker}"', "1" + "0" * 400).encode()


def test_integer_too_large_for_a_float_is_a_400_naming_the_field(http, tiny, example):
    features = {**example["features"], "x1": "__BIG__"}
    body = _with_big_integer({"scenario": tiny.light_scenario, "features": features,
                              "event_timestamp": example["event_timestamp"]}, "x1")
    r = http.post("/predict", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["field"] == "features.x1"
    good = {"scenario": tiny.light_scenario, **example}
    batch = _with_big_integer({"requests": [good, {**good, "features": features}]}, "x1")
    r = http.post("/predict_batch", content=batch, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    ok, failed = r.json()
    assert 0 < ok["probability"] < 1 and (failed["status"], failed["field"]) == (400, "requests[1].features.x1")


def test_http_garbage_is_4xx_not_5xx(http):
    for content, ctype in [(b"{not json", "application/json"), (b"\xff\xfe", "application/json"),
                           (b"[1, 2]", "application/json"), (b"scenario=s00", "text/plain")]:
        r = http.post("/predict", content=content, headers={"content-type": ctype})
        assert 400 <= r.status_code < 500, (content, r.status_code, r.text)


def test_input_validation_errors_have_the_service_error_format(http):
    """BentoML's own 400s (the input model rejected the body) name the field like the service's errors, with
    ``detail`` a string as the OpenAPI schema says (a list of pydantic errors before)."""
    for path, body, field in [("/predict", {"scenario": "s00", "features": {}, "return_features": {}}, "return_features"),
                              ("/predict_batch", {"requests": {}}, "requests"),
                              ("/predict_batch", {"requests": [{"scenario": 5}]}, "requests[0].scenario"),
                              ("/models", [None, None], "body")]:
        r = http.post(path, json=body)
        assert r.status_code == 400, (path, r.text)
        data = r.json()
        assert (data["error"], data["field"]) == ("RequestError", field), (path, data)
        assert isinstance(data["detail"], str) and data["field"] in data["message"]


def test_readyz_answers_get_and_head_only(http):
    assert http.get("/readyz").status_code == 200
    head = http.head("/readyz")
    assert head.status_code == 200 and head.content == b""
    for method in ("TRACE", "POST", "DELETE"):
        r = http.request(method, "/readyz")
        assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD", (method, r.status_code)


def test_the_schema_says_a_request_needs_its_body_and_exactly_one_of_entity_and_features(http):
    schemas = http.get("/docs.json").json()
    body = schemas["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    # this service has no online store (feature_source: raw): a request with entity is not schema-valid
    assert [b["required"] for b in body["oneOf"]] == [["features"]] and body["not"] == {"required": ["entity"]}
    assert "entity" not in body["properties"]
    assert "oneOf" not in schemas["components"]["schemas"]["PredictItem"]  # a batch item fails alone, in a 200
    required = {path: op["post"]["requestBody"].get("required", False) for path, op in schemas["paths"].items()
                if "post" in op}
    assert required == {"/predict": True, "/predict_batch": True, "/models": False}


def _as_json_schema(oas: object) -> object:
    """An OpenAPI 3.0 schema as JSON Schema (``nullable: true`` becomes an ``anyOf`` with null)."""
    if isinstance(oas, list):
        return [_as_json_schema(x) for x in oas]
    if not isinstance(oas, dict):
        return oas
    out = {k: _as_json_schema(v) for k, v in oas.items() if k not in ("nullable", "default")}
    return {"anyOf": [out, {"type": "null"}]} if oas.get("nullable") else out


def test_the_schema_describes_the_served_datasets_features(http, tiny, example):
    import jsonschema

    spec = tiny.data.spec
    body = http.get("/docs.json").json()["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    features = body["schema"]["properties"]["features"]
    assert features["required"] == spec.feature_columns and features["additionalProperties"] is False
    for s in spec.sequences:
        assert {features["properties"][c]["maxItems"] for c in s.columns} == {s.max_length}
    when = body["schema"]["properties"]["event_timestamp"]
    assert when["format"] == "date-time" and when["nullable"] is True  # not any string; null: now
    # a request the service answers is valid under the schema; one missing a feature, or with a text number, is not
    jsonschema.validate(example["features"], _as_json_schema(features))
    assert http.post("/predict", json={"scenario": tiny.light_scenario, **example}).status_code == 200
    column = spec.profile_numeric[0].name
    for broken in ({k: v for k, v in example["features"].items() if k != column},
                   {**example["features"], column: "1.5"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, _as_json_schema(features))
        r = http.post("/predict", json={"scenario": tiny.light_scenario, **example, "features": broken})
        assert r.status_code == 400 and r.json()["field"] == f"features.{column}", r.text


def test_a_body_that_is_not_json_is_415_not_500(http):
    for ctype in ("multipart/form-data", "application/x-www-form-urlencoded", "application/xml"):
        r = http.post("/predict_batch", content=b'{"requests": []}', headers={"content-type": ctype})
        assert r.status_code == 415 and r.json()["field"] == "content-type", (ctype, r.text)


def test_client_errors_are_logged_in_one_line(http, server):
    for content in (b"{not json", b"[1, 2]", b'{"scenario": 5}'):
        assert http.post("/predict", content=content, headers={"content-type": "application/json"}).status_code == 400
    assert http.post("/predict", json={"scenario": "s00", "features": {"x1": 1}}).status_code == 400
    # /predict_batch's body is validated by BentoML: its refusals are shortened to one line by OneLineClientErrors
    assert http.post("/predict_batch", json={"requests": [{"scenario": 5}]}).status_code == 400
    time.sleep(0.5)  # the log is written by the worker
    text = Path(server.log_path).read_text(errors="replace")
    assert "Traceback" not in text, text[-3000:]
    assert "400 RequestError on /predict: body: Invalid JSON" in text
    assert "400 RequestError on /predict: scenario: Input should be a valid string" in text
    assert "400 RequestError on /predict: 'features." in text
    assert "400 on /predict_batch: 1 validation error(s)" in text
    assert "path=/predict" not in text  # BentoML's access log is off by default (access_log)


def test_default_is_one_worker_per_core(server):
    from bentoml._internal.resource import CpuResource  # what BentoML's workers="cpu_count" counts

    workers = [pid for pid in server.pids[1:] if "_bentoml_impl.worker" in " ".join(_cmdline(pid))]
    assert len(workers) == max(1, int(CpuResource.from_system()))


def _cmdline(pid: int) -> list[str]:
    import psutil

    try:
        return psutil.Process(pid).cmdline()
    except psutil.NoSuchProcess:
        return []


def test_readiness_and_metrics_per_scenario(http, tiny, example):
    ready = http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True and ready.json()["degraded"] == {}
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


def test_grpc_batch_item_error_fails_only_its_item(stub, tiny, example):
    bad = dict(example, features={**example["features"], "x1": "abc"})
    batch = stub.PredictBatch(pb.PredictBatchRequest(requests=[_grpc_request(tiny.light_scenario, example),
                                                               _grpc_request(tiny.light_scenario, bad)]), timeout=30)
    ok, failed = batch.predictions
    assert 0 < ok.probability < 1 and not ok.HasField("error")
    assert (failed.error.status, failed.error.field) == (400, "requests[1].features.x1")


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


def test_a_degraded_scenario_on_readyz_and_no_orphan_worker_when_killed(tiny, example, tmp_path):
    """A service started while a pointer names corrupt weights says so on /readyz and /models and refuses that
    scenario (503) rather than answering it from the fallback; ``workers=1`` runs one worker; SIGKILL to the
    serving command's process group leaves no worker holding the port."""
    which = _corrupt_copy(tiny, tmp_path / "registry")
    svc = ServiceProcess([f"registry={tmp_path / 'registry'}", "poll_seconds=0", "workers=1", "access_log=true"],
                         log_path=tmp_path / "log").start()
    try:
        with httpx.Client(base_url=svc.url, timeout=30) as c:
            r = c.post("/predict", json={"scenario": tiny.light_scenario, **example})
            assert r.status_code == 503 and r.json()["error"] == "ModelUnavailableError", r.text
            assert which in r.json()["message"]
            ready = c.get("/readyz")
            assert ready.status_code == 200 and tiny.light_scenario in ready.json()["degraded"]
            models = c.post("/models", json={}).json()
            assert models["scenarios"][tiny.light_scenario]["state"] == "failed"
            assert c.post("/predict", json={"scenario": "cold-start", **example}).json()["fallback"] is True
        # access_log=true: BentoML's access log has a line per request (off by default, see the test above)
        deadline = time.monotonic() + 10
        while "path=/predict" not in (tmp_path / "log").read_text(errors="replace") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "path=/predict" in (tmp_path / "log").read_text(errors="replace")
        pids = svc.pids
        assert len([pid for pid in pids if "_bentoml_impl.worker" in " ".join(_cmdline(pid))]) == 1  # workers=1
        os.killpg(svc.proc.pid, signal.SIGKILL)
        svc.proc.wait(10)
        deadline = time.monotonic() + 15  # a killed multithreaded worker releases its sockets as its last thread exits
        while time.monotonic() < deadline and (any(_alive(pid) for pid in pids) or _listening(svc)):
            time.sleep(0.1)
        assert not [pid for pid in pids if _alive(pid)], "workers outlived the serving command"
        assert not _listening(svc), f"something still listens on the service's ports: {_listening(svc)}"
    finally:
        svc.stop()


def _listening(svc: ServiceProcess) -> list:
    import psutil

    return [c for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port in (svc.port, svc.grpc_port)]


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


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
