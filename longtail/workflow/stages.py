"""Every stage of the pipelines as a plain function on a workspace folder and a `PipelineConfig`.

Workspace layout (``cfg.workspace``)::

    feature_repo/                 working copy of feature_repo/ (made by the features layer)
    prepared/<scenario>.parquet   a scenario's events joined point in time, with a ``_split`` column
    theta0_init/                  the initial θ0 model folder (resumable checkpoints)
    theta0/                       the θ0 store (versions, ledger of applied feedback)
    theta0_versions/v<N>/         θ0 version N as a model folder (published, served at the fallback pointer)
    scenarios/<scenario>/<tag>/   one onboarding: theta_u/, feedback.pt, ours/ (the light model folder
                                  with its genotype pictures), result.json (written last) or failed.json
    promotion/<scenario>.json     the scenario's latest promotion decision (champion/challenger)
    registry/                     the model registry (default)
    report/                       serving.json (what serves each scenario), report.md / report.html

Every stage is idempotent: a stage whose output exists for the same inputs returns it without
recomputing (``result.json``, the θ0 store, prepared files; each records the inputs it was made
from: the table set's content, the split, the recipe), an output made from other inputs is never
reused (a prepared scenario is prepared again, a scenario's result is set aside as
``<tag>.superseded-<key>`` and the scenario onboarded again, and a θ0 store of other inputs is
refused: it is the workspace's long-lived state), θ0 feedback is applied once per
update id by the store's ledger, and outputs are written atomically, so a crashed or partly
failed run is completed by running it again. A failing scenario is reported (``failed.json`` and
a ``failed`` result) without failing the others; rerunning redoes only the failed ones.

A scenario's onboarding is `longtail.onboarding.onboard`, the same function the CLI and the
benchmarks call; the stages add the workspace, the registry and promotion around it. Nothing here
imports feast: `prepare` takes the point-in-time join as an argument (the pipelines' component
passes Feast's, `feature_store.stages.historical_join`).

Example:
    >>> cfg = PipelineConfig(tables="data/flights", workspace="/tmp/ws")
    >>> prepare(cfg, ["UA", "OO"], join=point_in_time_join_of(cfg)); build_theta0(cfg, ["UA"])
    >>> r = onboard_one(cfg, "OO"); update_theta0(cfg, [r]); promote(cfg, [r]); write_report(cfg)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from longtail.data.prepared import PreparedData
from longtail.data.scenario_rows import ScenarioRows
from longtail.data.splits import TEST, VALID, assign_split
from longtail.io import atomic_path, atomic_write_json, atomic_write_text, safe_name
from longtail.model_folder import save_model_dir
from longtail.spec import DatasetSpec, SpecError
from longtail.train_job import evaluate_heavy, train_heavy
from longtail.workflow.config import REPORT_REFERENCES, PipelineConfig
from longtail.workflow.errors import StageError

SPLIT_COL = "_split"
ONBOARD_TAG = "onboard"
FAIL_ENV = "LONGTAIL_FAIL_SCENARIOS"  # drills: comma-separated scenarios whose onboarding raises on purpose

Join = Callable[[DatasetSpec, pd.DataFrame], pd.DataFrame]


def _ws(cfg: PipelineConfig) -> Path:
    return Path(cfg.workspace)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _log(log, msg: str) -> None:
    if log is not None:
        log(msg)


def _tables(cfg: PipelineConfig) -> str:
    if not cfg.tables:
        raise StageError("pipeline.tables is empty: set it to the table-set folder or s3:// prefix "
                         "(build one with `longtail data build`)")
    return cfg.tables


# ---------------------------------------------------------------------- data preparation
def _prepared_path(cfg: PipelineConfig, scenario: str) -> Path:
    return _ws(cfg) / "prepared" / f"{safe_name(scenario)}.parquet"


def _tables_content(cfg: PipelineConfig) -> Any:
    """The table set's content (`longtail.runs.tables_digest`: its spec and every table file), or its path
    when it is not a local folder."""
    from longtail.data.tables import MANIFEST, TableSet
    from longtail.runs import tables_digest

    root = Path(_tables(cfg))
    if not (root / MANIFEST).exists():
        return cfg.tables
    return tables_digest(TableSet.load(root, check=False))


def _prepare_key(cfg: PipelineConfig, scenario: str) -> str:
    """What a prepared scenario depends on: the table set's content (new data is prepared again, which
    is what a drift-triggered retrain needs), the cap and the split."""
    return _digest({"tables": _tables_content(cfg), "scenario": scenario, "service": cfg.service_version,
                    "cap": cfg.max_rows_per_scenario, "split": [cfg.split_seed, cfg.test_frac, cfg.valid_frac]})


def cap_events(events: pd.DataFrame, spec: DatasetSpec, max_rows: int, seed: int) -> pd.DataFrame:
    """At most ``max_rows`` events per scenario: a seeded sample, kept in time order (0 = all)."""
    if max_rows <= 0:
        return events
    parts = []
    for scen, part in events.groupby(spec.scenario, sort=True):
        if len(part) > max_rows:
            h = int(hashlib.sha256(f"cap/{scen}".encode()).hexdigest()[:8], 16)
            part = part.sample(n=max_rows, random_state=np.random.RandomState([seed, h]))
        parts.append(part)
    return pd.concat(parts).sort_values(spec.event_timestamp, kind="stable")


def prepare(cfg: PipelineConfig, scenarios: list[str] | None = None, *, join: Join,
            log=None) -> dict[str, Any]:
    """Training data per scenario: events joined point in time, validated and split.

    The labelled events of each scenario (capped at ``max_rows_per_scenario``) are joined by
    ``join`` (each event sees the snapshots as of its time), validated against the spec and split
    train/valid/test per scenario; each scenario is written to ``prepared/<scenario>.parquet``.
    Transforms are fitted later, on training rows only, by the stage that trains a model.

    Args:
        cfg: the pipeline config.
        scenarios: scenarios to prepare (default: every scenario of the events table).
        join: ``join(spec, events) -> frame``, the point-in-time join (the pipelines pass Feast's
            ``get_historical_features``; `point_in_time_join_of` is the embedded one).
        log: progress lines.

    Returns:
        ``{"scenarios": {name: rows}, "spec": dataset name, "seconds": ...}``.

    Raises:
        StageError: a requested scenario is not in the events.
    """
    from longtail.data.tables import TableSet, write_frame

    t0 = time.perf_counter()
    tables = TableSet.load(_tables(cfg))
    spec = tables.spec
    events = tables.read_events()
    known = sorted(events[spec.scenario].astype(str).unique())
    wanted = list(scenarios) if scenarios else known
    unknown = sorted(set(wanted) - set(known))
    if unknown:
        raise StageError(f"scenarios {unknown} are not in column '{spec.scenario}' of {cfg.tables}; known: {known}")
    todo = [s for s in wanted if not _prepared_ok(cfg, s)]
    if todo:
        ev = events[events[spec.scenario].astype(str).isin(todo)]
        ev = cap_events(ev, spec, cfg.max_rows_per_scenario, cfg.split_seed)
        _log(log, f"joining {len(ev):,} events of {len(todo)} scenario(s) point in time")
        frame = join(spec, ev)
        spec.validate(frame)
        for scen, part in frame.groupby(frame[spec.scenario].astype(str), sort=True):
            part = part.reset_index(drop=True)
            part[SPLIT_COL] = assign_split(part[spec.scenario], seed=cfg.split_seed, test_frac=cfg.test_frac,
                                           valid_frac=cfg.valid_frac)
            with atomic_path(_prepared_path(cfg, scen)) as tmp:
                write_frame(part, tmp)
            atomic_write_json(_prepared_path(cfg, scen).with_suffix(".json"),
                              {"key": _prepare_key(cfg, scen), "rows": len(part)})
    rows = {s: json.loads(_prepared_path(cfg, s).with_suffix(".json").read_text())["rows"] for s in wanted}
    spec.to_yaml(_ws(cfg) / "prepared" / "spec.yaml")
    return {"scenarios": rows, "prepared_now": todo, "dataset": spec.name, "seconds": time.perf_counter() - t0}


def point_in_time_join_of(cfg: PipelineConfig) -> Join:
    """The embedded point-in-time join of the config's table set (what Feast's join equals)."""
    from longtail.data.tables import TableSet, point_in_time_join

    tables = TableSet.load(_tables(cfg))
    return lambda spec, events: point_in_time_join(tables, events=events)


def _prepared_ok(cfg: PipelineConfig, scenario: str) -> bool:
    meta = _prepared_path(cfg, scenario).with_suffix(".json")
    return (meta.exists() and _prepared_path(cfg, scenario).exists()
            and json.loads(meta.read_text()).get("key") == _prepare_key(cfg, scenario))


def load_prepared(cfg: PipelineConfig, scenarios: list[str]) -> PreparedData:
    """The prepared rows of ``scenarios`` with their split (written by `prepare`).

    Raises:
        StageError: a scenario was not prepared.
    """
    from longtail.data.tables import read_table

    spec_path = _ws(cfg) / "prepared" / "spec.yaml"
    missing = [s for s in scenarios if not _prepared_path(cfg, s).exists()]
    if missing or not spec_path.exists():
        raise StageError(f"scenarios {missing or scenarios} are not prepared in {_ws(cfg)}; run the prepare stage "
                         "(`prepare(cfg, scenarios, join=...)`) first")
    spec = DatasetSpec.from_yaml(spec_path)
    frame = pd.concat([read_table(_prepared_path(cfg, s), arrow_lists=True) for s in scenarios], ignore_index=True)
    split = frame.pop(SPLIT_COL).to_numpy(dtype=object)
    return PreparedData(spec, frame, split)


# ---------------------------------------------------------------------- θ0
def _registry(cfg: PipelineConfig):
    from longtail.registry import open_registry

    return open_registry(cfg.registry_uri)


def build_theta0(cfg: PipelineConfig, scenarios: list[str], *, log=None) -> dict[str, Any]:
    """The agnostic heavy model θ0 on the initial scenarios, as version 0 of the θ0 store.

    ``cfg.theta0 == "predefined"`` trains the recipe's heavy model (`train_heavy`; transforms
    fitted on the initial scenarios' training rows only and saved with it); ``"choose"`` calls
    ``longtail.agnostic.choose_theta0`` (HPO-tuned pre-defined vs NAS heavy, the better on VALID
    rows kept). θ0 is published and promoted at the fallback pointer, so that every scenario is
    answered from the start. An existing store is returned as it is (idempotent).

    Returns:
        ``{"version", "scenarios", "per_scenario": [...], "registry": {name, version}}``.
    """
    from longtail.meta.finetune import create_theta0_store
    from longtail.meta.server import Theta0Server

    root = _ws(cfg) / "theta0"
    summary_path = _theta0_summary_path(cfg)
    if not scenarios:
        raise StageError("build_theta0: no initial scenarios; pass at least one")
    inputs = _theta0_inputs(cfg, list(scenarios))
    if (root / "ledger.json").exists() and summary_path.exists():
        summary = json.loads(summary_path.read_text())
        _check_theta0_inputs(cfg, summary, inputs)
        _log(log, f"θ0 store exists in {root} (version {Theta0Server(root).current_version}); kept")
        return summary
    data = load_prepared(cfg, list(scenarios))
    t0 = time.perf_counter()
    recipe = cfg.recipe
    if cfg.theta0 == "choose":
        model, transforms, model_cfg, how = _choose_theta0(cfg, data, list(scenarios), log)
    else:
        tr = train_heavy(data, list(scenarios), recipe.model, recipe.train, _ws(cfg) / "theta0_init",
                         description="θ0", log=log)
        model, transforms, model_cfg, how = tr.model, tr.transforms, recipe.model, "predefined"
    per = evaluate_heavy(model, transforms, data, list(scenarios))
    if root.exists() and not (root / "ledger.json").exists():
        shutil.rmtree(root)  # a store whose creation crashed before its ledger
    if not (root / "ledger.json").exists():
        create_theta0_store(root, model, transforms, model_cfg, recipe.meta.update, list(scenarios))
    save_model_dir(_ws(cfg) / "theta0_init", model, transforms, model_cfg,
                   {"scenarios": list(scenarios), "theta0": how})
    ref = publish_theta0(cfg, 0, dataset=data.spec.name, how=how, log=log)
    summary = {"version": 0, "scenarios": list(scenarios), "theta0": how, "seconds": time.perf_counter() - t0,
               "per_scenario": per.replace({np.nan: None}).to_dict("records"),
               "registry": {"name": ref[0], "version": ref[1]}, "inputs": inputs}
    atomic_write_json(summary_path, summary)
    if recipe.light.pretrain.epochs > 0:  # once here, so that parallel onboardings find it cached
        light_pretrained(cfg, log=log)
    return summary


def _theta0_inputs(cfg: PipelineConfig, scenarios: list[str]) -> dict[str, Any]:
    """What the workspace's θ0 is made from: the initial scenarios and their data, the split, θ0's recipe."""
    from longtail.config import config_to_dict

    recipe = cfg.recipe
    return {"scenarios": sorted(scenarios), "tables": _tables_content(cfg),
            "split": {"split_seed": cfg.split_seed, "test_frac": cfg.test_frac, "valid_frac": cfg.valid_frac},
            "max_rows_per_scenario": cfg.max_rows_per_scenario, "theta0": cfg.theta0,
            "theta0_choice": config_to_dict(cfg.theta0_choice) if cfg.theta0 == "choose" else None,
            "recipe": {"model": config_to_dict(recipe.model), "train": config_to_dict(recipe.train),
                       "meta.update": config_to_dict(recipe.meta.update)}}


def _check_theta0_inputs(cfg: PipelineConfig, summary: dict[str, Any], inputs: dict[str, Any]) -> None:
    """Refuse to keep a θ0 built from other inputs: the workspace's θ0 is its long-lived state."""
    from longtail.runs import dict_differences

    old = summary.get("inputs")
    if old is None:
        return  # a workspace from before θ0 recorded its inputs
    diffs = dict_differences(json.loads(json.dumps(old)), json.loads(json.dumps(inputs)))
    if diffs:
        shown = "; ".join(d if len(d) < 160 else d[:157] + "..." for d in diffs[:6])
        raise StageError(f"{_ws(cfg)}: its θ0 was built from other inputs than this run's ({shown}"
                         f"{'; ...' if len(diffs) > 6 else ''}); a workspace's θ0 is never reused for other data or "
                         "settings, and never rebuilt over the one its scenarios were onboarded from: use another "
                         "workspace (pipeline.workspace), or remove this one to start afresh")


