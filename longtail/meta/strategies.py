"""The paper's strategies SinH and MeH (section V.A.2), for any dataset a spec describes.

* **SinH** (Single-Heavy): one heavy model per scenario, trained on that scenario's rows only.
* **MeH** (Meta-Heavy): ``n_initial`` (8 in the paper) scenarios drawn at random initialise θ0
  on their pooled training rows; then every scenario, initial ones included, arrives in a seeded
  random order and is onboarded: a copy of θ0 is fine-tuned into θu (evaluated on the
  scenario's test rows) and its query feedback updates θ0 before the next one arrives.

Both return a per-scenario table (``scenario, n_train, n_test, auc`` and more) and timings; with
an output folder they write ``config.yaml``, ``per_scenario.csv`` and, last, ``metrics.json``.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from longtail.config import config_to_dict, save_config
from longtail.data.prepared import DataConfig, PreparedData, prepare
from longtail.data.splits import TEST, TRAIN
from longtail.io import atomic_path, atomic_write_json, safe_name
from longtail.meta.finetune import MetaConfig, create_theta0_store, refresh_theta0
from longtail.meta.server import Theta0Server
from longtail.meta.workers import onboard_many
from longtail.model_folder import save_model_dir
from longtail.models.heavy import HeavyConfig, build_model
from longtail.train import TrainConfig
from longtail.train_job import evaluate_heavy, train_heavy

__all__ = ["RefreshJobConfig", "StrategyJobConfig", "StrategyResult", "draw_protocol", "publish_strategy",
           "run_meh", "run_refresh", "run_sinh", "run_strategy"]

TABLE_COLUMNS = ["scenario", "n_train", "n_test", "auc"]


@dataclass
class StrategyResult:
    """Per-scenario results of a strategy.

    Attributes:
        strategy: ``SinH`` or ``MeH``.
        table: one row per scenario: ``scenario, n_train, n_test, auc`` (test AUC; NaN when the
            test rows have one class) plus strategy-specific columns (MeH: ``initial``,
            ``arrival``, ``auc_theta0``, ``base_version``, ``status``, ``seconds`` (the job's wall
            time: load θ0, fine-tune, feedback, submit), ``onboard_seconds`` (fine-tune and feedback)).
        timings: wall seconds: ``total``, ``per_scenario`` (training one scenario's model, or
            onboarding it for MeH), ``theta0_init`` (MeH).
        info: strategy facts (MeH: initial scenarios, arrival order, the θ0 store, final version).
    """

    strategy: str
    table: pd.DataFrame
    timings: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def mean_auc(self) -> float:
        return float(self.table["auc"].mean())

    def to_metrics(self) -> dict[str, Any]:
        """JSON-safe summary (written as metrics.json)."""
        return {"strategy": self.strategy, "mean_auc": self.mean_auc,
                "scenarios_with_auc": int(self.table["auc"].notna().sum()),
                "per_scenario": self.table.replace({np.nan: None}).to_dict(orient="records"),
                "timings": self.timings, **self.info}


def _write(result: StrategyResult, out: Path | None) -> None:
    if out is None:
        return
    with atomic_path(out / "per_scenario.csv") as tmp:
        result.table.to_csv(tmp, index=False)
    atomic_write_json(out / "metrics.json", result.to_metrics())


def _save_meh_models(out: Path, store: Theta0Server, results: list, transforms, model_cfg: HeavyConfig) -> None:
    """Write every θu (``out/models/<scenario>``) and the final θ0 (``out/theta0_final``) as model folders."""
    model = build_model(transforms.schema, model_cfg)
    for r in results:
        model.load_state_dict(r.theta_u)
        save_model_dir(out / "models" / safe_name(r.scenario), model, transforms, model_cfg, {
            "scenarios": [r.scenario], "strategy": "MeH", "theta0_store_version": r.base_version,
            "test_auc": r.metrics.get("test_auc")})
    version, state = store.load()
    model.load_state_dict(state)
    save_model_dir(out / "theta0_final", model, transforms, model_cfg, {
        "scenarios": store.scenarios_seen(), "strategy": "MeH", "theta0_store_version": version})


def publish_strategy(result: StrategyResult, out: Path, registry_uri: str, *, dataset: str, encoder: str,
                     split_seed: int, tables: str, log=None) -> list[dict[str, Any]]:
    """Publish a strategy run's models to the registry with their metrics and lineage.

    Every scenario-specific heavy model (``out/models/<scenario>``) becomes a ``specific`` version of
    ``<dataset>.<scenario>.heavy-<encoder>``; MeH's final θ0 becomes an ``agnostic`` version of
    ``<dataset>.theta0-<encoder>``. Lineage names the θ0 store version each θu was fine-tuned
    from, the data split (table set and seed) and the code version.

    Returns:
        One record per published version (name, version, scenario).
    """
    from longtail.registry import lineage, open_registry

    reg = open_registry(registry_uri)
    split = {"tables": tables, "seed": split_seed}
    store = result.info.get("theta0_store")
    published = []
    if result.strategy == "MeH" and (out / "theta0_final").exists():
        v = reg.publish(f"{dataset}.theta0-{encoder}", out / "theta0_final", kind="agnostic",
                        metrics={"final_store_version": result.info.get("final_theta0_version")},
                        lineage=lineage(data_split=split, theta0_store=store, strategy="MeH"))
        published.append({"name": v.name, "version": v.version, "scenario": None})
    for _, row in result.table.iterrows():
        scen = str(row["scenario"])
        folder = out / "models" / safe_name(scen)
        if not folder.exists():
            continue
        extra = {"strategy": result.strategy}
        if result.strategy == "MeH":
            extra.update(theta0_store=store, theta0_store_version=int(row["base_version"]))
        metrics = {"test_auc": None if pd.isna(row["auc"]) else float(row["auc"]),
                   "n_train": int(row["n_train"]), "n_test": int(row["n_test"])}
        v = reg.publish(f"{dataset}.{safe_name(scen)}.heavy-{encoder}", folder, kind="specific", scenario=scen,
                        metrics=metrics, lineage=lineage(data_split=split, **extra))
        published.append({"name": v.name, "version": v.version, "scenario": scen})
        if log:
            log(f"published {v.name} v{v.version}")
    return published


def _test_auc(per: pd.DataFrame) -> float:
    return float(per["auc"].iloc[0]) if len(per) else float("nan")


def run_sinh(data: PreparedData, model_cfg: HeavyConfig, train_cfg: TrainConfig, *,
             scenarios: list[str] | None = None, out: str | Path | None = None, log=None) -> StrategyResult:
    """SinH: train one heavy model per scenario on its own rows, evaluate on its test rows.

    Args:
        data: prepared rows with their split.
        model_cfg: the pre-defined heavy architecture.
        train_cfg: training settings (the paper: Adam, lr 1e-3, batch 512, 5 epochs).
        scenarios: the scenarios (default: all, largest first).
        out: when set, models go to ``out/models/<scenario>`` and results beside them.
        log: called with one line per scenario.

    Returns:
        The `StrategyResult`.
    """
    t0 = time.perf_counter()
    out = Path(out) if out is not None else None
    rows, per_scen = [], {}
    for i, scen in enumerate(scenarios or data.scenarios):
        folder = out / "models" / safe_name(scen) if out else None
        trained = train_heavy(data, [scen], model_cfg, train_cfg, folder, description=f"SinH {scen}")
        a = _test_auc(evaluate_heavy(trained.model, trained.transforms, data, [scen]))
        rows.append({"scenario": scen, "n_train": len(data.rows(TRAIN, [scen])),
                     "n_test": len(data.rows(TEST, [scen])),
                     "auc": a, "seconds": trained.seconds})
        per_scen[scen] = trained.seconds
        if log:
            log(f"SinH {scen} ({i + 1}): test AUC {a:.4f} in {trained.seconds:.1f}s")
    result = StrategyResult("SinH", pd.DataFrame(rows, columns=[*TABLE_COLUMNS, "seconds"]),
                            {"total": time.perf_counter() - t0, "per_scenario": per_scen})
    _write(result, out)
    return result


def draw_protocol(scenarios: list[str], n_initial: int, seed: int) -> tuple[list[str], list[str]]:
    """The paper's protocol: ``n_initial`` scenarios drawn at random, and a random arrival order.

    Returns:
        (initial scenarios, arrival order of all scenarios), both from one generator seeded by ``seed``.
    """
    rng = np.random.default_rng(seed)
    pool = sorted(scenarios)
    initial = sorted(str(s) for s in rng.choice(pool, size=min(n_initial, len(pool)), replace=False))
    arrival = [str(s) for s in rng.permutation(pool)]
    return initial, arrival


def run_meh(data: PreparedData, model_cfg: HeavyConfig, train_cfg: TrainConfig, meta_cfg: MetaConfig, *,
            out: str | Path | None = None, workers: int = 1, log=None) -> StrategyResult:
    """MeH: θ0 from ``n_initial`` random scenarios, then every scenario onboarded in arrival order.

    Each arriving scenario is fine-tuned from the current θ0 (θu, evaluated on its test rows) and
    its query feedback updates θ0 (Eq. 2, the store's conservative rule) before the next one. With
    ``workers > 1`` scenarios are onboarded concurrently instead (asynchronous feedback, applied
    in completion order).

    Args:
        data: prepared rows with their split.
        model_cfg: the pre-defined heavy architecture.
        train_cfg: training of the initial θ0 (same settings as SinH for a fair comparison).
        meta_cfg: fine-tune, feedback rule, ``n_initial`` and ``seed`` of the protocol.
        out: when set, the initial θ0 (``out/theta0_init``), the θ0 store (``out/theta0``) and
            the results are written there; otherwise the store lives in a temporary folder.
        workers: concurrent onboarding processes (1: strictly in arrival order, in this process).
        log: called with one line per scenario.

    Returns:
        The `StrategyResult`.
    """
    t0 = time.perf_counter()
    out = Path(out) if out is not None else None
    initial, arrival = draw_protocol(data.scenarios, meta_cfg.n_initial, meta_cfg.seed)
    theta0 = train_heavy(data, initial, model_cfg, train_cfg, out / "theta0_init" if out else None,
                         description="MeH θ0")
    if log:
        log(f"MeH θ0 on {len(initial)} initial scenarios {initial}: {theta0.seconds:.1f}s")
    tmp = tempfile.TemporaryDirectory(prefix="theta0-") if out is None else None
    root = Path(tmp.name) / "theta0" if tmp else out / "theta0"
    try:
        store = create_theta0_store(root, theta0.model, theta0.transforms, model_cfg, meta_cfg.update,
                                    initial)
        results = onboard_many(store, data, arrival, meta_cfg, workers=workers, mode="async")
        final_version = store.current_version
        if out is not None:
            _save_meh_models(out, store, results, theta0.transforms, model_cfg)
    finally:
        if tmp:
            tmp.cleanup()
    order = {s: i for i, s in enumerate(arrival)}
    rows = []
    for r in results:
        m = r.metrics
        rows.append({"scenario": r.scenario, "n_train": m["n_train"], "n_test": m["n_test"],
                     "auc": np.nan if m["test_auc"] is None else m["test_auc"],
                     "auc_theta0": np.nan if m["test_auc_theta0"] is None else m["test_auc_theta0"],
                     "initial": r.scenario in initial, "arrival": order[r.scenario],
                     "base_version": r.base_version,
                     "status": (r.record or {}).get("status"), "seconds": m["wall_seconds"],
                     "onboard_seconds": m["seconds"]})
        if log:
            log(f"MeH {r.scenario}: θ0 AUC {rows[-1]['auc_theta0']:.4f} -> θu AUC {rows[-1]['auc']:.4f}, "
                f"feedback {rows[-1]['status']} ({m['wall_seconds']:.1f}s)")
    table = pd.DataFrame(rows).sort_values("arrival").reset_index(drop=True)
    result = StrategyResult(
        "MeH", table,
        {"total": time.perf_counter() - t0, "theta0_init": theta0.seconds,
         "per_scenario": dict(zip(table["scenario"], table["seconds"], strict=True))},
        {"initial": initial, "arrival": arrival, "theta0_store": str(root) if out else None,
         "final_theta0_version": final_version},
    )
    _write(result, out)
    return result


# ---------------------------------------------------------------------- jobs (what the CLI wires)
@dataclass(frozen=True)
class StrategyJobConfig:
    """The effective config of a strategy run (saved as config.yaml beside its outputs).

    Args:
        data: the table set and its split.
        model: the pre-defined heavy architecture.
        train: training settings (SinH models; MeH's initial θ0).
        meta: MeH's fine-tune, feedback rule and protocol.
        strategy: ``sinh`` or ``meh``.
        workers: MeH's concurrent onboarding processes (1: strict arrival order).
        registry: when set (a path, ``file://`` or ``s3://`` URI), every model is published there
            with its metrics and lineage.
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: HeavyConfig = field(default_factory=HeavyConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    strategy: Literal["sinh", "meh"] = "meh"
    workers: int = 1
    registry: str = ""


def run_strategy(cfg: StrategyJobConfig, out: str | Path, *, log=print) -> dict[str, Any]:
    """Prepare the data, run SinH or MeH, and write ``out`` (config.yaml, per_scenario.csv, metrics.json).

    Returns:
        The metrics written to ``metrics.json``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    data = prepare(cfg.data)
    if cfg.strategy == "sinh":
        result = run_sinh(data, cfg.model, cfg.train, out=out, log=log)
    elif cfg.strategy == "meh":
        result = run_meh(data, cfg.model, cfg.train, cfg.meta, out=out, workers=cfg.workers, log=log)
    else:
        raise ValueError(f"strategy must be 'sinh' or 'meh', got {cfg.strategy!r}")
    metrics = {**result.to_metrics(), "dataset": data.spec.name, "config": config_to_dict(cfg)}
    if cfg.registry:
        metrics["published"] = publish_strategy(result, out, cfg.registry, dataset=safe_name(data.spec.name),
                                                encoder=cfg.model.encoder, split_seed=cfg.data.split_seed,
                                                tables=cfg.data.tables, log=log)
    atomic_write_json(out / "metrics.json", metrics)
    return metrics


@dataclass(frozen=True)
class RefreshJobConfig:
    """The meta-train refresh of a θ0 store.

    Args:
        store: the θ0 store folder (e.g. ``runs/meh/theta0``).
        data: the stored rows (the same table set and split the store was built from).
        train: refresh settings (a few epochs from the current θ0).
    """

    store: str = "runs/meh/theta0"
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=lambda: MetaConfig().refresh)


def run_refresh(cfg: RefreshJobConfig, *, log=print) -> dict[str, Any]:
    """Refresh θ0 on the stored rows of every scenario seen so far; commit it as a new version.

    Returns:
        The new version's ledger record (with the refresh's training summary).
    """
    server = Theta0Server(cfg.store)
    data = prepare(cfg.data)
    record = refresh_theta0(server, data, cfg.train)
    log(f"θ0 refreshed on {len(record['scenarios'])} scenarios: v{record['parent']} -> v{record['version']} "
        f"(valid AUC {record['train']['best_valid_auc']})")
    return record
