"""Per-scenario drift of features and predictions (Evidently 0.7), with a machine-readable verdict.

For every scenario, the current rows (recent events, point-in-time joined, or logged requests)
are compared with the reference rows (the training data) on

* the profile features (numeric and categorical, as they are),
* per behavior sequence: its length and, per numeric field, the mean and the last step (Evidently
  compares columns, not lists; these summaries are what moves when a sequence's behaviour changes),
* the serving model's predicted probability (``prediction``), when a model is given.

Evidently decides each column's drift with its default statistical test for the column's type and
size (or ``method``/``threshold`` when set); a scenario drifts when the share of drifted columns is
at least ``drift_share`` or, with ``prediction_drift_alone``, when the prediction column drifts. A
scenario with fewer than ``min_rows`` current or reference rows gets ``insufficient_data``, not a
verdict. The output folder gets ``<scenario>.html`` reports and ``drift.json`` (written last): the
verdict per scenario and ``drifted_scenarios``, the list the ``retrain`` pipeline rebuilds.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from longtail.io import atomic_path, atomic_write_json, safe_name
from longtail.spec import DatasetSpec, SpecError

PREDICTION = "prediction"


@dataclass(frozen=True)
class DriftConfig:
    """Args:
    drift_share: a scenario drifts when at least this share of its compared columns drifts.
    method: Evidently stat test for every column (e.g. ``psi``, ``ks``, ``wasserstein``; empty: Evidently's
        default per column type and size).
    threshold: the per-column test threshold (0: the method's default).
    prediction_drift_alone: a drifted prediction column alone makes the scenario drifted.
    min_rows: fewer current or reference rows than this: ``insufficient_data``.
    max_reference_rows: sample the reference down to this many rows per scenario (0: all).
    seed: the sampling seed.
    html: write an HTML report per scenario.
    """

    drift_share: float = 0.3
    method: str = ""
    threshold: float = 0.0
    prediction_drift_alone: bool = True
    min_rows: int = 30
    max_reference_rows: int = 5000
    seed: int = 0
    html: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.drift_share <= 1.0:
            raise SpecError(f"drift.drift_share: {self.drift_share} must be in (0, 1]")
        if self.threshold < 0 or self.min_rows < 1 or self.max_reference_rows < 0:
            raise SpecError("drift.threshold must be >= 0, drift.min_rows >= 1, drift.max_reference_rows >= 0")


@dataclass(frozen=True)
class ScenarioVerdict:
    """The drift verdict of one scenario."""

    scenario: str
    status: str  # "drift" | "no_drift" | "insufficient_data"
    drifted_share: float | None
    drifted_columns: tuple[str, ...]
    prediction_drift: bool | None
    reference_rows: int
    current_rows: int
    columns: dict[str, dict[str, Any]]
    report: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "status": self.status, "drifted_share": self.drifted_share,
                "drifted_columns": list(self.drifted_columns), "prediction_drift": self.prediction_drift,
                "reference_rows": self.reference_rows, "current_rows": self.current_rows,
                "columns": self.columns, "report": self.report}


def drift_features(spec: DatasetSpec, frame: pd.DataFrame) -> pd.DataFrame:
    """The columns drift is measured on (see the module docstring), one row per event.

    Args:
        spec: the dataset spec.
        frame: prepared rows (the spec's feature columns; sequence fields as lists).

    Returns:
        A flat dataframe: profile features, ``<seq>__len``, ``<seq>__<field>__mean`` / ``__last``.
    """
    out = pd.DataFrame(index=frame.index)
    for f in spec.profile_numeric:
        out[f.name] = pd.to_numeric(frame[f.name], errors="coerce").astype(float)
    for c in spec.profile_categorical:
        out[c.name] = frame[c.name].astype(str)
    for s in spec.sequences:
        first = frame[s.column(s.field_names[0])]
        out[f"{s.name}__len"] = first.map(len).astype(float)
        for f in s.numeric:
            col = frame[s.column(f.name)]
            out[f"{s.column(f.name)}__mean"] = col.map(lambda v: float(np.nanmean(v)) if len(v) else np.nan)
            out[f"{s.column(f.name)}__last"] = col.map(lambda v: float(v[-1]) if len(v) else np.nan)
        for c in s.categorical:
            out[f"{s.column(c.name)}__last"] = frame[s.column(c.name)].map(lambda v: str(v[-1]) if len(v) else "")
    return out


def _report(reference: pd.DataFrame, current: pd.DataFrame, numeric: list[str], categorical: list[str],
            cfg: DriftConfig):
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    kwargs: dict[str, Any] = {"drift_share": cfg.drift_share}
    if cfg.method:
        kwargs["method"] = cfg.method
    if cfg.threshold:
        kwargs["threshold"] = cfg.threshold
    report = Report([DataDriftPreset(**kwargs)], include_tests=True)
    return report.run(current_data=Dataset.from_pandas(current, data_definition=definition),
                      reference_data=Dataset.from_pandas(reference, data_definition=definition))


def _column_results(snapshot) -> dict[str, dict[str, Any]]:
    """``{column: {method, threshold, value, drift}}`` from the snapshot's ValueDrift metrics and tests."""
    res = json.loads(snapshot.json())
    failed = {t["name"]: t["status"] for t in res.get("tests", [])}
    cols: dict[str, dict[str, Any]] = {}
    for m in res["metrics"]:
        conf = m.get("config", {})
        if not str(m.get("metric_name", "")).startswith("ValueDrift"):
            continue
        col = conf.get("column")
        status = next((s for n, s in failed.items() if n.endswith(f"column {col}")), None)
        value = m.get("value")
        cols[col] = {"method": conf.get("method"), "threshold": conf.get("threshold"),
                     "value": None if value is None or (isinstance(value, float) and math.isnan(value)) else value,
                     "drift": status == "FAIL"}
    return cols


def check_scenario(scenario: str, reference: pd.DataFrame, current: pd.DataFrame, spec: DatasetSpec,
                   cfg: DriftConfig, out: Path | None = None) -> ScenarioVerdict:
    """The drift verdict of one scenario (reference and current: `drift_features` columns, plus
    ``prediction`` when scored).

    Args:
        scenario: the scenario.
        reference: reference rows (training data) of the scenario.
        current: current rows of the scenario.
        spec: the dataset spec.
        cfg: thresholds.
        out: folder for the HTML report (None: no report).

    Returns:
        The verdict.
    """
    n_ref, n_cur = len(reference), len(current)
    if n_ref < cfg.min_rows or n_cur < cfg.min_rows:
        return ScenarioVerdict(scenario, "insufficient_data", None, (), None, n_ref, n_cur, {}, None)
    if cfg.max_reference_rows and n_ref > cfg.max_reference_rows:
        reference = reference.sample(cfg.max_reference_rows, random_state=cfg.seed)
    categorical = [c for c in reference.columns if reference[c].dtype == object]
    numeric = [c for c in reference.columns if c not in categorical]
    # a column that is constant or empty on both sides carries no drift signal (and breaks some tests)
    usable = [c for c in reference.columns
              if pd.concat([reference[c], current[c]]).dropna().nunique() > 1]
    numeric = [c for c in numeric if c in usable]
    categorical = [c for c in categorical if c in usable]
    snapshot = _report(reference[numeric + categorical], current[numeric + categorical], numeric, categorical, cfg)
    columns = _column_results(snapshot)
    drifted = tuple(sorted(c for c, r in columns.items() if r["drift"]))
    share = len(drifted) / len(columns) if columns else 0.0
    pred = columns[PREDICTION]["drift"] if PREDICTION in columns else None
    is_drift = share >= cfg.drift_share or (cfg.prediction_drift_alone and bool(pred))
    report = None
    if out is not None and cfg.html:
        path = out / f"{safe_name(scenario)}.html"
        with atomic_path(path) as tmp:
            snapshot.save_html(str(tmp))
        report = path.name
    return ScenarioVerdict(scenario, "drift" if is_drift else "no_drift", round(share, 4), drifted, pred,
                           n_ref, n_cur, columns, report)


Scorer = Callable[[str, pd.DataFrame], np.ndarray | None]


def run_drift(spec: DatasetSpec, reference: pd.DataFrame, current: pd.DataFrame, out: str | Path,
              cfg: DriftConfig | None = None, scorer: Scorer | None = None,
              scenarios: list[str] | None = None, meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Drift of every scenario of ``current``; writes the reports and ``drift.json`` (last).

    Args:
        spec: the dataset spec of both frames.
        reference: prepared reference rows (the training data).
        current: prepared current rows.
        out: the output folder.
        cfg: thresholds.
        scorer: ``scorer(scenario, prepared rows) -> probabilities`` (the serving model), or None to
            compare features only (None from the scorer skips the scenario's prediction column).
        scenarios: restrict to these (default: every scenario in ``current``).
        meta: extra JSON recorded in ``drift.json`` (inputs, model versions).

    Returns:
        The ``drift.json`` contents: ``scenarios`` (verdicts), ``drifted_scenarios``, ``config``.
    """
    cfg = cfg or DriftConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    scen_col = spec.scenario
    names = scenarios or sorted(current[scen_col].astype(str).unique())
    verdicts = []
    for scenario in names:
        ref = reference[reference[scen_col].astype(str) == scenario]
        cur = current[current[scen_col].astype(str) == scenario]
        ref_x, cur_x = drift_features(spec, ref), drift_features(spec, cur)
        if scorer is not None and len(ref) and len(cur):
            p_ref, p_cur = scorer(scenario, ref), scorer(scenario, cur)
            if p_ref is not None and p_cur is not None:
                ref_x[PREDICTION], cur_x[PREDICTION] = np.asarray(p_ref, float), np.asarray(p_cur, float)
        verdicts.append(check_scenario(scenario, ref_x, cur_x, spec, cfg, out))
    result = {
        "dataset": spec.name,
        "drifted_scenarios": [v.scenario for v in verdicts if v.status == "drift"],
        "insufficient_data": [v.scenario for v in verdicts if v.status == "insufficient_data"],
        "scenarios": {v.scenario: v.to_dict() for v in verdicts},
        "config": dict(vars(cfg)),
        "meta": dict(meta or {}),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    atomic_write_json(out / "drift.json", result)
    return result