def publish_theta0(cfg: PipelineConfig, version: int, *, dataset: str, how: str = "", log=None) -> tuple[str, int]:
    """Publish θ0 store version ``version`` and serve it at the fallback pointer (cold start).

    The version is written as a model folder (``theta0_versions/v<N>``) and published once
    (``<dataset>.theta0``, kind ``agnostic``, the store version in its lineage); a rerun finds it.

    Returns:
        The registry ``(name, version)``.
    """
    from longtail.meta.server import Theta0Server
    from longtail.onboarding import Theta0
    from longtail.registry import lineage

    reg = _registry(cfg)
    name = f"{safe_name(dataset)}.theta0"
    for v in reversed(reg.list_versions(name)):
        mv = reg.get(name, v)
        if mv.lineage.get("theta0_store") == str(_ws(cfg) / "theta0") and mv.lineage.get("theta0_store_version") == version:
            ref = mv.ref
            break
    else:
        theta0 = Theta0.from_store(Theta0Server(_ws(cfg) / "theta0"), version)
        folder = _ws(cfg) / "theta0_versions" / f"v{version}"
        save_model_dir(folder, theta0.build(), theta0.transforms, theta0.config,
                       {"theta0_store_version": version, "theta0": how})
        ref = reg.publish(name, folder, kind="agnostic", metrics={"theta0_store_version": version},
                          lineage=lineage(data_split={"tables": cfg.tables, "seed": cfg.split_seed},
                                          theta0_store=str(_ws(cfg) / "theta0"), theta0_store_version=version,
                                          how=how)).ref
    if reg.serving(cfg.fallback_pointer) != ref:
        reg.promote(cfg.fallback_pointer, *ref, note=f"θ0 store version {version}")
        _log(log, f"θ0 v{version} serves at the fallback pointer {cfg.fallback_pointer!r} ({ref[0]} v{ref[1]})")
    return ref


