"""Baselines on the real flights data: per-scenario test AUC of

* ``global_heavy``      one heavy model (6-layer LSTM, hidden 15) on all carriers' training rows;
* ``global_heavy_bert`` the same with the 6-layer BERT encoder (hidden 15, intermediate 32);
* ``SinH``              one heavy LSTM model per carrier, trained on that carrier's rows only;
* ``lgbm_global``       LightGBM on exactly the same features (the fitted transforms' tensors,
                        sequences flattened step by step) with the carrier as a categorical feature
                        (``longtail.baselines.lightgbm_global``, as the pipeline report's reference);
* ``lgbm_single``       LightGBM per carrier on the same features.

Writes ``bench/results/baselines.{csv,md,png}`` (``--quick`` writes ``baselines_quick.*``).
Run: ``make bench-baselines`` (full, 5 epochs as in the paper) or ``make bench-baselines QUICK=1``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from report import auc_bars

from longtail.baselines import flatten, lightgbm_fit_predict, lightgbm_global
from longtail.data.prepared import DataConfig, PreparedData, prepare
from longtail.data.splits import TEST, TRAIN, VALID
from longtail.data.tables import MANIFEST
from longtail.data.transforms import FittedTransforms
from longtail.io import atomic_path, atomic_write_text
from longtail.metrics import per_scenario_auc
from longtail.models.heavy import HeavyConfig
from longtail.train import TrainConfig
from longtail.train_job import evaluate_heavy, train_heavy

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ["global_heavy", "global_heavy_bert", "SinH", "lgbm_global", "lgbm_single"]


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
    spec = data.spec
    print(f"prepared {len(data.frame)} rows, {len(scenarios)} carriers in {time.perf_counter() - t0:.0f}s", flush=True)
    train_cfg = TrainConfig(epochs=args.epochs, seed=args.seed, patience=2)
    lstm = HeavyConfig(encoder="lstm", num_layers=6, hidden_size=15)
    bert = HeavyConfig(encoder="bert", num_layers=6, hidden_size=15, intermediate_size=32)
    timings: dict[str, float] = {}
    columns: dict[str, pd.Series] = {}

    for name, cfg in [("global_heavy", lstm), ("global_heavy_bert", bert)]:
        t = time.perf_counter()
        tr = train_heavy(data, scenarios, cfg, train_cfg, show_progress=args.progress, description=name)
        per = evaluate_heavy(tr.model, tr.transforms, data, scenarios)
        columns[name] = per.set_index("scenario")["auc"]
        timings[name] = time.perf_counter() - t
        print(f"{name}: mean AUC {per['auc'].mean():.4f} in {timings[name]:.0f}s", flush=True)

    t = time.perf_counter()
    sinh = {}
    for scen in scenarios:
        tr = train_heavy(data, [scen], lstm, train_cfg, show_progress=args.progress, description=f"SinH {scen}")
        sinh[scen] = evaluate_heavy(tr.model, tr.transforms, data, [scen]).set_index("scenario")["auc"].iloc[0]
    columns["SinH"] = pd.Series(sinh)
    timings["SinH"] = time.perf_counter() - t
    print(f"SinH: mean AUC {np.nanmean(list(sinh.values())):.4f} in {timings['SinH']:.0f}s", flush=True)

    # LightGBM on the same features: the transforms fitted on all training rows (as global_heavy)
    lgbm = lightgbm_global(data, scenarios, rounds=args.rounds, seed=args.seed, num_threads=2)
    columns["lgbm_global"] = lgbm.per_scenario.set_index("scenario")["auc"]
    timings["lgbm_global"] = lgbm.seconds
    print(f"lgbm_global: mean AUC {lgbm.per_scenario['auc'].mean():.4f} in {timings['lgbm_global']:.0f}s", flush=True)
    splits = (TRAIN, VALID, TEST)
    y = {s: data.rows(s)[spec.label].to_numpy() for s in splits}

    t = time.perf_counter()
    single = {}
    scen_of = {s: data.rows(s)[spec.scenario].astype(str).to_numpy() for s in splits}
    for scen in scenarios:
        sel = {s: scen_of[s] == scen for s in splits}
        tf_s = FittedTransforms.fit(spec, data.rows(TRAIN, [scen]))  # as SinH: fitted on the carrier's rows
        fs = {s: flatten(tf_s.transform(data.rows(s, [scen]))) for s in splits}
        (p,), _ = lightgbm_fit_predict(fs[TRAIN][0], y[TRAIN][sel[TRAIN]], fs[VALID][0], y[VALID][sel[VALID]],
                                       [fs[TEST][0]], fs[TRAIN][1], args.rounds, args.seed, num_threads=2)
        single[scen] = per_scenario_auc(np.full(len(p), scen), y[TEST][sel[TEST]], p)["auc"].iloc[0]
    columns["lgbm_single"] = pd.Series(single)
    timings["lgbm_single"] = time.perf_counter() - t
    print(f"lgbm_single: mean AUC {np.nanmean(list(single.values())):.4f} in {timings['lgbm_single']:.0f}s",
          flush=True)

    sizes = pd.DataFrame({
        "scenario": scenarios,
        "n_train": [len(data.rows(TRAIN, [s])) + len(data.rows(VALID, [s])) for s in scenarios],
        "n_test": [len(data.rows(TEST, [s])) for s in scenarios],
    })
    table = sizes.assign(**{m: sizes["scenario"].map(columns[m]) for m in METHODS})
    write_results(table, timings, tag, args, total=time.perf_counter() - t0, dataset=spec.name)


def write_results(table: pd.DataFrame, timings: dict[str, float], tag: str, args: argparse.Namespace,
                  total: float, dataset: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    with atomic_path(RESULTS / f"{tag}.csv") as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    means = table[METHODS].mean()
    wins = {m: int((table[m] == table[METHODS].max(axis=1)).sum()) for m in METHODS}
    lines = [
        f"# Baselines on {dataset} ({'quick' if args.quick else 'full'} run)",
        "",
        f"Command: `python bench/baselines.py {' '.join(sys.argv[1:])}` — epochs {args.epochs}, "
        f"LightGBM rounds {args.rounds}, split seed {args.seed}; machine: {platform.machine()}, "
        f"{torch.get_num_threads()} torch threads available, CPU; total {total:.0f}s.",
        "",
        "Per-carrier test AUC (20% test split per carrier). NaN: the carrier's test split has one class.",
        "",
        "| scenario | n_train | n_test | " + " | ".join(METHODS) + " |",
        "|---|---:|---:|" + "---:|" * len(METHODS),
    ]
    for _, r in table.iterrows():
        lines.append(f"| {r['scenario']} | {r['n_train']} | {r['n_test']} | "
                     + " | ".join("—" if pd.isna(r[m]) else f"{r[m]:.4f}" for m in METHODS) + " |")
    lines.append("| **mean** | | | " + " | ".join(f"**{means[m]:.4f}**" for m in METHODS) + " |")
    lines += ["", "| method | mean AUC | carriers where best | run time (s) |", "|---|---:|---:|---:|"]
    for m in METHODS:
        lines.append(f"| {m} | {means[m]:.4f} | {wins[m]} | {timings[m]:.0f} |")
    atomic_write_text(RESULTS / f"{tag}.md", "\n".join(lines) + "\n")
    atomic_write_text(RESULTS / f"{tag}_timings.json",
                      json.dumps({"seconds": timings, "total_seconds": total, "mean_auc": means.to_dict()}, indent=2))
    plot(table, RESULTS / f"{tag}.png", dataset)
    print("\n".join(lines))


def plot(table: pd.DataFrame, path: Path, dataset: str) -> None:
    auc_bars(table, METHODS, path, f"{dataset}: per-scenario test AUC (scenarios by training size, largest first)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/flights", help="flights table set (built if missing)")
    p.add_argument("--quick", action="store_true", help="1 epoch and 100 LightGBM rounds, for iteration")
    p.add_argument("--epochs", type=int, help="heavy-model epochs (default 5, quick 1)")
    p.add_argument("--rounds", type=int, help="LightGBM boosting rounds (default 1000, quick 100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--progress", action="store_true", help="progress bars")
    p.add_argument("--replot", action="store_true", help="only redraw the PNG from the committed CSV")
    args = p.parse_args(argv)
    if args.replot:
        tag = "baselines_quick" if args.quick else "baselines"
        plot(pd.read_csv(RESULTS / f"{tag}.csv"), RESULTS / f"{tag}.png", "flights")
        return 0
    args.epochs = args.epochs or (1 if args.quick else 5)
    args.rounds = args.rounds or (100 if args.quick else 1000)
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
