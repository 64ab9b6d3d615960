"""MeH vs MeL vs Ours on the real flights data (paper Tables III–V), with ablations.

For every carrier and each heavy encoder (LSTM, BERT), the scenario-specific heavy model θu of the
MeH run of ``bench/meta.py`` (``runs/bench-meta/<encoder>/meh/models/<carrier>``) is the teacher; when
that run is missing, its MeH half is run first (``meta.build_teachers``: θ0 and every θu, no SinH):

* **MeL**: the pre-defined light model (3-layer encoder of the teacher's kind, widths as the
  teacher's) trained with distillation from θu (Eq. 5);
* **Ours**: GDAS search with the FLOPs term (Eq. 4, 7–8; hinge form, see ``LightConfig``), the
  most probable architecture within the budget = MeL's FLOPs (Eq. 9), retrained with distillation
  (profile encoder and head starting from θu's, ``LightConfig.init_from_teacher``);
* ablations (``--ablations``, LSTM by default): Ours without distillation (δ = 0 in pre-training,
  search and retraining, and no transfer set, whose labels are θu's) and Ours without the FLOPs term (λ = 0 in search; the derivation still keeps the
  budget).

SinH AUCs come from ``bench/results/meta.csv`` (same split seed); MeH is the test AUC of the θu
teachers themselves (``<meta-work>/<encoder>/meh/per_scenario.csv``), so that Ours and MeL are
compared with the models they were distilled from even when ``bench/meta.py`` was rerun since
``meta.csv`` was written (falling back to ``meta.csv`` without that file). ``--keep bert`` keeps an
encoder's columns and settings from the current result files when this run does not redo it. Writes
``bench/results/nas.{csv,md}``, ``nas_auc.png`` (AUC per carrier) and ``nas_flops.png`` (AUC vs
FLOPs per carrier); ``--quick`` writes ``nas_quick.*``. Finished carriers are kept per phase in
``<work>/<encoder>/{mel,ours,ablations}.jsonl``, so an interrupted run resumes where it stopped;
each phase file has the light settings it was made with beside it (``*.config.json``), and a run
with other settings into the same ``--work`` stops with an error instead of mixing results.
Phases can run in separate processes (``--phases mel`` beside ``--phases ours``) to use two cores.

By default (``LightConfig``'s) Ours and its ablations (each with its own δ or λ) start from a light
supernet pre-trained for 2 epochs on the pooled TRAIN rows with the MeH run's final θ0 as teacher
(``longtail.nas.pretrain``, cached in ``<work>/<encoder>/pretrain/``) and train with a transfer set
of 16,384 other carriers' rows labelled by θu; MeL is the paper's (no transfer set,
``--mel-transfer-rows``); Ours' derived model is then fine-tuned for up to 20 epochs, early-stopped on
VALID (``LightConfig.retrain_epochs``; MeL and the search keep ``--epochs``) after two drops of the
learning rate at plateaus (``LightConfig.retrain_lr_drops``, ``--retrain-lr-drops``), keeping the epoch
with the lowest distillation loss against θu on VALID rows (``LightConfig.select_on``); a carrier with
fewer than 1,000 TRAIN rows runs Ours 3 times with shifted seeds and keeps the run that scores best
on VALID (``LightConfig.restarts``, ``--restarts``).
``--pretrain-epochs 0 --transfer-rows 0 --retrain-epochs 0 --retrain-lr-drops 0 --select-on auc --restarts 1``
gives the paper's Ours.

Run: ``make bench-nas`` (full) or ``make bench-nas QUICK=1`` (3 small carriers, LSTM, 1 epoch).
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

from longtail.config import config_to_dict
from longtail.data.prepared import DataConfig, prepare
from longtail.data.splits import TEST, TRAIN
from longtail.io import atomic_path, atomic_write_text, safe_name
from longtail.model_folder import load_model_dir
from longtail.models.heavy import HeavyConfig
from longtail.nas import SearchConfig
from longtail.nas.strategies import LightConfig, heavy_costs, run_mel, run_ours
from longtail.train import TrainConfig, normalized_train_dict

RESULTS = Path(__file__).resolve().parent / "results"


def light_config(encoder: str, epochs: int, seed: int, pretrain_epochs: int = 0, transfer_rows: int = 0,
                 pretrain_rows: int = 0, retrain_epochs: int = 0, select_on: str = "auc",
                 restarts: int = 1, retrain_lr_drops: int = 0) -> LightConfig:
    """The paper's light settings: 3-layer space of width 15, δ = 1, budget = MeL's FLOPs.

    ``retrain_epochs`` 0 retrains Ours for ``epochs``, ``select_on="auc"`` keeps its epoch of
    best VALID AUC, ``restarts`` 1 runs it once and ``retrain_lr_drops`` 0 stops it at its first
    plateau (the paper)."""
    train = TrainConfig(epochs=epochs, seed=seed)
    search = SearchConfig(epochs=epochs, seed=seed, flops_penalty=LightConfig().search.flops_penalty)
    return LightConfig(search=search, train=train, mel_encoder=encoder, pretrain_epochs=pretrain_epochs,
                       transfer_rows=transfer_rows, pretrain_rows=pretrain_rows, retrain_epochs=retrain_epochs,
                       select_on=select_on, restarts=restarts, retrain_lr_drops=retrain_lr_drops)


def pretrained_for(phase: str, cfg: LightConfig, enc: str, args, data) -> tuple[dict | None, dict | None]:
    """Pooled pre-trained supernets of a phase: ``(main, {"nodistill": ..., "noflops": ...})``."""
    if cfg.pretrain_epochs <= 0 or phase == "mel":
        return None, None
    from longtail.nas.pretrain import pretrained_supernet, theta0_dir

    def one(c: LightConfig) -> dict:
        return pretrained_supernet(theta0_dir(Path(args.meta_work) / enc / "meh"), data, c,
                                   Path(args.work) / enc / "pretrain",
                                   log=lambda m: print(f"{enc} {phase}: {m}", flush=True))[0]

    if phase == "ours":
        return one(cfg), None
    return None, {"nodistill": one(dataclasses.replace(cfg, delta=0.0)),
                  "noflops": one(dataclasses.replace(cfg, search=dataclasses.replace(cfg.search, lambda_flops=0.0)))}


def run_scenario(scen: str, enc: str, data, teacher_dir: Path, cfg: LightConfig, phase: str, work: Path,
                 pretrained: dict | None = None, pretrained_ablations: dict | None = None) -> dict:
    """One carrier: MeL (phase ``mel``), Ours (``ours``) or the two ablations of Ours (``ablation``)."""
    row: dict = {"scenario": scen}
    teacher, transforms, info = load_model_dir(teacher_dir)
    model_cfg = HeavyConfig.from_dict(info["config"])
    if phase == "mel":
        r = run_mel(teacher, transforms, data, scen, model_cfg, cfg)
        heavy_flops, heavy_ms = heavy_costs(teacher, transforms, data, scen, cfg.latency_repeats)
        return {**row, f"MeL_{enc}": r.auc, f"flops_heavy_{enc}": heavy_flops, f"latency_heavy_{enc}_ms": heavy_ms,
                f"flops_light_{enc}": r.flops, f"seconds_mel_{enc}": r.seconds, f"latency_light_{enc}_ms": r.latency_ms}
    if phase == "ablation":
        abl = pretrained_ablations or {}
        # no distillation anywhere: δ = 0 and no transfer set (its labels are θu's probabilities)
        nod = run_ours(teacher, transforms, data, scen, model_cfg, dataclasses.replace(cfg, delta=0.0, transfer_rows=0),
                       pretrained=abl.get("nodistill"))
        nof = run_ours(teacher, transforms, data, scen, model_cfg,
                       dataclasses.replace(cfg, search=dataclasses.replace(cfg.search, lambda_flops=0.0)),
                       pretrained=abl.get("noflops"))
        return {**row, f"Ours_nodistill_{enc}": nod.auc, f"flops_ours_nodistill_{enc}": nod.flops,
                f"Ours_noflops_{enc}": nof.auc, f"flops_ours_noflops_{enc}": nof.flops}
    r = run_ours(teacher, transforms, data, scen, model_cfg, cfg, out=work / "ours" / safe_name(scen),
                 pretrained=pretrained)
    return {**row, f"Ours_{enc}": r.auc, f"flops_ours_{enc}": r.flops, f"budget_{enc}": r.budget,
            f"latency_ours_{enc}_ms": r.latency_ms, f"seconds_ours_{enc}": r.seconds,
            f"genotypes_ours_{enc}": json.dumps(r.genotypes, sort_keys=True),
            f"restarts_ours_{enc}": r.info["restarts"], f"restart_kept_ours_{enc}": r.info["restart_kept"]}


PHASE_FILES = {"mel": "mel.jsonl", "ours": "ours.jsonl", "ablation": "ablations.jsonl"}


# settings MeL does not read: its phase file stays valid when only they change
NOT_MEL = ("space", "search", "budget_fraction_of_mel", "from_supernet", "pretrain_epochs", "pretrain_rows",
           "pretrain_seed", "retrain_epochs", "select_on", "restarts", "restart_below_rows", "retrain_lr_drops")
# settings added after stamps were first written, at the value that gives the behaviour from before
ADDED_LATER = {"retrain_lr_drops": 0}


def normalized_stamp(stamp: dict) -> dict:
    """A stamp with the settings added since it was written at their earlier behaviour (``ADDED_LATER``;
    ``train``'s fields by ``normalized_train_dict``), so that an old phase file matches the same settings."""
    out = {**{k: v for k, v in ADDED_LATER.items() if k not in stamp and "search" in stamp}, **stamp}
    if isinstance(out.get("train"), dict):
        out["train"] = normalized_train_dict(out["train"])
    return out


def differing_keys(x: dict, y: dict) -> list[str]:
    """The settings (top-level keys) in which two stamps differ, sorted."""
    return sorted(k for k in set(x) | set(y) if x.get(k) != y.get(k))


def check_settings(done_file: Path, cfg: LightConfig, phase: str) -> None:
    """Record the settings of a phase file, or refuse to add to one made with other settings."""
    stamp = done_file.with_suffix(".config.json")
    mine = json.loads(json.dumps(config_to_dict(cfg), default=str))
    if phase == "mel":
        mine = {k: v for k, v in mine.items() if k not in NOT_MEL}
    if stamp.exists():
        theirs = normalized_stamp(json.loads(stamp.read_text()))
        if theirs != mine:
            changed = differing_keys(mine, theirs)
            raise SystemExit(f"{done_file} was made with other light settings (differ in {changed}); "
                             f"pass another --work for these settings or delete {done_file.parent}")
    else:
        atomic_write_text(stamp, json.dumps(mine, indent=1, sort_keys=True) + "\n")


def _rows(path: Path) -> dict[str, dict]:
    return {r["scenario"]: r for r in map(json.loads, path.read_text().splitlines())} if path.exists() else {}


def run(args: argparse.Namespace) -> None:
    tag = "nas_quick" if args.quick else "nas"
    t0 = time.perf_counter()
    data = prepare(DataConfig(tables=args.data, split_seed=args.seed))
    sizes = {s: len(data.rows(TRAIN, [s])) for s in data.scenarios}
    args.n_test = {s: len(data.rows(TEST, [s])) for s in data.scenarios}
    scenarios = args.scenarios or sorted(data.scenarios, key=lambda s: -sizes[s])
    meta = RESULTS / "meta.csv"
    ref = pd.read_csv(meta).set_index("scenario") if meta.exists() else pd.DataFrame()
    # read before this run writes its own result files over them
    args.kept = {enc: previous_encoder(tag, enc) for enc in args.keep}
    # main results of every encoder first, then the ablations: a run cut short keeps the main table
    phases = [(enc, ph) for enc in args.encoders for ph in ("mel", "ours") if ph in args.phases]
    phases += [(enc, "ablation") for enc in args.ablations if "ablation" in args.phases]
    if args.report_only:
        phases = []
    for enc in dict.fromkeys(enc for enc, _ in phases):
        if not (Path(args.meta_work) / enc / "meh" / "metrics.json").exists():  # written last by run_meh
            from meta import build_teachers

            print(f"{enc}: no θu teachers in {args.meta_work}/{enc}/meh; building them (MeH of bench/meta.py, "
                  f"{args.epochs} epochs, without its SinH half)", flush=True)
            build_teachers(data, enc, args.epochs, args.seed, args.meta_work)
    for enc, phase in phases:
        work = Path(args.work) / enc
        work.mkdir(parents=True, exist_ok=True)
        done_file = work / PHASE_FILES[phase]
        cfg = light_config(enc, args.epochs, args.seed, args.pretrain_epochs,
                           args.mel_transfer_rows if phase == "mel" else args.transfer_rows, args.pretrain_rows,
                           args.retrain_epochs, args.select_on, args.restarts, args.retrain_lr_drops)
        check_settings(done_file, cfg, phase)
        done = _rows(done_file)
        todo = [s for s in scenarios if s not in done]
        pretrained, pretrained_abl = pretrained_for(phase, cfg, enc, args, data) if todo else (None, None)
        for scen in scenarios:
            if scen in done:
                continue
            teacher_dir = Path(args.meta_work) / enc / "meh" / "models" / safe_name(scen)
            if not (teacher_dir / "model.json").exists():
                print(f"{enc} {scen}: no θu at {teacher_dir} (its MeH run has no such carrier) — skipped", flush=True)
                continue
            s0 = time.perf_counter()
            row = run_scenario(scen, enc, data, teacher_dir, cfg, phase, work, pretrained, pretrained_abl)
            with open(done_file, "a") as f:  # one line per finished carrier: the resume point
                f.write(json.dumps(row, default=float) + "\n")
            done[scen] = row
            print(f"{enc} {phase} {scen} ({sizes[scen]} rows): "
                  + ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k.startswith(("MeL", "Ours")))
                  + f" in {time.perf_counter() - s0:.0f}s", flush=True)
            write_results(tag, args, scenarios, sizes, ref, time.perf_counter() - t0, data.spec.name)
    args.bootstrap = {enc: paired_bootstrap(args, data, enc, scenarios) for enc in ("lstm", "bert")
                      if enc not in args.kept}
    write_results(tag, args, scenarios, sizes, ref, time.perf_counter() - t0, data.spec.name)