def _theta0_summary_path(cfg: PipelineConfig) -> Path:
    return _ws(cfg) / "theta0_init" / "summary.json"


def _initial_scenarios(cfg: PipelineConfig) -> list[str]:
    summary_path = _theta0_summary_path(cfg)
    if not summary_path.exists():
        raise StageError(f"{summary_path}: no θ0 summary; run the bootstrap pipeline (build_theta0) first")
    return list(json.loads(summary_path.read_text())["scenarios"])


def light_pretrained(cfg: PipelineConfig, *, log=None):
    """The light supernet pre-trained on the initial scenarios' pooled rows with θ0 as teacher.

    ``longtail.nas.pretrain.pretrained_supernet`` with the initial θ0 (``theta0_init``) on the
    prepared rows of the scenarios it was trained on, cached in ``<workspace>/light_pretrain/``
    under a key of the light settings, θ0's weights and the rows (computed once; a changed
    ``recipe.light`` gets its own entry).
    """
    from longtail.nas.pretrain import pretrained_supernet

    data = load_prepared(cfg, _initial_scenarios(cfg))
    state, _ = pretrained_supernet(_ws(cfg) / "theta0_init", data, cfg.recipe.light, _ws(cfg) / "light_pretrain",
                                   log=(lambda m: _log(log, f"light: {m}")) if log else None)
    return state


