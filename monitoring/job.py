"""The drift job: table sets in, per-scenario verdicts and reports out (what the CLI and KFP run).

The component the ``retrain`` pipeline uses wraps :func:`run_drift_job`; its ``drifted_scenarios``
output is the list of scenarios to rebuild.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from longtail.config import save_config
from longtail.data.tables import TableSet, point_in_time_join
from longtail.metrics import predict_proba
from longtail.spec import SpecError
from monitoring.check import DriftConfig, run_drift


@dataclass(frozen=True)
class DriftJobConfig:
    """Args:
    reference: table-set folder of the reference (the training data).
    current: table-set folder of the current rows (recent events, same spec).
    registry: the model registry whose serving models score both sides ('' : features only).
    fallback_pointer: the pointer of the cold-start model (scores scenarios without their own model).
    scenarios: restrict to these scenarios (empty: all in ``current``).
    drift: thresholds (see `DriftConfig`).
    """

    reference: str = ""
    current: str = ""
    registry: str = ""
    fallback_pointer: str = "_default"
    scenarios: tuple[str, ...] = ()
    drift: DriftConfig = field(default_factory=DriftConfig)


def registry_scorer(registry_uri: str, fallback_pointer: str = "_default"):
    """``scorer(scenario, rows)``: the scenario's serving model (or the fallback) scores prepared rows."""
    from longtail.registry import open_existing_registry

    reg = open_existing_registry(registry_uri)  # a typo is an error, not an empty registry that scores nothing
    cache: dict[tuple[str, int], Any] = {}
    versions: dict[str, str] = {}

    def scorer(scenario: str, rows: pd.DataFrame) -> np.ndarray | None:
        ref = reg.serving(scenario) or reg.serving(fallback_pointer)
        if ref is None:
            return None
        if ref not in cache:
            cache[ref] = reg.load(*ref)[:2]
        model, transforms = cache[ref]
        versions[scenario] = f"{ref[0]}:v{ref[1]}"
        return predict_proba(model, transforms.transform(rows, require_label=False))

    scorer.versions = versions  # type: ignore[attr-defined]
    return scorer


def run_drift_job(cfg: DriftJobConfig, out: str | Path) -> dict[str, Any]:
    """Join both table sets point in time, score them with the serving models, check drift per scenario.

    Args:
        cfg: the job config.
        out: the output folder (``config.yaml``, ``<scenario>.html``, ``drift.json`` last).

    Returns:
        The ``drift.json`` contents.

    Raises:
        SpecError: missing inputs or the two table sets have different specs.
    """
    if not cfg.reference or not cfg.current:
        raise SpecError("drift: set both reference (training table set) and current (recent table set)")
    ref_tables, cur_tables = TableSet.load(cfg.reference), TableSet.load(cfg.current)
    if ref_tables.spec.to_dict() != cur_tables.spec.to_dict():
        raise SpecError(f"drift: {cfg.current} has another spec than {cfg.reference}; compare like with like")
    scorer = registry_scorer(cfg.registry, cfg.fallback_pointer) if cfg.registry else None  # a bad path: before out
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    result = run_drift(ref_tables.spec, point_in_time_join(ref_tables), point_in_time_join(cur_tables), out,
                       cfg.drift, scorer, list(cfg.scenarios) or None,
                       meta={"reference": cfg.reference, "current": cfg.current, "registry": cfg.registry,
                             "models": dict(getattr(scorer, "versions", {}))})
    return result
