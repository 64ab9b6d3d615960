"""Every stage of the pipelines as a plain function on a workspace folder and a `PipelineConfig`.

Workspace layout (``cfg.workspace``)::

    feature_repo/                 working copy of feature_repo/ (its data/: Feast registry, SQLite store)
    prepared/<scenario>.parquet   a scenario's events joined point in time (Feast), with a ``_split`` column
    theta0_init/                  the initial θ0 model folder (resumable checkpoints)
    theta0/                       the θ0 store (versions, ledger of applied feedback)
    scenarios/<scenario>/<tag>/   one onboarding: theta_u/, ours/ (model, genotype pictures),
                                  feedback.pt, result.json (written last) or failed.json
    registry/                     the model registry (default)
    package/                      serving.json (what serves each scenario), report.md / report.html

Every stage is idempotent: a stage whose output exists for the same inputs returns it without
recomputing (``result.json``, the θ0 store, prepared files), θ0 feedback is applied once per
update id by the store's ledger, and outputs are written atomically, so a crashed or partly
failed run is completed by running it again. A failing scenario is reported (``failed.json`` and
a ``failed`` result) without failing the others; rerunning redoes only the failed ones.

Example:
    >>> cfg = PipelineConfig(tables="data/flights", workspace="/tmp/ws")
    >>> materialize(cfg); prepare(cfg, ["UA", "OO"]); build_theta0(cfg, ["UA"])
    >>> r = onboard_one(cfg, "OO"); update_theta0(cfg, [r]); package(cfg)
"""

from __future__ import annotations

import hashlib
import json
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from longtail.data.prepared import PreparedData
from longtail.data.splits import TEST, TRAIN, assign_split
from longtail.io import atomic_path, atomic_write_json, safe_name
from longtail.model_folder import save_model_dir
from longtail.spec import DatasetSpec, SpecError
from longtail.train_job import evaluate_heavy, train_heavy
from longtail.workflow.config import PipelineConfig
from longtail.workflow.errors import StageError

SPLIT_COL = "_split"
ONBOARD_TAG = "onboard"




def _ws(cfg: PipelineConfig) -> Path:
    return Path(cfg.workspace)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _log(log, msg: str) -> None:
    if log is not None:
        log(msg)


# ---------------------------------------------------------------------- features
def feature_repo(cfg: PipelineConfig) -> Path:
    """The run's working copy of ``feature_repo/`` (made on first use, pointed at ``cfg.tables``)."""
    from feature_store.store import working_repo

    return working_repo(_ws(cfg) / "feature_repo", cfg.tables, service_version=cfg.service_version)


def materialize(cfg: PipelineConfig, *, log=None) -> dict[str, Any]:
    """Apply the feature repo (``feast apply``) and materialize the newest values into the online store.

    Returns:
        The applied object names and the materialized window.
    """
    from feature_store.store import apply_repo, data_end, open_store
    from feature_store.store import materialize as feast_materialize

    t0 = time.perf_counter()
    repo = feature_repo(cfg)
    store = open_store(repo, cfg.feature_variant)
    names = apply_repo(store, repo)
    _log(log, f"feast apply: {len(names)} objects in {repo}")
    window = feast_materialize(store, data_end(repo), initial_days=cfg.materialize_days)
    _log(log, f"materialized {window['views']} from {window['start']} to {window['end']}")
    out = {"objects": names, **window, "seconds": time.perf_counter() - t0}
    atomic_write_json(_ws(cfg) / "materialize.json", out)
    return out


# ---------------------------------------------------------------------- data preparation
def _prepared_path(cfg: PipelineConfig, scenario: str) -> Path:
    return _ws(cfg) / "prepared" / f"{safe_name(scenario)}.parquet"