def _choose_theta0(cfg: PipelineConfig, data: PreparedData, scenarios: list[str], log):
    """θ0 by ``longtail.agnostic.choose_theta0``: HPO-tuned pre-defined heavy ∥ NAS heavy, the better kept."""
    from longtail.agnostic import AgnosticJobConfig, choose_theta0
    from longtail.data.prepared import DataConfig
    from longtail.model_folder import load_model_dir
    from longtail.models.heavy import HeavyConfig

    ch = cfg.theta0_choice
    job = AgnosticJobConfig(data=DataConfig(tables=cfg.tables, split_seed=cfg.split_seed, test_frac=cfg.test_frac,
                                            valid_frac=cfg.valid_frac, scenarios=tuple(scenarios)),
                            n_initial=0, candidates=ch.candidates, model=cfg.recipe.model, train=cfg.recipe.train,
                            hpo=ch.hpo, nas=ch.nas, out=str(_ws(cfg) / "theta0_choose"))
    choice = choose_theta0(job, data=data, log=log)
    model, transforms, info = load_model_dir(choice.model_dir)
    return model, transforms, HeavyConfig.from_dict(info["config"]), f"choose:{choice.chosen}"


def theta0_version(cfg: PipelineConfig) -> int:
    """The current version of the workspace's θ0 store."""
    from longtail.meta.server import Theta0Server

    root = _ws(cfg) / "theta0"
    if not (root / "ledger.json").exists():
        raise StageError(f"{root}: no θ0 store; run the bootstrap pipeline (build_theta0) first")
    return Theta0Server(root).current_version


# ---------------------------------------------------------------------- onboarding one scenario
def scenario_dir(cfg: PipelineConfig, scenario: str, tag: str = ONBOARD_TAG) -> Path:
    return _ws(cfg) / "scenarios" / safe_name(scenario) / tag


