"""The CLI end to end on synthetic data: build, validate, train (global and SinH), evaluate."""

from __future__ import annotations

import json

import pytest
import yaml

from longtail.cli import main

pytestmark = pytest.mark.model


def test_cli_end_to_end(tmp_path, capsys):
    data = tmp_path / "syn"
    assert main(["data", "build", "synthetic", "--out", str(data), "--scenarios", "3", "--max-rows", "400",
                 "--min-rows", "80"]) == 0
    assert main(["data", "validate", str(data)]) == 0
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(run), "--epochs", "1", "--set", "model.num_layers=1",
                 "--set", "model.hidden_size=8", "--set", "train.batch_size=128", "--set", "latency_repeats=3"]) == 0
    out = capsys.readouterr().out
    assert "s00" in out and "mean" in out and "FLOPs/sample" in out
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["train"]["epochs"] == 1 and cfg["model"]["num_layers"] == 1
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["per_scenario"]) == 3 and metrics["models"]["global"]["flops"]["total"] > 0
    assert (run / "splits.parquet").exists() and (run / "models" / "global" / "weights.pt").exists()
    assert main(["evaluate", str(run)]) == 0
    ev = json.loads((run / "evaluation.json").read_text())
    assert ev["mean_auc"] == pytest.approx(metrics["mean_auc"], abs=1e-6)

    sinh = tmp_path / "sinh"
    assert main(["train", "--data", str(data), "--out", str(sinh), "--strategy", "single", "--epochs", "1",
                 "--set", "model.num_layers=1", "--set", "train.batch_size=128"]) == 0
    assert sorted(p.name for p in (sinh / "models").iterdir() if not p.name.startswith(".")) == ["s00", "s01", "s02"]


def test_cli_bad_input_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "r")]) == 2
    assert "not a complete table set" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path), "--set", "train.epochs=many", "--out", str(tmp_path / "r")]) == 2
    assert "train.epochs" in capsys.readouterr().err
    assert main(["train", "--set", "model.colour=red", "--out", str(tmp_path / "r")]) == 2
    assert "colour" in capsys.readouterr().err


def test_cli_meta_strategies_and_refresh(tmp_path, capsys):
    data = tmp_path / "syn"
    assert main(["data", "build", "synthetic", "--out", str(data), "--scenarios", "9", "--max-rows", "300",
                 "--min-rows", "40"]) == 0
    tiny = ["--set", "recipe.model.num_layers=1", "--set", "recipe.model.hidden_size=8",
            "--set", "recipe.train.batch_size=128", "--epochs", "1", "--set", "recipe.meta.finetune.epochs=1"]
    reg = tmp_path / "registry"
    assert main(["meta", "run", "--data", str(data), "--out", str(tmp_path / "meh"), *tiny,
                 "--set", f"registry={reg}"]) == 0
    metrics = json.loads((tmp_path / "meh" / "metrics.json").read_text())
    assert metrics["strategy"] == "MeH" and len(metrics["per_scenario"]) == 9
    # every θu and the final θ0 are published with lineage
    assert len(metrics["published"]) == 10
    from longtail.registry import open_registry

    r = open_registry(str(reg))
    mv = r.get("synthetic.s03.heavy-lstm", 1)
    assert mv.kind == "specific" and mv.scenario == "s03" and mv.lineage["strategy"] == "MeH"
    assert mv.lineage["data_split"]["seed"] == 0 and "theta0_store_version" in mv.lineage
    assert r.get("synthetic.theta0-lstm", 1).kind == "agnostic"
    assert "MeH (lstm): test AUC per scenario" in capsys.readouterr().out
    assert main(["registry", "--registry", str(reg), "list"]) == 0
    assert "synthetic.s03.heavy-lstm" in capsys.readouterr().out
    assert main(["registry", "--registry", str(reg), "promote", "s03", "synthetic.s03.heavy-lstm", "1"]) == 0
    assert "serving synthetic.s03.heavy-lstm v1" in capsys.readouterr().out
    assert main(["registry", "--registry", str(reg), "rollback", "s03"]) == 2  # nothing to roll back to
    assert main(["registry", "--registry", str(reg), "promote", "s03", "synthetic.s04.heavy-lstm", "1"]) == 2
    capsys.readouterr()
    assert main(["meta", "refresh", "--store", str(tmp_path / "meh" / "theta0"), "--data", str(data),
                 "--set", "train.epochs=1"]) == 0
    assert "refreshed on 9 scenarios" in capsys.readouterr().out
    assert main(["meta", "run", "--strategy", "sinh", "--data", str(data), "--out", str(tmp_path / "sinh"),
                 *tiny]) == 0
    assert json.loads((tmp_path / "sinh" / "metrics.json").read_text())["strategy"] == "SinH"


def test_cli_hpo_katib_and_trial(tmp_path, capsys):
    out = tmp_path / "exp.yaml"
    assert main(["hpo", "katib", "--trials", "4", "--out", str(out)]) == 0
    exp = yaml.safe_load(out.read_text())
    assert exp["kind"] == "Experiment" and exp["spec"]["maxTrialCount"] == 4
    data = tmp_path / "syn"
    assert main(["data", "build", "synthetic", "--out", str(data), "--scenarios", "2", "--max-rows", "200",
                 "--min-rows", "100"]) == 0
    capsys.readouterr()
    rc = main(["hpo", "trial", "--data", str(data), "--set", "train.epochs=1", "--set", "model.num_layers=1",
               "--set", "model.hidden_size=8"])
    assert rc == 0
    assert "valid-auc=" in capsys.readouterr().out
    assert main(["hpo", "katib", "--space", str(tmp_path / "missing.yaml")]) == 2