def paired_bootstrap(args: argparse.Namespace, data, enc: str, scenarios: list[str], resamples: int = 1000,
                     seed: int = 0) -> dict | None:
    """How much of mean Ours − MeH is test-row noise: a paired, stratified bootstrap over carriers.

    Each resample draws every carrier's test positives and negatives with replacement (so each
    draw keeps both classes), scores Ours and its θu teacher on the same draw and averages the AUC
    differences over the carriers. Uses the saved Ours models of ``--work`` and the θu folders of
    ``--meta-work``; carriers without both are left out.

    Returns:
        ``{"carriers", "mean", "low", "high"}`` (2.5 and 97.5 percentiles), or ``None``.
    """
    from sklearn.metrics import roc_auc_score

    from longtail.metrics import predict_proba

    rng = np.random.default_rng(seed)
    diffs, used = [], []
    for scen in scenarios:
        dirs = (Path(args.work) / enc / "ours" / safe_name(scen) / "model",
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


def previous_encoder(tag: str, enc: str) -> tuple[pd.DataFrame, list[str]]:
    """The columns and settings lines of ``enc`` in the current result files (``--keep``).

    Raises:
        SystemExit: the files hold no results of ``enc``.
    """
    csv, md = RESULTS / f"{tag}.csv", RESULTS / f"{tag}.md"
    old = pd.read_csv(csv) if csv.exists() else pd.DataFrame()
    if f"Ours_{enc}" not in old or old[f"Ours_{enc}"].isna().all():
        raise SystemExit(f"--keep {enc}: {csv} has no Ours_{enc} results to keep; run the {enc} phases instead")
    cols = [c for c in old.columns if c.endswith(f"_{enc}") or f"_{enc}_" in c]
    settings, section = [], False
    for line in md.read_text().splitlines() if md.exists() else []:
        if line.startswith("## heavy encoder: "):
            section = line == f"## heavy encoder: {enc}"
        elif section and line.startswith("* "):
            # files written before select_on existed were made with the AUC of VALID (phase_settings' default)
            settings.append(line if not line.startswith("* ours:") or "select_on" in line else line + ", select_on auc")
    return old[["scenario", *cols]].set_index("scenario"), settings


def teachers_meh(args: argparse.Namespace, enc: str) -> pd.Series | None:
    """Test AUC per carrier of the θu teachers in ``--meta-work`` (their MeH run's ``per_scenario.csv``)."""
    path = Path(args.meta_work) / enc / "meh" / "per_scenario.csv"
    return pd.read_csv(path).set_index("scenario")["auc"] if path.exists() else None


def collect(args: argparse.Namespace, scenarios: list[str], sizes: dict, ref: pd.DataFrame) -> pd.DataFrame:
    table = pd.DataFrame({"scenario": scenarios, "n_train": [sizes[s] for s in scenarios],
                          "n_test": [args.n_test[s] for s in scenarios]})
    for enc in ("lstm", "bert"):
        if enc in args.kept:  # every column as the previous result files have it
            old = args.kept[enc][0]
            for col in old.columns:
                table[col] = table["scenario"].map(old[col])
            continue
        for strat in ("SinH", "MeH"):
            col = f"{strat}_{enc}"
            table[col] = table["scenario"].map(ref[col]) if col in ref else np.nan
        meh = teachers_meh(args, enc)
        if meh is not None:  # the teachers Ours and MeL were distilled from, rather than meta.csv's run
            table[f"MeH_{enc}"] = table["scenario"].map(meh)
        rows: dict[str, dict] = {}
        for name in PHASE_FILES.values():
            for scen, extra in _rows(Path(args.work) / enc / name).items():
                rows.setdefault(scen, {"scenario": scen}).update(extra)
        got = pd.DataFrame(list(rows.values())).set_index("scenario") if rows else pd.DataFrame()
        for col in (f"MeL_{enc}", f"Ours_{enc}", f"flops_heavy_{enc}", f"flops_light_{enc}", f"flops_ours_{enc}",
                    f"latency_heavy_{enc}_ms", f"latency_light_{enc}_ms", f"latency_ours_{enc}_ms",
                    f"Ours_nodistill_{enc}", f"flops_ours_nodistill_{enc}", f"Ours_noflops_{enc}",
                    f"flops_ours_noflops_{enc}", f"restarts_ours_{enc}", f"restart_kept_ours_{enc}"):
            if col in got:
                table[col] = table["scenario"].map(got[col])
    return table


def phase_settings(folder: Path) -> list[str]:
    """One line per phase with the settings its rows were made with (from the ``*.config.json`` stamps)."""
    out = []
    for phase, name in PHASE_FILES.items():
        stamp = (folder / name).with_suffix(".config.json")
        if not stamp.exists():
            continue
        c = json.loads(stamp.read_text())
        parts = [f"train epochs {c['train']['epochs']}", f"min_steps {c['min_steps']}", f"δ {c['delta']}",
                 f"transfer_rows {c['transfer_rows']}"]
        if "search" in c:
            parts[1:1] = [f"search epochs {c['search']['epochs']}", f"pretrain_epochs {c['pretrain_epochs']}",
                          f"retrain_epochs {c.get('retrain_epochs', 0) or c['train']['epochs']}",
                          f"select_on {c.get('select_on', 'auc')}",
                          f"restarts {c.get('restarts', 1)}" + (f" below {c['restart_below_rows']:,} TRAIN rows"
                                                                 if c.get("restarts", 1) > 1 else "")]
            if c.get("retrain_lr_drops", 0):
                parts.insert(4, f"retrain_lr_drops {c['retrain_lr_drops']} (×{c['train'].get('lr_drop_factor', 0.3)})")
        out.append(f"* {phase}: " + ", ".join(parts))
    return out


def stamp_difference(folder: Path, phase: str, other: str) -> list[str]:
    """The light settings in which two phases' stamps differ (empty when either is missing)."""
    a, b = ((folder / PHASE_FILES[p]).with_suffix(".config.json") for p in (phase, other))
    if not (a.exists() and b.exists()):
        return []
    return differing_keys(normalized_stamp(json.loads(a.read_text())), normalized_stamp(json.loads(b.read_text())))


def _f(v, fmt: str = ".4f") -> str:
    return "—" if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, fmt)