def onboard_one(cfg: PipelineConfig, scenario: str, *, tag: str = ONBOARD_TAG, log=None) -> dict[str, Any]:
    """Onboard one scenario (`longtail.onboarding.onboard`) against the current θ0 and publish its models.

    Never raises for a failure of the scenario's own work: it is written to ``failed.json`` and
    returned as ``{"status": "failed", "error": ...}`` so that the other scenarios' results stand;
    a later run with the same ``tag`` redoes only scenarios without a ``result.json``.

    Args:
        cfg: the pipeline config.
        scenario: the scenario (prepared by `prepare`).
        tag: names this onboarding (``onboard`` for bootstrap/onboard, ``retrain-<digest>`` for a
            drift-triggered rebuild); an existing result under the same tag is returned as it is.

    Returns:
        The scenario's result: `Onboarding.summary` (TEST AUC per strategy for the report, VALID AUC,
        FLOPs, latency) with its registry references and status.
    """
    out = scenario_dir(cfg, scenario, tag)
    done = out / "result.json"
    inputs = _onboard_inputs(cfg, scenario)
    if done.exists():
        result = json.loads(done.read_text())
        if result.get("inputs", inputs) == inputs:  # a result from before results recorded their inputs is kept
            _log(log, f"{scenario}: already onboarded ({done}); kept")
            return result
        # made from other data or settings: never reused; set aside (its registry versions stay) and redone
        aside = out.with_name(f"{out.name}{SUPERSEDED}{result['inputs']}")
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(out, aside)
        _log(log, f"{scenario}: the result in {out} was made from other data or settings; onboarding again "
                  f"(the old one is in {aside})")
    try:
        result = _onboard(cfg, scenario, out, tag, log)
    except Exception as e:  # noqa: BLE001 - reported per scenario, never fails the others
        failure = {"scenario": scenario, "status": "failed", "tag": tag, "error": f"{type(e).__name__}: {e}",
                   "traceback": traceback.format_exc()}
        atomic_write_json(out / "failed.json", failure)
        _log(log, f"{scenario}: FAILED ({failure['error']}); see {out / 'failed.json'}")
        return {k: v for k, v in failure.items() if k != "traceback"}
    (out / "failed.json").unlink(missing_ok=True)
    result["inputs"] = inputs
    atomic_write_json(done, result)
    return result


SUPERSEDED = ".superseded-"  # a scenario's result made from other inputs, set aside under <tag>.superseded-<key>


def _onboard_inputs(cfg: PipelineConfig, scenario: str) -> str:
    """What one onboarding is made from: the scenario's prepared rows, the recipe, the references and
    the θ0 store (its creation; not its version, which the other scenarios' feedback moves on)."""
    from longtail.config import config_to_dict

    ledger = _ws(cfg) / "theta0" / "ledger.json"
    store = json.loads(ledger.read_text())["versions"][0].get("time") if ledger.exists() else None
    return _digest({"prepared": _prepare_key(cfg, scenario), "recipe": config_to_dict(cfg.recipe),
                    "references": list(cfg.references), "theta0_store": store})


def _onboard(cfg: PipelineConfig, scenario: str, out: Path, tag: str, log) -> dict[str, Any]:
    from longtail.meta.server import Theta0Server
    from longtail.onboarding import Theta0, onboard
    from longtail.onboarding.promotion import publish_onboarding

    t0 = time.perf_counter()
    if scenario in [s.strip() for s in os.environ.get(FAIL_ENV, "").split(",")]:
        raise RuntimeError(f"failure injected for scenario {scenario!r} ({FAIL_ENV})")
    recipe = cfg.recipe
    theta0 = Theta0.from_store(Theta0Server(_ws(cfg) / "theta0"))
    light = recipe.light
    # transfer sets (and distillation-scored selection) draw from the initial scenarios' rows
    needs_others = light.transfer.rows > 0 or light.mel.transfer_rows > 0 or light.retrain.select_on == "distill"
    others = [s for s in _initial_scenarios(cfg) if s != scenario] if needs_others else []
    data = load_prepared(cfg, [scenario, *others])
    rows = ScenarioRows.build(data, scenario, theta0.transforms, query_frac=recipe.meta.query_frac,
                              seed=recipe.meta.seed)
    pretrained = light_pretrained(cfg, log=log) if light.pretrain.epochs > 0 else None
    if out.exists():  # artifacts of a crashed attempt: this attempt writes them anew
        shutil.rmtree(out)
    references = [r for r in cfg.references if r not in REPORT_REFERENCES]  # LightGBM: at the report
    onboarding = onboard(theta0, rows, recipe, out=out, references=references, pretrained=pretrained, log=log)
    refs = publish_onboarding(_registry(cfg), onboarding, dataset=data.spec.name,
                              data_split={"tables": cfg.tables, "seed": cfg.split_seed}, extra_lineage={"tag": tag})
    pictures = sorted(str(p) for p in (out / "ours").glob("genotype_*.png"))
    return {**onboarding.summary(), "status": "ok", "tag": tag, "pictures": pictures,
            "registry": {k: [v[0], v[1]] for k, v in refs.items()}, "seconds": time.perf_counter() - t0,
            "step_seconds": onboarding.seconds}


