"""Hyperparameter optimisation of the heavy model: one trial, and a whole local job.

* `run_trial` is ``longtail hpo trial``: it trains the heavy model with the trial's
  ``--set`` overrides and prints its validation AUC per epoch and at the end, in the form
  Katib's StdOut collector reads. The same command line runs a local trial and a Katib
  trial container (see `longtail.hpo.trial_protocol`).
* `run_hpo` is ``longtail hpo run``: a search space, a strategy and a budget (`HPOJobConfig`)
  run by the `TrialRunner`, each trial being the command above in its own process.

The objective is the validation AUC (the validation split of the training rows); the test
split is never seen by the search.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from longtail.config import config_to_dict, load_config, parse_overrides, save_config
from longtail.data.prepared import DataConfig
from longtail.data.tables import JOIN_CACHE_ENV
from longtail.hpo.algorithms import create_algorithm
from longtail.hpo.runner import Budget, CommandEvaluator, HPOResult, MedianStopping, TrialRunner
from longtail.hpo.space import SearchSpace, format_value, load_space
from longtail.hpo.trial_protocol import (
    METRIC,
    STEP_KEY,
    TRIAL_COMMAND,
    flatten,
    local_trial_command,
    metric_line,
    trial_args,
)
from longtail.io import atomic_write_json
from longtail.models.heavy import HeavyConfig
from longtail.train import TrainConfig

__all__ = ["TRIAL_COMMAND", "HPOJobConfig", "TrialConfig", "run_hpo", "run_trial"]


@dataclass(frozen=True)
class TrialConfig:
    """The config of one trial (what ``--set`` keys and a space's targets address).

    Args:
        data: the table set and its splits.
        model: the heavy model's architecture.
        train: the training settings.
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: HeavyConfig = field(default_factory=HeavyConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass(frozen=True)
class HPOJobConfig:
    """The effective config of a ``longtail hpo run`` job (saved as ``config.yaml`` in ``out``).

    Args:
        space: a packaged space name (``heavy``, ``fig3``) or a space YAML file.
        algorithm: a registered strategy (``racos``, ``tpe``, ``cmaes``, ``random``, ``grid``).
        seed: the strategy's seed.
        data: the table set every trial trains on.
        trial: config keys set for every trial (dotted or nested), e.g. ``{train.epochs: 3}``.
        budget: trials, seconds and parallel trials.
        early_stopping: early stopping of futureless trials (median stopping or successive halving).
        out: the job folder (journal, trial folders, ``trials.csv``, ``best_auc.png``, ``best.json``).
        save_models: also save each trial's model under ``out/trials/<id>/model``.
    """

    space: str = "heavy"
    algorithm: str = "racos"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    trial: dict[str, Any] = field(default_factory=dict)
    budget: Budget = field(default_factory=Budget)
    early_stopping: MedianStopping = field(default_factory=MedianStopping)
    out: str = "runs/hpo"
    save_models: bool = False


# ---------------------------------------------------------------------- one trial
def _trial_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=" ".join(TRIAL_COMMAND),
                                description="train the heavy model once and print its validation AUC")
    p.add_argument("--config", help="YAML trial config (data/model/train); defaults < file < --set")
    p.add_argument("--data", help="table-set folder (data.tables)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.lr=0.001 --set model.profile_dims='64, 16'")
    p.add_argument("--out", help="save the trained model folder here")
    return p


def run_trial(argv: list[str] | None = None) -> int:
    """``longtail hpo trial``: train once with the given settings; print metrics for Katib.

    Prints ``epoch=E valid-auc=V train-loss=L`` after every epoch and ``valid-auc=BEST`` last
    (stdout); progress and errors go to stderr.

    Args:
        argv: the arguments after the command (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 with a final ``valid-auc`` line, 1 when training failed or gave no
        validation AUC, 2 for a bad config.
    """
    args = _trial_parser().parse_args(argv)
    from longtail.config import ConfigError

    try:
        overrides = parse_overrides(args.set)
        if args.data:
            overrides.setdefault("data", {})["tables"] = args.data
        cfg = load_config(TrialConfig, args.config, overrides)
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    try:
        best = _train(cfg, args.out)
    except Exception as e:  # noqa: BLE001 - a trial reports any failure as its last line
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return 1
    if best is None or not np.isfinite(best):
        print("error: no validation AUC (the validation split is empty or has a single class); "
              "use more scenarios or a larger data.valid_frac", file=sys.stderr, flush=True)
        return 1
    print(metric_line(best), flush=True)
    return 0


def _train(cfg: TrialConfig, out: str | None) -> float | None:
    # train_heavy with an on_epoch callback that prints the Katib metric lines
    from longtail.data.prepared import prepare
    from longtail.data.splits import TRAIN, VALID
    from longtail.model_folder import save_model_dir
    from longtail.train_job import train_heavy

    data = prepare(cfg.data)
    scenarios = data.scenarios
    print(f"trial: {len(data.rows(TRAIN, scenarios))} training and {len(data.rows(VALID, scenarios))} validation "
          f"rows, {len(scenarios)} scenarios", file=sys.stderr, flush=True)

    def on_epoch(rec: dict[str, Any]) -> None:
        if rec["valid_auc"] is not None:
            print(metric_line(rec["valid_auc"], rec["epoch"], rec["train_loss"]), flush=True)

    trained = train_heavy(data, scenarios, cfg.model, cfg.train, on_epoch=on_epoch)
    result = trained.result
    if out:
        save_model_dir(out, trained.model, trained.transforms, cfg.model, {
            "scenarios": scenarios, "best_valid_auc": result.best_valid_auc, "epochs_run": result.epochs_run,
            "train_seconds": trained.seconds, "trial_config": config_to_dict(cfg)})
    return result.best_valid_auc


# ---------------------------------------------------------------------- a job
def job_overrides(cfg: HPOJobConfig) -> dict[str, Any]:
    """Config keys every trial of the job gets (before the space's own): non-default data
    settings and the job's ``trial`` settings."""
    base: dict[str, Any] = {}
    default = DataConfig()
    for key, value in config_to_dict(cfg.data).items():
        if key != "tables" and value != config_to_dict(default)[key]:
            base[f"data.{key}"] = ",".join(map(str, value)) if isinstance(value, list) else value
    base.update(flatten(cfg.trial))
    return base


def check_targets(space: SearchSpace, base: dict[str, Any]) -> TrialConfig:
    """Fail early (with the key) when a space or the job's settings name unknown config keys.

    Every parameter's target is set to its first candidate (or lower bound) together with the
    fixed and job settings, and the result is built as a `TrialConfig`.

    Returns:
        That `TrialConfig` (the first point of the space).

    Raises:
        longtail.config.ConfigError: naming the key.
    """
    overrides = dict(base)
    overrides.update(space.fixed)
    for p in space:
        overrides[p.target] = p.values[0] if p.type == "categorical" else p.clip(p.low)
    nested = parse_overrides([f"{k}={format_value(v)}" for k, v in overrides.items()])  # as a trial reads them
    return load_config(TrialConfig, None, nested)


def run_hpo(cfg: HPOJobConfig, log=None) -> HPOResult:
    """Run (or resume) a local HPO job of the heavy model.

    Writes ``config.yaml``, ``journal.jsonl``, ``trials/<id>/`` (command and output),
    ``join-cache/`` (the joined table set the trials share, unless ``LONGTAIL_JOIN_CACHE`` names
    another folder),
    ``trials.csv``, ``best_auc.png`` and ``best.json`` (the best trial's value, params and the
    config keys to retrain it with) into ``cfg.out``. Rerunning the same job resumes it.

    Args:
        cfg: the job config.
        log: called with one progress line per event (default: printed with rich).

    Returns:
        The `HPOResult`.
    """
    from longtail.data.prepared import load_tables
    from longtail.runs import check_devices, tables_digest

    out = Path(cfg.out)
    space = load_space(cfg.space)
    base = job_overrides(cfg)
    check_devices(check_targets(space, base))  # e.g. trial.train.device=cuda on a machine without CUDA
    table_set = load_tables(cfg.data)  # checked before the job folder exists: a bad set leaves nothing behind
    algorithm = create_algorithm(cfg.algorithm, space, seed=cfg.seed, max_trials=cfg.budget.max_trials)
    tables = str(Path(cfg.data.tables).resolve())

    def argv(params: dict[str, Any], workdir: Path) -> list[str]:
        model_dir = str(workdir / "model") if cfg.save_models else None
        return [*local_trial_command(), *trial_args({**base, **space.overrides(params)}, data=tables, out=model_dir)]

    # every trial prepares the same table set: join and validate it once, in a cache the trials share
    env = {JOIN_CACHE_ENV: os.environ.get(JOIN_CACHE_ENV) or str((out / "join-cache").resolve())}
    # the journal is bound to the table set's content (a moved set resumes, a rebuilt one with other rows does not)
    runner = TrialRunner(space, algorithm, CommandEvaluator(argv, metric=METRIC, step_key=STEP_KEY, env=env),
                         cfg.budget, out / "journal.jsonl", cfg.early_stopping, log=log,
                         context={"trial_settings": base, "tables": tables_digest(table_set),
                                  "save_models": cfg.save_models})
    runner.check_journal()  # another job's folder is refused before its config.yaml is touched
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    result = runner.run()
    best = None
    if result.best_trial is not None:
        best = {"trial": result.best_trial, "value": result.best_value, "metric": METRIC,
                "params": result.best_params, "overrides": {**base, **space.overrides(result.best_params)},
                "model": str(out / "trials" / str(result.best_trial) / "model") if cfg.save_models else None}
    atomic_write_json(out / "best.json", {"best": best, "complete": result.complete,
                                          "trials": int(len(result.trials)),
                                          "statuses": result.trials["status"].value_counts().to_dict()})
    return result


if __name__ == "__main__":
    sys.exit(run_trial(sys.argv[1:]))
