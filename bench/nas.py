"""MeH vs MeL vs Ours on the real flights data (paper Tables III–V), per recipe, with ablations.

For every carrier and each heavy encoder (LSTM, BERT; ``toolbox``: the ``toolbox`` recipe preset's
heavy model and MeL, ``--encoders toolbox``), the scenario-specific heavy model θu of the
MeH run of ``bench/meta.py`` (``runs/bench-meta/<encoder>/meh/models/<carrier>``) is the teacher;
when that run is missing, its MeH half is run first (``meta.build_teachers``). Each *variant* is
one call of `longtail.onboarding.onboard` per carrier with that θu (the same function the pipelines
and the CLI run), with a recipe:

* ``default``: the project's default recipe (`longtail.onboarding.Recipe`), with the MeL reference;
* ``paper``: the ``paper`` preset (Ours searched and trained from scratch, Eq. 4's linear FLOPs
  term, MeL from scratch), with the MeL reference;
* ``nodistill`` (ablation): the default recipe without distillation (δ = 0 and no transfer set,
  whose labels are θu's);
* ``noflops`` (ablation): the default recipe without the FLOPs term (λ = 0 in the search; the
  derivation still keeps the budget).

``--variant NAME=key=value,key=value`` adds a variant of the default recipe (keys as in
``--set recipe.<key>``), e.g. ``--variant linear=light.search.flops_penalty=linear``.

SinH AUCs come from ``bench/results/meta.csv`` (same split seed); MeH is the test AUC of the θu
teachers themselves (``<meta-work>/<encoder>/meh/per_scenario.csv``); LightGBM global (one model over
all carriers, the carrier as a feature) comes from ``bench/results/baselines.csv`` (same rows and
split): what a user would train instead. Finished carriers are kept per variant in
``<work>/<encoder>/<variant>.jsonl`` with the recipe they were made with beside it
(``<variant>.recipe.json``): an interrupted run resumes, and a run with another recipe into the same
``--work`` stops with an error instead of mixing results. Variants can run in separate processes
(``--variants default`` beside ``--variants paper``) to use two cores.

Writes ``bench/results/nas.{csv,md}``, ``nas_auc.png`` (AUC per carrier) and ``nas_flops.png``
(AUC vs FLOPs); ``--quick`` writes ``nas_quick.*``.

Run: ``make bench-nas`` (full) or ``make bench-nas QUICK=1`` (3 small carriers, LSTM, 1 epoch).
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
from report import auc_bars

from longtail.config import config_from_dict, config_to_dict, parse_overrides
from longtail.data.prepared import DataConfig, prepare
from longtail.data.scenario_rows import ScenarioRows
from longtail.data.splits import TEST, TRAIN
from longtail.io import atomic_path, atomic_write_text, safe_name
from longtail.model_folder import load_model_dir
from longtail.onboarding import Recipe, Theta0, onboard

RESULTS = Path(__file__).resolve().parent / "results"
MAIN = ("default", "paper")
ABLATIONS = {"nodistill": ["light.distill.delta=0", "light.transfer.rows=0"],
             "noflops": ["light.search.lambda_flops=0"]}
# quick mode: one epoch everywhere; the default recipe's extras shortened (the paper preset has none of them)
QUICK = ["train.epochs=1", "meta.finetune.epochs=1", "light.train.epochs=1", "light.search.epochs=1"]
QUICK_DEFAULT = ["light.pretrain.epochs=1", "light.pretrain.rows=16384", "light.retrain.epochs=0",
                 "light.retrain.lr_drops=0", "light.restarts.runs=1"]


# what a user would train instead, from bench/results/baselines.csv (the same rows and split)
REFERENCE_COLUMNS = ("lgbm_global", "lgbm_global_tuned", "mlp_global")


def recipe_for(variant: str, args: argparse.Namespace, enc: str = "") -> Recipe:
    """The recipe of a variant: its preset (``toolbox`` teachers get the ``toolbox`` preset, whose light side
    is ``default``'s with its own MeL), the quick-mode overrides, then the variant's own."""
    preset = "paper" if variant == "paper" else ("toolbox" if enc == "toolbox" else "default")
    quick = QUICK + (QUICK_DEFAULT if preset != "paper" else [])
    pairs = list(quick if args.quick else []) + [f"train.seed={args.seed}", f"light.train.seed={args.seed}",
                                                 f"light.search.seed={args.seed}", f"meta.seed={args.seed}"]
    pairs += ABLATIONS.get(variant, []) + args.custom.get(variant, [])
    return config_from_dict(Recipe, {"preset": preset, **parse_overrides(pairs)}, f"variant {variant}")


def references_for(variant: str) -> tuple[str, ...]:
    return ("MeL",) if variant in MAIN else ()


def col(name: str, variant: str, enc: str) -> str:
    """``Ours_lstm`` for the default variant, ``Ours_paper_lstm`` for another."""
    return f"{name}_{enc}" if variant == "default" else f"{name}_{variant}_{enc}"


def run_scenario(scen: str, enc: str, data, teacher_dir: Path, theta0: Theta0, recipe: Recipe, variant: str,
                 work: Path, pretrained: dict | None) -> dict:
    """One carrier of one variant: `onboard` with the carrier's θu as the teacher."""
    teacher = load_model_dir(teacher_dir)[0]
    rows = ScenarioRows.build(data, scen, theta0.transforms, query_frac=recipe.meta.query_frac, seed=recipe.meta.seed)
    done = onboard(theta0, rows, recipe, out=work / variant / safe_name(scen), teacher=teacher,
                   references=references_for(variant), pretrained=pretrained)
    s = done.summary()
    row = {"scenario": scen, col("Ours", variant, enc): s["auc"]["Ours"], col("flops_ours", variant, enc): s["flops"]["Ours"],
           col("latency_ours", variant, enc) + "_ms": s["latency_ms"]["Ours"],
           col("seconds_ours", variant, enc): s["seconds"]["ours"],
           col("restarts_ours", variant, enc): s["restarts"]["restarts"],
           col("restart_kept_ours", variant, enc): s["restarts"]["restart_kept"],
           col("genotypes_ours", variant, enc): json.dumps(s["genotypes"], sort_keys=True)}
    if variant == "default":
        row.update({f"budget_{enc}": s["flops"]["budget"], f"flops_heavy_{enc}": s["flops"]["heavy"],
                    f"latency_heavy_{enc}_ms": s["latency_ms"]["heavy"]})
    if "MeL" in references_for(variant):
        row.update({col("MeL", variant, enc): s["auc"]["MeL"], col("flops_light", variant, enc): s["flops"]["MeL"],
                    col("latency_light", variant, enc) + "_ms": s["latency_ms"]["MeL"]})
    return row


def check_recipe(done_file: Path, recipe: Recipe) -> None:
    """Record the recipe of a variant's rows, or refuse to add to rows made with another recipe."""
    stamp = done_file.with_suffix(".recipe.json")
    mine = json.loads(json.dumps(config_to_dict(recipe), default=str))
    if stamp.exists():
        theirs = json.loads(stamp.read_text())
        if theirs != mine:
            changed = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            raise SystemExit(f"{done_file} was made with another recipe (differs in {changed}); pass another --work "
                             f"for these settings or delete {done_file}")
    else:
        atomic_write_text(stamp, json.dumps(mine, indent=1, sort_keys=True) + "\n")


def _rows(path: Path) -> dict[str, dict]:
    return {r["scenario"]: r for r in map(json.loads, path.read_text().splitlines())} if path.exists() else {}


def pretrained_for(recipe: Recipe, meh: Path, data, cache: Path, label: str) -> dict | None:
    """The pooled pre-trained supernet of a recipe (cached per recipe in ``cache``)."""
    if recipe.light.pretrain.epochs <= 0:
        return None
    from longtail.nas.pretrain import pretrained_supernet

    return pretrained_supernet(meh / "theta0_final", data, recipe.light, cache,
                               log=lambda m: print(f"{label}: {m}", flush=True))[0]


def run(args: argparse.Namespace) -> None:
    tag = args.tag or ("nas_quick" if args.quick else "nas")
    t0 = time.perf_counter()
    data = prepare(DataConfig(tables=args.data, split_seed=args.seed))
    sizes = {s: len(data.rows(TRAIN, [s])) for s in data.scenarios}
    args.n_test = {s: len(data.rows(TEST, [s])) for s in data.scenarios}
    scenarios = args.scenarios or sorted(data.scenarios, key=lambda s: -sizes[s])
    meta = RESULTS / "meta.csv"
    ref = pd.read_csv(meta).set_index("scenario") if meta.exists() else pd.DataFrame()
    work_items = [(enc, v) for enc in args.encoders for v in args.variants if v in MAIN or v in args.custom]
    work_items += [(enc, v) for enc in args.ablations for v in args.variants if v in ABLATIONS]
    if args.report_only:
        work_items = []
    for enc in dict.fromkeys(enc for enc, _ in work_items):
        if not (Path(args.meta_work) / enc / "meh" / "metrics.json").exists():  # written last by run_meh
            from meta import build_teachers

            print(f"{enc}: no θu teachers in {args.meta_work}/{enc}/meh; building them (MeH of bench/meta.py, "
                  f"{'1' if args.quick else '5'} epochs, without its SinH half)", flush=True)
            build_teachers(data, enc, 1 if args.quick else 5, args.seed, args.meta_work, quick=args.quick)
    for enc, variant in work_items:
        meh = Path(args.meta_work) / enc / "meh"
        work = Path(args.work) / enc
        work.mkdir(parents=True, exist_ok=True)
        done_file = work / f"{variant}.jsonl"
        recipe = recipe_for(variant, args, enc)
        check_recipe(done_file, recipe)
        done = _rows(done_file)
        todo = [s for s in scenarios if s not in done]
        if not todo:
            continue
        theta0 = Theta0.from_model_dir(meh / "theta0_final")
        pretrained = pretrained_for(recipe, meh, data, work / "pretrain", f"{enc} {variant}")
        for scen in todo:
            teacher_dir = meh / "models" / safe_name(scen)
            if not (teacher_dir / "model.json").exists():
                print(f"{enc} {scen}: no θu at {teacher_dir} (its MeH run has no such carrier) — skipped", flush=True)
                continue
            s0 = time.perf_counter()
            row = run_scenario(scen, enc, data, teacher_dir, theta0, recipe, variant, work, pretrained)
            with open(done_file, "a") as f:  # one line per finished carrier: the resume point
                f.write(json.dumps(row, default=float) + "\n")
            print(f"{enc} {variant} {scen} ({sizes[scen]} rows): "
                  + ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k.startswith(("MeL", "Ours")))
                  + f" in {time.perf_counter() - s0:.0f}s", flush=True)
            write_results(tag, args, scenarios, sizes, ref, time.perf_counter() - t0, data.spec.name)
    args.bootstrap = {enc: paired_bootstrap(args, data, enc, scenarios) for enc in args.encoders}
    write_results(tag, args, scenarios, sizes, ref, time.perf_counter() - t0, data.spec.name)


