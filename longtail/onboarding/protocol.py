"""The paper's experimental protocol: the strategies SinH and MeH (section V.A.2), for any dataset a spec describes.

* **SinH** (Single-Heavy): one heavy model per scenario, trained on that scenario's rows only.
* **MeH** (Meta-Heavy): ``n_initial`` (8 in the paper) scenarios drawn at random initialise θ0
  on their pooled training rows; then every scenario, initial ones included, arrives in a seeded
  random order and is onboarded: a copy of θ0 is fine-tuned into θu (evaluated on the
  scenario's test rows) and its query feedback updates θ0 before the next one arrives.

Both return a per-scenario table (``scenario, n_train, n_test, auc`` and more) and timings; with
an output folder they write ``config.yaml``, ``per_scenario.csv`` and, last, ``metrics.json``.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from longtail.config import config_to_dict, save_config
from longtail.data.prepared import DataConfig, PreparedData, prepare
from longtail.data.scenario_rows import ScenarioRows
from longtail.data.splits import TEST, TRAIN, draw_protocol
from longtail.io import atomic_path, atomic_write_json, safe_name
from longtail.meta.finetune import MetaConfig, create_theta0_store, refresh_theta0
from longtail.meta.server import Theta0Server
from longtail.model_folder import save_model_dir
from longtail.models.heavy import HeavyConfig, build_model
from longtail.onboarding.recipe import Recipe
from longtail.train import TrainConfig
from longtail.train_job import train_heavy

__all__ = ["LightJobConfig", "RefreshJobConfig", "StrategyJobConfig", "StrategyResult", "meh_run_data",
           "publish_strategy", "run_light_job", "run_meh", "run_refresh", "run_sinh", "run_strategy"]

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
        spec = r.specialised
        model.load_state_dict(spec.theta_u)
        save_model_dir(out / "models" / safe_name(r.scenario), model, transforms, model_cfg, {
            "scenarios": [r.scenario], "strategy": "MeH", "theta0_store_version": spec.base_version,
            "valid_auc": spec.metrics.get("valid_auc"), "test_auc": spec.metrics.get("test_auc")})
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


def run_sinh(data: PreparedData, model_cfg: HeavyConfig, train_cfg: TrainConfig, *,
             scenarios: list[str] | None = None, out: str | Path | None = None, log=None) -> StrategyResult:
    """SinH: train one heavy model per scenario on its own rows, evaluate on its test rows.

    Each scenario is `longtail.onboarding.core.sinh_reference`, the reference the onboarding trains.

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
    from longtail.onboarding.core import sinh_reference

    t0 = time.perf_counter()
    out = Path(out) if out is not None else None
    rows, per_scen = [], {}
    for i, scen in enumerate(scenarios or data.scenarios):
        folder = out / "models" / safe_name(scen) if out else None
        ref = sinh_reference(data, scen, model_cfg, train_cfg, folder)
        a = np.nan if ref["auc"] is None else ref["auc"]
        rows.append({"scenario": scen, "n_train": len(data.rows(TRAIN, [scen])),
                     "n_test": len(data.rows(TEST, [scen])), "auc": a, "seconds": ref["seconds"]})
        per_scen[scen] = ref["seconds"]
        if log:
            log(f"SinH {scen} ({i + 1}): test AUC {a:.4f} in {ref['seconds']:.1f}s")
    result = StrategyResult("SinH", pd.DataFrame(rows, columns=[*TABLE_COLUMNS, "seconds"]),
                            {"total": time.perf_counter() - t0, "per_scenario": per_scen})
    _write(result, out)
    return result


