"""Many scenarios at once, in worker processes of one machine (paper Eq. 3 and section IV.D).

Each job is `onboard` on one scenario against a θ0 store; two modes of feedback:

* ``async`` (the paper's asynchronous update): each job loads the θ0 version that is current
  when it starts and submits its feedback as soon as it finishes; a gradient that reaches the store
  after other updates is rebased by the staleness rule of `longtail.meta.update` (``η ·
  decay^staleness``; dropped, and recorded, past ``max_staleness``).
* ``sync`` (Eq. 3): every job computes against the same version; the caller's process sums the U
  gradients into one step (`Theta0Server.apply_batch`), producing one new version.

A job is plain data (the store's path, the scenario's rows, the recipe as a dict), so a local
process pool runs it here as a KFP pod per scenario would on a cluster (where the pipelines'
``ParallelFor`` fans out instead). With one worker the jobs run one after another in this process,
in the given order: the MeH protocol's arrival order.
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
from longtail.data.scenario_rows import ScenarioRows
from longtail.io import safe_name
from longtail.meta.server import Theta0Server
from longtail.onboarding.core import Onboarding, Theta0, onboard
from longtail.onboarding.recipe import Recipe
from longtail.spec import DatasetSpec

__all__ = ["OnboardJob", "onboard_many", "run_job"]


@dataclass
class OnboardJob:
    """Plain inputs of one worker: no model objects, only paths, rows and dicts.

    Attributes:
        store: the θ0 store folder.
        scenario: the scenario to onboard.
        spec: the dataset spec as a dict.
        frame: the prepared rows the job needs (the scenario's; every scenario's when the light
            step draws transfer sets); ``split`` their train/valid/test labels.
        recipe: the `Recipe` as a dict.
        version: compute against this θ0 version (None: the current one when the job starts).
        submit: submit the feedback to the store when done (async mode).
        light: run the light step (Ours).
        references: the references to train (``MeL``, ``SinH``).
        out: the job's output folder (``<out>/<scenario>``), or None.
        pretrained: the file of the pooled pre-trained light supernet Ours continues from
            (`longtail.nas.pretrain.pretrained_supernet`), when the recipe pre-trains.
    """

    store: str
    scenario: str
    spec: dict[str, Any]
    frame: pd.DataFrame
    split: list[str]
    recipe: dict[str, Any]
    version: int | None = None
    submit: bool = True
    light: bool = False
    references: tuple[str, ...] = ()
    out: str | None = None
    pretrained: str | None = None


def run_job(job: OnboardJob) -> Onboarding:
    """Run one job: load θ0 from the store, onboard the scenario, optionally submit the feedback.

    Returns:
        The `Onboarding`; ``specialised.record`` holds the store's ledger record when submitted, and
        ``seconds["job"]`` the job's wall time (load, onboarding, submit).
    """
    t0 = time.perf_counter()
    server = Theta0Server(job.store)
    recipe = config_from_dict(Recipe, job.recipe, "recipe")
    theta0 = Theta0.from_store(server, job.version)
    data = PreparedData(DatasetSpec.from_dict(job.spec), job.frame, np.asarray(job.split, dtype=object))
    rows = ScenarioRows.build(data, job.scenario, theta0.transforms, query_frac=recipe.meta.query_frac,
                              seed=recipe.meta.seed)
    pretrained = None
    if job.pretrained:
        from longtail.nas.pretrain import load_pretrained

        pretrained = load_pretrained(job.pretrained)
    done = onboard(theta0, rows, recipe, out=job.out, light=job.light, references=job.references,
                   pretrained=pretrained)
    if job.submit and done.specialised is not None:
        done.specialised.record = server.submit(done.specialised.to_update())
    done.seconds["job"] = time.perf_counter() - t0
    return done


def _init_worker(threads: int) -> None:
    if threads > 0:
        torch.set_num_threads(threads)


def onboard_many(store: Theta0Server | str | Path, data: PreparedData, scenarios: list[str], recipe: Recipe, *,
                 workers: int = 1, mode: Literal["async", "sync"] = "async", light: bool = False,
                 references: tuple[str, ...] = (), out: str | Path | None = None,
                 pretrained: str | Path | None = None) -> list[Onboarding]:
    """Onboard several scenarios (concurrently with ``workers`` > 1) and feed their feedback back to θ0.

    Args:
        store: the θ0 store (or its folder).
        data: prepared rows holding the scenarios' rows.
        scenarios: the scenarios, in arrival order.
        recipe: every setting of the onboarding (the update rule is the store's own).
        workers: worker processes (spawned); 0 or 1 runs the jobs one after another here.
        mode: ``async`` (each job submits when it finishes) or ``sync`` (one summed update of all U
            gradients against one version, Eq. 3).
        light: run the light step (Ours) of every scenario.
        references: references to train for every scenario.
        out: when set, scenario ``s`` writes its artifacts to ``<out>/<s>``.
        pretrained: the pooled pre-trained light supernet's file, when the recipe pre-trains.

    Returns:
        One `Onboarding` per scenario, in completion order, each with its ledger record.

    Raises:
        RuntimeError: a job failed (after the others finished; their feedback is kept).
    """
    if mode not in ("async", "sync"):
        raise ValueError(f"mode must be 'async' or 'sync', got {mode!r}")
    if len(set(scenarios)) != len(scenarios):
        raise ValueError("a scenario is listed twice; onboard it once per call")
    server = store if isinstance(store, Theta0Server) else Theta0Server(store)
    version = server.current_version if mode == "sync" else None
    recipe_dict = config_to_dict(recipe)
    needs_others = light and (recipe.light.transfer.rows > 0 or recipe.light.retrain.select_on == "distill")
    names = data.frame[data.spec.scenario].astype(str).to_numpy()
    jobs = []
    for s in scenarios:
        own = names == s
        if not own.any():
            raise ValueError(f"scenario {s!r} has no rows in the data")
        mask = np.ones(len(names), dtype=bool) if needs_others else own
        jobs.append(OnboardJob(str(server.root), s, data.spec.to_dict(), data.frame[mask].reset_index(drop=True),
                               [str(x) for x in data.split[mask]], recipe_dict, version, mode == "async", light,
                               tuple(references), str(Path(out) / safe_name(s)) if out is not None else None,
                               str(pretrained) if pretrained is not None else None))
    results: list[Onboarding] = []
    errors: list[tuple[str, BaseException]] = []
    if workers <= 1:
        results = [run_job(job) for job in jobs]
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                                 initargs=(recipe.meta.finetune.threads,)) as pool:
            futures: dict[Future, str] = {pool.submit(run_job, job): job.scenario for job in jobs}
            for fut in as_completed(futures):
                try:
                    results.append(fut.result())
                except Exception as e:  # noqa: BLE001 - reported together below
                    errors.append((futures[fut], e))
    if mode == "sync" and results:
        records = server.apply_batch([r.specialised.to_update() for r in results])
        for r, rec in zip(results, records, strict=True):
            r.specialised.record = rec
    if errors:
        names = ", ".join(s for s, _ in errors)
        raise RuntimeError(f"onboarding failed for {names}: {errors[0][1]!r}") from errors[0][1]
    return results
