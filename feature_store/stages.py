"""The pipelines' feature stages: the run's working feature repo, apply + materialize, and Feast's join.

The core stages (`longtail.workflow.stages`) never import feast; the components call these and
hand `historical_join` to `longtail.workflow.stages.prepare`.

Example:
    >>> materialize(cfg)                                       # feast apply + materialize-incremental
    >>> prepare(cfg, ["UA"], join=historical_join(cfg))        # training rows as of each event (Feast)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd

from feature_store.store import apply_repo, data_end, historical_frame, open_store, working_repo
from feature_store.store import materialize as feast_materialize
from longtail.io import atomic_write_json
from longtail.spec import DatasetSpec
from longtail.workflow.config import PipelineConfig
from longtail.workflow.errors import StageError

__all__ = ["feature_repo", "historical_join", "materialize"]


def feature_repo(cfg: PipelineConfig) -> Path:
    """The run's working copy of ``feature_repo/`` (made on first use, pointed at ``cfg.tables``)."""
    if not cfg.tables:
        raise StageError("pipeline.tables is empty: set it to the table-set folder or s3:// prefix")
    return working_repo(Path(cfg.workspace) / "feature_repo", cfg.tables, service_version=cfg.service_version)


def materialize(cfg: PipelineConfig, *, log=None) -> dict[str, Any]:
    """Apply the feature repo (``feast apply``) and materialize the newest values into the online store.

    Returns:
        The applied object names and the materialized window (also written to ``materialize.json``).
    """
    t0 = time.perf_counter()
    repo = feature_repo(cfg)
    store = open_store(repo, cfg.feature_variant)
    names = apply_repo(store, repo)
    if log:
        log(f"feast apply: {len(names)} objects in {repo}")
    window = feast_materialize(store, data_end(repo), initial_days=cfg.materialize_days)
    if log:
        log(f"materialized {window['views']} from {window['start']} to {window['end']}")
    out = {"objects": names, **window, "seconds": time.perf_counter() - t0}
    atomic_write_json(Path(cfg.workspace) / "materialize.json", out)
    return out


def historical_join(cfg: PipelineConfig):
    """``join(spec, events)`` for `longtail.workflow.stages.prepare`: Feast's ``get_historical_features``
    through the versioned feature service, on the run's working repo."""
    store = open_store(feature_repo(cfg), cfg.feature_variant)

    def join(spec: DatasetSpec, events: pd.DataFrame) -> pd.DataFrame:
        return historical_frame(store, spec, events, cfg.service_version)

    return join