def write_results(tag: str, args, scenarios, sizes, ref, total: float, dataset: str) -> None:
    table = collect(args, scenarios, sizes, ref)
    RESULTS.mkdir(parents=True, exist_ok=True)
    with atomic_path(RESULTS / f"{tag}.csv") as tmp:
        table.drop(columns=[c for c in table if c.startswith("restart")]).to_csv(tmp, index=False, float_format="%.4f")
    encs = [e for e in ("lstm", "bert") if f"Ours_{e}" in table and table[f"Ours_{e}"].notna().any()]
    lines = [f"# MeH vs MeL vs Ours on {dataset} ({'quick' if args.quick else 'full'} run)", "",
             f"Command: `python bench/nas.py {' '.join(sys.argv[1:])}` — epochs {args.epochs} (search and training), "
             f"split seed {args.seed}; budget of Ours = FLOPs of MeL (pre-defined 3-layer light model); "
             f"{platform.machine()} CPU; this run {total:.0f}s. SinH from `bench/results/meta.csv`; MeH is the "
             f"test AUC of the θu teachers (`{args.meta_work}/<encoder>/meh/per_scenario.csv`) where that file "
             "exists, else `bench/results/meta.csv`'s.", ""]
    for enc in encs:
        cols = [f"SinH_{enc}", f"MeH_{enc}", f"MeL_{enc}", f"Ours_{enc}"]
        abl = [c for c in (f"Ours_nodistill_{enc}", f"Ours_noflops_{enc}", f"flops_ours_noflops_{enc}")
               if c in table]
        if enc in args.kept:
            settings = [f"Kept from the previous `bench/results/{tag}.md` (`--keep {enc}`: not rerun by this command; "
                        "its SinH/MeH columns as they were there):", *args.kept[enc][1]]
        else:
            settings = phase_settings(Path(args.work) / enc)
        lines += [f"## heavy encoder: {enc}", "", *settings, "",
                  "| scenario | n_train | " + " | ".join(cols + abl) + " | FLOPs heavy | FLOPs MeL | FLOPs Ours | "
                  "p50 ms heavy | p50 ms MeL | p50 ms Ours |",
                  "|---|---:|" + "---:|" * (len(cols) + len(abl) + 6)]
        sub = table[table[f"Ours_{enc}"].notna()]
        fmt = {c: ",.0f" if c.startswith("flops") else ".4f" for c in cols + abl}
        for _, r in sub.iterrows():
            lines.append(f"| {r['scenario']} | {r['n_train']} | " + " | ".join(_f(r[c], fmt[c]) for c in cols + abl)
                         + f" | {int(r[f'flops_heavy_{enc}']):,} | {int(r[f'flops_light_{enc}']):,} | "
                         f"{int(r[f'flops_ours_{enc}']):,} | {r[f'latency_heavy_{enc}_ms']:.2f} | "
                         f"{r[f'latency_light_{enc}_ms']:.2f} | {r[f'latency_ours_{enc}_ms']:.2f} |")
        # a column with a missing carrier (ablations cut short) has no mean over all: see the ablation line
        lines.append(f"| **mean** ({len(sub)}) | | " + " | ".join(
            f"**{_f(sub[c].mean(), fmt[c])}**" if sub[c].notna().all() else "—" for c in cols + abl)
                     + f" | {sub[f'flops_heavy_{enc}'].mean():,.0f} | {sub[f'flops_light_{enc}'].mean():,.0f} | "
                     f"{sub[f'flops_ours_{enc}'].mean():,.0f} | {sub[f'latency_heavy_{enc}_ms'].mean():.2f} | "
                     f"{sub[f'latency_light_{enc}_ms'].mean():.2f} | {sub[f'latency_ours_{enc}_ms'].mean():.2f} |")
        o, m, h = sub[f"Ours_{enc}"], sub[f"MeL_{enc}"], sub[f"MeH_{enc}"]
        both = o.notna() & m.notna()
        lines += ["", f"Ours beats MeL on {int((o[both] > m[both]).sum())}/{int(both.sum())} carriers; "
                  f"mean Ours − MeL = {(o - m).mean():+.4f}, mean Ours − MeH = {(o - h).mean():+.4f}; "
                  f"every Ours model within budget: {bool((sub[f'flops_ours_{enc}'] <= sub[f'flops_light_{enc}']).all())}.",
                  "", f"Weighted by test rows (a carrier counts as much as its AUC can be trusted; "
                  f"{sub.loc[sub['n_test'].idxmin(), 'scenario']} has {sub['n_test'].min()}), mean Ours − MeH = {np.average((o - h)[both], weights=sub['n_test'][both]):+.4f}, "
                  f"Ours − MeL = {np.average((o - m)[both], weights=sub['n_test'][both]):+.4f}.", ""]
        if f"restarts_ours_{enc}" in sub:
            rs = sub[sub[f"restarts_ours_{enc}"].fillna(1) > 1]
            if len(rs):
                lines += ["Restarts (`LightConfig.restarts`): " + ", ".join(
                    f"{r['scenario']} kept run {int(r[f'restart_kept_ours_{enc}'])} of {int(r[f'restarts_ours_{enc}'])}"
                    for _, r in rs.iterrows()) + " (run 0 is the single run of `restarts: 1`).", ""]
        boot = getattr(args, "bootstrap", {}).get(enc)
        if boot:
            lines += [f"Paired bootstrap of the test rows ({boot['resamples']:,} stratified resamples of every carrier's "
                      f"test rows, Ours and θu scored on the same draw; {len(boot['carriers'])} carriers): mean Ours − "
                      f"MeH {boot['mean']:+.4f}, 95% interval [{boot['low']:+.4f}, {boot['high']:+.4f}].", ""]
        if f"Ours_nodistill_{enc}" in sub:  # the ablations may cover fewer carriers: compare on the same ones
            a = sub[sub[f"Ours_nodistill_{enc}"].notna()]
            differ = [] if enc in args.kept else stamp_difference(Path(args.work) / enc, "ablation", "ours")
            if differ:
                lines += [f"The ablations were run with other settings than the Ours column (differ in {differ}; "
                          "see the settings above): compare them with each other, not with this Ours.", ""]
            lines += [f"Ablations ({len(a)} carriers: {', '.join(a['scenario'])}): on them mean Ours "
                      f"{a[f'Ours_{enc}'].mean():.4f}, without distillation (δ = 0, no transfer set) "
                      f"{a[f'Ours_nodistill_{enc}'].mean():.4f}, without the FLOPs term (λ = 0) "
                      f"{a[f'Ours_noflops_{enc}'].mean():.4f} at {a[f'flops_ours_noflops_{enc}'].mean():,.0f} FLOPs "
                      f"(Ours {a[f'flops_ours_{enc}'].mean():,.0f}); MeL {a[f'MeL_{enc}'].mean():.4f}, "
                      f"MeH {a[f'MeH_{enc}'].mean():.4f}.", ""]
    atomic_write_text(RESULTS / f"{tag}.md", "\n".join(lines) + "\n")
    if encs:
        cols = [c for e in encs for c in (f"MeH_{e}", f"MeL_{e}", f"Ours_{e}")]
        shown = table[table[[f"Ours_{e}" for e in encs]].notna().any(axis=1)]
        auc_bars(shown, cols, RESULTS / f"{tag}_auc.png", f"{dataset}: MeH vs MeL vs Ours per carrier")
        plot_flops(shown, encs, RESULTS / f"{tag}_flops.png", dataset)
    print("\n".join(lines), flush=True)