def paired_bootstrap(args: argparse.Namespace, data, enc: str, scenarios: list[str], resamples: int = 1000,
                     seed: int = 0) -> dict | None:
    """How much of mean Ours − MeH is test-row noise: a paired, stratified bootstrap over carriers.

    Each resample draws every carrier's test positives and negatives with replacement (so each
    draw keeps both classes), scores Ours (default variant) and its θu teacher on the same draw and
    averages the AUC differences over the carriers. Carriers without both models are left out.

    Returns:
        ``{"carriers", "mean", "low", "high"}`` (2.5 and 97.5 percentiles), or ``None``.
    """
    from sklearn.metrics import roc_auc_score

    from longtail.metrics import predict_proba

    rng = np.random.default_rng(seed)
    diffs, used = [], []
    for scen in scenarios:
        dirs = (Path(args.work) / enc / "default" / safe_name(scen) / "ours",
                Path(args.meta_work) / enc / "meh" / "models" / safe_name(scen))
        if not all((d / "model.json").exists() for d in dirs):
            continue
        test = data.rows(TEST, [scen])
        y = test[data.spec.label].to_numpy()
        pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
        if not len(pos) or not len(neg):
            continue
        preds = []
        for d in dirs:
            model, transforms, _ = load_model_dir(d)
            preds.append(predict_proba(model, transforms.transform(test)))
        per = np.empty(resamples)
        for b in range(resamples):
            i = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
            per[b] = roc_auc_score(y[i], preds[0][i]) - roc_auc_score(y[i], preds[1][i])
        diffs.append(per)
        used.append(scen)
    if not used:
        return None
    means = np.mean(diffs, axis=0)  # (resamples,) mean over carriers of each draw
    return {"carriers": used, "mean": float(np.mean(means)), "low": float(np.percentile(means, 2.5)),
            "high": float(np.percentile(means, 97.5)), "resamples": resamples}