def as_results(results: list[Any]) -> list[dict[str, Any]]:
    """Results given as dicts or JSON strings (what KFP's ``dsl.Collected`` hands over) → dicts."""
    return [json.loads(r) if isinstance(r, str) else dict(r) for r in results]


# ---------------------------------------------------------------------- θ0 update from feedback
def update_theta0(cfg: PipelineConfig, results: list[Any], *, log=None) -> dict[str, Any]:
    """Apply the collected query feedback of the onboarded scenarios to θ0 as one step (Eq. 3).

    Only scenarios with ``status == "ok"`` contribute. Each feedback has a stable id, so applying
    the same results again changes nothing (the ledger records replays). The new θ0 version is
    published and promoted at the fallback pointer.

    Returns:
        ``{"version_before", "version", "applied": [...], "dropped": [...], "duplicates": [...],
        "registry": [name, version]}``.
    """
    import torch

    from longtail.meta.server import Theta0Server
    from longtail.meta.update import MetaUpdate

    server = Theta0Server(_ws(cfg) / "theta0")
    before = server.current_version
    updates = []
    for r in as_results(results):
        if r.get("status") != "ok":
            continue
        folder = scenario_dir(cfg, r["scenario"], r.get("tag", ONBOARD_TAG))
        fb = json.loads((folder / "feedback.json").read_text())
        grads = torch.load(folder / "feedback.pt", map_location="cpu", weights_only=True)
        updates.append(MetaUpdate(fb["update_id"], fb["scenario"], int(fb["base_version"]), grads, fb["info"]))
    records = server.apply_batch(updates) if updates else []
    out = {"version_before": before, "version": server.current_version,
           "applied": [r["id"] for r in records if r["status"] == "applied"],
           "dropped": [{"id": r["id"], "reason": r.get("reason")} for r in records if r["status"] == "dropped"],
           "duplicates": [r["id"] for r in records if r["status"] == "duplicate"]}
    _log(log, f"θ0 v{before} -> v{out['version']}: {len(out['applied'])} applied, {len(out['dropped'])} dropped, "
              f"{len(out['duplicates'])} already applied")
    spec = DatasetSpec.from_yaml(_ws(cfg) / "prepared" / "spec.yaml")
    out["registry"] = list(publish_theta0(cfg, out["version"], dataset=spec.name, log=log))
    return out


# ---------------------------------------------------------------------- drift gate, promotion, report
def drift_gate(cfg: PipelineConfig, verdict: str | dict[str, Any], scenarios: list[str] | None = None) -> list[str]:
    """The scenarios to rebuild: those a drift verdict marks ``drifted``.

    Args:
        cfg: the pipeline config.
        verdict: a drift verdict, or the path of its JSON file: the ``drift.json`` that ``longtail
            drift check`` writes (its ``drifted_scenarios``), or ``{"<scenario>": {"drifted": bool, ...}, ...}``.
        scenarios: restrict to these (default: every scenario in the verdict).

    Returns:
        The drifted scenarios, sorted.

    Raises:
        StageError: the verdict is not of that shape (names the scenario and the field).
    """
    if isinstance(verdict, str):
        path = Path(verdict)
        if not path.exists():
            raise StageError(f"drift verdict {path}: no such file; write {{\"<scenario>\": {{\"drifted\": true}}}}")
        verdict = json.loads(path.read_text())
    if not isinstance(verdict, dict):
        raise StageError("drift verdict: expected a mapping scenario -> {\"drifted\": bool}")
    if "drifted_scenarios" in verdict:  # drift.json of `longtail drift check`
        return sorted(str(s) for s in verdict["drifted_scenarios"] if not scenarios or s in scenarios)
    drifted = []
    for scen, v in verdict.items():
        if not isinstance(v, dict) or not isinstance(v.get("drifted"), bool):
            raise StageError(f"drift verdict: scenario {scen!r} needs a boolean field 'drifted', got {v!r}")
        if v["drifted"] and (not scenarios or scen in scenarios):
            drifted.append(str(scen))
    return sorted(drifted)


def retrain_tag(verdict: str | dict[str, Any]) -> str:
    """The onboarding tag of a drift-triggered rebuild: the same verdict gives the same tag (idempotent)."""
    if isinstance(verdict, str) and Path(verdict).exists():
        verdict = json.loads(Path(verdict).read_text())
    return f"retrain-{_digest(verdict)}"


