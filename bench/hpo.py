"""HPO of the agnostic heavy model on flights: RACOS vs TPE vs random, and the paper's Table VI analog.

Part 1 (``curves``): the same search space, trial budget and seeds for each algorithm; every trial
trains the heavy model on the pooled rows of the initial carriers (drawn as MeH draws them) and
reports its best validation AUC. Writes ``bench/results/hpo_curves.csv`` (algorithm, seed, trial,
value, best so far), ``hpo_curves.png`` (mean best-so-far validation AUC against trials, min–max
band over seeds) and a summary in ``hpo.md``.

Part 2 (``table6``): the initial agnostic model's test AUC (mean over all carriers) for the
pre-defined LSTM, the pre-defined BERT and the NAS-found heavy model, built on 2, 4, 8 and 16
initial carriers, 3 random draws each. Writes ``bench/results/hpo_table6.csv`` and its table in
``hpo.md``.

Both parts cap training (``--steps`` optimiser steps per model, 1 epoch) so that the whole
benchmark fits a laptop; the caps are printed in ``hpo.md``. Finished trials and table cells are
kept under ``--work``, so an interrupted run resumes.

Run: ``make bench-hpo`` (3 seeds, 8 trials, 100 steps) or ``make bench-hpo QUICK=1``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from longtail.agnostic import initial_scenarios
from longtail.data.prepared import DataConfig, prepare
from longtail.data.tables import JOIN_CACHE_ENV, MANIFEST
from longtail.hpo.runner import Budget, MedianStopping
from longtail.hpo.trial import HPOJobConfig, run_hpo
from longtail.io import atomic_path, atomic_write_text
from longtail.models.heavy import HeavyConfig
from longtail.nas import ArchSpace, SearchConfig
from longtail.nas.heavy import HeavySearchConfig, search_heavy
from longtail.train import TrainConfig
from longtail.train_job import evaluate_heavy, train_heavy

RESULTS = Path(__file__).resolve().parent / "results"
ALGORITHMS = ("racos", "tpe", "random")
MODELS = {
    "lstm": HeavyConfig(encoder="lstm", num_layers=6, hidden_size=15),
    "bert": HeavyConfig(encoder="bert", num_layers=6, hidden_size=15, intermediate_size=32),
}


def curves(args: argparse.Namespace) -> pd.DataFrame:
    rows = []
    tables = str(Path(args.data).resolve())
    for algo in ALGORITHMS:
        for seed in range(args.seeds):
            # the initial carriers of draw `seed`, as MeH would draw them
            scen = args.initial_by_seed[seed]
            job = HPOJobConfig(space=args.space, algorithm=algo, seed=seed,
                               data=DataConfig(tables=tables, scenarios=tuple(scen)),
                               trial={"train.epochs": 1, "train.max_steps": args.steps},
                               budget=Budget(max_trials=args.trials, parallel=1, trial_seconds=args.trial_seconds),
                               early_stopping=MedianStopping(enabled=False),
                               out=str(Path(args.work) / "curves" / algo / str(seed)))
            t0 = time.perf_counter()
            result = run_hpo(job, log=lambda m: None)
            t = result.trials.sort_values("trial")
            best = -np.inf
            for _, r in t.iterrows():
                v = r["value"] if r["status"] in ("finished", "stopped") and pd.notna(r["value"]) else np.nan
                best = max(best, v) if pd.notna(v) else best
                rows.append({"algorithm": algo, "seed": seed, "trial": int(r["trial"]), "status": r["status"],
                             "value": v, "best_so_far": best if np.isfinite(best) else np.nan,
                             "seconds": r.get("seconds", np.nan), "encoder": r.get("model.encoder")})
            print(f"{algo} seed {seed}: best validation AUC {result.best_value} over {len(t)} trials "
                  f"({time.perf_counter() - t0:.0f}s)", flush=True)
    return pd.DataFrame(rows)


def table6(args: argparse.Namespace, data) -> pd.DataFrame:
    done_file = Path(args.work) / "table6.jsonl"
    done_file.parent.mkdir(parents=True, exist_ok=True)

    def read_done() -> list[dict]:
        # re-read before every cell: two processes may share the file (e.g. ``--sizes 2,4,8,16`` and
        # ``--sizes 16,8``), each then skips what the other has finished
        rows = [json.loads(x) for x in done_file.read_text().splitlines() if x.strip()] if done_file.exists() else []
        unique = {(r["model"], r["n_initial"], r["repeat"]): r for r in reversed(rows)}  # first record wins
        return list(reversed(list(unique.values())))

    base_train = TrainConfig(epochs=1, max_steps=args.steps)
    for n in args.sizes:
        for rep in range(args.repeats):
            scen = initial_scenarios(data, n, seed=rep)
            for model in ("lstm", "bert", "nas"):
                if (model, n, rep) in {(r["model"], r["n_initial"], r["repeat"]) for r in read_done()}:
                    continue
                t0 = time.perf_counter()
                if model == "nas":
                    nas = HeavySearchConfig(space=ArchSpace(num_layers=6),
                                            search=SearchConfig(epochs=1, max_steps=args.steps, lambda_flops=0.01,
                                                                flops_penalty="linear"))
                    cfg = search_heavy(data, scen, MODELS["lstm"], nas).config
                else:
                    cfg = MODELS[model]
                trained = train_heavy(data, scen, cfg, dataclasses.replace(base_train, seed=rep))
                per = evaluate_heavy(trained.model, trained.transforms, data, data.scenarios)
                rec = {"model": model, "n_initial": n, "repeat": rep, "initial": scen,
                       "test_auc_mean": float(per["auc"].mean()),
                       "valid_auc": trained.result.best_valid_auc, "seconds": time.perf_counter() - t0}
                with open(done_file, "a") as f:
                    f.write(json.dumps(rec) + "\n")
                print(f"table6 {model} n={n} rep={rep}: mean test AUC {rec['test_auc_mean']:.4f} "
                      f"({rec['seconds']:.0f}s)", flush=True)
    done = [r for r in read_done() if r["n_initial"] in args.sizes]
    return pd.DataFrame(done).sort_values(["n_initial", "repeat", "model"]).reset_index(drop=True)


def plot_curves(df: pd.DataFrame, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for algo, g in df.groupby("algorithm"):
        piv = g.pivot_table(index="trial", columns="seed", values="best_so_far")
        x = piv.index.to_numpy() + 1
        ax.plot(x, piv.mean(axis=1), label=f"{algo} (mean of {piv.shape[1]} seeds)")
        ax.fill_between(x, piv.min(axis=1), piv.max(axis=1), alpha=0.15)
    ax.set_xlabel("trials")
    ax.set_ylabel("best validation AUC so far")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def write(args, cur: pd.DataFrame | None, t6: pd.DataFrame | None, total: float) -> None:
    tag = "hpo_quick" if args.quick else "hpo"
    RESULTS.mkdir(parents=True, exist_ok=True)
    lines = [f"# HPO of the agnostic heavy model on flights ({'quick' if args.quick else 'full'} run)", "",
             f"Command: `python bench/hpo.py {' '.join(sys.argv[1:])}` — space `{args.space}`, {args.trials} trials "
             f"x {args.seeds} seeds per algorithm, every model trained 1 epoch capped at {args.steps} steps of 512 "
             f"rows; {platform.machine()} CPU, 1 torch thread per model; this invocation {total:.0f}s (finished "
             "trials and cells are resumed, not rerun).", ""]
    if cur is not None and len(cur):
        lines += [f"Curves: {len(cur)} trials, {cur['seconds'].sum() / 3600:.2f} h of trial time "
                  f"(median {cur['seconds'].median():.0f} s a trial)."]
    if t6 is not None and len(t6):
        lines += [f"Table VI: {len(t6)} models, {t6['seconds'].sum() / 3600:.2f} h "
                  f"(median {t6['seconds'].median():.0f} s a model, NAS search included)."]
    lines.append("")
    if cur is not None and len(cur):
        with atomic_path(RESULTS / f"{tag}_curves.csv") as tmp:
            cur.to_csv(tmp, index=False, float_format="%.4f")
        plot_curves(cur, RESULTS / f"{tag}_curves.png", "flights: best validation AUC vs trials")
        last = cur.sort_values("trial").groupby(["algorithm", "seed"]).last()["best_so_far"].unstack()
        lines += ["## RACOS vs TPE vs random (best validation AUC after all trials)", "",
                  "| algorithm | " + " | ".join(f"seed {s}" for s in last.columns)
                  + " | mean | failed trials | best trial's encoder by seed |",
                  "|---|" + "---:|" * (len(last.columns) + 2) + "---|"]
        for algo, r in last.iterrows():
            mine = cur[cur["algorithm"] == algo]
            failed = int((mine["status"] == "failed").sum())
            best_enc = [str(g.loc[g["value"].idxmax(), "encoder"]) if g["value"].notna().any() else "-"
                        for _, g in mine.groupby("seed")]
            lines.append(f"| {algo} | " + " | ".join(f"{v:.4f}" for v in r) + f" | **{r.mean():.4f}** | {failed} | "
                         + ", ".join(best_enc) + " |")
        marks = sorted({k for k in (1, 2, 4, 8, 16, 32) if k <= cur["trial"].max() + 1} | {int(cur["trial"].max()) + 1})
        curve = cur.pivot_table(index="trial", columns="algorithm", values="best_so_far", aggfunc="mean")
        lines += ["", "Mean (over seeds) best validation AUC after k trials — the curve of `hpo_curves.png`:", "",
                  "| trials | " + " | ".join(curve.columns) + " |", "|---:|" + "---:|" * len(curve.columns)]
        for k in marks:
            lines.append(f"| {k} | " + " | ".join(f"{curve.loc[k - 1, a]:.4f}" for a in curve.columns) + " |")
        ranks = last.rank(axis=0, ascending=False).mean(axis=1)
        lines += ["", "Mean rank over seeds (1 = best): " + ", ".join(f"{a} {v:.2f}" for a, v in ranks.items()) + "."]
        lines.append("")
    if t6 is not None and len(t6):
        with atomic_path(RESULTS / f"{tag}_table6.csv") as tmp:
            t6.drop(columns=["initial"]).to_csv(tmp, index=False, float_format="%.4f")
        piv = t6.pivot_table(index="n_initial", columns="model", values="test_auc_mean", aggfunc=["mean", "std"],
                             dropna=False)
        lines += ["## Table VI analog: initial agnostic model, mean test AUC over all 16 carriers", "",
                  "(mean ± std over random draws of the initial carriers)", "",
                  "| initial carriers | " + " | ".join(m for m in ("lstm", "bert", "nas") if ("mean", m) in piv)
                  + " |", "|---:|" + "---:|" * sum(("mean", m) in piv for m in ("lstm", "bert", "nas"))]
        for n, r in piv.iterrows():
            lines.append(f"| {n} | " + " | ".join(f"{r[('mean', m)]:.4f} ± {0 if pd.isna(r[('std', m)]) else r[('std', m)]:.4f}"
                                                  for m in ("lstm", "bert", "nas") if ("mean", m) in piv) + " |")
    atomic_write_text(RESULTS / f"{tag}.md", "\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/flights")
    p.add_argument("--work", default="runs/bench-hpo")
    p.add_argument("--quick", action="store_true", help="2 seeds x 4 trials, sizes 2 and 4, 1 repeat, 40 steps")
    p.add_argument("--parts", default="curves,table6")
    p.add_argument("--space", default="heavy", help="search space (packaged name or YAML file)")
    p.add_argument("--trials", type=int)
    p.add_argument("--seeds", type=int)
    p.add_argument("--steps", type=int, help="optimiser steps per trained model")
    p.add_argument("--sizes", default=None, help="initial-carrier counts of Table VI (default 2,4,8,16)")
    p.add_argument("--repeats", type=int)
    p.add_argument("--trial-seconds", type=float, default=900.0)
    args = p.parse_args(argv)
    q = args.quick
    args.trials = args.trials or (4 if q else 8)
    args.seeds = args.seeds or (2 if q else 3)
    args.steps = args.steps or (40 if q else 100)
    args.repeats = args.repeats or (1 if q else 3)
    args.sizes = [int(s) for s in (args.sizes or ("2,4" if q else "2,4,8,16")).split(",")]
    if q:
        args.work += "-quick"
    if not (Path(args.data) / MANIFEST).exists():
        from longtail.data.flights import build_flights

        build_flights(args.data)
    # all trials (subprocesses) and Table VI prepare the same set: join and validate it once
    os.environ.setdefault(JOIN_CACHE_ENV, str((Path(args.work) / "join-cache").resolve()))
    t0 = time.perf_counter()
    data = prepare(DataConfig(tables=args.data))
    args.initial_by_seed = [initial_scenarios(data, 8, seed=s) for s in range(args.seeds)]
    parts = args.parts.split(",")
    cur = curves(args) if "curves" in parts else None
    write(args, cur, None, time.perf_counter() - t0)
    t6 = table6(args, data) if "table6" in parts else None
    write(args, cur, t6, time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