def _prepare_key(cfg: PipelineConfig, scenario: str) -> str:
    """What a prepared scenario depends on: the table set (and when it was built: new data is
    prepared again, which is what a drift-triggered retrain needs), the cap and the split."""
    manifest = Path(cfg.tables) / "manifest.json"
    built = json.loads(manifest.read_text()).get("created_unix") if manifest.exists() else None
    return _digest({"tables": cfg.tables, "built": built, "scenario": scenario, "service": cfg.service_version,
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


def prepare(cfg: PipelineConfig, scenarios: list[str] | None = None, *, log=None) -> dict[str, Any]:
    """Training data per scenario: events joined point in time through Feast, validated and split.

    The labelled events of each scenario (capped at ``max_rows_per_scenario``) are joined with the
    feature service by ``get_historical_features`` (each event sees the snapshots as of its time),
    validated against the spec and split train/valid/test per scenario; each scenario is written
    to ``prepared/<scenario>.parquet``. Transforms are fitted later, on training rows only, by the
    stage that trains a model, and saved with it.

    Args:
        cfg: the pipeline config.
        scenarios: scenarios to prepare (default: every scenario of the events table).

    Returns:
        ``{"scenarios": {name: rows}, "spec": dataset name, "seconds": ...}``.

    Raises:
        StageError: a requested scenario is not in the events.
    """
    from longtail.data.tables import TableSet

    t0 = time.perf_counter()
    tables = TableSet.load(cfg.tables)
    spec = tables.spec
    events = tables.read_events()
    known = sorted(events[spec.scenario].astype(str).unique())
    wanted = list(scenarios) if scenarios else known
    unknown = sorted(set(wanted) - set(known))
    if unknown:
        raise StageError(f"scenarios {unknown} are not in column '{spec.scenario}' of {cfg.tables}; known: {known}")
    todo = [s for s in wanted if not _prepared_ok(cfg, s)]
    rows: dict[str, int] = {}
    if todo:
        from feature_store.store import historical_frame, open_store

        ev = events[events[spec.scenario].astype(str).isin(todo)]
        ev = cap_events(ev, spec, cfg.max_rows_per_scenario, cfg.split_seed)
        store = open_store(feature_repo(cfg), cfg.feature_variant)
        _log(log, f"joining {len(ev):,} events of {len(todo)} scenario(s) point in time (Feast)")
        frame = historical_frame(store, spec, ev, cfg.service_version)
        spec.validate(frame)
        for scen, part in frame.groupby(frame[spec.scenario].astype(str), sort=True):
            part = part.reset_index(drop=True)
            part[SPLIT_COL] = assign_split(part[spec.scenario], seed=cfg.split_seed, test_frac=cfg.test_frac,
                                           valid_frac=cfg.valid_frac)
            with atomic_path(_prepared_path(cfg, scen)) as tmp:
                part.to_parquet(tmp, index=False)
            atomic_write_json(_prepared_path(cfg, scen).with_suffix(".json"),
                              {"key": _prepare_key(cfg, scen), "rows": len(part)})
    for s in wanted:
        rows[s] = json.loads(_prepared_path(cfg, s).with_suffix(".json").read_text())["rows"]
    spec.to_yaml(_ws(cfg) / "prepared" / "spec.yaml")
    return {"scenarios": rows, "prepared_now": todo, "dataset": spec.name, "seconds": time.perf_counter() - t0}


def _prepared_ok(cfg: PipelineConfig, scenario: str) -> bool:
    meta = _prepared_path(cfg, scenario).with_suffix(".json")
    return (meta.exists() and _prepared_path(cfg, scenario).exists()
            and json.loads(meta.read_text()).get("key") == _prepare_key(cfg, scenario))


def load_prepared(cfg: PipelineConfig, scenarios: list[str]) -> PreparedData:
    """The prepared rows of ``scenarios`` with their split (written by `prepare`).

    Raises:
        StageError: a scenario was not prepared.
    """
    spec_path = _ws(cfg) / "prepared" / "spec.yaml"
    missing = [s for s in scenarios if not _prepared_path(cfg, s).exists()]
    if missing or not spec_path.exists():
        raise StageError(f"scenarios {missing or scenarios} are not prepared in {_ws(cfg)}; run the prepare stage "
                         "(`prepare(cfg, scenarios)`) first")
    spec = DatasetSpec.from_yaml(spec_path)
    frame = pd.concat([pd.read_parquet(_prepared_path(cfg, s)) for s in scenarios], ignore_index=True)
    split = frame.pop(SPLIT_COL).to_numpy(dtype=object)
    return PreparedData(spec, frame, split)


# ---------------------------------------------------------------------- θ0
def _registry(cfg: PipelineConfig):
    from longtail.registry import open_registry

    return open_registry(cfg.registry_uri)


def build_theta0(cfg: PipelineConfig, scenarios: list[str], *, log=None) -> dict[str, Any]:
    """The agnostic heavy model θ0 on the initial scenarios, as version 0 of the θ0 store.

    ``cfg.theta0 == "predefined"`` trains the pre-defined heavy model (`train_heavy`; transforms
    fitted on the initial scenarios' training rows only and saved with it); ``"choose"`` calls
    ``longtail.agnostic.choose_theta0`` (HPO-tuned pre-defined vs NAS heavy, the better kept).
    An existing store is returned as it is (idempotent).

    Returns:
        ``{"version", "scenarios", "per_scenario": [...], "registry": {name, version}}``.
    """
    from longtail.meta.finetune import create_theta0_store
    from longtail.meta.server import Theta0Server
    from longtail.registry import lineage

    root = _ws(cfg) / "theta0"
    summary_path = _theta0_summary_path(cfg)
    if (root / "ledger.json").exists() and summary_path.exists():
        _log(log, f"θ0 store exists in {root} (version {Theta0Server(root).current_version}); kept")
        return json.loads(summary_path.read_text())
    if not scenarios:
        raise StageError("build_theta0: no initial scenarios; pass at least one")
    data = load_prepared(cfg, list(scenarios))
    t0 = time.perf_counter()
    if cfg.theta0 == "choose":
        model, transforms, model_cfg, how = _choose_theta0(cfg, data, list(scenarios), log)
    else:
        tr = train_heavy(data, list(scenarios), cfg.model, cfg.train, _ws(cfg) / "theta0_init",
                         description="θ0", log=log)
        model, transforms, model_cfg, how = tr.model, tr.transforms, cfg.model, "predefined"
    per = evaluate_heavy(model, transforms, data, list(scenarios))
    if root.exists() and not (root / "ledger.json").exists():
        import shutil

        shutil.rmtree(root)  # a store whose creation crashed before its ledger
    if not (root / "ledger.json").exists():
        create_theta0_store(root, model, transforms, model_cfg, cfg.meta.update, list(scenarios))
    save_model_dir(_ws(cfg) / "theta0_init", model, transforms, model_cfg,
                   {"scenarios": list(scenarios), "theta0": how})
    mv = _registry(cfg).publish(f"{data.spec.name}.theta0", _ws(cfg) / "theta0_init", kind="agnostic",
                                metrics={"mean_test_auc": float(per["auc"].mean())},
                                lineage=lineage(data_split={"tables": cfg.tables, "seed": cfg.split_seed},
                                                theta0_store=str(root), theta0_store_version=0, how=how))
    summary = {"version": 0, "scenarios": list(scenarios), "theta0": how, "seconds": time.perf_counter() - t0,
               "per_scenario": per.replace({np.nan: None}).to_dict("records"),
               "registry": {"name": mv.name, "version": mv.version}}
    atomic_write_json(summary_path, summary)
    if cfg.light.pretrain_epochs > 0:  # once here, so that parallel onboardings find it cached
        light_pretrained(cfg, log=log)
    return summary


def _theta0_summary_path(cfg: PipelineConfig) -> Path:
    return _ws(cfg) / "theta0_init" / "summary.json"


def _initial_scenarios(cfg: PipelineConfig) -> list[str]:
    summary_path = _theta0_summary_path(cfg)
    if not summary_path.exists():
        raise StageError(f"{summary_path}: no θ0 summary; run the bootstrap pipeline (build_theta0) first")
    return list(json.loads(summary_path.read_text())["scenarios"])


def light_pretrained(cfg: PipelineConfig, *, log=None) -> dict[str, torch.Tensor]:
    """The light supernet pre-trained on the initial scenarios' pooled rows with θ0 as teacher.

    ``longtail.nas.pretrain.pretrained_supernet`` with the initial θ0 (``theta0_init``) on the
    prepared rows of the scenarios it was trained on, cached in ``<workspace>/light_pretrain/``
    under a key of the light settings, θ0's weights and the rows (computed once; a changed
    ``light`` config gets its own entry).
    """
    from longtail.nas.pretrain import pretrained_supernet

    data = load_prepared(cfg, _initial_scenarios(cfg))
    state, _ = pretrained_supernet(_ws(cfg) / "theta0_init", data, cfg.light, _ws(cfg) / "light_pretrain",
                                   log=(lambda m: _log(log, f"light: {m}")) if log else None)
    return state


def _choose_theta0(cfg: PipelineConfig, data: PreparedData, scenarios: list[str], log):
    """θ0 by ``longtail.agnostic.choose_theta0``: HPO-tuned pre-defined heavy ∥ NAS heavy, the better kept."""
    from longtail.agnostic import AgnosticJobConfig, choose_theta0
    from longtail.data.prepared import DataConfig
    from longtail.model_folder import load_model_dir
    from longtail.models.heavy import HeavyConfig

    job = AgnosticJobConfig(data=DataConfig(tables=cfg.tables, split_seed=cfg.split_seed, test_frac=cfg.test_frac,
                                            valid_frac=cfg.valid_frac, scenarios=tuple(scenarios)),
                            n_initial=0, model=cfg.model, train=cfg.train, out=str(_ws(cfg) / "theta0_choose"))
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
    """Onboard one scenario: fine-tune θu from θ0 → query feedback → MeL and Ours light models
    distilled from θu → evaluate against the SinH and MeL references → publish to the registry.

    Never raises for a failure of the scenario's own work: it is written to ``failed.json`` and
    returned as ``{"status": "failed", "error": ...}`` so that the other scenarios' results stand;
    a later run with the same ``tag`` redoes only scenarios without a ``result.json``.

    Args:
        cfg: the pipeline config.
        scenario: the scenario (prepared by `prepare`).
        tag: names this onboarding (``onboard`` for bootstrap/onboard, ``retrain-<digest>`` for a
            drift-triggered rebuild); an existing result under the same tag is returned as it is.

    Returns:
        The scenario's result (AUCs of θ0, SinH, MeH (θu), MeL, Ours; FLOPs; latency; registry refs).
    """
    out = scenario_dir(cfg, scenario, tag)
    done = out / "result.json"
    if done.exists():
        _log(log, f"{scenario}: already onboarded ({done}); kept")
        return json.loads(done.read_text())
    try:
        result = _onboard(cfg, scenario, out, tag, log)
    except Exception as e:  # noqa: BLE001 - reported per scenario, never fails the others
        failure = {"scenario": scenario, "status": "failed", "tag": tag, "error": f"{type(e).__name__}: {e}",
                   "traceback": traceback.format_exc()}
        atomic_write_json(out / "failed.json", failure)
        _log(log, f"{scenario}: FAILED ({failure['error']}); see {out / 'failed.json'}")
        return {k: v for k, v in failure.items() if k != "traceback"}
    (out / "failed.json").unlink(missing_ok=True)
    atomic_write_json(done, result)
    return result


def _onboard(cfg: PipelineConfig, scenario: str, out: Path, tag: str, log) -> dict[str, Any]:
    from longtail.meta.finetune import onboard_scenario, theta0_context
    from longtail.meta.server import Theta0Server
    from longtail.nas.strategies import heavy_costs, run_mel, run_ours
    from longtail.registry import lineage

    t0 = time.perf_counter()
    if scenario in cfg.fail_scenarios:
        raise RuntimeError(f"failure injected for scenario {scenario!r} (fail_scenarios)")
    server = Theta0Server(_ws(cfg) / "theta0")
    version, state = server.load()
    transforms, model_cfg = theta0_context(server)
    # the transfer set of the light models draws from the initial scenarios' TRAIN rows
    others = [s for s in _initial_scenarios(cfg) if s != scenario] if cfg.light.transfer_rows > 0 else []
    data = load_prepared(cfg, [scenario, *others])
    _log(log, f"{scenario}: fine-tune θu from θ0 v{version}")
    res = onboard_scenario(state, transforms, model_cfg, data, scenario, cfg.meta, base_version=version)
    teacher = res.build_model(transforms, model_cfg)
    save_model_dir(out / "theta_u", teacher, transforms, model_cfg,
                   {"scenarios": [scenario], "strategy": "MeH", "theta0_store_version": version})
    with atomic_path(out / "feedback.pt") as tmp:
        torch.save(res.query_gradient, tmp)
    atomic_write_json(out / "feedback.json", {"update_id": res.update_id, "scenario": scenario,
                                              "base_version": version, "info": res.to_update().info})
    _log(log, f"{scenario}: MeL (pre-defined light) distilled from θu")
    mel = run_mel(teacher, transforms, data, scenario, model_cfg, cfg.light)
    _log(log, f"{scenario}: Ours (budget-limited NAS, distilled from θu)")
    pretrained = light_pretrained(cfg, log=log) if cfg.light.pretrain_epochs > 0 else None
    ours = run_ours(teacher, transforms, data, scenario, model_cfg, cfg.light, out=out / "ours", pretrained=pretrained)
    sinh_auc = None
    if cfg.sinh:
        _log(log, f"{scenario}: SinH reference (own heavy model, same settings as θ0)")
        sinh = train_heavy(data, [scenario], model_cfg, cfg.train, description=f"SinH {scenario}")
        sinh_auc = _first_auc(evaluate_heavy(sinh.model, sinh.transforms, data, [scenario]))
    heavy_flops, heavy_latency = heavy_costs(teacher, transforms, data, scenario, cfg.light.latency_repeats)
    auc = {"theta0": res.metrics["test_auc_theta0"], "SinH": sinh_auc, "MeH": res.metrics["test_auc"],
           "MeL": _nan_none(mel.auc), "Ours": _nan_none(ours.auc)}
    flops = {"heavy": heavy_flops, "MeL": mel.flops, "Ours": ours.flops, "budget": ours.budget}
    latency = {"heavy": heavy_latency, "MeL": mel.latency_ms, "Ours": ours.latency_ms}
    reg = _registry(cfg)
    dataset = data.spec.name
    split = {"tables": cfg.tables, "seed": cfg.split_seed}
    heavy_v = reg.publish(f"{dataset}.{safe_name(scenario)}.heavy", out / "theta_u", kind="specific",
                          scenario=scenario, metrics={"test_auc": auc["MeH"]},
                          lineage=lineage(data_split=split, strategy="MeH", theta0_store_version=version, tag=tag))
    light_v = reg.publish(f"{dataset}.{safe_name(scenario)}.light", out / "ours", kind="light", scenario=scenario,
                          metrics={"test_auc": auc["Ours"], "flops": ours.flops, "budget": ours.budget,
                                   "latency_ms": ours.latency_ms, "mel_auc": auc["MeL"]},
                          lineage=lineage(data_split=split, strategy="Ours", theta0_store_version=version,
                                          teacher={"name": heavy_v.name, "version": heavy_v.version}, tag=tag))
    pictures = sorted(str(p) for p in (out / "ours").glob("genotype_*.png"))
    return {"scenario": scenario, "status": "ok", "tag": tag, "theta0_version": version,
            "update_id": res.update_id, "n_train": len(data.rows(TRAIN, [scenario])),
            "n_test": len(data.rows(TEST, [scenario])), "auc": auc, "flops": flops, "latency_ms": latency,
            "genotypes": ours.genotypes, "pictures": pictures,
            "registry": {"heavy": [heavy_v.name, heavy_v.version], "light": [light_v.name, light_v.version]},
            "seconds": time.perf_counter() - t0}


def _first_auc(per: pd.DataFrame) -> float | None:
    return _nan_none(float(per["auc"].iloc[0])) if len(per) else None


def _nan_none(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and np.isnan(x)) else float(x)


def as_results(results: list[Any]) -> list[dict[str, Any]]:
    """Results given as dicts or JSON strings (what KFP's ``dsl.Collected`` hands over) → dicts."""
    return [json.loads(r) if isinstance(r, str) else dict(r) for r in results]


# ---------------------------------------------------------------------- θ0 update from feedback
def update_theta0(cfg: PipelineConfig, results: list[Any], *, log=None) -> dict[str, Any]:
    """Apply the collected query feedback of the onboarded scenarios to θ0 as one step (Eq. 3).

    Only scenarios with ``status == "ok"`` contribute. Each feedback has a stable id, so applying
    the same results again changes nothing (the ledger records replays).

    Returns:
        ``{"version_before", "version", "applied": [...], "dropped": [...], "duplicates": [...]}``.
    """
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
    return out


# ---------------------------------------------------------------------- drift gate, package, promote
def drift_gate(cfg: PipelineConfig, verdict: str | dict[str, Any], scenarios: list[str] | None = None) -> list[str]:
    """The scenarios to rebuild: those a drift verdict marks ``drifted``.

    Args:
        cfg: the pipeline config.
        verdict: a drift verdict, or the path of its JSON file: the ``drift.json`` that ``longtail
            drift`` writes (`monitoring.run_drift`, Evidently; its ``drifted_scenarios``), or
            ``{"<scenario>": {"drifted": bool, ...}, ...}``.
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
    if "drifted_scenarios" in verdict:  # drift.json of `longtail drift` (monitoring.run_drift, Evidently)
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
        tags = [tag] if tag else sorted((p.name for p in scen_dir.iterdir() if p.is_dir()),
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


def package(cfg: PipelineConfig, *, log=None) -> dict[str, Any]:
    """The serving package: what each scenario serves, the feature service, and the report.

    Writes ``package/serving.json`` (per scenario the published light and heavy model versions, the
    θ0 version, the feature service and repo a BentoML service reads) and ``package/report.md`` /
    ``package/report.html`` (per-scenario AUC table, FLOPs, latency, architecture pictures).

    Returns:
        ``{"serving": path, "report_html": path, "report_md": path, "scenarios": n, "failed": [...]}``.
    """
    from longtail.workflow.report import render

    results = collect_results(cfg)
    spec = DatasetSpec.from_yaml(_ws(cfg) / "prepared" / "spec.yaml")
    ok = [r for r in results if r.get("status") == "ok"]
    serving = {"dataset": spec.name, "feature_service": f"{spec.name}_v{cfg.service_version}",
               "feature_repo": str(_ws(cfg) / "feature_repo"), "feature_variant": cfg.feature_variant,
               "registry": cfg.registry_uri, "theta0_version": theta0_version(cfg),
               "scenarios": {r["scenario"]: {"light": r["registry"]["light"], "heavy": r["registry"]["heavy"],
                                             "flops": r["flops"]["Ours"], "auc": r["auc"]["Ours"]} for r in ok}}
    pkg = _ws(cfg) / "package"
    atomic_write_json(pkg / "serving.json", serving)
    md, html = render(results, title=f"{spec.name}: per-scenario results (θ0 v{serving['theta0_version']})")
    from longtail.io import atomic_write_text

    atomic_write_text(pkg / "report.md", md)
    atomic_write_text(pkg / "report.html", html)
    failed = [r["scenario"] for r in results if r.get("status") != "ok"]
    _log(log, f"package: {len(ok)} scenario(s) in {pkg / 'serving.json'}; report {pkg / 'report.html'}"
              + (f"; FAILED: {failed}" if failed else ""))
    return {"serving": str(pkg / "serving.json"), "report_html": str(pkg / "report.html"),
            "report_md": str(pkg / "report.md"), "scenarios": len(ok), "failed": failed}


def promote(cfg: PipelineConfig, results: list[Any], *, min_auc_gain_over_mel: float = -0.02,
            log=None) -> dict[str, Any]:
    """Point each scenario's serving pointer at its new light model when it passes the gate.

    The gate: the light model's test AUC is known and at least the MeL reference's AUC plus
    ``min_auc_gain_over_mel`` (a small tolerance by default). Promotion is compare-and-swap in the
    registry and a no-op when the pointer already names the version.

    Returns:
        ``{"promoted": {scenario: [name, version]}, "held": {scenario: reason}}``.
    """
    reg = _registry(cfg)
    promoted, held = {}, {}
    for r in as_results(results):
        scen = r["scenario"]
        if r.get("status") == "skipped":
            continue
        if r.get("status") != "ok":
            held[scen] = f"onboarding failed: {r.get('error')}"
            continue
        ours, mel = r["auc"]["Ours"], r["auc"]["MeL"]
        if ours is None or (mel is not None and ours < mel + min_auc_gain_over_mel):
            held[scen] = f"Ours AUC {ours} below MeL {mel} {min_auc_gain_over_mel:+}"
            continue
        name, version = r["registry"]["light"]
        if reg.serving(scen) != (name, int(version)):
            reg.promote(scen, name, int(version), note=f"pipeline {r.get('tag')}")
        promoted[scen] = [name, int(version)]
    _log(log, f"promoted {len(promoted)} scenario(s); held {sorted(held)}")
    return {"promoted": promoted, "held": held}


__all__ = ["StageError", "SpecError", "as_results", "build_theta0", "cap_events", "collect_results", "drift_gate",
           "feature_repo", "load_prepared", "materialize", "onboard_one", "package", "prepare", "promote",
           "retrain_one", "retrain_tag", "scenario_dir", "theta0_version", "update_theta0"]