def retrain_one(cfg: PipelineConfig, scenario: str, verdict: str | dict[str, Any], *, log=None) -> dict[str, Any]:
    """Rebuild one scenario if the drift verdict marks it drifted (`onboard_one` under `retrain_tag`).

    Returns:
        The onboarding result, or ``{"status": "skipped", ...}`` for a scenario that did not drift.
    """
    if scenario not in drift_gate(cfg, verdict, [scenario]):
        _log(log, f"{scenario}: not drifted; kept")
        return {"scenario": scenario, "status": "skipped", "reason": "not drifted"}
    return onboard_one(cfg, scenario, tag=retrain_tag(verdict), log=log)


def collect_results(cfg: PipelineConfig, tag: str | None = None) -> list[dict[str, Any]]:
    """Every scenario's newest result in the workspace (``result.json``, else ``failed.json``)."""
    out = []
    for scen_dir in sorted((_ws(cfg) / "scenarios").glob("*")):
        tags = [tag] if tag else sorted((p.name for p in scen_dir.iterdir() if p.is_dir() and SUPERSEDED not in p.name),
                                        key=lambda t: (scen_dir / t).stat().st_mtime)
        for t in reversed(tags):
            for name in ("result.json", "failed.json"):
                if (scen_dir / t / name).exists():
                    r = json.loads((scen_dir / t / name).read_text())
                    r.pop("traceback", None)
                    out.append(r)
                    break
            else:
                continue
            break
    return out


def promote(cfg: PipelineConfig, results: list[Any], *, log=None) -> dict[str, Any]:
    """Serve each scenario's new light model if it beats the serving one on the scenario's VALID rows.

    Champion/challenger (`longtail.onboarding.promotion.promote_if_better`): the challenger and
    the model serving the scenario now (for a new scenario: θ0 at the fallback pointer) are scored
    with their own transforms on the same VALID rows; the pointer moves (compare-and-swap) only when
    the challenger is better by more than ``promotion.min_gain``. TEST rows are never read. The
    latest decision of each scenario is written to ``promotion/<scenario>.json``.

    Returns:
        ``{"promoted": {scenario: [name, version]}, "held": {scenario: reason}, "decisions": [...]}``.
    """
    from longtail.onboarding.promotion import promote_if_better

    reg = _registry(cfg)
    floor = reg.serving(cfg.fallback_pointer)
    promoted, held, decisions = {}, {}, []
    for r in as_results(results):
        scen = r["scenario"]
        if r.get("status") == "skipped":
            continue
        if r.get("status") != "ok":
            held[scen] = f"onboarding failed: {r.get('error')}"
            continue
        if "light" not in r.get("registry", {}):
            held[scen] = "no light model was built"
            continue
        data = load_prepared(cfg, [scen])
        valid = data.rows(VALID, [scen])
        d = promote_if_better(reg, scen, tuple(r["registry"]["light"]), valid, label=data.spec.label, floor=floor,
                              min_gain=cfg.promotion.min_gain, note=f"pipeline {r.get('tag')}")
        decisions.append({**d.to_dict(), "tag": r.get("tag", ONBOARD_TAG)})
        if d.promoted:
            promoted[scen] = [d.challenger[0], d.challenger[1]]
        else:
            held[scen] = d.reason
    for d in decisions:  # each scenario's latest decision, whatever run made it
        atomic_write_json(_ws(cfg) / "promotion" / f"{safe_name(d['scenario'])}.json", d)
    _log(log, f"promoted {len(promoted)} scenario(s); held {sorted(held)}")
    return {"promoted": promoted, "held": held, "decisions": decisions}


