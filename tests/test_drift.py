"""Drift per scenario: a planted shift is found in the shifted scenario only, thresholds change the
verdict, too few rows give no verdict, and the CLI writes the machine-readable verdict and reports."""

from __future__ import annotations

import json

import pytest
from tiny import build_tiny_registry

from longtail.cli import main
from longtail.data.prepared import DataConfig, prepare
from longtail.data.synthetic import SyntheticConfig, build_synthetic
from monitoring import DriftConfig, drift_features, registry_scorer, run_drift

pytestmark = pytest.mark.serving

FAST = DriftConfig(html=False, drift_share=0.1)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("drift")
    tables = build_synthetic(root / "tables", SyntheticConfig(n_scenarios=2, max_rows=400, min_rows=150, seed=2))
    return prepare(DataConfig(tables=str(tables.root)))


def _shifted(data, scenario: str):
    cur = data.frame.copy()
    m = cur[data.spec.scenario] == scenario
    cur.loc[m, "x1"] = cur.loc[m, "x1"] + 2.5
    cur.loc[m, "segment"] = "c"
    return cur


def test_drift_features_flatten_sequences(data):
    x = drift_features(data.spec, data.frame)
    assert {"x1", "segment", "actions__len", "actions__amount__mean", "actions__amount__last",
            "actions__kind__last", "market__index__last"} <= set(x.columns)
    assert len(x) == len(data.frame)


def test_planted_shift_drifts_only_its_scenario(data, tmp_path):
    shifted = data.scenarios[1]
    res = run_drift(data.spec, data.frame, _shifted(data, shifted), tmp_path, FAST)
    assert res["drifted_scenarios"] == [shifted]
    v = res["scenarios"][shifted]
    assert v["status"] == "drift" and {"x1", "segment"} <= set(v["drifted_columns"])
    others = [s for s in data.scenarios if s != shifted]
    assert all(res["scenarios"][s]["status"] == "no_drift" for s in others)
    on_disk = json.loads((tmp_path / "drift.json").read_text())
    assert on_disk["drifted_scenarios"] == [shifted] and on_disk["config"]["drift_share"] == 0.1


def test_thresholds_are_configurable(data, tmp_path):
    shifted = data.scenarios[1]
    strict = DriftConfig(html=False, drift_share=1.0, prediction_drift_alone=False)
    res = run_drift(data.spec, data.frame, _shifted(data, shifted), tmp_path, strict, scenarios=[shifted])
    assert res["drifted_scenarios"] == []  # 2 of many columns drifted: under a 100% share
    assert res["scenarios"][shifted]["drifted_share"] > 0
    loose = DriftConfig(html=False, drift_share=0.05)
    res = run_drift(data.spec, data.frame, _shifted(data, shifted), tmp_path, loose, scenarios=[shifted])
    assert res["drifted_scenarios"] == [shifted]


def test_too_few_rows_is_insufficient_data(data, tmp_path):
    res = run_drift(data.spec, data.frame, data.frame, tmp_path, DriftConfig(html=False, min_rows=10**6))
    assert res["drifted_scenarios"] == [] and sorted(res["insufficient_data"]) == sorted(data.scenarios)


def test_prediction_drift_with_the_serving_models(data, tmp_path):
    reg_root = tmp_path / "models"
    tables = build_synthetic(tmp_path / "tables", SyntheticConfig(n_scenarios=3, max_rows=400, min_rows=150, seed=3))
    tiny = build_tiny_registry(tables.root, reg_root)
    frame = tiny.data.frame
    cur = frame.copy()
    s = tiny.light_scenario
    m = cur[tiny.data.spec.scenario] == s
    cur.loc[m, "x1"] = cur.loc[m, "x1"] + 4.0
    scorer = registry_scorer(str(tiny.registry.store.root))
    res = run_drift(tiny.data.spec, frame, cur, tmp_path / "out", DriftConfig(html=True), scorer, scenarios=[s])
    v = res["scenarios"][s]
    assert "prediction" in v["columns"] and v["prediction_drift"] is True and v["status"] == "drift"
    assert (tmp_path / "out" / v["report"]).stat().st_size > 10_000  # the Evidently HTML report


def test_cli_drift_check(tmp_path, capsys):
    root = tmp_path / "cli"
    t = build_synthetic(root / "tables", SyntheticConfig(n_scenarios=2, max_rows=200, min_rows=100, seed=4))
    rc = main(["drift", "check", "--reference", str(t.root), "--current", str(t.root), "--out", str(root / "out"),
               "--set", "drift.html=false", "--fail-on-drift"])
    assert rc == 0
    out = json.loads((root / "out" / "drift.json").read_text())
    assert out["drifted_scenarios"] == [] and len(out["scenarios"]) == 2
    assert (root / "out" / "config.yaml").exists()
    rc = main(["drift", "check", "--reference", str(t.root), "--current", str(t.root), "--out", str(root / "o2"),
               "--set", "drift.drift_share=2"])
    assert rc == 2 and "drift_share" in capsys.readouterr().err
