"""The references a user would pick over our models: LightGBM tuned by TPE and an MLP, on LightGBM's inputs."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from longtail.baselines import (
    LGBM_SPACE,
    TunedLightGBMResult,
    lightgbm_global_tuned,
    mlp_global,
)
from longtail.data.prepared import DataConfig, PreparedData, prepare
from longtail.data.splits import TEST

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def data(synthetic_tables):
    return prepare(DataConfig(tables=str(synthetic_tables.root)))


def _flip_test_labels(data: PreparedData) -> PreparedData:
    """The same data with every TEST label flipped: what a method chooses must not change."""
    frame = data.frame.copy()
    test = data.split == TEST
    assert test.any()
    label = frame.columns.get_loc(data.spec.label)
    frame.iloc[test, label] = 1 - frame.iloc[test, label]
    return dataclasses.replace(data, frame=frame)


def _aucs(result) -> np.ndarray:
    return result.per_scenario["auc"].to_numpy(dtype=float)


def test_mlp_global_learns_chooses_on_valid_and_is_deterministic(data):
    a = mlp_global(data, epochs=3, seed=0, threads=1, device="cpu")
    per = a.per_scenario
    assert set(per["scenario"]) == set(data.scenarios) and per["n"].sum() == len(data.rows(TEST))
    assert np.nanmean(_aucs(a)) > 0.6  # the planted signal
    assert [h["epoch"] for h in a.history] == [1, 2, 3] and 1 <= a.best_epoch <= 3
    kept = next(h for h in a.history if h["epoch"] == a.best_epoch)
    assert kept["valid_auc"] == max(h["valid_auc"] for h in a.history)
    assert a.history[-1]["lr"] < 1e-3 * 0.5  # the cosine schedule ran
    assert a.settings["categorical_inputs"] >= 1 and a.settings["numeric_inputs"] >= 1
    b = mlp_global(data, epochs=3, seed=0, threads=1, device="cpu")
    assert np.array_equal(_aucs(a), _aucs(b), equal_nan=True) and a.history == b.history
    json.dumps(a.to_dict())
    # TEST labels only score: flipped, the same epoch is kept and every AUC becomes 1 - AUC
    flipped = mlp_global(_flip_test_labels(data), epochs=3, seed=0, threads=1, device="cpu")
    assert flipped.best_epoch == a.best_epoch and flipped.history == a.history
    assert np.allclose(_aucs(flipped), 1 - _aucs(a), equal_nan=True)


def test_lightgbm_global_tuned_records_every_trial_and_keeps_the_best_on_valid(data):
    a = lightgbm_global_tuned(data, trials=5, seed=0, rounds=40, num_threads=1)
    assert len(a.trials) == 5 and [t["trial"] for t in a.trials] == list(range(5))
    values = [t["valid_auc"] for t in a.trials]
    assert all(v is not None for v in values)
    best = a.trials[int(np.argmax(values))]
    assert a.best_params == best["params"] and a.rounds == best["rounds"]
    names = {p["name"].removeprefix("lgbm.") for p in LGBM_SPACE["hyperparameters"]}
    assert set(a.best_params) == names
    per = a.per_scenario
    assert set(per["scenario"]) == set(data.scenarios) and per["n"].sum() == len(data.rows(TEST))
    assert np.nanmean(_aucs(a)) > 0.6
    b = lightgbm_global_tuned(data, trials=5, seed=0, rounds=40, num_threads=1)
    assert b.best_params == a.best_params and [t["params"] for t in b.trials] == [t["params"] for t in a.trials]
    assert np.array_equal(_aucs(a), _aucs(b), equal_nan=True)
    again = TunedLightGBMResult.from_dict(json.loads(json.dumps(a.to_dict())))
    assert again.best_params == a.best_params and len(again.trials) == 5
    flipped = lightgbm_global_tuned(_flip_test_labels(data), trials=5, seed=0, rounds=40, num_threads=1)
    assert flipped.best_params == a.best_params
    assert [t["valid_auc"] for t in flipped.trials] == values
    assert np.allclose(_aucs(flipped), 1 - _aucs(a), equal_nan=True)


@pytest.mark.unit
def test_tuned_settings_are_checked(data):
    with pytest.raises(ValueError, match="trials is 0"):
        lightgbm_global_tuned(data, trials=0)
    with pytest.raises(ValueError, match="lgbm.<parameter>"):
        lightgbm_global_tuned(data, trials=1, space={"hyperparameters": [
            {"name": "train.lr", "type": "logfloat", "low": 1e-4, "high": 1e-2}]})


@pytest.mark.unit
def test_embedding_width_grows_with_cardinality_up_to_16():
    from longtail.models.heavy import (
        default_embedding_dim as embedding_width,  # the MLP's rule is the heavy model's
    )

    assert embedding_width(2) == 2 and embedding_width(10) == 6 and embedding_width(10_000) == 16
    assert pd.Series([embedding_width(c) for c in range(1, 500)]).is_monotonic_increasing


def _bench_module(monkeypatch, tmp_path):
    import importlib.util
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "bench"
    monkeypatch.syspath_prepend(str(bench))
    spec = importlib.util.spec_from_file_location("bench_baselines", bench / "baselines.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_baselines", module)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "RESULTS", tmp_path)
    return module


def test_bench_runs_a_subset_of_methods_as_columns(synthetic_tables, monkeypatch, tmp_path):
    bench = _bench_module(monkeypatch, tmp_path)
    assert bench.METHOD_NAMES[:5] == ["global_heavy", "global_heavy_bert", "SinH", "lgbm_global", "lgbm_single"]
    assert {"mlp_global", "lgbm_global_tuned"} <= set(bench.METHOD_NAMES)
    with pytest.raises(SystemExit):
        bench.main(["--methods", "lgbm_global,xgboost"])
    assert bench.main(["--data", str(synthetic_tables.root), "--quick", "--methods", "lgbm_global_tuned,mlp_global",
                       "--tuned-trials", "2", "--mlp-epochs", "1", "--rounds", "20"]) == 0
    table = pd.read_csv(tmp_path / "baselines_quick.csv")
    assert list(table.columns) == ["scenario", "n_train", "n_test", "mlp_global", "lgbm_global_tuned"]
    md = (tmp_path / "baselines_quick.md").read_text()
    assert "2 TPE trials" in md and (tmp_path / "baselines_quick.png").exists()


def test_bench_keeps_earlier_columns_with_the_command_that_made_them(synthetic_tables, monkeypatch, tmp_path):
    bench = _bench_module(monkeypatch, tmp_path)
    common = ["--data", str(synthetic_tables.root), "--quick", "--rounds", "20", "--epochs", "1"]
    monkeypatch.setattr("sys.argv", ["baselines.py", *common, "--methods", "lgbm_global"])
    assert bench.main([*common, "--methods", "lgbm_global"]) == 0
    first = pd.read_csv(tmp_path / "baselines_quick.csv")
    monkeypatch.setattr("sys.argv", ["baselines.py", *common, "--methods", "theta0_toolbox", "--keep"])
    assert bench.main([*common, "--methods", "theta0_toolbox", "--keep"]) == 0
    table = pd.read_csv(tmp_path / "baselines_quick.csv")
    assert list(table.columns) == ["scenario", "n_train", "n_test", "lgbm_global", "theta0_toolbox"]
    assert table["lgbm_global"].equals(first["lgbm_global"])  # kept as it was, not rerun
    assert table["theta0_toolbox"].between(0, 1).all()
    md = (tmp_path / "baselines_quick.md").read_text()
    assert "Columns kept from earlier runs" in md and "--methods lgbm_global`: lgbm_global" in md
    # without --keep a subset run holds its own columns only
    assert bench.main([*common, "--methods", "lgbm_global"]) == 0
    assert list(pd.read_csv(tmp_path / "baselines_quick.csv").columns)[3:] == ["lgbm_global"]
