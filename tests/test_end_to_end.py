"""From raw tables to a served request: the pipelines' stages onboard a scenario, and `longtail serve`
answers it with the light model they promoted, an unknown scenario with the current θ0, and an
entity-key request from the Feast online store the pipelines materialized.

One workspace for the module (bootstrap on two scenarios, onboard a third), one service process
started the way a user starts it (``longtail serve http --registry <relative path>`` from the
workspace folder).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

pytest.importorskip("bentoml")
pytest.importorskip("feast")

from feature_store.stages import historical_join, materialize  # noqa: E402
from longtail.config import config_from_dict  # noqa: E402
from longtail.data.splits import TEST  # noqa: E402
from longtail.metrics import predict_proba  # noqa: E402
from longtail.online.rows import jsonable_row  # noqa: E402
from longtail.registry import open_registry  # noqa: E402
from longtail.workflow import stages  # noqa: E402
from longtail.workflow.config import PipelineConfig  # noqa: E402
from serving.launch import free_port  # noqa: E402

pytestmark = [pytest.mark.serving, pytest.mark.pipelines, pytest.mark.slow]

TINY = {"max_rows_per_scenario": 400, "promotion": {"min_gain": -1.0}, "materialize_days": 36500, "recipe": {
    "model": {"num_layers": 1, "hidden_size": 6, "intermediate_size": 8, "num_heads": 2},
    "train": {"epochs": 1}, "meta": {"finetune": {"epochs": 1}},
    "light": {"train": {"epochs": 1}, "search": {"epochs": 1}, "min_steps": 0, "latency_repeats": 2,
              "mel": {"layers": 1}, "pretrain": {"epochs": 0}, "transfer": {"rows": 0}, "retrain": {"epochs": 0},
              "restarts": {"runs": 1}}}}


@pytest.fixture(scope="module")
def onboarded(synthetic_tables, tmp_path_factory):
    ws = tmp_path_factory.mktemp("e2e") / "ws"
    cfg = config_from_dict(PipelineConfig, {**TINY, "tables": str(synthetic_tables.root), "workspace": str(ws)})
    materialize(cfg)
    stages.prepare(cfg, ["s00", "s01", "s02"], join=historical_join(cfg))
    stages.build_theta0(cfg, ["s00", "s01"])
    result = stages.onboard_one(cfg, "s02")
    assert result["status"] == "ok", result.get("error")
    stages.update_theta0(cfg, [result])
    promoted = stages.promote(cfg, [result])
    assert "s02" in promoted["promoted"], promoted  # min_gain -1: the test needs a served light model
    return cfg, result


@pytest.fixture(scope="module")
def service(onboarded):
    """``longtail serve http --registry registry`` run from the workspace folder (a relative path)."""
    cfg, _ = onboarded
    ws = Path(cfg.workspace)
    port = free_port()
    log = open(ws / "serve.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "longtail.cli", "serve", "http", "--registry", "registry", "--port", str(port),
         "--set", "feature_source=feast", "--set", "feast_repo=feature_repo", "--set", "poll_seconds=0"],
        cwd=ws, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "BENTOML_DO_NOT_TRACK": "true"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert proc.poll() is None, (ws / "serve.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            raise AssertionError("the service was not ready: " + (ws / "serve.log").read_text()[-3000:])
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def _request(cfg: PipelineConfig, scenario: str) -> tuple[dict, object]:
    data = stages.load_prepared(cfg, [scenario])
    row = data.rows(TEST, [scenario]).iloc[:1]
    return {"features": jsonable_row(data.spec, row), "event_timestamp": row[data.spec.event_timestamp].iloc[0].isoformat()}, row


def test_the_promoted_light_model_answers_its_scenario(onboarded, service):
    cfg, result = onboarded
    body, row = _request(cfg, "s02")
    r = httpx.post(f"{service}/predict", json={"scenario": "s02", **body}, timeout=60)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["model_kind"] == "light" and got["served_by"] == "scenario"
    assert [got["model_name"], got["model_version"]] == result["registry"]["light"]
    model, transforms, info = open_registry(cfg.registry_uri).load(*result["registry"]["light"])
    assert info["kind"] == "light"  # the published folder is the model itself, with its pictures beside it
    offline = float(predict_proba(model, transforms.transform(row, require_label=False))[0])
    assert got["probability"] == pytest.approx(offline, abs=1e-6)


def test_an_unknown_scenario_is_answered_by_the_current_theta0(onboarded, service):
    cfg, _ = onboarded
    body, _ = _request(cfg, "s02")
    r = httpx.post(f"{service}/predict", json={"scenario": "never-seen", **body}, timeout=60)
    assert r.status_code == 200, r.text
    got = r.json()
    fallback = open_registry(cfg.registry_uri).serving(cfg.fallback_pointer)
    assert got["served_by"] == "fallback" and (got["model_name"], got["model_version"]) == fallback
    assert open_registry(cfg.registry_uri).get(*fallback).lineage["theta0_store_version"] == stages.theta0_version(cfg)


def test_an_entity_request_reads_the_feast_online_store(onboarded, service):
    cfg, _ = onboarded
    data = stages.load_prepared(cfg, ["s02"])
    row = data.rows(TEST, ["s02"]).iloc[:1]
    entity = {k: (int(v) if isinstance(v, np.integer) else v) for k, v in row[list(data.spec.entity_keys)].iloc[0].items()}
    # no event_timestamp: now, when the online store's newest snapshots are what is known
    r = httpx.post(f"{service}/predict", json={"scenario": "s02", "entity": entity, "return_features": True},
                   timeout=60)
    assert r.status_code == 200, r.text
    online = r.json()
    assert online["model_kind"] == "light" and set(online["features"]) == set(data.spec.feature_columns)
    # the same values sent as raw features give the same probability: the entity path is the raw path
    # on what the online store holds
    again = httpx.post(f"{service}/predict", json={"scenario": "s02", "features": online["features"]},
                       timeout=60).json()
    assert again["probability"] == pytest.approx(online["probability"], abs=1e-6)
    # with an online store, the schema describes the entity keys a request names
    docs = httpx.get(f"{service}/docs.json", timeout=60).json()  # a worker still starting waits for its models
    body = docs["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["entity"]["required"] == list(data.spec.entity_keys)
    assert [b["required"] for b in body["oneOf"]] == [["entity"], ["features"]]
    # one worker per core, each with its own cache: the worker that answers /models may still be preloading
    # s02 (state "loading", no kind yet); every worker preloads the pointed-to models, so it turns "loaded"
    deadline = time.monotonic() + 60
    while True:
        described = httpx.post(f"{service}/models", json={}, timeout=30).json()["scenarios"]["s02"]
        assert described["state"] in ("loaded", "loading", "not_loaded"), described
        if described["state"] == "loaded" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert described["state"] == "loaded" and json.dumps(described["model_kind"]) == '"light"', described
