"""Baselines on the real flights data: per-scenario test AUC of

* ``global_heavy``      one heavy model (6-layer LSTM, hidden 15) on all carriers' training rows;
* ``global_heavy_bert`` the same with the 6-layer BERT encoder (hidden 15, intermediate 32);
* ``SinH``              one heavy LSTM model per carrier, trained on that carrier's rows only;
* ``lgbm_global``       LightGBM on exactly the same features (the fitted transforms' tensors,
                        sequences flattened step by step) with the carrier as a categorical feature
                        (``longtail.baselines.lightgbm_global``, as the pipeline report's reference);
* ``lgbm_single``       LightGBM per carrier on the same features;
* ``mlp_global``        a plain MLP [256, 128] on lgbm_global's flat inputs (missing indicators,
                        an embedding per categorical column), AdamW + cosine schedule, the epoch
                        kept on VALID (``longtail.baselines.mlp_global``);
* ``lgbm_global_tuned`` lgbm_global with its hyperparameters chosen by TPE on VALID AUC
                        (``longtail.baselines.lightgbm_global_tuned``, ``--tuned-trials`` trials);
* ``theta0_toolbox``    the heavy model of the ``toolbox`` recipe preset (flat encoder, piecewise-
                        linear numeric embeddings, AdamW + cosine; its own epochs) on all carriers'
                        training rows: θ0 built on every carrier, as the pipelines' refresh builds it.

Every method fits on TRAIN, chooses (epochs, rounds, parameters) on VALID and is scored on TEST.
``--methods a,b`` runs a subset; with ``--keep`` the other columns of the previous result files
(same mode) stay, each with the command that made it, so one column can be added or redone without
rerunning the rest. A new column is one entry of ``METHODS``: a name and a function
``(Context) -> (per-scenario test AUC, note)``.

Writes ``bench/results/baselines.{csv,md,png}`` (``--quick`` writes ``baselines_quick.*``).
Run: ``make bench-baselines`` (full, 5 epochs as in the paper) or ``make bench-baselines QUICK=1``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from report import auc_bars

from longtail.baselines import (
    GlobalFeatures,
    flatten,
    global_features,
    lightgbm_fit_predict,
    lightgbm_global,
    lightgbm_global_tuned,
    mlp_global,
)
from longtail.data.prepared import DataConfig, PreparedData, prepare
from longtail.data.splits import TEST, TRAIN, VALID
from longtail.data.tables import MANIFEST
from longtail.data.transforms import FittedTransforms
from longtail.io import atomic_path, atomic_write_text
from longtail.metrics import per_scenario_auc
from longtail.models.heavy import HeavyConfig
from longtail.onboarding.recipe import Recipe
from longtail.train import TrainConfig
from longtail.train_job import evaluate_heavy, train_heavy

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Context:
    """What every method gets: the prepared data, its carriers and the command line."""

    data: PreparedData
    scenarios: list[str]
    args: argparse.Namespace
    _features: GlobalFeatures | None = None

    @property
    def features(self) -> GlobalFeatures:
        """The flat table of the global LightGBM, built once for every method on it."""
        if self._features is None:
            self._features = global_features(self.data, self.scenarios)
        return self._features

    @property
    def train_cfg(self) -> TrainConfig:
        return TrainConfig(epochs=self.args.epochs, seed=self.args.seed, patience=2)


Outcome = tuple[pd.Series, str]  # per-scenario test AUC (indexed by scenario), a note for the report
LSTM = HeavyConfig(encoder="lstm", num_layers=6, hidden_size=15)
BERT = HeavyConfig(encoder="bert", num_layers=6, hidden_size=15, intermediate_size=32)


def _global_heavy(cfg: HeavyConfig, name: str) -> Callable[[Context], Outcome]:
    def method(ctx: Context) -> Outcome:
        tr = train_heavy(ctx.data, ctx.scenarios, cfg, ctx.train_cfg, show_progress=ctx.args.progress,
                         description=name)
        per = evaluate_heavy(tr.model, tr.transforms, ctx.data, ctx.scenarios)
        return per.set_index("scenario")["auc"], f"best epoch {tr.result.best_epoch}"

    return method


def sinh(ctx: Context) -> Outcome:
    out = {}
    for scen in ctx.scenarios:
        tr = train_heavy(ctx.data, [scen], LSTM, ctx.train_cfg, show_progress=ctx.args.progress,
                         description=f"SinH {scen}")
        out[scen] = evaluate_heavy(tr.model, tr.transforms, ctx.data, [scen]).set_index("scenario")["auc"].iloc[0]
    return pd.Series(out), ""


def lgbm_global(ctx: Context) -> Outcome:
    # LightGBM on the same features: the transforms fitted on all training rows (as global_heavy)
    r = lightgbm_global(ctx.data, ctx.scenarios, rounds=ctx.args.rounds, seed=ctx.args.seed, num_threads=2,
                        features=ctx.features)
    return r.per_scenario.set_index("scenario")["auc"], f"{r.rounds} rounds"


def lgbm_single(ctx: Context) -> Outcome:
    data, spec, args = ctx.data, ctx.data.spec, ctx.args
    splits = (TRAIN, VALID, TEST)
    y = {s: data.rows(s)[spec.label].to_numpy() for s in splits}
    scen_of = {s: data.rows(s)[spec.scenario].astype(str).to_numpy() for s in splits}
    out = {}
    for scen in ctx.scenarios:
        sel = {s: scen_of[s] == scen for s in splits}
        tf_s = FittedTransforms.fit(spec, data.rows(TRAIN, [scen]))  # as SinH: fitted on the carrier's rows
        fs = {s: flatten(tf_s.transform(data.rows(s, [scen]))) for s in splits}
        (p,), _ = lightgbm_fit_predict(fs[TRAIN][0], y[TRAIN][sel[TRAIN]], fs[VALID][0], y[VALID][sel[VALID]],
                                       [fs[TEST][0]], fs[TRAIN][1], args.rounds, args.seed, num_threads=2)
        out[scen] = per_scenario_auc(np.full(len(p), scen), y[TEST][sel[TEST]], p)["auc"].iloc[0]
    return pd.Series(out), ""


def mlp(ctx: Context) -> Outcome:
    r = mlp_global(ctx.data, ctx.scenarios, seed=ctx.args.seed, epochs=ctx.args.mlp_epochs, threads=2,
                   show_progress=ctx.args.progress, features=ctx.features)
    return r.per_scenario.set_index("scenario")["auc"], f"{ctx.args.mlp_epochs} epochs, best epoch {r.best_epoch}"


def lgbm_tuned(ctx: Context) -> Outcome:
    r = lightgbm_global_tuned(ctx.data, ctx.scenarios, trials=ctx.args.tuned_trials, seed=ctx.args.seed,
                              rounds=ctx.args.rounds, num_threads=2, log=lambda line: print(f"  {line}", flush=True),
                              features=ctx.features)
    best = {k: round(v, 4) if isinstance(v, float) else v for k, v in r.best_params.items()}
    return r.per_scenario.set_index("scenario")["auc"], f"{len(r.trials)} TPE trials; best {r.rounds} rounds, {best}"


def theta0_toolbox(ctx: Context) -> Outcome:
    recipe = Recipe.from_preset("toolbox")
    train = dataclasses.replace(recipe.train, seed=ctx.args.seed, **({"epochs": ctx.args.epochs} if ctx.args.quick else {}))
    tr = train_heavy(ctx.data, ctx.scenarios, recipe.model, train, show_progress=ctx.args.progress,
                     description="theta0_toolbox")
    per = evaluate_heavy(tr.model, tr.transforms, ctx.data, ctx.scenarios)
    return per.set_index("scenario")["auc"], f"{train.epochs} epochs, best epoch {tr.result.best_epoch}"


# the columns, in order: add a method here (name, function) and it is a column of every table
METHODS: list[tuple[str, Callable[[Context], Outcome]]] = [
    ("global_heavy", _global_heavy(LSTM, "global_heavy")),
    ("global_heavy_bert", _global_heavy(BERT, "global_heavy_bert")),
    ("SinH", sinh),
    ("lgbm_global", lgbm_global),
    ("lgbm_single", lgbm_single),
    ("mlp_global", mlp),
    ("lgbm_global_tuned", lgbm_tuned),
    ("theta0_toolbox", theta0_toolbox),
]
METHOD_NAMES = [name for name, _ in METHODS]


def run(args: argparse.Namespace) -> None:
    tag = "baselines_quick" if args.quick else "baselines"
    data_dir = Path(args.data)
    if not (data_dir / MANIFEST).exists():
        from longtail.data.flights import build_flights

        print(f"building flights tables in {data_dir} ...", flush=True)
        build_flights(data_dir)
    t0 = time.perf_counter()
    data: PreparedData = prepare(DataConfig(tables=str(data_dir), split_seed=args.seed))
    scenarios = data.scenarios
    print(f"prepared {len(data.frame)} rows, {len(scenarios)} carriers in {time.perf_counter() - t0:.0f}s", flush=True)
    ctx = Context(data, scenarios, args)
    timings: dict[str, float] = {}
    columns: dict[str, pd.Series] = {}
    notes: dict[str, str] = {}
    for name, method in METHODS:
        if name not in args.methods:
            continue
        t = time.perf_counter()
        columns[name], notes[name] = method(ctx)
        timings[name] = time.perf_counter() - t
        print(f"{name}: mean AUC {np.nanmean(columns[name].to_numpy(dtype=float)):.4f} in {timings[name]:.0f}s"
              + (f" ({notes[name]})" if notes[name] else ""), flush=True)

    sizes = pd.DataFrame({
        "scenario": scenarios,
        "n_train": [len(data.rows(TRAIN, [s])) + len(data.rows(VALID, [s])) for s in scenarios],
        "n_test": [len(data.rows(TEST, [s])) for s in scenarios],
    })
    command = f"python bench/baselines.py {' '.join(sys.argv[1:])}"
    made_by = {m: command for m in columns}
    if args.keep:
        columns, timings, notes, made_by = keep_previous(tag, columns, timings, notes, made_by)
    methods = [m for m in METHOD_NAMES if m in columns]
    table = sizes.assign(**{m: sizes["scenario"].map(columns[m]) for m in methods})
    write_results(table, methods, timings, notes, made_by, tag, args, total=time.perf_counter() - t0,
                  dataset=data.spec.name)


def keep_previous(tag: str, columns: dict, timings: dict, notes: dict, made_by: dict):
    """Add the columns of the previous ``<tag>`` result files that this run did not compute, with their
    run time, note and the command that made them (files written before commands were recorded name
    the command in their Markdown header)."""
    csv, tim, md = RESULTS / f"{tag}.csv", RESULTS / f"{tag}_timings.json", RESULTS / f"{tag}.md"
    if not csv.exists() or not tim.exists():
        return columns, timings, notes, made_by
    prev = pd.read_csv(csv).set_index("scenario")
    saved = json.loads(tim.read_text())
    header = next((line for line in md.read_text().splitlines() if line.startswith("Command: `")), "") \
        if md.exists() else ""
    old_command = header.split("`")[1] if header.count("`") >= 2 else "an earlier run of bench/baselines.py"
    for m in METHOD_NAMES:
        if m in columns or m not in prev:
            continue
        columns[m] = prev[m]
        timings[m] = float(saved.get("seconds", {}).get(m, float("nan")))
        notes[m] = saved.get("notes", {}).get(m, "")
        made_by[m] = saved.get("made_by", {}).get(m, old_command)
    return columns, timings, notes, made_by


def write_results(table: pd.DataFrame, methods: list[str], timings: dict[str, float], notes: dict[str, str],
                  made_by: dict[str, str], tag: str, args: argparse.Namespace, total: float, dataset: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    with atomic_path(RESULTS / f"{tag}.csv") as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    means = table[methods].mean()
    wins = {m: int((table[m] == table[methods].max(axis=1)).sum()) for m in methods}
    lines = [
        f"# Baselines on {dataset} ({'quick' if args.quick else 'full'} run)",
        "",
        f"Command: `python bench/baselines.py {' '.join(sys.argv[1:])}` — epochs {args.epochs}, "
        f"LightGBM rounds {args.rounds}, MLP epochs {args.mlp_epochs}, tuned LightGBM trials {args.tuned_trials}, "
        f"split seed {args.seed}; machine: {platform.machine()}, "
        f"{torch.get_num_threads()} torch threads available, CPU; total {total:.0f}s.",
        "",
        "Per-carrier test AUC (20% test split per carrier). NaN: the carrier's test split has one class. "
        "lgbm_global, mlp_global and lgbm_global_tuned share one flat feature table, built (and timed) in the "
        "first of them to run.",
        "",
    ]
    current = f"python bench/baselines.py {' '.join(sys.argv[1:])}"
    kept = sorted({made_by[m] for m in methods} - {current})
    if kept:
        lines += ["The settings above are this run's. Columns kept from earlier runs (`--keep`), by the command "
                  "that made them (its settings in the notes below and in git history):", ""]
        lines += [f"* `{c}`: " + ", ".join(m for m in methods if made_by.get(m) == c) for c in kept]
        lines += [""]
    lines += [
        "| scenario | n_train | n_test | " + " | ".join(methods) + " |",
        "|---|---:|---:|" + "---:|" * len(methods),
    ]
    for _, r in table.iterrows():
        lines.append(f"| {r['scenario']} | {r['n_train']} | {r['n_test']} | "
                     + " | ".join("—" if pd.isna(r[m]) else f"{r[m]:.4f}" for m in methods) + " |")
    lines.append("| **mean** | | | " + " | ".join(f"**{means[m]:.4f}**" for m in methods) + " |")
    lines += ["", "| method | mean AUC | carriers where best | run time (s) | chosen on VALID |",
              "|---|---:|---:|---:|---|"]
    for m in methods:
        lines.append(f"| {m} | {means[m]:.4f} | {wins[m]} | {timings[m]:.0f} | {notes.get(m, '')} |")
    atomic_write_text(RESULTS / f"{tag}.md", "\n".join(lines) + "\n")
    atomic_write_text(RESULTS / f"{tag}_timings.json",
                      json.dumps({"seconds": timings, "total_seconds": total, "mean_auc": means.to_dict(),
                                  "notes": notes, "made_by": {m: made_by[m] for m in methods}}, indent=2))
    plot(table, RESULTS / f"{tag}.png", dataset, methods)
    print("\n".join(lines))


def plot(table: pd.DataFrame, path: Path, dataset: str, methods: list[str]) -> None:
    auc_bars(table, methods, path, f"{dataset}: per-scenario test AUC (scenarios by training size, largest first)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/flights", help="flights table set (built if missing)")
    p.add_argument("--quick", action="store_true", help="1 epoch and 100 LightGBM rounds, for iteration")
    p.add_argument("--epochs", type=int, help="heavy-model epochs (default 5, quick 1)")
    p.add_argument("--rounds", type=int, help="LightGBM boosting rounds (default 1000, quick 100)")
    p.add_argument("--methods", default=",".join(METHOD_NAMES),
                   help=f"comma-separated columns to run (default all: {','.join(METHOD_NAMES)})")
    p.add_argument("--mlp-epochs", type=int, help="mlp_global epochs (default 8, quick 3)")
    p.add_argument("--tuned-trials", type=int, help="lgbm_global_tuned TPE trials (default 20, quick 4)")
    p.add_argument("--keep", action="store_true",
                   help="keep the previous result files' columns that this run does not compute")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--progress", action="store_true", help="progress bars")
    p.add_argument("--replot", action="store_true", help="only redraw the PNG from the committed CSV")
    args = p.parse_args(argv)
    if args.replot:
        tag = "baselines_quick" if args.quick else "baselines"
        table = pd.read_csv(RESULTS / f"{tag}.csv")
        plot(table, RESULTS / f"{tag}.png", "flights", [m for m in METHOD_NAMES if m in table])
        return 0
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHOD_NAMES))
    if unknown or not methods:
        p.error(f"--methods: unknown or no method(s) {unknown}; choose from {','.join(METHOD_NAMES)}")
    args.methods = methods
    args.epochs = args.epochs or (1 if args.quick else 5)
    args.rounds = args.rounds or (100 if args.quick else 1000)
    args.mlp_epochs = args.mlp_epochs or (3 if args.quick else 8)
    args.tuned_trials = args.tuned_trials or (4 if args.quick else 20)
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