def write_report(cfg: PipelineConfig, *, log=None) -> dict[str, Any]:
    """What serves each scenario, and the per-scenario report of the workspace.

    Writes ``report/serving.json`` (per scenario the serving model, the published light and heavy
    versions, the θ0 version and fallback, the feature service and repo a service reads) and
    ``report/report.md`` / ``report/report.html`` (`longtail.workflow.report`: the summary with
    bootstrap intervals, FLOPs, latency and time per stage, the plots, per-scenario sections with the
    promotion decisions and architecture pictures; with ``LightGBM`` among the references, the
    LightGBM global reference on the same prepared rows, cached in ``report/lightgbm.json``).

    Returns:
        ``{"serving": path, "report_html": path, "report_md": path, "scenarios": n, "failed": [...],
        "summary": {metric: value}}``.
    """
    from longtail.workflow.report import render, summary_metrics

    results = collect_results(cfg)
    spec = DatasetSpec.from_yaml(_ws(cfg) / "prepared" / "spec.yaml")
    ok = [r for r in results if r.get("status") == "ok"]
    reg = _registry(cfg)
    fallback = reg.serving(cfg.fallback_pointer)
    serving = {"dataset": spec.name, "feature_service": f"{spec.name}_v{cfg.service_version}",
               "feature_repo": str(_ws(cfg) / "feature_repo"), "feature_variant": cfg.feature_variant,
               "registry": cfg.registry_uri, "theta0_version": theta0_version(cfg),
               "fallback": {"pointer": cfg.fallback_pointer, "model": list(fallback) if fallback else None},
               "scenarios": {r["scenario"]: {"serving": list(reg.serving(r["scenario"]) or []) or None,
                                             "light": r["registry"].get("light"), "heavy": r["registry"].get("heavy"),
                                             "flops": r["flops"].get("Ours"), "valid_auc": r["valid_auc"].get("Ours")}
                             for r in ok}}
    folder = _ws(cfg) / "report"
    atomic_write_json(folder / "serving.json", serving)
    decisions = {}
    for path in sorted((_ws(cfg) / "promotion").glob("*.json")):
        d = json.loads(path.read_text())
        decisions[d["scenario"]] = d
    scenarios = [r["scenario"] for r in ok]
    data = load_prepared(cfg, scenarios) if scenarios else None
    test_counts = {}
    if data is not None:
        for s in scenarios:
            y = data.rows(TEST, [s])[spec.label].to_numpy()
            test_counts[s] = (len(y), int(y.sum()))
    lightgbm = _lightgbm_reference(cfg, data, scenarios, log) if "LightGBM" in cfg.references and data else None
    timings = _stage_timings(cfg, ok, lightgbm)
    md, html = render(results, title=f"{spec.name}: per-scenario results (θ0 v{serving['theta0_version']})",
                      decisions=decisions, lightgbm=lightgbm, test_counts=test_counts, timings=timings,
                      image_dir=folder)
    atomic_write_text(folder / "report.md", md)
    atomic_write_text(folder / "report.html", html)
    failed = [r["scenario"] for r in results if r.get("status") != "ok"]
    _log(log, f"report: {len(ok)} scenario(s) in {folder / 'serving.json'}; report {folder / 'report.html'}"
              + (f"; FAILED: {failed}" if failed else ""))
    return {"serving": str(folder / "serving.json"), "report_html": str(folder / "report.html"),
            "report_md": str(folder / "report.md"), "scenarios": len(ok), "failed": failed,
            "summary": summary_metrics(results, lightgbm, test_counts)}


def _lightgbm_reference(cfg: PipelineConfig, data: PreparedData, scenarios: list[str], log):
    """LightGBM global on the prepared rows of ``scenarios`` (`longtail.baselines.lightgbm_global`),
    computed once per set of scenarios and prepared rows (``report/lightgbm.json``)."""
    from longtail.baselines import LightGBMResult, lightgbm_global

    key = _digest({"scenarios": sorted(scenarios), "prepared": {s: _prepare_key(cfg, s) for s in sorted(scenarios)}})
    path = _ws(cfg) / "report" / "lightgbm.json"
    if path.exists():
        cached = json.loads(path.read_text())
        if cached.get("key") == key:
            return LightGBMResult.from_dict(cached["result"])
    _log(log, f"LightGBM global reference on {len(scenarios)} scenario(s)")
    # one thread: OpenMP threads spin-wait, and on cores shared with other work two are several times slower
    result = lightgbm_global(data, scenarios, seed=cfg.split_seed, num_threads=1)
    atomic_write_json(path, {"key": key, "result": result.to_dict()})
    return result


def _stage_timings(cfg: PipelineConfig, ok: list[dict[str, Any]], lightgbm) -> dict[str, float]:
    """Seconds per stage of the workspace's run: θ0, the light pre-training, and each onboarding step
    summed over the scenarios (several run at once, so these add up to more than the wall time)."""
    out: dict[str, float] = {}
    summary = _theta0_summary_path(cfg)
    if summary.exists():
        out["θ0 (agnostic heavy model)"] = float(json.loads(summary.read_text()).get("seconds", 0.0))
    facts = sorted((_ws(cfg) / "light_pretrain").glob("*/facts.json"))
    if facts:
        out["light supernet pre-training"] = float(json.loads(facts[-1].read_text()).get("seconds", 0.0))
    names = {"theta_u": "θu fine-tuning (all scenarios)", "ours": "Ours search + training (all scenarios)",
             "MeL": "MeL reference (all scenarios)", "SinH": "SinH reference (all scenarios)"}
    for step, name in names.items():
        total = sum(float((r.get("step_seconds") or r.get("seconds") or {}).get(step, 0.0))
                    for r in ok if isinstance(r.get("step_seconds") or r.get("seconds"), dict))
        if total:
            out[name] = total
    onboarding = sum(float(r["seconds"]) for r in ok if isinstance(r.get("seconds"), int | float))
    if onboarding:
        out["onboarding (all scenarios, per scenario summed)"] = onboarding
    if lightgbm is not None:
        out["LightGBM reference"] = float(lightgbm.seconds)
    return out


__all__ = ["FAIL_ENV", "StageError", "SpecError", "as_results", "build_theta0", "cap_events", "collect_results",
           "drift_gate", "load_prepared", "onboard_one", "point_in_time_join_of", "prepare", "promote",
           "publish_theta0", "retrain_one", "retrain_tag", "scenario_dir", "theta0_version", "update_theta0",
           "write_report"]
