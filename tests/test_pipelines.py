"""The pipelines: compiled YAML (GPU placement, Secret, retries), stages' resilience, kfp.local end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("kfp")

from feature_store.stages import historical_join, materialize  # noqa: E402
from longtail.cli import main  # noqa: E402
from longtail.config import config_from_dict, config_to_dict, merge  # noqa: E402
from longtail.workflow import stages  # noqa: E402
from longtail.workflow.config import PipelineConfig, project_image  # noqa: E402
from longtail.workflow.errors import StageError  # noqa: E402

pytestmark = pytest.mark.pipelines
ROOT = Path(__file__).resolve().parents[1]
TRAINING = ("exec-build-agnostic-model", "exec-onboard-scenario", "exec-retrain-scenario")


TINY = {"max_rows_per_scenario": 400, "recipe": {
    "model": {"num_layers": 1, "hidden_size": 6, "intermediate_size": 8, "num_heads": 2},
    "train": {"epochs": 1}, "meta": {"finetune": {"epochs": 1}},
    "light": {"train": {"epochs": 1}, "search": {"epochs": 1}, "min_steps": 0, "latency_repeats": 2,
              "mel": {"layers": 1}, "pretrain": {"epochs": 0}, "transfer": {"rows": 0}, "retrain": {"epochs": 0},
              "restarts": {"runs": 1}}}}


def tiny_config(tables: Path, workspace: Path, **changes) -> PipelineConfig:
    """Tiny models, one epoch: the stages' behaviour, not their accuracy (``changes`` merged as dicts)."""
    d = merge({**TINY, "tables": str(tables), "workspace": str(workspace)}, changes)
    return config_from_dict(PipelineConfig, d, "pipeline")


def embedded(cfg: PipelineConfig):
    return stages.point_in_time_join_of(cfg)


@pytest.fixture(scope="module")
def bootstrapped(synthetic_tables, tmp_path_factory):
    """A tiny workspace once per module: s00..s02 prepared (embedded join), θ0 built on s00 and s01."""
    cfg = tiny_config(synthetic_tables.root, tmp_path_factory.mktemp("bootstrapped") / "ws")
    stages.prepare(cfg, ["s00", "s01", "s02"], join=embedded(cfg))
    stages.build_theta0(cfg, ["s00", "s01"])
    return cfg


def copy_of(base: PipelineConfig, dest: Path) -> PipelineConfig:
    """A test's own copy of the shared workspace (its stages then write only there)."""
    import shutil

    shutil.copytree(base.workspace, dest)
    return base.replace(workspace=str(dest))