def run_meh(data: PreparedData, recipe: Recipe, *, out: str | Path | None = None, workers: int = 1,
            log=None) -> StrategyResult:
    """MeH: θ0 from ``n_initial`` random scenarios, then every scenario onboarded in arrival order.

    Each arriving scenario is onboarded (`longtail.onboarding.onboard`, θu only: its light step is
    off) from the current θ0 and its query feedback updates θ0 (Eq. 2, the store's conservative
    rule) before the next one. With ``workers > 1`` scenarios are onboarded concurrently instead
    (asynchronous feedback, applied in completion order).

    Args:
        data: prepared rows with their split.
        recipe: θ0's architecture and training (``model``, ``train``; the same settings as SinH for a
            fair comparison), and the fine-tune, feedback rule, ``n_initial`` and ``seed`` (``meta``).
        out: when set, the initial θ0 (``out/theta0_init``), the θ0 store (``out/theta0``), every θu
            (``out/models/<scenario>``), the final θ0 (``out/theta0_final``) and the results are
            written there; otherwise the store lives in a temporary folder.
        workers: concurrent onboarding processes (1: strictly in arrival order, in this process).
        log: called with one line per scenario.

    Returns:
        The `StrategyResult`.
    """
    from longtail.onboarding.parallel import onboard_many

    t0 = time.perf_counter()
    meta_cfg = recipe.meta
    out = Path(out) if out is not None else None
    initial, arrival = draw_protocol(data.scenarios, meta_cfg.n_initial, meta_cfg.seed)
    theta0 = train_heavy(data, initial, recipe.model, recipe.train, out / "theta0_init" if out else None,
                         description="MeH θ0")
    if log:
        log(f"MeH θ0 on {len(initial)} initial scenarios {initial}: {theta0.seconds:.1f}s")
    tmp = tempfile.TemporaryDirectory(prefix="theta0-") if out is None else None
    root = Path(tmp.name) / "theta0" if tmp else out / "theta0"
    try:
        store = create_theta0_store(root, theta0.model, theta0.transforms, recipe.model, meta_cfg.update,
                                    initial)
        results = onboard_many(store, data, arrival, recipe, workers=workers, mode="async")
        final_version = store.current_version
        if out is not None:
            _save_meh_models(out, store, results, theta0.transforms, recipe.model)
    finally:
        if tmp:
            tmp.cleanup()
    order = {s: i for i, s in enumerate(arrival)}
    rows = []
    for r in results:
        m = r.specialised.metrics
        rows.append({"scenario": r.scenario, "n_train": m["n_train"], "n_test": m["n_test"],
                     "auc": np.nan if m["test_auc"] is None else m["test_auc"],
                     "auc_theta0": np.nan if m["test_auc_theta0"] is None else m["test_auc_theta0"],
                     "valid_auc": np.nan if m["valid_auc"] is None else m["valid_auc"],
                     "initial": r.scenario in initial, "arrival": order[r.scenario],
                     "base_version": r.specialised.base_version,
                     "status": (r.specialised.record or {}).get("status"), "seconds": r.seconds["job"],
                     "onboard_seconds": m["seconds"]})
        if log:
            log(f"MeH {r.scenario}: θ0 AUC {rows[-1]['auc_theta0']:.4f} -> θu AUC {rows[-1]['auc']:.4f}, "
                f"feedback {rows[-1]['status']} ({r.seconds['job']:.1f}s)")
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
        recipe: the onboarding settings: θ0's (and SinH's) ``model`` and ``train``, MeH's ``meta``.
        strategy: ``sinh`` or ``meh``.
        workers: MeH's concurrent onboarding processes (1: strict arrival order).
        registry: when set (a path, ``file://`` or ``s3://`` URI), every model is published there
            with its metrics and lineage.
    """

    data: DataConfig = field(default_factory=DataConfig)
    recipe: Recipe = field(default_factory=Recipe)
    strategy: Literal["sinh", "meh"] = "meh"
    workers: int = 1
    registry: str = ""


def run_strategy(cfg: StrategyJobConfig, out: str | Path, *, log=print) -> dict[str, Any]:
    """Prepare the data, run SinH or MeH, and write ``out`` (config.yaml, per_scenario.csv, metrics.json).

    Returns:
        The metrics written to ``metrics.json``.
    """
    data = prepare(cfg.data)  # before the run folder exists: a bad table set leaves nothing behind
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    if cfg.strategy == "sinh":
        result = run_sinh(data, cfg.recipe.model, cfg.recipe.train, out=out, log=log)
    elif cfg.strategy == "meh":
        result = run_meh(data, cfg.recipe, out=out, workers=cfg.workers, log=log)
    else:
        raise ValueError(f"strategy must be 'sinh' or 'meh', got {cfg.strategy!r}")
    metrics = {**result.to_metrics(), "dataset": data.spec.name, "config": config_to_dict(cfg)}
    if cfg.registry:
        metrics["published"] = publish_strategy(result, out, cfg.registry, dataset=safe_name(data.spec.name),
                                                encoder=cfg.recipe.model.encoder, split_seed=cfg.data.split_seed,
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


# ---------------------------------------------------------------------- light models of a MeH run
@dataclass(frozen=True)
class LightJobConfig:
    """The effective config of ``longtail nas light`` (saved as ``config.yaml`` in ``out``).

    Args:
        meh_out: the MeH run folder (``longtail meta run --strategy meh``) whose ``models/<scenario>``
            are the teachers and whose ``theta0_final`` is θ0.
        data: the table set and split; empty ``data.tables`` reads the MeH run's own (its
            ``config.yaml``), so that θu saw no test row.
        recipe: the light settings (``recipe.light``) and the support/query split (``recipe.meta``).
        scenarios: scenarios to run (empty: every scenario with a saved θu).
        references: references to train beside Ours (``MeL``, ``SinH``).
        out: job folder: ``per_scenario.csv``, ``<scenario>/ours`` (the light model folder with its
            genotype pictures) and, last, ``metrics.json``.
        registry: when set, every Ours model is published there (kind ``light``).
    """

    meh_out: str = ""
    data: DataConfig = field(default_factory=lambda: DataConfig(tables=""))
    recipe: Recipe = field(default_factory=Recipe)
    scenarios: tuple[str, ...] = ()
    references: tuple[str, ...] = ("MeL",)
    out: str = "runs/light"
    registry: str = ""


LIGHT_COLUMNS = ["scenario", "n_train", "n_test", "auc_meh", "auc_mel", "auc_ours", "valid_auc_ours", "flops_heavy",
                 "flops_mel", "flops_ours", "budget", "latency_heavy_ms", "latency_mel_ms", "latency_ours_ms",
                 "seconds_ours"]


def meh_run_data(meh_out: str | Path) -> DataConfig:
    """The table set and split a MeH run was made with (its ``config.yaml``).

    Raises:
        FileNotFoundError: the folder is not a finished MeH run (names the fix).
    """
    from longtail.config import config_from_dict

    folder = Path(meh_out)
    if not (folder / "metrics.json").exists() or not (folder / "theta0_final" / "model.json").exists():
        raise FileNotFoundError(f"{folder}: not a finished MeH run (no metrics.json or theta0_final/); make one with "
                                "`longtail meta run --strategy meh --data TABLES --out DIR`")
    path = folder / "config.yaml"
    if not path.exists():
        raise FileNotFoundError(f"{path}: the MeH run does not record its table set; pass --data TABLES (the table "
                                "set and split the MeH run was trained on)")
    import yaml

    return config_from_dict(StrategyJobConfig, yaml.safe_load(path.read_text()) or {}, str(path)).data


def run_light_job(cfg: LightJobConfig, log=None) -> pd.DataFrame:
    """Ours (and the references) for every θu of a MeH run: `longtail.onboarding.onboard` with that θu.

    Returns:
        One row per scenario (`LIGHT_COLUMNS`; test AUCs for the report).
    """
    from longtail.model_folder import load_model_dir
    from longtail.onboarding.core import Theta0, onboard
    from longtail.onboarding.promotion import publish_onboarding

    say = log or (lambda _m: None)
    if not cfg.meh_out:
        raise FileNotFoundError("meh_out is empty: pass --meh-out RUN, a finished `longtail meta run --strategy meh`")
    meh = Path(cfg.meh_out)
    data_cfg = cfg.data if cfg.data.tables else meh_run_data(meh)
    data = prepare(data_cfg)  # before the job folder exists: a bad table set leaves nothing behind
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(dataclasses.replace(cfg, data=data_cfg), out / "config.yaml")
    models = meh / "models"
    scenarios = list(cfg.scenarios) or [s for s in data.scenarios if (models / safe_name(s) / "model.json").exists()]
    missing = [s for s in scenarios if not (models / safe_name(s) / "model.json").exists()]
    if missing:  # before any pre-training or search is spent
        raise FileNotFoundError(f"{models}: no θu for scenarios {missing}; were they onboarded by the MeH run?")
    theta0 = Theta0.from_model_dir(meh / "theta0_final")
    recipe = cfg.recipe
    pretrained = None
    if recipe.light.pretrain.epochs > 0 and scenarios:
        from longtail.nas.pretrain import pretrained_supernet

        pretrained, _ = pretrained_supernet(meh / "theta0_final", data, recipe.light, out / "pretrain", log=say)
    reg = None
    if cfg.registry:
        from longtail.registry import open_registry

        reg = open_registry(cfg.registry)
    rows, published = [], []
    for scen in scenarios:
        teacher = load_model_dir(models / safe_name(scen))[0]
        scen_rows = ScenarioRows.build(data, scen, theta0.transforms, query_frac=recipe.meta.query_frac,
                                       seed=recipe.meta.seed)
        done = onboard(theta0, scen_rows, recipe, out=out / safe_name(scen), teacher=teacher,
                       references=cfg.references, pretrained=pretrained, log=say)
        s = done.summary()
        rows.append({"scenario": scen, "n_train": s["n_train"], "n_test": s["n_test"],
                     "auc_meh": _na(evaluate_teacher(teacher, scen_rows)), "auc_mel": _na(s["auc"].get("MeL")),
                     "auc_ours": _na(s["auc"]["Ours"]), "valid_auc_ours": _na(s["valid_auc"].get("Ours")),
                     "flops_heavy": s["flops"]["heavy"], "flops_mel": s["flops"]["MeL"], "flops_ours": s["flops"]["Ours"],
                     "budget": s["flops"]["budget"], "latency_heavy_ms": s["latency_ms"]["heavy"],
                     "latency_mel_ms": _na(s["latency_ms"].get("MeL")), "latency_ours_ms": s["latency_ms"]["Ours"],
                     "seconds_ours": s["seconds"]["ours"]})
        say(f"{scen}: Ours test AUC {rows[-1]['auc_ours']:.4f} ({rows[-1]['flops_ours']:,} FLOPs, budget "
            f"{rows[-1]['budget']:,}); MeL {rows[-1]['auc_mel']:.4f}")
        if reg is not None:
            refs = publish_onboarding(reg, done, dataset=safe_name(data.spec.name),
                                      data_split={"tables": data_cfg.tables, "seed": data_cfg.split_seed},
                                      extra_lineage={"teacher_folder": str(models / safe_name(scen))})
            published.append({"scenario": scen, "name": refs["light"][0], "version": refs["light"][1]})
    table = pd.DataFrame(rows, columns=LIGHT_COLUMNS)
    with atomic_path(out / "per_scenario.csv") as tmp:
        table.to_csv(tmp, index=False)
    atomic_write_json(out / "metrics.json", {
        "mean_auc_mel": float(table["auc_mel"].mean()), "mean_auc_ours": float(table["auc_ours"].mean()),
        "per_scenario": table.replace({np.nan: None}).to_dict(orient="records"), "published": published,
        "config": config_to_dict(dataclasses.replace(cfg, data=data_cfg))})
    return table


def evaluate_teacher(teacher, rows: ScenarioRows) -> float | None:
    """θu's test AUC on the scenario's rows (for the report)."""
    from longtail.metrics import auc, predict_proba

    return auc(rows.test_labels, predict_proba(teacher, rows.test))


def _na(x: float | None) -> float:
    return np.nan if x is None else float(x)
