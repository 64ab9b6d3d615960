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
    assert sorted(p.name for p in (sinh / "models").iterdir()) == ["s00", "s01", "s02"]


def test_cli_bad_input_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "r")]) == 2
    assert "not a complete table set" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path), "--set", "train.epochs=many", "--out", str(tmp_path / "r")]) == 2
    assert "train.epochs" in capsys.readouterr().err
    assert main(["train", "--set", "model.colour=red", "--out", str(tmp_path / "r")]) == 2
    assert "colour" in capsys.readouterr().err