# ---------------------------------------------------------------------- compiled YAML
@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("compiled")
    rc = main(["pipelines", "compile", "--out", str(out), "--set", "cluster.node_selector_key=pool",
               "--set", "cluster.node_selector_value=a100", "--set", "cluster.accelerator_limit=2",
               "--set", "cluster.cpu_request=6", "--set", "cluster.memory_request=24G",
               "--set", "cluster.s3_secret=minio-creds", "--set", "pipeline.parallelism=3",
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


def test_production_defaults_are_not_the_demo_settings():
    """PipelineConfig() is what a cluster runs: every row, the default recipe, no reference; the demo's
    caps and short epochs are configs/demo.yaml, and test hooks are not config fields."""
    from longtail.config import load_config
    from longtail.onboarding import Recipe
    from longtail.workflow.config import PipelinesJobConfig

    prod = PipelineConfig()
    assert prod.max_rows_per_scenario == 0 and prod.recipe == Recipe() and prod.references == ()
    assert "fail_scenarios" not in config_to_dict(prod)
    demo = load_config(PipelinesJobConfig, ROOT / "configs" / "demo.yaml").pipeline
    assert demo.max_rows_per_scenario > 0 and demo.recipe != prod.recipe
    assert set(demo.references) == {"SinH", "MeL", "LightGBM"} and demo.recipe.preset == "default"
    paper = PipelineConfig.from_dict({"recipe": {"preset": "paper", "light": {"train": {"epochs": 3}}}})
    assert paper.recipe.light.transfer.rows == 0 and paper.recipe.light.train.epochs == 3
    assert paper.recipe.light.search.flops_penalty == "linear" and not paper.recipe.light.init_from_teacher
    with pytest.raises(ValueError, match="recipe.preset"):
        PipelineConfig.from_dict({"recipe": {"preset": "fastest"}})


def test_prepare_rejects_unknown_scenarios(synthetic_tables, tmp_path):
    cfg = tiny_config(synthetic_tables.root, tmp_path)
    with pytest.raises(StageError, match="nope"):
        stages.prepare(cfg, ["nope"], join=embedded(cfg))


def test_a_failed_scenario_is_reported_and_only_it_is_redone(bootstrapped, tmp_path, monkeypatch):
    """Resilience and idempotency at the stage level: the same calls again change nothing."""
    scen = ["s00", "s01", "s02"]
    cfg = copy_of(bootstrapped, tmp_path / "ws")
    monkeypatch.setenv(stages.FAIL_ENV, "s02")
    results = [stages.onboard_one(cfg, s) for s in scen]
    assert [r["status"] for r in results] == ["ok", "ok", "failed"]
    assert "failure injected" in results[2]["error"]
    first = stages.update_theta0(cfg, [json.dumps(r) for r in results])
    assert first["version"] == 1 and len(first["applied"]) == 2
    report = stages.write_report(cfg)
    html = Path(report["report_html"]).read_text()
    assert report["failed"] == ["s02"] and "failed: RuntimeError: failure injected" in html
    assert all(f"<h3 id='{s}'>" in html for s in scen) and report["summary"]["scenarios_ok"] == 2

    again = [stages.onboard_one(cfg, s) for s in scen[:2]]  # finished ones are kept, not redone
    assert again == results[:2]
    assert stages.update_theta0(cfg, again)["duplicates"] == [r["update_id"] for r in again]
    monkeypatch.delenv(stages.FAIL_ENV)
    redo = stages.onboard_one(cfg, "s02")
    assert redo["status"] == "ok" and redo["theta0_version"] == 1
    assert stages.update_theta0(cfg, [*again, redo])["applied"] == [redo["update_id"]]
    assert stages.build_theta0(cfg, ["s00", "s01"])["version"] == 0  # the store is kept

    verdict = {"s00": {"drifted": False}, "s01": {"drifted": True}}  # retrain: only the drifted one
    assert stages.retrain_one(cfg, "s00", verdict)["status"] == "skipped"
    rebuilt = stages.retrain_one(cfg, "s01", verdict)
    assert rebuilt["status"] == "ok" and rebuilt["tag"].startswith("retrain-") and rebuilt["theta0_version"] == 2
    assert stages.retrain_one(cfg, "s01", verdict) == rebuilt  # the same verdict again: nothing redone
    newest = {r["scenario"]: r.get("tag") for r in stages.collect_results(cfg)}
    assert newest == {"s00": "onboard", "s01": rebuilt["tag"], "s02": "onboard"}


def test_a_workspace_never_reuses_a_model_made_from_other_inputs(bootstrapped, tmp_path):
    """θ0 (the workspace's long-lived state) is refused for other inputs; a scenario's result made with
    other settings is set aside and the scenario onboarded again."""
    cfg = copy_of(bootstrapped, tmp_path / "ws")
    wider = tiny_config(cfg.tables, cfg.workspace, recipe={"model": {"hidden_size": 4}})
    with pytest.raises(StageError, match=r"θ0 was built from other inputs.*recipe.model.hidden_size 6 -> 4"):
        stages.build_theta0(wider, ["s00", "s01"])
    with pytest.raises(StageError, match=r"scenarios"):
        stages.build_theta0(cfg, ["s00"])
    with pytest.raises(StageError, match=r"split.split_seed 0 -> 5"):
        stages.build_theta0(cfg.replace(split_seed=5), ["s00", "s01"])
    first = stages.onboard_one(cfg, "s02")
    assert stages.onboard_one(cfg, "s02") == first  # the same inputs: kept
    other = tiny_config(cfg.tables, cfg.workspace, recipe={"light": {"train": {"lr": 0.01}}})
    again = stages.onboard_one(other, "s02")
    assert again["status"] == "ok" and again["inputs"] != first["inputs"]
    aside = stages.scenario_dir(cfg, "s02").with_name(f"onboard{stages.SUPERSEDED}{first['inputs']}")
    assert json.loads((aside / "result.json").read_text())["inputs"] == first["inputs"]
    assert [r["inputs"] for r in stages.collect_results(other) if r["scenario"] == "s02"] == [again["inputs"]]


def test_theta0_serves_at_the_fallback_pointer_after_every_update(bootstrapped, tmp_path):
    """θ0 v0 is published and promoted at the fallback pointer by the bootstrap, each Eq. 3 update's
    new version replaces it there; a rerun publishes nothing twice."""
    from longtail.registry import open_registry

    cfg = copy_of(bootstrapped, tmp_path / "ws")
    built = stages.build_theta0(cfg, ["s00", "s01"])  # kept: the copy's store exists
    reg = open_registry(cfg.registry_uri)
    name = built["registry"]["name"]
    assert reg.serving(cfg.fallback_pointer) == (name, built["registry"]["version"])
    assert reg.get(name, built["registry"]["version"]).lineage["theta0_store_version"] == 0
    r = stages.onboard_one(cfg, "s02")
    upd = stages.update_theta0(cfg, [r])
    assert upd["version"] == 1 and reg.serving(cfg.fallback_pointer) == tuple(upd["registry"])
    assert reg.get(*upd["registry"]).lineage["theta0_store_version"] == 1
    assert stages.update_theta0(cfg, [r])["registry"] == upd["registry"]  # replay: the same version
    assert len(reg.list_versions(name)) == 2
    model, transforms, _ = reg.load(*upd["registry"])  # the served θ0 is the store's version 1
    from longtail.meta.server import Theta0Server

    _, state = Theta0Server(Path(cfg.workspace) / "theta0").load(1)
    assert all(torch_equal(model.state_dict()[k], state[k]) for k in state)


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def test_promotion_is_champion_challenger_on_validation_rows(bootstrapped, tmp_path):
    """A new scenario's light model serves only if it beats θ0 on its VALID rows; a later one only if it
    beats the serving one; a model that loses is held with the scores in the reason."""
    from longtail.onboarding.promotion import promote_if_better, score_on
    from longtail.registry import open_registry

    cfg = copy_of(bootstrapped, tmp_path / "ws")
    r = stages.onboard_one(cfg, "s02")
    stages.update_theta0(cfg, [r])
    out = stages.promote(cfg, [r])
    reg = open_registry(cfg.registry_uri)
    (d,) = out["decisions"]
    valid = stages.load_prepared(cfg, ["s02"]).rows("valid", ["s02"])
    label = stages.load_prepared(cfg, ["s02"]).spec.label
    _, mine = score_on(reg, tuple(r["registry"]["light"]), valid, label)
    _, floor = score_on(reg, reg.serving(cfg.fallback_pointer), valid, label)
    assert d["scores"]["challenger"] == pytest.approx(mine) and d["scores"]["floor"] == pytest.approx(floor)
    assert d["promoted"] == (mine > floor) and ("s02" in out["promoted"]) == (mine > floor)
    assert (reg.serving("s02") == tuple(r["registry"]["light"])) == (mine > floor)
    # the same decision again is a no-op; a challenger that is not better than the champion is held
    champion = tuple(r["registry"]["light"])
    reg.promote("s02", *champion, note="test: a champion")
    again = promote_if_better(reg, "s02", champion, valid, label=label)
    assert again.promoted and again.reason == "already serving"
    worse = promote_if_better(reg, "s02", reg.serving(cfg.fallback_pointer), valid, label=label, min_gain=1.0)
    assert not worse.promoted and "does not beat the champion" in worse.reason
    assert reg.serving("s02") == champion


def test_changing_test_labels_changes_no_selection(synthetic_tables, tmp_path):
    """Every choice (kept epoch, restart, architecture, promotion) is made on validation rows: the same
    onboarding with every TEST label flipped keeps the same epochs, genotypes and promotion decisions."""
    import pandas as pd

    def run(ws: Path, flip: bool):
        cfg = tiny_config(synthetic_tables.root, ws, recipe={"light": {"restarts": {"runs": 2, "below_rows": 10**6},
                                                                       "transfer": {"rows": 30}}})
        stages.prepare(cfg, ["s00", "s01", "s02"], join=embedded(cfg))
        if flip:
            label = stages.load_prepared(cfg, ["s00"]).spec.label
            for s in ("s00", "s01", "s02"):
                path = stages._prepared_path(cfg, s)
                df = pd.read_parquet(path)
                test = df[stages.SPLIT_COL] == "test"
                df.loc[test, label] = 1 - df.loc[test, label]
                df.to_parquet(path, index=False)
        stages.build_theta0(cfg, ["s00", "s01"])
        r = stages.onboard_one(cfg, "s02")
        stages.update_theta0(cfg, [r])
        p = stages.promote(cfg, [r])
        return r, p

    a, pa = run(tmp_path / "a", False)
    b, pb = run(tmp_path / "b", True)
    assert a["auc"]["Ours"] != b["auc"]["Ours"]  # the flip did reach the TEST rows
    assert a["genotypes"] == b["genotypes"] and a["restarts"] == b["restarts"]
    assert a["valid_auc"] == b["valid_auc"]
    assert [d["promoted"] for d in pa["decisions"]] == [d["promoted"] for d in pb["decisions"]]
    assert [d["scores"] for d in pa["decisions"]] == [d["scores"] for d in pb["decisions"]]


def test_light_models_start_from_the_pooled_supernet_and_a_transfer_set(synthetic_tables, tmp_path, monkeypatch):
    from longtail.nas import pretrain

    cfg = tiny_config(synthetic_tables.root, tmp_path / "ws", recipe={"light": {
        "pretrain": {"epochs": 1}, "transfer": {"rows": 50}, "search": {"epochs": 1, "max_steps": 3}}})
    stages.prepare(cfg, ["s00", "s01", "s02"], join=embedded(cfg))
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


def test_the_feast_join_feeds_prepare(synthetic_tables, tmp_path):
    """The pipelines prepare their rows through Feast (apply, materialize, get_historical_features)."""
    cfg = tiny_config(synthetic_tables.root, tmp_path / "ws")
    materialize(cfg)
    out = stages.prepare(cfg, ["s00"], join=historical_join(cfg))
    assert out["scenarios"]["s00"] > 0 and (tmp_path / "ws" / "feature_repo" / "data").exists()


# ---------------------------------------------------------------------- kfp.local end to end
@pytest.mark.slow
def test_tiny_bootstrap_then_onboard_with_kfp_local(synthetic_tables, tmp_path, monkeypatch):
    """bootstrap (2 initial scenarios, ParallelFor, Collected) then onboard (1 arriving + 1 failing)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv(stages.FAIL_ENV, "s03")
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))
    from pipelines import run_local

    cfg = tiny_config(synthetic_tables.root, tmp_path / "ws", parallelism=2)
    out = json.loads(run_local("bootstrap", cfg, initial_scenarios=["s00", "s01"]))
    assert out["scenarios"] == 2 and out["failed"] == [] and out["bento"].startswith("longtail_serving:")
    assert stages.theta0_version(cfg) == 1
    out = json.loads(run_local("onboard", cfg, scenarios=["s02", "s03"]))
    assert out["scenarios"] == 3 and out["failed"] == ["s03"]
    assert stages.theta0_version(cfg) == 2
    serving = json.loads(Path(out["serving"]).read_text())
    assert sorted(serving["scenarios"]) == ["s00", "s01", "s02"]
    assert "s03" in Path(out["report_md"]).read_text()
    assert "pipelines" in sys.modules
    bentos = subprocess.run([sys.executable, "-m", "bentoml", "list", "-o", "json"], capture_output=True, text=True,
                            env={**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml")}, check=True)
    assert out["bento"] in {b["tag"] for b in json.loads(bentos.stdout)}
