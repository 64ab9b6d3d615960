"""SinH vs MeH on the real flights data, with LSTM and BERT heavy encoders (paper Table III/IV),
and the ``toolbox`` recipe preset's heavy model (``--encoders toolbox``: the preset's own model,
training and fine-tune; ``--epochs`` applies to it in quick mode only).

For each encoder: SinH trains one heavy model per carrier on its own rows; MeH trains θ0 on 8
randomly drawn carriers, then onboards every carrier in a random arrival order (fine-tune a copy
of θ0 on the carrier's support rows, evaluate θu on its test rows, feed the query gradient back to
θ0). Writes ``bench/results/meta.{csv,md,png}`` (``--quick``: ``meta_quick.*``): one row per
carrier, AUC columns ``SinH_lstm, MeH_lstm, SinH_bert, MeH_bert``, the mean, the number of
carriers where MeH wins, and the wall time of onboarding one carrier.

Run: ``make bench-meta`` (full: 5 epochs as in the paper) or ``make bench-meta QUICK=1``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from report import auc_bars

from longtail.data.prepared import DataConfig, prepare
from longtail.data.tables import MANIFEST
from longtail.io import atomic_path, atomic_write_text
from longtail.meta.finetune import MetaConfig
from longtail.models.heavy import HeavyConfig
from longtail.onboarding import Recipe
from longtail.onboarding.protocol import run_meh, run_sinh
from longtail.onboarding.recipe import TOOLBOX_MODEL
from longtail.train import TrainConfig

RESULTS = Path(__file__).resolve().parent / "results"
ENCODERS = {
    "lstm": HeavyConfig(encoder="lstm", num_layers=6, hidden_size=15),
    "bert": HeavyConfig(encoder="bert", num_layers=6, hidden_size=15, intermediate_size=32),
    "toolbox": TOOLBOX_MODEL,  # the toolbox preset, whose training and fine-tune it keeps
}
PRESET_ENCODERS = {"toolbox": "toolbox"}


def run(args: argparse.Namespace) -> None:
    tag = "meta_quick" if args.quick else "meta"
    data_dir = Path(args.data)
    if not (data_dir / MANIFEST).exists():
        from longtail.data.flights import build_flights

        build_flights(data_dir)
    t0 = time.perf_counter()
    data = prepare(DataConfig(tables=str(data_dir), split_seed=args.seed))
    table = pd.DataFrame({"scenario": data.scenarios})
    timings: dict[str, dict] = {}
    info: dict[str, dict] = {}
    kept: list[str] = []
    if args.keep:
        table, timings, info, kept = keep_previous(tag, table, args.encoders)
    for enc in args.encoders:
        recipe = protocol(enc, args.epochs, args.seed, quick=args.quick)
        out = Path(args.work) / enc
        sinh = run_sinh(data, recipe.model, recipe.train, out=out / "sinh", log=print)
        meh = run_meh(data, recipe, out=out / "meh", log=print)
        for name, res in (("SinH", sinh), ("MeH", meh)):
            col = res.table.set_index("scenario")
            table[f"{name}_{enc}"] = table["scenario"].map(col["auc"])
            timings[f"{name}_{enc}"] = res.timings
        if "n_train" not in table:
            col = sinh.table.set_index("scenario")
            table.insert(1, "n_train", table["scenario"].map(col["n_train"]))
            table.insert(2, "n_test", table["scenario"].map(col["n_test"]))
        table[f"initial_{enc}"] = table["scenario"].isin(meh.info.get("initial", []))
        info[enc] = {k: v for k, v in meh.info.items() if k in ("initial", "arrival", "final_version")}
        print(f"{enc}: SinH {sinh.mean_auc:.4f}  MeH {meh.mean_auc:.4f}", flush=True)
        # results so far after every encoder, so a long run leaves its finished part behind
        done = argparse.Namespace(**{**vars(args), "encoders": kept + args.encoders[: args.encoders.index(enc) + 1],
                                     "ran": args.encoders[: args.encoders.index(enc) + 1]})
        write_results(table, timings, info, tag, done, time.perf_counter() - t0, data.spec.name)


def protocol(enc: str, epochs: int, seed: int, quick: bool = False) -> Recipe:
    """The default recipe with this benchmark's heavy encoder, epochs (θ0, SinH and θu's fine-tune) and seed;
    for a preset's column (``toolbox``) the preset with this seed (and ``epochs`` only in quick mode)."""
    if enc in PRESET_ENCODERS:
        r = Recipe.from_preset(PRESET_ENCODERS[enc])
        train = dataclasses.replace(r.train, seed=seed, **({"epochs": epochs} if quick else {}))
        finetune = dataclasses.replace(r.meta.finetune, seed=seed,
                                       **({"epochs": min(epochs, r.meta.finetune.epochs)} if quick else {}))
        return dataclasses.replace(r, train=train, meta=dataclasses.replace(r.meta, finetune=finetune, seed=seed))
    return Recipe(model=ENCODERS[enc], train=TrainConfig(epochs=epochs, seed=seed),
                  meta=MetaConfig(finetune=TrainConfig(epochs=epochs, patience=2, seed=seed), seed=seed))


def build_teachers(data, enc: str, epochs: int, seed: int, work: str | Path, log=print, quick: bool = False):
    """MeH alone for one encoder into ``<work>/<enc>/meh`` (θ0 and every θu), as ``run`` makes it.

    ``bench/nas.py`` calls it when its θu teachers are missing, so that it runs on a fresh clone
    without the SinH half of this benchmark."""
    return run_meh(data, protocol(enc, epochs, seed, quick=quick), out=Path(work) / enc / "meh", log=log)


