"""The pipeline report: summary with intervals, plots, per-scenario sections, small test splits, LightGBM.

The HTML is opened in headless Chromium (Debian's package, ``scripts/install-chromium.sh``): the
test fails on a console error or an image that does not load.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from chromium import INSTALL, check_page, chromium_binary, install_chromium

from longtail.baselines import LightGBMResult, flatten, lightgbm_global
from longtail.data.prepared import DataConfig, prepare
from longtail.data.splits import TEST, TRAIN
from longtail.data.transforms import FittedTransforms
from longtail.workflow.report import (
    MIN_TEST_ROWS,
    bootstrap_mean,
    render,
    row_cells,
    scenario_table,
    strategy_summary,
    summary_metrics,
)


def _picture(path: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1))
    ax.plot([0, 1], [0, 1])
    fig.savefig(path, format="png")
    plt.close(fig)
    return str(path)


def _result(name: str, n_train: int, n_test: int, rng: np.random.Generator, pictures=()) -> dict:
    a = {k: float(rng.uniform(0.55, 0.85)) for k in ("theta0", "MeH", "Ours", "MeL", "SinH")}
    return {"scenario": name, "status": "ok", "n_train": n_train, "n_valid": n_train // 10, "n_test": n_test,
            "auc": a, "valid_auc": dict(a), "flops": {"heavy": 900_000, "Ours": int(rng.integers(100_000, 400_000)),
                                                       "MeL": 480_000, "budget": 480_000},
            "latency_ms": {"heavy": 1.2, "Ours": 0.8, "MeL": 1.0}, "pictures": list(pictures),
            "seconds": 30.0, "step_seconds": {"theta_u": 10.0, "ours": 15.0, "MeL": 3.0, "SinH": 2.0}}


@pytest.fixture
def report_inputs(tmp_path):
    rng = np.random.default_rng(0)
    pics = [_picture(tmp_path / "genotype_aircraft.png"), _picture(tmp_path / "genotype_weather.png")]
    results = [_result("UA", 4000, 1100, rng, pics), _result("B6", 3000, 800, rng, pics[:1]),
               _result("AS", 500, 140, rng), _result("OO", 20, 6, rng)]
    results.append({"scenario": "HA", "status": "failed", "error": "boom"})
    counts = {"UA": (1100, 250), "B6": (800, 190), "AS": (140, 3), "OO": (6, 1)}  # AS: 3 positives
    lgbm = LightGBMResult(pd.DataFrame({"scenario": ["UA", "B6", "AS", "OO"], "n": [1100, 800, 140, 6],
                                        "positives": [250, 190, 3, 1], "auc": [0.80, 0.78, 0.9, 1.0],
                                        "valid_auc": [0.79, 0.77, np.nan, np.nan]}), 120, 4.0)
    return results, counts, lgbm


@pytest.mark.unit
def test_small_test_splits_say_so_and_leave_the_means(report_inputs):
    results, counts, lgbm = report_inputs
    df = scenario_table(results, lgbm, counts)
    small = dict(zip(df["scenario"], df["small_test"], strict=True))
    assert small["OO"] and small["AS"] and not small["UA"]  # OO: 6 < 30 rows; AS: 3 positives < 5
    oo = df[df["scenario"] == "OO"].iloc[0]
    assert "(too small)" in row_cells(oo) and "1.0000" not in row_cells(oo)
    summary = strategy_summary(df).set_index("strategy")
    ok = df[df["scenario"].isin(["UA", "B6"])]
    assert summary.loc["Ours", "scenarios"] == 2
    assert summary.loc["Ours", "mean_auc"] == pytest.approx(ok["Ours"].mean())
    assert summary.loc["LightGBM", "mean_auc"] == pytest.approx(0.79)
    assert summary.loc["Ours", "low"] <= summary.loc["Ours", "mean_auc"] <= summary.loc["Ours", "high"]
    assert np.isnan(summary.loc["LightGBM", "flops"]) and summary.loc["MeH", "flops"] == 900_000
    metrics = summary_metrics(results, lgbm, counts)
    assert metrics["scenarios_counted"] == 2 and metrics["scenarios_small_test"] == 2
    assert metrics["mean_auc_LightGBM"] == pytest.approx(0.79) and "mean_auc_theta0_low" in metrics
    mean, low, high = bootstrap_mean(np.array([0.6, 0.7, 0.8]))
    assert low < mean < high and mean == pytest.approx(0.7)


@pytest.mark.unit
def test_report_has_summary_plots_sections_and_the_small_split_warning(report_inputs, tmp_path):
    results, counts, lgbm = report_inputs
    md, html = render(results, "flights", {"UA": {"promoted": True, "reason": "beats θ0 on VALID"}}, lightgbm=lgbm,
                      test_counts=counts, timings={"θ0": 120.0, "onboarding": 600.0}, image_dir=tmp_path / "img")
    assert md.index("## Summary") < md.index("## Plots") < md.index("## Per scenario")
    assert "LightGBM global" in md and "Ours − LightGBM" in md and "10.0 min" in md
    assert f"fewer than {MIN_TEST_ROWS} rows" in md and "OO (6 test rows, 1 positive)" in md
    for name in ("per_scenario_auc", "auc_vs_flops", "lightgbm_gap"):
        assert (tmp_path / "img" / f"{name}.png").stat().st_size > 1000
        assert f"alt='{name}'" in html
    assert html.count("<img") == 3 + 3  # three plots and the UA/B6 architecture pictures
    for scen in ("UA", "B6", "AS", "OO", "HA"):
        assert f"<h3 id='{scen}'>" in html
    assert "no AUC is shown for this scenario" in html and "failed: boom" in html
    assert "promoted (beats θ0 on VALID)" in html


@pytest.mark.serving
def test_report_renders_in_headless_chromium_without_errors(report_inputs, tmp_path):
    if chromium_binary() is None:
        reason = install_chromium()
        if reason:
            pytest.skip(f"chromium is not installed and {INSTALL} could not install it: {reason}")
    results, counts, lgbm = report_inputs
    _, html = render(results, "flights", lightgbm=lgbm, test_counts=counts)
    page = tmp_path / "report.html"
    page.write_text(html)
    seen = check_page(page)
    assert seen.title == "flights" and seen.images == 6
    assert seen.errors == [] and seen.broken_images == []
    # the check itself sees what it must fail on: a missing image and a console error
    bad = tmp_path / "bad.html"
    bad.write_text(html.replace("</body>", "<img alt='gone' src='nothere.png'/><script>console.error('x')</script>"
                                          "</body>"))
    seen = check_page(bad)
    assert seen.broken_images == ["gone"] and any("console: x" in e for e in seen.errors)


@pytest.mark.model
def test_lightgbm_global_is_chosen_on_valid_rows_and_scored_on_test(synthetic_tables):
    data = prepare(DataConfig(tables=str(synthetic_tables.root)))
    result = lightgbm_global(data, rounds=60, seed=0, num_threads=1)
    per = result.per_scenario
    assert set(per["scenario"]) == set(data.scenarios) and 1 <= result.rounds <= 60
    assert per["auc"].notna().any() and (per["auc"].dropna() > 0.5).mean() > 0.5  # the planted signal
    assert per["n"].sum() == len(data.rows(TEST))
    again = LightGBMResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert np.allclose(again.per_scenario["auc"].to_numpy(dtype=float), per["auc"].to_numpy(dtype=float),
                       equal_nan=True)
    tf = FittedTransforms.fit(data.spec, data.rows(TRAIN))
    features, cats = flatten(tf.transform(data.rows(TEST).iloc[:5]))
    assert features.shape[0] == 5 and cats and max(cats) < features.shape[1]
