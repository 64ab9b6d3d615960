"""The `longtail` command line.

    longtail data import SPEC.yaml --out DIR   (your raw files -> a table set; docs/your-data.md)
    longtail data example ratings|flights --out DIR   (example raw files and their import spec)
    longtail data build flights   [--out data/flights] [--months 1,2]
    longtail data build synthetic [--out data/synthetic] [--scenarios 6] [--max-rows 3000] ...
    longtail data validate DIR
    longtail train    --data DIR [--config FILE] [--set key=value ...] [--out DIR] [--strategy global|single]
    longtail evaluate RUN_DIR
    longtail meta run [--strategy sinh|meh] [--recipe default|paper|toolbox] [--data DIR] [--out DIR] [--set ...]
    longtail nas light --meh-out RUN [--recipe default|paper|toolbox] [--registry R]
    longtail registry list|show|promote|rollback|serving|gc
    longtail pipelines ... / serve ... / drift ...   (the integration layers' command groups)

Every run writes its effective config and metrics (JSON) beside its outputs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from rich.markup import escape
from rich.table import Table

from longtail import __version__
from longtail.cli_common import auc_table, config_args, console, err, job_config
from longtail.cli_common import fmt as _fmt
from longtail.cli_common import human as _human
from longtail.config import ConfigError
from longtail.data.tables import TableSetError
from longtail.hpo.algorithms import UnknownAlgorithm
from longtail.hpo.katib import KatibError
from longtail.hpo.runner import JournalMismatch
from longtail.hpo.space import SpaceError
from longtail.model_folder import ModelFolderError
from longtail.registry.errors import RegistryError
from longtail.runs import RunMismatch
from longtail.spec import SpecError
from longtail.train import CheckpointMismatch


# ---------------------------------------------------------------------- commands
def cmd_data_build(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    if args.source == "flights":
        from longtail.data.flights import build_flights

        out = Path(args.out or "data/flights")
        months = tuple(int(m) for m in args.months.split(",")) if args.months else None
        with console.status("building flights tables") as status:
            ts = build_flights(out, months=months, progress=lambda msg: status.update(msg))
    else:
        from longtail.data.synthetic import SyntheticConfig, build_synthetic

        out = Path(args.out or "data/synthetic")
        cfg = SyntheticConfig(n_scenarios=args.scenarios, max_rows=args.max_rows, min_rows=args.min_rows,
                              seed=args.seed)
        ts = build_synthetic(out, cfg)
    _print_table_rows(ts, out, time.perf_counter() - t0)
    return 0


def _print_table_rows(ts: Any, out: Path, seconds: float) -> None:
    """The rows of each table of a table set just written to ``out``."""
    t = Table(title=f"{ts.spec.name} tables in {out} ({seconds:.1f}s)")
    t.add_column("table")
    t.add_column("rows", justify="right")
    for k, v in ts.manifest["rows"].items():
        t.add_row(k, f"{v:,}")
    console.print(t)


def cmd_data_import(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from longtail.data.importer import ImportSpec, import_tables

    t0 = time.perf_counter()
    spec = ImportSpec.from_yaml(args.spec)
    out = Path(args.out or f"data/{spec.name}")
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=not console.is_terminal) as bar:
        tasks: dict[str, Any] = {}
        overall = bar.add_task("import", total=None)

        def progress(stage: str, done: int, total: int) -> None:
            if stage.startswith("sequence "):  # rows of one log, built in chunks
                if stage not in tasks:
                    tasks[stage] = bar.add_task(f"{stage} (log rows)", total=max(total, 1))
                bar.update(tasks[stage], completed=done)
            else:
                bar.update(overall, description=f"import: {stage}", completed=done, total=total)

        ts = import_tables(spec, out, base_dir=Path(args.spec).parent, progress=progress)
    meta = ts.manifest["meta"]
    _print_table_rows(ts, out, time.perf_counter() - t0)
    for where, n in meta["left_out_by_where"].items():
        console.print(f"{where}: {n:,} row(s) left out by its `where`")
    for rec in meta["scenario_policy"]:
        console.print(f"[yellow]scenario {rec['scenario']}[/yellow]: {rec['rows']} row(s), {rec['positives']} "
                      f"positive: {rec['action']} (scenarios: min_rows {ts.spec.scenario_rules.min_rows}, "
                      f"min_per_class {ts.spec.scenario_rules.min_per_class})")
    for name, n in meta["superseded_within_refresh"].items():
        console.print(f"profile {name}: {n:,} row(s) superseded by a newer one within the same refresh")
    cov = meta["coverage"]
    n_events = meta["events"]
    for p in ts.spec.profile_tables:
        misses = cov[p.name]["join_misses"]
        if misses:
            console.print(f"profile {p.name}: {misses:,} of {n_events:,} events find no row (allowed: required: false)")
    for s in ts.spec.sequences:
        c = cov[s.name]
        console.print(f"sequence {s.name}: {c['mean_steps']:.1f} steps per event on average; "
                      f"{c['events_without_history']:,} of {n_events:,} events have none yet")
    console.print(f"next: longtail data validate {out}")
    return 0


def cmd_data_example(args: argparse.Namespace) -> int:
    from longtail.data.examples import write_example

    months = tuple(int(m) for m in args.months.split(",")) if args.months else None
    spec = write_example(args.name, args.out, months=months)
    files = sorted(p.name for p in Path(args.out).iterdir() if not p.name.startswith("."))
    console.print(f"wrote {', '.join(files)} to {args.out}")
    console.print(f"next: longtail data import {spec} --out DIR")
    return 0


def cmd_data_validate(args: argparse.Namespace) -> int:
    from longtail.data.tables import TableSet, point_in_time_join
    from longtail.spec import scenario_counts, step_counts

    ts = TableSet.load(args.dir, check=False)
    spec = ts.spec
    table_problems = ts.problems()  # files, columns, types, empty tables, missing times: before any join
    if table_problems:
        for p in table_problems:
            err.print(f"[red]problem:[/red] {escape(p)}", soft_wrap=True)
        err.print(f"[red]invalid[/red]: {len(table_problems)} problem(s) in the tables of {args.dir}; nothing was joined")
        return 2
    with console.status("joining snapshots point in time"):
        df = point_in_time_join(ts)
    problems = spec.problems(df)
    problems += [p for p in spec.scenario_problems(df) if p.split(":")[0] not in " ".join(problems)]
    t = Table(title=f"{spec.name}: {len(df):,} events")
    t.add_column("scenario")
    t.add_column("events", justify="right")
    t.add_column("positive rate", justify="right")
    for s in spec.sequences:
        t.add_column(f"{s.name} mean steps", justify="right")
    lengths = {s.name: step_counts(df[s.column(s.field_names[0])]) for s in spec.sequences}
    scen = df[spec.scenario].astype(str)
    for name, rows, pos in scenario_counts(spec, df).itertuples(index=False):
        mask = (scen == name).to_numpy()
        steps = [f"{lengths[s.name][mask].mean():.1f}" for s in spec.sequences]
        t.add_row(name, f"{rows:,}", f"{pos / rows:.3f}", *steps)
    console.print(t)
    for p in spec.profile_tables:
        misses = spec.join_misses(df).get(p.name)
        what = "no as-of column (a set built before profiles had one): misses show as NaN" if misses is None else (
            f"{misses:,} join miss(es)" + ("" if p.required or not misses else " (allowed: required: false)"))
        console.print(f"profile {p.name} (view {p.view_name}, key {p.entity_key}): {what}")
    for s in spec.sequences:
        empty = int((lengths[s.name] == 0).sum())
        console.print(f"sequence {s.name} (view {s.view_name}, key {spec.sequence_entity(s)}): {empty:,} of "
                      f"{len(df):,} events without history")
    if problems:
        for p in problems:
            err.print(f"[red]problem:[/red] {escape(p)}", soft_wrap=True)
        err.print(f"[red]invalid[/red]: {len(problems)} problem(s) in the joined rows of {args.dir}")
        return 2
    console.print("[green]valid[/green]: every column satisfies the spec; no step or profile snapshot at or after "
                  "its event time; every scenario meets the scenario rules")
    return 0


def _train_config(args: argparse.Namespace):
    from longtail.train_job import TrainJobConfig

    return job_config(TrainJobConfig, args, **{"data.tables": args.data, "strategy": args.strategy,
                                                "train.epochs": args.epochs, "model.encoder": args.encoder})


def cmd_train(args: argparse.Namespace) -> int:
    from longtail.train_job import run_train

    cfg = _train_config(args)
    out = Path(args.out or f"runs/{cfg.strategy}-{cfg.model.encoder}")
    metrics = run_train(cfg, out, show_progress=True, log=lambda m: console.print(f"[dim]{m}[/dim]"))
    per = pd.DataFrame(metrics["per_scenario"]).replace({None: np.nan})
    console.print(auc_table(per, f"{cfg.strategy} heavy ({cfg.model.encoder}): test AUC per scenario"))
    _print_costs(metrics)
    console.print(f"run folder: {out}  (config.yaml, metrics.json, per_scenario.csv, models/)  "
                  f"wall {metrics['wall_seconds']:.0f}s")
    return 0


def _print_costs(metrics: dict[str, Any]) -> None:
    for name, m in metrics["models"].items():
        if "flops" in m:
            console.print(f"model {name}: {_human(m['flops']['total'])} FLOPs/sample, batch-1 CPU latency "
                          f"p50 {m['latency']['p50_ms']:.2f} ms; trained {m['epochs_run']} epoch(s) in "
                          f"{m['train_seconds']:.0f}s")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from longtail.config import config_from_dict
    from longtail.data.prepared import load_tables, prepare
    from longtail.io import atomic_write_json
    from longtail.model_folder import load_model_dir
    from longtail.runs import RUN_FILE, differences, fingerprint
    from longtail.train_job import TrainJobConfig, cost_of, evaluate_heavy

    run = Path(args.run)
    if not (run / "config.yaml").exists() or not (run / "metrics.json").exists():
        raise FileNotFoundError(f"{run}: no config.yaml or metrics.json; pass the folder of a finished `longtail "
                                "train` run")
    cfg = config_from_dict(TrainJobConfig, yaml.safe_load((run / "config.yaml").read_text()), str(run / "config.yaml"))
    tables = load_tables(cfg.data)
    if (run / RUN_FILE).exists():  # TEST rows of another table set are not this run's TEST rows
        diffs = differences(json.loads((run / RUN_FILE).read_text()),
                            fingerprint("train", cfg, tables, ignore=("data.tables",)))
        if diffs:
            raise RunMismatch(f"{run} was made from other inputs than the table set it names now: {'; '.join(diffs)}; "
                              "its TEST rows would not be the run's. Evaluate on the table set the run was made from")
    data = prepare(cfg.data, tables)
    tables, costs = [], {}
    for mdir in sorted(p for p in (run / "models").iterdir() if not p.name.startswith(".")):
        model, tf, info = load_model_dir(mdir)
        tables.append(evaluate_heavy(model, tf, data, list(info["scenarios"])))
        costs[mdir.name] = cost_of(model, tf, data, cfg.latency_repeats)
    per = pd.concat(tables, ignore_index=True).sort_values("n", ascending=False)
    console.print(auc_table(per, f"{run}: test AUC per scenario"))
    first = next(iter(costs.values()))
    console.print(f"{_human(first['flops']['total'])} FLOPs/sample; batch-1 CPU latency p50 "
                  f"{first['latency']['p50_ms']:.2f} ms")
    atomic_write_json(run / "evaluation.json", {"per_scenario": per.replace({np.nan: None}).to_dict("records"),
                                                "mean_auc": float(per["auc"].mean()), "costs": costs})
    console.print(f"wrote {run / 'evaluation.json'}")
    return 0


def cmd_meta_run(args: argparse.Namespace) -> int:
    from longtail.onboarding.protocol import StrategyJobConfig, run_strategy

    cfg = job_config(StrategyJobConfig, args, **{"data.tables": args.data, "strategy": args.strategy,
                                                  "recipe.preset": args.recipe, "recipe.train.epochs": args.epochs,
                                                  "recipe.model.encoder": args.encoder, "workers": args.workers})
    out = Path(args.out or f"runs/{cfg.strategy}-{cfg.recipe.model.encoder}")
    metrics = run_strategy(cfg, out, log=lambda m: console.print(f"[dim]{m}[/dim]"))
    per = pd.DataFrame(metrics["per_scenario"]).replace({None: np.nan})
    per = per.rename(columns={"n_test": "n"})
    console.print(auc_table(per, f"{metrics['strategy']} ({cfg.recipe.model.encoder}): test AUC per scenario"))
    console.print(f"run folder: {out}")
    return 0


def cmd_meta_refresh(args: argparse.Namespace) -> int:
    from longtail.onboarding.protocol import RefreshJobConfig, run_refresh

    cfg = job_config(RefreshJobConfig, args, **{"store": args.store, "data.tables": args.data})
    run_refresh(cfg, log=console.print)
    return 0


def _registry(args: argparse.Namespace):
    from longtail.registry import open_existing_registry

    return open_existing_registry(args.registry)  # a typo in --registry is an error, not a new empty registry


def cmd_registry_list(args: argparse.Namespace) -> int:
    reg = _registry(args)
    t = Table(title=f"models in {args.registry}")
    t.add_column("name", no_wrap=True)
    for c in ("version", "kind", "scenario"):
        t.add_column(c, no_wrap=True)
    t.add_column("metrics", overflow="fold")
    t.add_column("created", overflow="fold")
    for name in reg.list_models():
        for v in reg.list_versions(name):
            mv = reg.get(name, v)
            metrics = ", ".join(f"{k}={_fmt(x) if isinstance(x, float) else x}" for k, x in mv.metrics.items())
            t.add_row(name, str(v), mv.kind, mv.scenario or "—", escape(metrics), mv.created_at)
    console.print(t)
    return 0


def cmd_registry_show(args: argparse.Namespace) -> int:
    mv = _registry(args).get(args.name, args.version)
    console.print_json(data=mv.to_dict())
    return 0


def _print_serving(reg, scenario: str) -> None:
    cur = reg.serving(scenario)
    console.print(f"scenario {scenario}: serving " + (f"{cur[0]} v{cur[1]}" if cur else "nothing"))


def cmd_registry_promote(args: argparse.Namespace) -> int:
    reg = _registry(args)
    reg.promote(args.scenario, args.name, args.version, note=args.note or "")
    _print_serving(reg, args.scenario)
    return 0


def cmd_registry_rollback(args: argparse.Namespace) -> int:
    reg = _registry(args)
    reg.rollback(args.scenario, note=args.note or "")
    _print_serving(reg, args.scenario)
    return 0


def cmd_registry_serving(args: argparse.Namespace) -> int:
    reg = _registry(args)
    _print_serving(reg, args.scenario)
    for h in reg.history(args.scenario):
        console.print(escape(json.dumps(h, sort_keys=True)))
    return 0


def cmd_registry_gc(args: argparse.Namespace) -> int:
    from longtail.registry import collect_garbage

    report = collect_garbage(_registry(args), max_age_s=args.older_than * 3600, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    console.print(f"{verb} {len(report.temp_files)} temporary file(s) ({_human(report.temp_bytes)}B) of dead "
                  f"publishes and {len(report.incomplete_versions)} incomplete version(s)"
                  + (f": {', '.join(report.incomplete_versions)}" if report.incomplete_versions else ""),
                  soft_wrap=True)
    if report.kept_incomplete:
        console.print(f"kept {len(report.kept_incomplete)} incomplete version(s) whose publish may still run "
                      f"(younger than {args.older_than:g}h): {', '.join(report.kept_incomplete)}", soft_wrap=True)
    return 0


def _hpo_trial(argv: list[str]) -> int:
    from longtail.hpo.trial import run_trial

    return run_trial(argv)


def cmd_hpo_run(args: argparse.Namespace) -> int:
    from longtail.hpo.trial import HPOJobConfig, run_hpo

    cfg = job_config(HPOJobConfig, args, **{"data.tables": args.data, "space": args.space,
                                             "algorithm": args.algorithm, "budget.max_trials": args.trials,
                                             "budget.parallel": args.parallel, "out": args.out})
    result = run_hpo(cfg, log=lambda m: console.print(f"[dim]{escape(str(m))}[/dim]"))
    console.print(result.trials.to_string(index=False))
    console.print(f"job folder: {cfg.out} (journal, trials.csv, best_auc.png, best.json)")
    return 0


def cmd_hpo_katib(args: argparse.Namespace) -> int:
    from longtail.hpo.katib import katib_experiment
    from longtail.hpo.runner import Budget
    from longtail.hpo.space import load_space

    image = args.image or f"ghcr.io/longtail-ml/longtail:{__version__}"
    exp = katib_experiment(load_space(args.space), args.algorithm, Budget(max_trials=args.trials,
                           parallel=args.parallel), image=image, data_path=args.data, namespace=args.namespace,
                           name=args.name)
    text = yaml.safe_dump(exp, sort_keys=False)
    if args.out:
        from longtail.io import atomic_write_text

        atomic_write_text(args.out, text)
        console.print(f"wrote {args.out}")
    else:
        sys.stdout.write(text)
    return 0


# ---------------------------------------------------------------------- parser
# Command groups of the integration layers (pipelines, serving, drift): each package registers a
# module with ``add_commands(subparsers)`` under the entry-point group below (pyproject.toml) and may list, in
# ``USER_ERRORS``, the exception types its handlers raise for bad input (printed as one clear line
# and exit status 2, like the built-in commands' errors). The core never imports those packages.
COMMAND_GROUP = "longtail.commands"


def _command_groups() -> list[Any]:
    """The modules of the registered command groups (a group whose extra is not installed is left out)."""
    from importlib.metadata import entry_points

    modules = []
    for ep in sorted(entry_points(group=COMMAND_GROUP), key=lambda e: e.name):
        try:
            modules.append(ep.load())
        except ImportError as e:  # e.g. `pip install longtail` without the [pipelines] extra
            _MISSING_GROUPS[ep.name] = str(e)
    return modules


_MISSING_GROUPS: dict[str, str] = {}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="longtail", description="ALT: accurate light models for long-tail scenarios")
    p.add_argument("--version", action="version", version=f"longtail {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="import, build and validate table sets").add_subparsers(dest="data_command",
                                                                                               required=True)
    im = data.add_parser("import", help="build a table set from your raw files (parquet/CSV) and an import spec")
    im.add_argument("spec", help="the import spec YAML (docs/your-data.md); file paths in it are relative to it")
    im.add_argument("--out", help="the table-set folder (default data/<name>)")
    im.set_defaults(func=cmd_data_import)
    ex = data.add_parser("example", help="write an example's raw files and import spec (ratings, flights)")
    ex.add_argument("name", choices=["ratings", "flights"])
    ex.add_argument("--out", required=True, help="folder for the raw files and the import spec")
    ex.add_argument("--months", help="flights: only these months' flights as events, e.g. 1,2 (default all)")
    ex.set_defaults(func=cmd_data_example)
    b = data.add_parser("build", help="build an example table set (flights, synthetic)")
    b.add_argument("source", choices=["flights", "synthetic"])
    b.add_argument("--out", help="destination folder (default data/<source>)")
    b.add_argument("--months", help="flights: only these months, e.g. 1,2 (default all)")
    b.add_argument("--scenarios", type=int, default=6, help="synthetic: number of scenarios")
    b.add_argument("--max-rows", type=int, default=3000, help="synthetic: rows of the largest scenario")
    b.add_argument("--min-rows", type=int, default=60, help="synthetic: rows of the smallest scenario")
    b.add_argument("--seed", type=int, default=0, help="synthetic: seed")
    b.set_defaults(func=cmd_data_build)
    v = data.add_parser("validate", help="join a table set point in time and validate it against its spec")
    v.add_argument("dir")
    v.set_defaults(func=cmd_data_validate)

    def train_args(t: argparse.ArgumentParser, data_default: str | None) -> None:
        config_args(t, "e.g. --set train.epochs=3 --set model.encoder=bert")
        t.add_argument("--data", default=data_default,
                       help="table-set folder (or data.tables in --config); no default: make one with "
                            "`longtail data import` or `longtail data build`")
        t.add_argument("--epochs", type=int, help="shortcut for --set train.epochs=N")
        t.add_argument("--encoder", help="shortcut for --set model.encoder=NAME (lstm, bert, ...)")
        t.add_argument("--out", help="run folder")

    t = sub.add_parser("train", help="train heavy models (global or one per scenario) and evaluate them")
    train_args(t, None)
    t.add_argument("--strategy", choices=["global", "single"], help="global model or SinH (one per scenario)")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="evaluate the models of a run folder per scenario")
    e.add_argument("run")
    e.set_defaults(func=cmd_evaluate)

    meta = sub.add_parser("meta", help="scenario-specific heavy models by meta-learning (SinH, MeH, refresh)")
    msub = meta.add_subparsers(dest="meta_command", required=True)
    m = msub.add_parser("run", help="run a strategy: SinH or MeH (8 initial scenarios, then arrivals)")
    config_args(m, "e.g. --set recipe.meta.finetune.epochs=3 --set recipe.model.encoder=bert")
    m.add_argument("--data", help="table-set folder")
    m.add_argument("--recipe", help="recipe preset (default, paper, toolbox); its fields with --set recipe.x=y")
    m.add_argument("--epochs", type=int, help="shortcut for --set recipe.train.epochs=N (θ0 and SinH)")
    m.add_argument("--encoder", help="shortcut for --set recipe.model.encoder=NAME (lstm, bert, ...)")
    m.add_argument("--out", help="run folder")
    m.add_argument("--strategy", choices=["sinh", "meh"], help="strategy (default meh)")
    m.add_argument("--workers", type=int, help="MeH: concurrent onboarding processes")
    m.set_defaults(func=cmd_meta_run)
    r = msub.add_parser("refresh", help="meta-train: refresh theta0 on the stored rows of all scenarios seen")
    r.add_argument("--store", help="theta0 store folder (e.g. runs/meh-lstm/theta0)")
    r.add_argument("--data", help="table-set folder the store was built from")
    config_args(r, "e.g. --set train.epochs=1")
    r.set_defaults(func=cmd_meta_refresh)

    rg = sub.add_parser("registry", help="the model registry: list, show, promote, rollback, serving, gc")
    rg.add_argument("--registry", default=os.environ.get("LONGTAIL_REGISTRY", "runs/registry"),
                    help="a folder, file:// or s3://bucket/prefix URI (default $LONGTAIL_REGISTRY or runs/registry)")
    rsub = rg.add_subparsers(dest="registry_command", required=True)
    rsub.add_parser("list", help="every published version").set_defaults(func=cmd_registry_list)
    sh = rsub.add_parser("show", help="one version's manifest (files, metrics, lineage)")
    sh.add_argument("name")
    sh.add_argument("version", type=int)
    sh.set_defaults(func=cmd_registry_show)
    pr = rsub.add_parser("promote", help="serve NAME VERSION for SCENARIO")
    pr.add_argument("scenario")
    pr.add_argument("name")
    pr.add_argument("version", type=int)
    pr.add_argument("--note")
    pr.set_defaults(func=cmd_registry_promote)
    rb = rsub.add_parser("rollback", help="serve SCENARIO's previously promoted version again")
    rb.add_argument("scenario")
    rb.add_argument("--note")
    rb.set_defaults(func=cmd_registry_rollback)
    sv = rsub.add_parser("serving", help="what serves SCENARIO, and the pointer's history")
    sv.add_argument("scenario")
    sv.set_defaults(func=cmd_registry_serving)
    gc = rsub.add_parser("gc", help="remove what killed publishes left: temporary files, incomplete versions")
    gc.add_argument("--older-than", type=float, default=24.0, metavar="HOURS",
                    help="also remove leftovers older than this, whoever wrote them (default 24; those of dead "
                         "processes on this host go at once)")
    gc.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    gc.set_defaults(func=cmd_registry_gc)

    hp = sub.add_parser("hpo", help="hyperparameter optimisation of the heavy model (local runner, Katib)")
    hsub = hp.add_subparsers(dest="hpo_command", required=True)
    hr = hsub.add_parser("run", help="run an HPO job locally: parallel trial processes, journal, resume")
    config_args(hr, "e.g. --set trial.train.epochs=3 --set budget.trial_seconds=600")
    hr.add_argument("--data", help="table-set folder")
    hr.add_argument("--space", help="packaged space (heavy, fig3) or a YAML file")
    hr.add_argument("--algorithm", help="racos (default), tpe, cmaes, random, grid")
    hr.add_argument("--trials", type=int, help="maximum trials")
    hr.add_argument("--parallel", type=int, help="trials at once")
    hr.add_argument("--out", help="job folder (rerun the same command to resume)")
    hr.set_defaults(func=cmd_hpo_run)
    ht = hsub.add_parser("trial", add_help=False, help="one trial (the command a Katib trial container runs)")
    ht.add_argument("rest", nargs=argparse.REMAINDER, help="see `longtail hpo trial --help`")
    hk = hsub.add_parser("katib", help="write the Katib v1beta1 Experiment for a search space")
    hk.add_argument("--space", default="heavy")
    hk.add_argument("--algorithm", default="racos")
    hk.add_argument("--trials", type=int, default=12)
    hk.add_argument("--parallel", type=int, default=3)
    hk.add_argument("--data", default="/data/flights", help="table-set path inside the trial container")
    hk.add_argument("--image", help="trainer image (default: the project image tagged with the package version)")
    hk.add_argument("--namespace", default="kubeflow")
    hk.add_argument("--name", default="longtail-heavy-hpo")
    hk.add_argument("--out", help="write the YAML here (default: stdout)")
    hk.set_defaults(func=cmd_hpo_katib)

    from longtail.nas.cli import add_commands as add_nas_commands

    add_nas_commands(sub)
    for module in _command_groups():
        module.add_commands(sub)
    for name, why in _MISSING_GROUPS.items():
        m = sub.add_parser(name, help="(not installed: pip install 'longtail[all]')")
        m.set_defaults(func=lambda _a, name=name, why=why: _missing_group(name, why))
    return p


def _missing_group(name: str, why: str) -> int:
    err.print(f"[red]error:[/red] `longtail {name}` is not available here ({escape(why)}); install the "
              "integration extras: pip install 'longtail[all]'", soft_wrap=True)
    return 2


def _plugin_errors() -> tuple[type[BaseException], ...]:
    return tuple(e for m in _command_groups() for e in getattr(m, "USER_ERRORS", ()))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:2] == ["hpo", "trial"]:  # its own parser: the same command line as in a Katib trial container
        return _hpo_trial(argv[2:])
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (SpecError, ConfigError, TableSetError, CheckpointMismatch, RegistryError, SpaceError, UnknownAlgorithm,
            JournalMismatch, KatibError, FileNotFoundError, RunMismatch, ModelFolderError, *_plugin_errors()) as e:
        err.print(f"[red]error:[/red] {escape(str(e))}", soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/yellow]: rerun the same command to resume from the last checkpoint")
        return 130


if __name__ == "__main__":
    sys.exit(main())
