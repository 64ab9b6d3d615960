"""Choosing θ0, the scenario-agnostic heavy model (paper Fig. 4).

Two candidates are built on the pooled rows of the initial scenarios:

* **hpo**: the pre-designed heavy model (LSTM or BERT encoder) with hyperparameters tuned by an
  HPO job (RACOS by default, `longtail.hpo`), then retrained with the best trial's settings;
* **nas**: a heavy behavior encoder searched by `longtail.nas.heavy.search_heavy` (loose or no
  FLOPs bound), then trained with the job's training settings.

Both are scored on the **same validation rows** (the initial scenarios' validation split; both fit
their transforms on the same training rows) by the best validation AUC of their training, the
better one is kept as θ0, and both are saved (``<out>/candidates/<name>``) and, with a registry,
published as ``<dataset>.theta0-hpo`` / ``<dataset>.theta0-nas`` (kind ``agnostic``) with their
scores and ``chosen`` in the metrics. ``<out>/choice.json`` is written last: it names the chosen
candidate and the model folder that initialises the θ0 store.

Note: the HPO candidate's settings and the NAS candidate's architecture were both selected on
these validation rows, so both scores are optimistic in the same way; the comparison is fair
between them, not an estimate of test AUC.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longtail.config import config_to_dict, load_config, parse_overrides, save_config
from longtail.data.prepared import DataConfig, PreparedData, prepare
from longtail.hpo.runner import Budget, MedianStopping
from longtail.io import atomic_write_json
from longtail.model_folder import save_model_dir
from longtail.models.flops import count_flops
from longtail.models.heavy import HeavyConfig
from longtail.nas.heavy import HeavySearchConfig, search_heavy
from longtail.train import TrainConfig
from longtail.train_job import train_heavy

__all__ = ["CANDIDATES", "AgnosticJobConfig", "HPOCandidateConfig", "Theta0Choice", "choose_theta0",
           "initial_scenarios", "save_chosen"]

CANDIDATES = ("hpo", "nas")


@dataclass(frozen=True)
class HPOCandidateConfig:
    """The HPO job behind the ``hpo`` candidate (see `longtail.hpo.trial.HPOJobConfig`).

    Args:
        space: a packaged space (``heavy``, ``fig3``) or a space YAML file.
        algorithm: ``racos`` (default), ``tpe``, ``cmaes``, ``random`` or ``grid``.
        seed: the algorithm's seed.
        trial: config keys every trial gets (e.g. ``{"train.epochs": 2}``).
        budget: trials, time and parallel trial processes.
        early_stopping: early stopping of futureless trials (median stopping or successive halving).
    """

    space: str = "heavy"
    algorithm: str = "racos"
    seed: int = 0
    trial: dict[str, Any] = field(default_factory=dict)
    budget: Budget = field(default_factory=lambda: Budget(max_trials=8))
    early_stopping: MedianStopping = field(default_factory=MedianStopping)


@dataclass(frozen=True)
class AgnosticJobConfig:
    """The effective config of ``longtail theta0 choose`` (saved as ``config.yaml`` in ``out``).

    Args:
        data: the table set and its split.
        n_initial: scenarios drawn at random (seeded by ``seed``, as MeH draws them) to build θ0 on;
            0 uses ``data.scenarios`` (or every scenario) as they are.
        seed: seed of the draw.
        candidates: which candidates to build (``hpo``, ``nas``; one of them skips the choice).
        model: the pre-designed heavy model (the HPO candidate's starting point; the NAS
            candidate's profile encoder, head and embeddings).
        train: training of both final candidates (the HPO candidate's best trial may override it).
        hpo: the HPO job.
        nas: the heavy-model search.
        out: job folder.
        registry: when set, both candidates are published there.
    """

    data: DataConfig = field(default_factory=DataConfig)
    n_initial: int = 8
    seed: int = 0
    candidates: tuple[str, ...] = CANDIDATES
    model: HeavyConfig = field(default_factory=HeavyConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    hpo: HPOCandidateConfig = field(default_factory=HPOCandidateConfig)
    nas: HeavySearchConfig = field(default_factory=HeavySearchConfig)
    out: str = "runs/theta0"
    registry: str = ""

    def __post_init__(self) -> None:
        bad = [c for c in self.candidates if c not in CANDIDATES]
        if bad or not self.candidates:
            raise ValueError(f"candidates {list(self.candidates)}: each must be one of {list(CANDIDATES)} "
                             "and at least one is needed")


@dataclass
class Theta0Choice:
    """The outcome: every candidate's score and where the chosen θ0 is.

    Attributes:
        chosen: ``hpo`` or ``nas``.
        candidates: name -> ``{valid_auc, flops, config, train, model_dir, seconds, ...}``.
        scenarios: the initial scenarios both were built on.
        model_dir: the chosen candidate's model folder.
        published: registry records (name, version) of the candidates, when published.
    """

    chosen: str
    candidates: dict[str, dict[str, Any]]
    scenarios: list[str]
    model_dir: str
    published: list[dict[str, Any]] = field(default_factory=list)


def initial_scenarios(data: PreparedData, n_initial: int, seed: int) -> list[str]:
    """The initial scenarios: drawn at random as MeH draws them (``n_initial`` 0: all of ``data``)."""
    if n_initial <= 0:
        return list(data.scenarios)
    from longtail.data.splits import draw_protocol

    return draw_protocol(data.scenarios, n_initial, seed)[0]


def _hpo_candidate(cfg: AgnosticJobConfig, scenarios: list[str], out: Path, log) -> tuple[HeavyConfig, TrainConfig,
                                                                                          dict]:
    from longtail.hpo.space import format_value
    from longtail.hpo.trial import HPOJobConfig, TrialConfig, run_hpo

    job = HPOJobConfig(space=cfg.hpo.space, algorithm=cfg.hpo.algorithm, seed=cfg.hpo.seed,
                       data=DataConfig(**{**config_to_dict(cfg.data), "scenarios": tuple(scenarios)}),
                       trial={**{f"model.{k}": v for k, v in _changed(cfg.model, HeavyConfig()).items()},
                              **{f"train.{k}": v for k, v in _changed(cfg.train, TrainConfig()).items()},
                              **cfg.hpo.trial},
                       budget=cfg.hpo.budget, early_stopping=cfg.hpo.early_stopping, out=str(out / "hpo"))
    result = run_hpo(job, log=log)
    if result.best_trial is None:
        raise RuntimeError(f"HPO job {out / 'hpo'}: no trial finished (see trials.csv); cannot build the hpo "
                           "candidate — fix the failing trials or build only the nas candidate "
                           "(--set candidates=nas)")
    best = json.loads((out / "hpo" / "best.json").read_text())["best"]
    overrides = {k: v for k, v in best["overrides"].items() if k.startswith(("model.", "train."))}
    trial = load_config(TrialConfig, None, parse_overrides([f"{k}={format_value(v)}" for k, v in overrides.items()]))
    return trial.model, trial.train, {"hpo_best_trial": best["trial"], "hpo_best_value": best["value"],
                                      "hpo_params": best["params"], "hpo_trials": int(len(result.trials))}


def _changed(cfg, default) -> dict[str, Any]:
    """Top-level fields of a config that differ from the default (so trials start from the job's model)."""
    a, b = config_to_dict(cfg), config_to_dict(default)
    return {k: v for k, v in a.items() if v != b[k] and not isinstance(v, dict)}


def choose_theta0(cfg: AgnosticJobConfig, data: PreparedData | None = None, log=None) -> Theta0Choice:
    """Build the θ0 candidates on the initial scenarios, score them on the same validation rows, keep the better.

    Args:
        cfg: the job config.
        data: prepared rows (default: prepared from ``cfg.data``).
        log: called with progress lines.

    Returns:
        The `Theta0Choice`; ``<out>/choice.json`` holds the same facts.

    Raises:
        longtail.runs.RunMismatch: ``cfg.out`` holds a job made from other data or settings (the job
            folder is bound to its fingerprint, `longtail.runs`; the same job resumes).
    """
    from longtail.data.prepared import load_tables
    from longtail.runs import check_devices, fingerprint, run_folder

    log = log or (lambda _m: None)
    out = Path(cfg.out)
    check_devices(cfg)
    tables = load_tables(cfg.data)  # checked before the job folder exists: a bad set leaves nothing behind
    fp = fingerprint("theta0 choose", cfg, tables, ignore=("data.tables", "out", "registry"))
    data = data or prepare(cfg.data, tables)
    with run_folder(out, fp):
        save_config(cfg, out / "config.yaml")
        return _choose(cfg, data, out, log)


def _choose(cfg: AgnosticJobConfig, data: PreparedData, out: Path, log) -> Theta0Choice:
    scenarios = initial_scenarios(data, cfg.n_initial, cfg.seed)
    log(f"θ0 candidates {list(cfg.candidates)} on {len(scenarios)} initial scenarios {scenarios}")
    results: dict[str, dict[str, Any]] = {}
    for name in cfg.candidates:
        t0 = time.perf_counter()
        extra: dict[str, Any] = {}
        if name == "hpo":
            model_cfg, train_cfg, extra = _hpo_candidate(cfg, scenarios, out, log)
        else:
            found = search_heavy(data, scenarios, cfg.model, cfg.nas, log=log)
            model_cfg, train_cfg = found.config, cfg.train
            extra = {"search_seconds": found.seconds, "search_bound": found.budget, "log_prob": found.log_prob,
                     "genotypes": found.info["genotypes"]}
        folder = out / "candidates" / name
        trained = train_heavy(data, scenarios, model_cfg, train_cfg, folder, description=f"θ0 candidate {name}",
                              log=log)
        auc = trained.result.best_valid_auc
        results[name] = {"valid_auc": auc, "flops": count_flops(trained.model)["total"],
                         "config": model_cfg.to_dict(), "train": config_to_dict(train_cfg),
                         "model_dir": str(folder), "seconds": time.perf_counter() - t0, **extra}
        log(f"θ0 candidate {name}: validation AUC {auc if auc is None else round(auc, 4)}, "
            f"{results[name]['flops']:,} FLOPs/sample ({results[name]['seconds']:.0f}s)")
    scored = {k: v["valid_auc"] for k, v in results.items() if v["valid_auc"] is not None}
    if not scored:
        raise RuntimeError(f"no θ0 candidate has a validation AUC (validation rows of {scenarios} hold one class?)")
    chosen = max(scored, key=lambda k: (scored[k], k == "hpo"))  # ties: the pre-designed model
    choice = Theta0Choice(chosen, results, scenarios, results[chosen]["model_dir"])
    if cfg.registry:
        choice.published = _publish(cfg, choice, data.spec.name)
    atomic_write_json(out / "choice.json", {
        "chosen": chosen, "model_dir": choice.model_dir, "scenarios": scenarios,
        "candidates": results, "published": choice.published})
    log(f"θ0: chose {chosen} ({' vs '.join(f'{k} {v:.4f}' for k, v in scored.items())})")
    return choice


def _publish(cfg: AgnosticJobConfig, choice: Theta0Choice, dataset: str) -> list[dict[str, Any]]:
    from longtail.registry import lineage, open_registry

    reg = open_registry(cfg.registry)
    records = []
    for name, r in choice.candidates.items():
        v = reg.publish(f"{dataset}.theta0-{name}", r["model_dir"], kind="agnostic",
                        metrics={"valid_auc": r["valid_auc"], "flops": r["flops"], "chosen": name == choice.chosen},
                        lineage=lineage(data_split={"tables": cfg.data.tables, "seed": cfg.data.split_seed},
                                        scenarios=choice.scenarios, candidate=name,
                                        theta0_choice=str(Path(cfg.out) / "choice.json")))
        records.append({"name": v.name, "version": v.version, "candidate": name, "chosen": name == choice.chosen})
    return records


def save_chosen(choice: Theta0Choice, dest: str | Path) -> Path:
    """Copy the chosen θ0 as a model folder (for ``create_theta0_store``)."""
    from longtail.model_folder import load_model_dir

    model, transforms, info = load_model_dir(choice.model_dir)
    return save_model_dir(dest, model, transforms, HeavyConfig.from_dict(info["config"]),
                          {k: v for k, v in info.items() if k not in ("kind", "config", "schema")})
