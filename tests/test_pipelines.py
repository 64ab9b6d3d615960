"""The pipelines: compiled YAML (GPU placement, Secret, retries), stages' resilience, kfp.local end to end."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("kfp")

from longtail.cli import main  # noqa: E402
from longtail.meta.finetune import MetaConfig  # noqa: E402
from longtail.models.heavy import HeavyConfig  # noqa: E402
from longtail.nas.strategies import LightConfig  # noqa: E402
from longtail.nas.supernet import SearchConfig  # noqa: E402
from longtail.train import TrainConfig  # noqa: E402
from longtail.workflow import stages  # noqa: E402
from longtail.workflow.config import PipelineConfig, project_image  # noqa: E402
from longtail.workflow.errors import StageError  # noqa: E402

pytestmark = pytest.mark.pipelines
ROOT = Path(__file__).resolve().parents[1]
TRAINING = ("exec-build-agnostic-model", "exec-onboard-scenario", "exec-retrain-scenario")


def tiny_config(tables: Path, workspace: Path, **changes) -> PipelineConfig:
    """Tiny models, one epoch: the stages' behaviour, not their accuracy."""
    cfg = PipelineConfig(
        tables=str(tables), workspace=str(workspace), max_rows_per_scenario=400, sinh=False,
        model=HeavyConfig(num_layers=1, hidden_size=6, intermediate_size=8, num_heads=2),
        train=TrainConfig(epochs=1), meta=MetaConfig(finetune=TrainConfig(epochs=1)),
        light=LightConfig(train=TrainConfig(epochs=1), search=SearchConfig(epochs=1), min_steps=0, latency_repeats=2,
                          mel_layers=1, pretrain_epochs=0, transfer_rows=0, retrain_epochs=0, restarts=1))
    return cfg.replace(**changes)