def teachers_meh(args: argparse.Namespace, enc: str) -> pd.Series | None:
    """Test AUC per carrier of the θu teachers in ``--meta-work`` (their MeH run's ``per_scenario.csv``)."""
    path = Path(args.meta_work) / enc / "meh" / "per_scenario.csv"
    return pd.read_csv(path).set_index("scenario")["auc"] if path.exists() else None


def collect(args: argparse.Namespace, scenarios: list[str], sizes: dict, ref: pd.DataFrame) -> pd.DataFrame:
    table = pd.DataFrame({"scenario": scenarios, "n_train": [sizes[s] for s in scenarios],
                          "n_test": [args.n_test[s] for s in scenarios]})
    baselines = RESULTS / "baselines.csv"
    if baselines.exists():
        b = pd.read_csv(baselines).set_index("scenario")
        for c in REFERENCE_COLUMNS:
            if c in b:
                table[c] = table["scenario"].map(b[c])
    for enc in args.encoders:
        for strat in ("SinH", "MeH"):
            c = f"{strat}_{enc}"
            table[c] = table["scenario"].map(ref[c]) if c in ref else np.nan
        meh = teachers_meh(args, enc)
        if meh is not None:  # the teachers Ours and MeL were distilled from, rather than meta.csv's run
            table[f"MeH_{enc}"] = table["scenario"].map(meh)
        rows: dict[str, dict] = {}
        for path in sorted((Path(args.work) / enc).glob("*.jsonl")):
            for scen, extra in _rows(path).items():
                rows.setdefault(scen, {"scenario": scen}).update(extra)
        got = pd.DataFrame(list(rows.values())).set_index("scenario") if rows else pd.DataFrame()
        for c in got.columns:
            if not c.startswith("genotypes"):
                table[c] = table["scenario"].map(got[c])
    return table


