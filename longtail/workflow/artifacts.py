"""What the KFP components share: config from the pipeline parameter, metrics and report artifacts.

Plain Python (no kfp import): a ``metrics`` argument is anything with ``log_metric(name, value)``
(KFP's ``Metrics`` artifact), a report is written to an artifact's ``path``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from longtail.workflow.config import PipelineConfig


def config(d: dict[str, Any]) -> PipelineConfig:
    """The stages' config from a pipeline parameter (a dict), with torch at one thread per process."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    return PipelineConfig.from_dict(d)


def log_metrics(metrics: Any, values: dict[str, Any], prefix: str = "") -> None:
    """Log the finite numbers of ``values`` (nested dicts flattened with ``_``) as KFP metrics."""
    for k, v in values.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            log_metrics(metrics, v, f"{name}_")
        elif isinstance(v, bool):
            metrics.log_metric(name, float(v))
        elif isinstance(v, int | float) and math.isfinite(float(v)):
            metrics.log_metric(name, float(v))


def result_metrics(metrics: Any, result: dict[str, Any]) -> None:
    """Metrics of one onboarded scenario: AUCs, FLOPs, latency, status."""
    if result.get("status") != "ok":
        metrics.log_metric("failed" if result.get("status") == "failed" else "skipped", 1.0)
        return
    log_metrics(metrics, {"auc": result["auc"], "flops": result["flops"], "latency_ms": result["latency_ms"],
                          "n_train": result["n_train"], "seconds": result["seconds"], "failed": 0})


def write_text(path: str, text: str) -> None:
    """Write an artifact's file (its folder may not exist yet)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)


def markdown_summary(title: str, values: dict[str, Any]) -> str:
    """A Markdown report of a stage's summary (one line per key)."""
    lines = [f"# {title}", ""]
    for k, v in values.items():
        lines.append(f"* **{k}**: {v}")
    return "\n".join(lines) + "\n"


def results_report(results: list[dict[str, Any]], title: str) -> tuple[str, str]:
    """Markdown and HTML tables of scenario results (AUCs, FLOPs, latency, architecture pictures)."""
    from longtail.workflow.report import render

    return render(results, title)