# ---------------------------------------------------------------------- compiled YAML
@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("compiled")
    rc = main(["pipelines", "compile", "--out", str(out), "--set", "cluster.node_selector_key=pool",
               "--set", "cluster.node_selector_value=a100", "--set", "cluster.accelerator_limit=2",
               "--set", "cluster.cpu_request=6", "--set", "cluster.memory_request=24G",
               "--set", "cluster.s3_secret=minio-creds", "--set", "cluster.parallelism=3",
               "--set", "pipeline.workspace=/mnt/ws"])
    assert rc == 0
    docs = {}
    for name in ("bootstrap", "onboard", "retrain"):
        spec, platform = list(yaml.safe_load_all((out / f"{name}.yaml").read_text()))
        docs[name] = (spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"])
    return docs


@pytest.mark.parametrize("name", ["bootstrap", "onboard", "retrain"])
def test_training_tasks_are_placed_on_the_gpu_pool(compiled, name):
    spec, k8s = compiled[name]
    executors = spec["deploymentSpec"]["executors"]
    training = [e for e in TRAINING if e in executors]
    assert training
    for e in training:
        container = executors[e]["container"]
        res = container["resources"]
        assert res["accelerator"]["resourceType"] == "nvidia.com/gpu" and res["accelerator"]["resourceCount"] == "2"
        assert res["resourceCpuRequest"] == "6" and res["resourceMemoryRequest"] == "24G"
        assert container["image"] == project_image() and not container["image"].endswith(":latest")
        assert k8s[e]["nodeSelector"]["labels"] == {"pool": "a100"}
        assert k8s[e]["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    for e, plat in k8s.items():  # every task gets the S3 credentials from the Secret
        secret = plat["secretAsEnv"][0]
        assert secret["secretName"] == "minio-creds"
        assert {k["envVar"] for k in secret["keyToEnv"]} >= {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
        if e not in TRAINING:
            assert "nodeSelector" not in plat and "accelerator" not in executors[e]["container"].get("resources", {})


def test_parallelism_retries_caching_and_config_default(compiled):
    spec, _ = compiled["bootstrap"]
    tasks = spec["root"]["dag"]["tasks"]
    assert tasks["for-loop-1"]["iteratorPolicy"]["parallelismLimit"] == 3
    assert tasks["build-agnostic-model"]["retryPolicy"]["maxRetryCount"] == 2
    assert tasks["build-agnostic-model"]["cachingOptions"] == {"enableCache": True}
    onboard = spec["components"]["comp-for-loop-1"]["dag"]["tasks"]["onboard-scenario"]
    assert onboard["cachingOptions"] == {}  # never cached by KFP: the stage keeps per-scenario results
    default = spec["root"]["inputDefinitions"]["parameters"]["config"]["defaultValue"]
    assert default["workspace"] == "/mnt/ws"


def test_compile_rejects_an_unknown_setting(capsys):
    assert main(["pipelines", "compile", "--out", "/tmp/never", "--set", "cluster.gpus=2"]) == 2
    assert "gpus" in capsys.readouterr().err


# ---------------------------------------------------------------------- stages
def test_drift_gate_reads_both_verdict_forms(tmp_path):
    cfg = PipelineConfig(workspace=str(tmp_path))
    assert stages.drift_gate(cfg, {"UA": {"drifted": True}, "B6": {"drifted": False}}) == ["UA"]
    assert stages.drift_gate(cfg, {"drifted_scenarios": ["OO", "UA"], "scenarios": {}}, ["OO"]) == ["OO"]
    with pytest.raises(StageError, match="'drifted'"):
        stages.drift_gate(cfg, {"UA": {"drift": 1}})
    with pytest.raises(StageError, match="no such file"):
        stages.drift_gate(cfg, str(tmp_path / "missing.json"))
    assert stages.retrain_tag({"UA": {"drifted": True}}) == stages.retrain_tag({"UA": {"drifted": True}})


def test_prepare_rejects_unknown_scenarios(synthetic_tables, tmp_path):
    with pytest.raises(StageError, match="nope"):
        stages.prepare(tiny_config(synthetic_tables.root, tmp_path), ["nope"])


def test_a_failed_scenario_is_reported_and_only_it_is_redone(synthetic_tables, tmp_path):
    """Resilience and idempotency at the stage level: the same calls again change nothing."""
    scen = ["s00", "s01", "s02"]
    cfg = tiny_config(synthetic_tables.root, tmp_path / "ws", fail_scenarios=("s02",))
    stages.materialize(cfg)
    stages.prepare(cfg, scen)
    stages.build_theta0(cfg, ["s00", "s01"])
    results = [stages.onboard_one(cfg, s) for s in scen]
    assert [r["status"] for r in results] == ["ok", "ok", "failed"]
    assert "failure injected" in results[2]["error"]
    first = stages.update_theta0(cfg, [json.dumps(r) for r in results])
    assert first["version"] == 1 and len(first["applied"]) == 2
    pkg = stages.package(cfg)
    assert pkg["failed"] == ["s02"] and Path(pkg["report_html"]).read_text().count("<tr>") == 5

    again = [stages.onboard_one(cfg, s) for s in scen[:2]]  # finished ones are kept, not redone
    assert again == results[:2]
    assert stages.update_theta0(cfg, again)["duplicates"] == [r["update_id"] for r in again]
    fixed = cfg.replace(fail_scenarios=())
    redo = stages.onboard_one(fixed, "s02")
    assert redo["status"] == "ok" and redo["theta0_version"] == 1
    assert stages.update_theta0(fixed, [*again, redo])["applied"] == [redo["update_id"]]
    promoted = stages.promote(fixed, [*again, redo], min_auc_gain_over_mel=-1.0)
    assert sorted(promoted["promoted"]) == scen
    assert stages.build_theta0(fixed, ["s00", "s01"])["version"] == 0  # the store is kept

    verdict = {"s00": {"drifted": False}, "s01": {"drifted": True}}  # retrain: only the drifted one
    assert stages.retrain_one(fixed, "s00", verdict)["status"] == "skipped"
    rebuilt = stages.retrain_one(fixed, "s01", verdict)
    assert rebuilt["status"] == "ok" and rebuilt["tag"].startswith("retrain-") and rebuilt["theta0_version"] == 2
    assert stages.retrain_one(fixed, "s01", verdict) == rebuilt  # the same verdict again: nothing redone
    newest = {r["scenario"]: r.get("tag") for r in stages.collect_results(fixed)}
    assert newest == {"s00": "onboard", "s01": rebuilt["tag"], "s02": "onboard"}


def test_light_models_start_from_the_pooled_supernet_and_a_transfer_set(synthetic_tables, tmp_path, monkeypatch):
    import dataclasses

    from longtail.nas import pretrain

    base = tiny_config(synthetic_tables.root, tmp_path / "ws")
    cfg = base.replace(light=dataclasses.replace(base.light, pretrain_epochs=1, transfer_rows=50,
                                                 search=SearchConfig(epochs=1, max_steps=3)))
    stages.materialize(cfg)
    stages.prepare(cfg, ["s00", "s01", "s02"])
    stages.build_theta0(cfg, ["s00", "s01"])
    (file,) = (tmp_path / "ws" / "light_pretrain").glob("*/supernet.pt")  # pre-trained once, by the bootstrap
    facts = json.loads((file.parent / "facts.json").read_text())
    assert facts["theta0"].endswith("theta0_init") and facts["n_train"] > 0

    def no_search(*args, **kwargs):
        raise AssertionError("onboarding pre-trained the supernet again")

    monkeypatch.setattr(pretrain, "pretrain_supernet", no_search)
    result = stages.onboard_one(cfg, "s02")
    assert result["status"] == "ok", result.get("error")
    assert result["flops"]["Ours"] <= result["flops"]["budget"]
    ours = json.loads((stages.scenario_dir(cfg, "s02") / "ours" / "genotypes.json").read_text())
    assert ours["pretrained"] and ours["n_transfer"] == 50


# ---------------------------------------------------------------------- kfp.local end to end
@pytest.mark.slow
def test_tiny_bootstrap_then_onboard_with_kfp_local(synthetic_tables, tmp_path, monkeypatch):
    """bootstrap (2 initial scenarios, ParallelFor, Collected) then onboard (1 arriving + 1 failing)."""
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    from pipelines import run_local

    cfg = tiny_config(synthetic_tables.root, tmp_path / "ws", fail_scenarios=("s03",), parallelism=2)
    out = json.loads(run_local("bootstrap", cfg, initial_scenarios=["s00", "s01"]))
    assert out["scenarios"] == 2 and out["failed"] == []
    assert stages.theta0_version(cfg) == 1
    out = json.loads(run_local("onboard", cfg, scenarios=["s02", "s03"]))
    assert out["scenarios"] == 3 and out["failed"] == ["s03"]
    assert stages.theta0_version(cfg) == 2
    serving = json.loads(Path(out["serving"]).read_text())
    assert sorted(serving["scenarios"]) == ["s00", "s01", "s02"]
    assert "s03" in Path(out["report_md"]).read_text()
    assert "pipelines" in sys.modules