def variant_lines(folder: Path) -> list[str]:
    """One line per variant with the settings that differ from the default recipe."""
    base = json.loads(json.dumps(config_to_dict(Recipe()), default=str))
    out = []
    for stamp in sorted(folder.glob("*.recipe.json")):
        mine = json.loads(stamp.read_text())
        newer: list[str] = []
        diffs = _diff(base, mine, newer=newer)
        out.append(f"* {stamp.name.removesuffix('.recipe.json')}: preset {mine.get('preset')}"
                   + (f", differs from the default recipe in {', '.join(diffs)}" if diffs else "")
                   + (f"; recorded before {len(newer)} later settings existed ({', '.join(newer)}: read at "
                      "their defaults)" if newer else ""))
    return out


def _diff(a, b, prefix: str = "", newer: list[str] | None = None) -> list[str]:
    """The settings of recipe ``b`` that differ from ``a``; a setting ``b`` lacks (added to the recipe after ``b``
    was recorded) goes to ``newer`` instead."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if k not in b and newer is not None:
                newer.append(f"{prefix}{k}")
            else:
                out += _diff(a.get(k), b.get(k), f"{prefix}{k}.", newer)
        return out
    return [] if a == b else [f"{prefix.rstrip('.')}={b}"]


def _f(v, fmt: str = ".4f") -> str:
    return "—" if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, fmt)


def write_results(tag: str, args, scenarios, sizes, ref, total: float, dataset: str) -> None:
    table = collect(args, scenarios, sizes, ref)
    RESULTS.mkdir(parents=True, exist_ok=True)
    with atomic_path(RESULTS / f"{tag}.csv") as tmp:
        table.drop(columns=[c for c in table if c.startswith(("restart", "seconds"))]).to_csv(
            tmp, index=False, float_format="%.4f")
    encs = [e for e in args.encoders if f"Ours_{e}" in table and table[f"Ours_{e}"].notna().any()]
    refs = [c for c in REFERENCE_COLUMNS if c in table]
    lines = [f"# MeH vs MeL vs Ours on {dataset} ({'quick' if args.quick else 'full'} run)", "",
             f"Command: `python bench/nas.py {' '.join(sys.argv[1:])}`; split seed {args.seed}; budget of Ours = "
             f"FLOPs of MeL (the pre-defined 3-layer light model); {platform.machine()} CPU; this run {total:.0f}s. "
             "Every variant is `longtail.onboarding.onboard` with the carrier's θu as the teacher. SinH from "
             f"`bench/results/meta.csv`; MeH is the test AUC of the θu teachers (`{args.meta_work}/<encoder>/meh/"
             "per_scenario.csv`); " + (f"{', '.join(refs)} from `bench/results/baselines.csv` (the same rows: what a "
                                       "user would train instead)." if refs else "no baselines.csv for LightGBM."), ""]
    for enc in encs:
        paper = f"Ours_paper_{enc}" in table
        cols = [*refs, f"SinH_{enc}", f"MeH_{enc}", f"MeL_{enc}", f"Ours_{enc}"]
        cols += [c for c in (f"MeL_paper_{enc}", f"Ours_paper_{enc}") if paper]
        abl = [c for c in (f"Ours_nodistill_{enc}", f"Ours_noflops_{enc}", f"flops_ours_noflops_{enc}") if c in table]
        lines += [f"## heavy encoder: {enc}", "", "Variants (recipes):", *variant_lines(Path(args.work) / enc), "",
                  "| scenario | n_train | " + " | ".join(cols + abl) + " | FLOPs heavy | FLOPs MeL | FLOPs Ours |"
                  + (" FLOPs Ours paper |" if paper else "") + " p50 ms heavy | p50 ms MeL | p50 ms Ours |",
                  "|---|---:|" + "---:|" * (len(cols) + len(abl) + 6 + int(paper))]
        sub = table[table[f"Ours_{enc}"].notna()]
        fmt = {c: ",.0f" if c.startswith("flops") else ".4f" for c in cols + abl}
        for _, r in sub.iterrows():
            lines.append(f"| {r['scenario']} | {r['n_train']} | " + " | ".join(_f(r[c], fmt[c]) for c in cols + abl)
                         + f" | {_f(r[f'flops_heavy_{enc}'], ',.0f')} | {_f(r.get(f'flops_light_{enc}'), ',.0f')} | "
                         f"{_f(r[f'flops_ours_{enc}'], ',.0f')} |"
                         + (f" {_f(r.get(f'flops_ours_paper_{enc}'), ',.0f')} |" if paper else "")
                         + f" {_f(r[f'latency_heavy_{enc}_ms'], '.2f')} | "
                         f"{_f(r.get(f'latency_light_{enc}_ms'), '.2f')} | {_f(r[f'latency_ours_{enc}_ms'], '.2f')} |")
        # a column with a missing carrier (a variant cut short) has no mean over all carriers
        lines.append(f"| **mean** ({len(sub)}) | | " + " | ".join(
            f"**{_f(sub[c].mean(), fmt[c])}**" if sub[c].notna().all() else "—" for c in cols + abl)
            + f" | {sub[f'flops_heavy_{enc}'].mean():,.0f} | {_f(sub.get(f'flops_light_{enc}', pd.Series(dtype=float)).mean(), ',.0f')}"
            f" | {sub[f'flops_ours_{enc}'].mean():,.0f} |"
            + (f" {_f(sub[f'flops_ours_paper_{enc}'].mean(), ',.0f')} |" if paper else "")
            + f" {sub[f'latency_heavy_{enc}_ms'].mean():.2f} | "
            f"{_f(sub.get(f'latency_light_{enc}_ms', pd.Series(dtype=float)).mean(), '.2f')} | "
            f"{sub[f'latency_ours_{enc}_ms'].mean():.2f} |")
        o, h = sub[f"Ours_{enc}"], sub[f"MeH_{enc}"]
        m = sub[f"MeL_{enc}"] if f"MeL_{enc}" in sub else pd.Series(np.nan, index=sub.index)
        both = o.notna() & m.notna()
        within = bool((sub[f"flops_ours_{enc}"] <= sub[f"budget_{enc}"]).all())
        lines += ["", f"Ours beats MeL on {int((o[both] > m[both]).sum())}/{int(both.sum())} carriers; "
                  f"mean Ours − MeL = {(o - m).mean():+.4f}, mean Ours − MeH = {(o - h).mean():+.4f}; "
                  f"every Ours model within its budget: {within}; mean Ours FLOPs / heavy FLOPs = "
                  f"{(sub[f'flops_ours_{enc}'] / sub[f'flops_heavy_{enc}']).mean():.3f}.", ""]
        if both.any():
            lines += [f"Weighted by test rows ({sub.loc[sub['n_test'].idxmin(), 'scenario']} has "
                      f"{sub['n_test'].min()}), mean Ours − MeH = {np.average((o - h)[both], weights=sub['n_test'][both]):+.4f}, "
                      f"Ours − MeL = {np.average((o - m)[both], weights=sub['n_test'][both]):+.4f}.", ""]
        for ref_col in refs:
            lines += [f"Against {ref_col}: mean Ours − {ref_col} = {(o - sub[ref_col]).mean():+.4f}, Ours ahead on "
                      f"{int((o > sub[ref_col]).sum())}/{len(sub)} carriers; MeH − {ref_col} = "
                      f"{(h - sub[ref_col]).mean():+.4f}.", ""]
        if f"restarts_ours_{enc}" in sub:
            rs = sub[sub[f"restarts_ours_{enc}"].fillna(1) > 1]
            if len(rs):
                lines += ["Restarts (`recipe.light.restarts`): " + ", ".join(
                    f"{r['scenario']} kept run {int(r[f'restart_kept_ours_{enc}'])} of {int(r[f'restarts_ours_{enc}'])}"
                    for _, r in rs.iterrows()) + " (run 0 is the single run of `runs: 1`).", ""]
        boot = getattr(args, "bootstrap", {}).get(enc)
        if boot:
            lines += [f"Paired bootstrap of the test rows ({boot['resamples']:,} stratified resamples of every carrier's "
                      f"test rows, Ours and θu scored on the same draw; {len(boot['carriers'])} carriers): mean Ours − "
                      f"MeH {boot['mean']:+.4f}, 95% interval [{boot['low']:+.4f}, {boot['high']:+.4f}].", ""]
        if f"Ours_nodistill_{enc}" in sub:  # the ablations may cover fewer carriers: compare on the same ones
            a = sub[sub[f"Ours_nodistill_{enc}"].notna()]
            lines += [f"Ablations ({len(a)} carriers: {', '.join(a['scenario'])}): on them mean Ours "
                      f"{a[f'Ours_{enc}'].mean():.4f}, without distillation (δ = 0, no transfer set) "
                      f"{a[f'Ours_nodistill_{enc}'].mean():.4f}, without the FLOPs term (λ = 0) "
                      f"{_f(a.get(f'Ours_noflops_{enc}', pd.Series(dtype=float)).mean())} at "
                      f"{_f(a.get(f'flops_ours_noflops_{enc}', pd.Series(dtype=float)).mean(), ',.0f')} FLOPs "
                      f"(Ours {a[f'flops_ours_{enc}'].mean():,.0f}); MeL {_f(a[f'MeL_{enc}'].mean())}, "
                      f"MeH {a[f'MeH_{enc}'].mean():.4f}.", ""]
    atomic_write_text(RESULTS / f"{tag}.md", "\n".join(lines) + "\n")
    if encs:
        cols = [c for e in encs for c in (f"MeH_{e}", f"MeL_{e}", f"Ours_{e}", f"Ours_paper_{e}") if c in table]
        shown = table[table[[f"Ours_{e}" for e in encs]].notna().any(axis=1)]
        auc_bars(shown, [*refs[:1], *cols], RESULTS / f"{tag}_auc.png", f"{dataset}: MeH vs MeL vs Ours per carrier")
        plot_flops(shown, encs, RESULTS / f"{tag}_flops.png", dataset)
    print("\n".join(lines), flush=True)


def plot_flops(table: pd.DataFrame, encs: list[str], path: Path, dataset: str) -> None:
    """AUC against FLOPs per sample (log scale), one point per carrier and model, lines per carrier."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(encs), figsize=(6 * len(encs), 4.5), squeeze=False)
    for ax, enc in zip(axes[0], encs, strict=True):
        points = [("MeH", "heavy", "o", ""), ("MeL", "light", "s", ""), ("Ours", "ours", "^", ""),
                  ("Ours paper", "ours", "v", "paper_")]
        points = [p for p in points if f"flops_{p[1]}_{p[3]}{enc}" in table and f"{p[0].split()[0]}_{p[3]}{enc}" in table]
        for _, r in table.iterrows():
            ax.plot([r[f"flops_{f}_{v}{enc}"] for _, f, _, v in points],
                    [r[f"{n.split()[0]}_{v}{enc}"] for n, _, _, v in points], color="lightgrey", lw=0.7, zorder=1)
        for name, fcol, marker, v in points:
            ax.scatter(table[f"flops_{fcol}_{v}{enc}"], table[f"{name.split()[0]}_{v}{enc}"], marker=marker, label=name,
                       zorder=2)
        ax.set_xscale("log")
        ax.set_xlabel("FLOPs per sample")
        ax.set_ylabel("test AUC")
        ax.set_title(f"{dataset}, {enc} heavy: AUC vs FLOPs per carrier")
        ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/flights", help="flights table set (as used by bench/meta.py)")
    p.add_argument("--meta-work", default="runs/bench-meta", help="bench/meta.py's work folder (the θu teachers)")
    p.add_argument("--work", default="runs/bench-nas", help="folder for the onboarded models and the resume rows")
    p.add_argument("--tag", default="", help="result file names bench/results/<tag>.* (default nas, quick nas_quick), "
                   "e.g. for a run of one encoder beside the committed results")
    p.add_argument("--quick", action="store_true", help="3 small carriers, LSTM, 1 epoch")
    p.add_argument("--encoders", default=None, help="comma list (default lstm,bert; quick lstm)")
    p.add_argument("--ablations", default="lstm", help="encoders that also run the ablation variants ('' for none)")
    p.add_argument("--variants", default=None, help="comma list of default, paper, nodistill, noflops and --variant "
                   "names (default: all; run a few per process to use several cores)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=key=value,...",
                   help="an extra variant of the default recipe, e.g. linear=light.search.flops_penalty=linear")
    p.add_argument("--scenarios", default=None, help="comma list of carriers (default: all, largest first)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report-only", action="store_true", help="write the results of the work folder, run nothing")
    args = p.parse_args(argv)
    args.custom = {}
    for v in args.variant:
        name, _, rest = v.partition("=")
        if not name or not rest:
            raise SystemExit(f"--variant {v!r}: expected NAME=key=value[,key=value]")
        args.custom[name] = [x for x in rest.split(",") if x]
    args.variants = (args.variants.split(",") if args.variants
                     else [*MAIN, *ABLATIONS, *args.custom])
    args.encoders = (args.encoders or ("lstm" if args.quick else "lstm,bert")).split(",")
    args.ablations = [a for a in args.ablations.split(",") if a]
    args.scenarios = args.scenarios.split(",") if args.scenarios else (["F9", "YV", "HA"] if args.quick else None)
    if args.quick:
        args.work = str(Path(args.work).with_name(Path(args.work).name + "-quick"))
        if not all((Path(args.meta_work) / e / "meh" / "metrics.json").exists() for e in args.encoders):
            # teachers built for a quick run (1 epoch) never stand in for the full benchmark's
            args.meta_work = str(Path(args.meta_work).with_name(Path(args.meta_work).name + "-quick"))
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