def plot_flops(table: pd.DataFrame, encs: list[str], path: Path, dataset: str) -> None:
    """AUC against FLOPs per sample (log scale), one point per carrier and model, lines per carrier."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(encs), figsize=(6 * len(encs), 4.5), squeeze=False)
    for ax, enc in zip(axes[0], encs, strict=True):
        for _, r in table.iterrows():
            xs = [r[f"flops_heavy_{enc}"], r[f"flops_light_{enc}"], r[f"flops_ours_{enc}"]]
            ys = [r[f"MeH_{enc}"], r[f"MeL_{enc}"], r[f"Ours_{enc}"]]
            ax.plot(xs, ys, color="lightgrey", lw=0.7, zorder=1)
        for name, fcol, marker in (("MeH", "heavy", "o"), ("MeL", "light", "s"), ("Ours", "ours", "^")):
            ax.scatter(table[f"flops_{fcol}_{enc}"], table[f"{name}_{enc}"], marker=marker, label=name, zorder=2)
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
    p.add_argument("--work", default="runs/bench-nas", help="folder for searched models and the resume rows")
    p.add_argument("--quick", action="store_true", help="3 small carriers, LSTM, 1 epoch")
    p.add_argument("--epochs", type=int, help="epochs of search and of training (default 5, quick 1)")
    p.add_argument("--encoders", default=None, help="comma list (default lstm,bert; quick lstm)")
    p.add_argument("--ablations", default="lstm", help="encoders that also run the two ablations ('' for none)")
    p.add_argument("--scenarios", default=None, help="comma list of carriers (default: all, largest first)")
    p.add_argument("--phases", default="mel,ours,ablation", help="comma list of mel, ours, ablation (run one "
                   "phase per process to use several cores; results meet in the work folder)")
    p.add_argument("--pretrain-epochs", type=int, default=None,
                   help="epochs of the pooled pre-training of the light supernet (default LightConfig's, quick 1; "
                        "0: Ours from scratch as in the paper)")
    p.add_argument("--pretrain-rows", type=int, default=None, help="pooled TRAIN rows of it (default all, quick 16384)")
    p.add_argument("--transfer-rows", type=int, default=LightConfig().transfer_rows,
                   help="transfer set of Ours (LightConfig.transfer_rows; 0: the paper)")
    p.add_argument("--retrain-epochs", type=int, default=None,
                   help="most epochs of Ours' retraining, early-stopped on VALID (default LightConfig's, quick: "
                        "--epochs; 0: --epochs, the paper)")
    p.add_argument("--select-on", default=LightConfig().select_on, choices=["auc", "distill"],
                   help="what keeps Ours' fine-tuning epoch (LightConfig.select_on; auc: the paper)")
    p.add_argument("--restarts", type=int, default=None,
                   help="runs of Ours on a carrier with fewer than 1,000 TRAIN rows, the best on VALID kept "
                        "(LightConfig.restarts; default LightConfig's, quick: 1; 1: the paper)")
    p.add_argument("--retrain-lr-drops", type=int, default=None,
                   help="learning-rate drops of Ours' retraining at a VALID plateau before it stops "
                        "(LightConfig.retrain_lr_drops; default LightConfig's, quick: 0; 0: the paper)")
    p.add_argument("--mel-transfer-rows", type=int, default=0, help="transfer set of MeL (default 0: the paper's MeL)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report-only", action="store_true", help="write the results of the work folder, run nothing")
    p.add_argument("--keep", default="", help="comma list of encoders whose columns are kept from the current "
                   "result files instead of read from --work (an encoder not rerun this time)")
    args = p.parse_args(argv)
    args.phases = args.phases.split(",")
    args.epochs = args.epochs or (1 if args.quick else 5)
    if args.pretrain_epochs is None:
        args.pretrain_epochs = 1 if args.quick else LightConfig().pretrain_epochs
    if args.retrain_epochs is None:
        args.retrain_epochs = 0 if args.quick else LightConfig().retrain_epochs
    if args.restarts is None:
        args.restarts = 1 if args.quick else LightConfig().restarts
    if args.retrain_lr_drops is None:
        args.retrain_lr_drops = 0 if args.quick else LightConfig().retrain_lr_drops
    if args.pretrain_rows is None:
        args.pretrain_rows = 16384 if args.quick else 0
    args.encoders = (args.encoders or ("lstm" if args.quick else "lstm,bert")).split(",")
    args.ablations = [a for a in args.ablations.split(",") if a]
    args.keep = [k for k in args.keep.split(",") if k]
    if set(args.keep) & set(args.encoders):
        raise SystemExit(f"--keep {','.join(args.keep)}: an encoder is either kept or run; drop it from --encoders")
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