def keep_previous(tag: str, table: pd.DataFrame, running: list[str]):
    """Columns, timings and protocol of encoders in the previous result files that this run does not redo.

    Lets one encoder be (re)run without losing the other's committed results: the Markdown then
    names every encoder it holds, and the timings file keeps each encoder's own figures.
    """
    csv, tim = RESULTS / f"{tag}.csv", RESULTS / f"{tag}_timings.json"
    if not csv.exists() or not tim.exists():
        return table, {}, {}, []
    prev = pd.read_csv(csv)
    saved = json.loads(tim.read_text())
    kept = [e for e in ENCODERS if e not in running and f"MeH_{e}" in prev]
    for col in ("n_train", "n_test"):
        if kept and col in prev:
            table[col] = table["scenario"].map(prev.set_index("scenario")[col])
    for e in kept:
        for col in (f"SinH_{e}", f"MeH_{e}", f"initial_{e}"):
            table[col] = table["scenario"].map(prev.set_index("scenario")[col])
    timings = {k: v for k, v in saved.get("timings", {}).items() if k.endswith(tuple(f"_{e}" for e in kept))}
    info = {k: v for k, v in saved.get("protocol", {}).items() if k in kept}
    return table, timings, info, kept


def write_results(table: pd.DataFrame, timings: dict, info: dict, tag: str, args: argparse.Namespace,
                  total: float, dataset: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    with atomic_path(RESULTS / f"{tag}.csv") as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    lines = [f"# SinH vs MeH on {dataset} ({'quick' if args.quick else 'full'} run; encoders done: "
             f"{', '.join(args.encoders)})", "",
             f"Command: `python bench/meta.py {' '.join(sys.argv[1:])}` — epochs {args.epochs}"
             + "".join(f" ({e}: its preset's own, θ0 {r.train.epochs}, θu's fine-tune {r.meta.finetune.epochs})"
                       for e in args.encoders if e in PRESET_ENCODERS
                       for r in [protocol(e, args.epochs, args.seed, args.quick)])
             + f", split seed {args.seed}; {platform.machine()} CPU; total {total:.0f}s."
             + (f" Columns of {', '.join(e for e in args.encoders if e not in args.ran)} are kept from the previous "
                "result files (`--keep`; their commands and settings in git history)."
                if set(args.encoders) - set(getattr(args, "ran", args.encoders)) else ""), "",
             "Per-scenario test AUC; scenarios by training size, largest first; * = one of MeH's initial "
             "scenarios.",
             ""]
    aucs = [c for c in table.columns if c.startswith(("SinH_", "MeH_"))]
    lines += ["| scenario | n_train | n_test | " + " | ".join(aucs) + " |", "|---|---:|---:|" + "---:|" * len(aucs)]
    for _, r in table.iterrows():
        star = "*" if any(r.get(f"initial_{e}", False) for e in args.encoders) else ""
        lines.append(f"| {r['scenario']}{star} | {r['n_train']} | {r['n_test']} | "
                     + " | ".join("—" if pd.isna(r[c]) else f"{r[c]:.4f}" for c in aucs) + " |")
    lines.append("| **mean** | | | " + " | ".join(f"**{table[c].mean():.4f}**" for c in aucs) + " |")
    lines += ["", "| encoder | SinH mean | MeH mean | MeH wins | MeH wins (small half) | onboard one carrier (s, median) |",
              "|---|---:|---:|---:|---:|---:|"]
    small = table["n_train"] <= table["n_train"].median()
    for enc in args.encoders:
        s, m = table[f"SinH_{enc}"], table[f"MeH_{enc}"]
        both = s.notna() & m.notna()
        wins = int((m[both] > s[both]).sum())
        wins_small = int((m[both & small] > s[both & small]).sum())
        per = timings[f"MeH_{enc}"].get("per_scenario", {})
        onboard = float(np.median(list(per.values()))) if per else float("nan")
        lines.append(f"| {enc} | {s.mean():.4f} | {m.mean():.4f} | {wins}/{int(both.sum())} | "
                     f"{wins_small}/{int((both & small).sum())} | {onboard:.1f} |")
    atomic_write_text(RESULTS / f"{tag}.md", "\n".join(lines) + "\n")
    atomic_write_text(RESULTS / f"{tag}_timings.json", json.dumps({"timings": timings, "protocol": info,
                                                                   "total_seconds": total}, indent=2, default=str))
    plot(table, aucs, RESULTS / f"{tag}.png", dataset)
    print("\n".join(lines))


def plot(table: pd.DataFrame, aucs: list[str], path: Path, dataset: str) -> None:
    auc_bars(table, aucs, path, f"{dataset}: SinH vs MeH per scenario (largest first)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/flights", help="flights table set (built if missing)")
    p.add_argument("--work", default="runs/bench-meta", help="folder for the models and θ0 stores")
    p.add_argument("--quick", action="store_true", help="1 epoch, LSTM only, for iteration")
    p.add_argument("--epochs", type=int, help="epochs (default 5, quick 1)")
    p.add_argument("--encoders", default=None, help="comma list of lstm, bert, toolbox (default lstm,bert; "
                   "quick lstm)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", action="store_true",
                   help="keep the other encoders' columns from the previous result files (run one encoder at a time)")
    args = p.parse_args(argv)
    args.epochs = args.epochs or (1 if args.quick else 5)
    args.encoders = (args.encoders or ("lstm" if args.quick else "lstm,bert")).split(",")
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
