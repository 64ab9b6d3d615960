"""Many scenarios at once (paper Eq. 3 and section IV.D): worker processes onboard scenarios in parallel.

Two modes, the same worker code:

* ``async`` (the default, the paper's asynchronous update): each worker loads the θ0 version
  that is current when it starts, fine-tunes θu, and submits its feedback to the store as soon
  as it finishes. Workers finish at different times, so a gradient may reach the store after
  other updates: the store rebases it onto the current version by the staleness rule of
  `longtail.meta.update` (``η · decay^staleness``; dropped, and recorded, past ``max_staleness``).
* ``sync`` (Eq. 3): every worker computes against the same version; the parent sums the U
  gradients into one step (`Theta0Server.apply_batch`), producing one new version.

The unit of work is `onboard_job`, a function of plain data (the store's path, the scenario's
rows, config dicts): the local process pool runs it here, and a KFP pod per scenario can run
exactly the same call against a store on a shared volume.
"""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from longtail.config import config_from_dict, config_to_dict
from longtail.data.prepared import PreparedData
from longtail.meta.finetune import MetaConfig, OnboardResult, onboard_scenario, theta0_context
from longtail.meta.server import Theta0Server
from longtail.spec import DatasetSpec

__all__ = ["OnboardJob", "onboard_job", "onboard_many", "scenario_job"]


@dataclass
class OnboardJob:
    """Plain inputs of one worker: no model objects, only paths, rows and dicts.

    Attributes:
        store: the θ0 store folder.
        scenario: the scenario to onboard.
        spec: the dataset spec as a dict.
        frame: the scenario's prepared rows; ``split`` their train/valid/test labels.
        meta: `MetaConfig` as a dict.
        version: compute against this θ0 version (None: the current one when the job starts).
        submit: submit the feedback to the store when done (async mode).
    """

    store: str
    scenario: str
    spec: dict[str, Any]
    frame: pd.DataFrame
    split: list[str]
    meta: dict[str, Any]
    version: int | None = None
    submit: bool = True


def scenario_job(store: str | Path, data: PreparedData, scenario: str, meta_cfg: MetaConfig, *,
                 version: int | None = None, submit: bool = True) -> OnboardJob:
    """The job of one scenario: its rows only, so that a worker receives little."""
    mask = (data.frame[data.spec.scenario].astype(str) == scenario).to_numpy()
    if not mask.any():
        raise ValueError(f"scenario {scenario!r} has no rows in the data")
    return OnboardJob(str(store), scenario, data.spec.to_dict(), data.frame[mask].reset_index(drop=True),
                      [str(s) for s in data.split[mask]], config_to_dict(meta_cfg), version, submit)


def onboard_job(job: OnboardJob) -> OnboardResult:
    """Run one job: load θ0 from the store, onboard the scenario, optionally submit the feedback.

    Returns:
        The `OnboardResult`; ``record`` holds the store's ledger record when submitted, and
        ``metrics["wall_seconds"]`` the job's wall time (load, fine-tune, feedback, submit).
    """
    t0 = time.perf_counter()
    server = Theta0Server(job.store)
    transforms, model_cfg = theta0_context(server)
    meta_cfg = config_from_dict(MetaConfig, job.meta, "meta")
    data = PreparedData(DatasetSpec.from_dict(job.spec), job.frame, np.asarray(job.split, dtype=object))
    version, state = server.load(job.version)
    result = onboard_scenario(state, transforms, model_cfg, data, job.scenario, meta_cfg,
                              base_version=version)
    if job.submit:
        result.record = server.submit(result.to_update())
    result.metrics["wall_seconds"] = time.perf_counter() - t0
    return result


def _init_worker(threads: int) -> None:
    if threads > 0:
        torch.set_num_threads(threads)


def onboard_many(store: Theta0Server | str | Path, data: PreparedData, scenarios: list[str],
                 meta_cfg: MetaConfig, *, workers: int = 2,
                 mode: Literal["async", "sync"] = "async") -> list[OnboardResult]:
    """Onboard several scenarios concurrently and feed all their feedback back to θ0.

    Args:
        store: the θ0 store (or its folder).
        data: prepared rows holding the scenarios' rows.
        scenarios: the scenarios, in arrival order.
        meta_cfg: fine-tune and feedback settings (the update rule is the store's own).
        workers: worker processes (spawned); 0 or 1 runs the jobs one after another here.
        mode: ``async`` (each worker submits when it finishes) or ``sync`` (one summed update
            of all U gradients against one version, Eq. 3).

    Returns:
        One `OnboardResult` per scenario, in completion order, each with its ledger ``record``.

    Raises:
        RuntimeError: when a job failed (after the others finished; their feedback is kept).
    """
    if mode not in ("async", "sync"):
        raise ValueError(f"mode must be 'async' or 'sync', got {mode!r}")
    if len(set(scenarios)) != len(scenarios):
        raise ValueError("a scenario is listed twice; onboard it once per call")
    server = store if isinstance(store, Theta0Server) else Theta0Server(store)
    version = server.current_version if mode == "sync" else None
    jobs = [scenario_job(server.root, data, s, meta_cfg, version=version, submit=mode == "async")
            for s in scenarios]
    results: list[OnboardResult] = []
    errors: list[tuple[str, BaseException]] = []
    if workers <= 1:
        for job in jobs:
            results.append(onboard_job(job))
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                                 initargs=(meta_cfg.finetune.threads,)) as pool:
            futures: dict[Future, str] = {pool.submit(onboard_job, job): job.scenario for job in jobs}
            for fut in as_completed(futures):
                try:
                    results.append(fut.result())
                except Exception as e:  # noqa: BLE001 - reported together below
                    errors.append((futures[fut], e))
    if mode == "sync" and results:
        records = server.apply_batch([r.to_update() for r in results])
        for r, rec in zip(results, records, strict=True):
            r.record = rec
    if errors:
        names = ", ".join(s for s, _ in errors)
        raise RuntimeError(f"onboarding failed for {names}: {errors[0][1]!r}") from errors[0][1]
    return results
