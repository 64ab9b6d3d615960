"""Training throughput, side by side with the code from before it was sped up.

For each model at its default batch size (``TrainConfig()`` / ``SearchConfig()``: 512 rows, one
torch thread) it measures training rows/s (forward, backward and optimiser step, through the real
entry points: ``fit``, ``train_light``, ``search``) and evaluation rows/s (``predict_proba``):

* ``heavy_lstm`` / ``heavy_bert``: ``HeavyConfig()`` with the LSTM or BERT encoder (6 layers, hidden 15);
* ``light_supernet``: one GDAS search step (a weight step on TRAIN rows and an architecture step on
  VALID rows, teacher logits precomputed, as ``run_ours`` does) per 512 TRAIN rows;
* ``light_derived``: a derived light model trained with the Eq. 5 distillation loss against a heavy
  LSTM teacher (``train_light``, as MeL and Ours train), for whole epochs over the 8,192 sampled
  TRAIN rows (5, the light models' default; 2 in the quick run), so that what is done once per
  training (the new code's teacher pass) and what is done per step (the base code's) both count;

and the preparation of the full flights set (``prepare``: point-in-time join, validation, split; then
``FittedTransforms.fit`` on the TRAIN rows and ``transform`` of every row). Each tree prepares a flights
table set built by its own ``longtail data build flights`` (the base reads no set of the later layout;
the two builders give the same rows, ``tests/test_import.py``); the base's is built once under
``runs/bench-train/``.

Each measurement runs in a fresh subprocess, once with ``PYTHONPATH`` at a git worktree of the base
commit (``--base``, default 5add9bb, the commit before issue 22; made under ``runs/bench-train/``)
and once at this tree, alternating, ``--repeats`` times; the table keeps the median. Rows/s are
given per second of wall time and per second of the process's CPU time (less sensitive to other
work on a shared machine); the speed-up column is the CPU-time ratio. The achieved FLOP/s (analytical
FLOPs per sample, ``count_flops``, times 3 for training) is given as a share of the dense matmul
FLOP/s of one thread (a 1024³ ``torch.mm``) measured in the same run. The machine load (``uptime``)
is recorded before and after.

Writes ``bench/results/train.{csv,md}`` (``--quick``: ``train_quick.*``: fewer steps, one repeat).
Run: ``make bench-train`` (``QUICK=1`` for the short run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
WORK = ROOT / "runs" / "bench-train"
BASE = "5add9bb"
MODELS = ["heavy_lstm", "heavy_bert", "light_supernet", "light_derived"]
# a derived architecture of the default recipe's kind (the YV carrier's in bench-nas-quick)
DERIVED = {"aircraft": [("dil_conv_5", 0, [0]), ("dil_conv_7", 0, [0]), ("conv_5", 1, [0])],
           "weather": [("avg_pool_3", 0, [0]), ("conv_9", 0, [0, 1]), ("avg_pool_3", 2, [0, 1])]}


# ---------------------------------------------------------------------- worker (runs in either tree)
def _timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def _matmul_flops() -> float:
    """Dense single-thread matmul FLOP/s (median of 5 timed 1024³ products, CPU time)."""
    import torch

    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    times = []
    for _ in range(5):
        _, _, cpu = _timed(lambda: a @ b)
        times.append(cpu)
    return 2 * 1024**3 / statistics.median(times)


def _genotypes():
    from longtail.models.genotype import Genotype, LayerGene

    return {seq: Genotype(tuple(LayerGene(op, i, tuple(r)) for op, i, r in layers), 15, 3)
            for seq, layers in DERIVED.items()}


def worker_model(args) -> dict:
    import torch

    from longtail.data.tensors import Batch, InputSchema
    from longtail.metrics import predict_proba
    from longtail.models.flops import count_flops
    from longtail.models.heavy import HeavyConfig, build_model
    from longtail.train import TrainConfig, fit

    torch.set_num_threads(1)
    saved = torch.load(args.tensors, weights_only=False)
    schema = InputSchema.from_dict(saved["schema"])
    train, valid = Batch(**saved["train"]), Batch(**saved["valid"])
    steps = args.steps
    cfg = TrainConfig(epochs=1000, max_steps=steps, threads=1, seed=0)
    warm = TrainConfig(epochs=1000, max_steps=2, threads=1, seed=0)
    rows = steps * cfg.batch_size
    out: dict = {"model": args.model}
    torch.manual_seed(0)
    if args.model in ("heavy_lstm", "heavy_bert"):
        model = build_model(schema, HeavyConfig(encoder=args.model.split("_")[1]))
        fit(model, train, None, warm)
        _, wall, cpu = _timed(lambda: fit(model, train, None, cfg))
        flops = count_flops(model)["total"]
    elif args.model == "light_derived":
        from longtail.models.light import build_light_model
        from longtail.nas.distill import train_light

        # whole epochs, as MeL and Ours train: a teacher pass per training set (new) is then paid
        # once per training, a teacher pass per batch (base) once per step
        epochs = TrainConfig().epochs if steps >= 30 else 2
        cfg = TrainConfig(epochs=epochs, threads=1, seed=0)
        rows = epochs * len(train)
        teacher = build_model(schema, HeavyConfig()).eval()
        train_light(_genotypes(), schema, HeavyConfig(), train.index(slice(0, 1024)), None, teacher, warm)
        (model, _), wall, cpu = _timed(lambda: train_light(_genotypes(), schema, HeavyConfig(), train, None, teacher,
                                                           cfg))
        flops = count_flops(build_light_model(schema, HeavyConfig(), _genotypes()))["total"]
    else:  # light_supernet
        from longtail.nas.distill import teacher_logits
        from longtail.nas.space import ArchSpace
        from longtail.nas.supernet import SearchConfig, build_supernet_model, search

        teacher = build_model(schema, HeavyConfig()).eval()
        t_train, t_valid = teacher_logits(teacher, train), teacher_logits(teacher, valid)
        model = build_supernet_model(schema, HeavyConfig(), ArchSpace())
        search(model, train, valid, SearchConfig(epochs=1000, max_steps=2), teacher_train=t_train,
               teacher_valid=t_valid)
        _, wall, cpu = _timed(lambda: search(model, train, valid, SearchConfig(epochs=1000, max_steps=steps),
                                             teacher_train=t_train, teacher_valid=t_valid))
        flops = None  # the sampled architecture changes every step
    out.update(train_rows=rows, train_wall_s=wall, train_cpu_s=cpu, flops_per_sample=flops)
    ev = valid if len(valid) >= 4096 else train
    predict_proba(model, ev.index(slice(0, 512)))
    _, wall, cpu = _timed(lambda: predict_proba(model, ev))
    out.update(eval_rows=len(ev), eval_wall_s=wall, eval_cpu_s=cpu)
    return out


def worker_prep(args) -> dict:
    from longtail.data.prepared import DataConfig, prepare
    from longtail.data.splits import TRAIN
    from longtail.data.transforms import FittedTransforms

    os.environ.pop("LONGTAIL_JOIN_CACHE", None)
    data, w1, c1 = _timed(lambda: prepare(DataConfig(tables=args.data)))
    tf, w2, c2 = _timed(lambda: FittedTransforms.fit(data.spec, data.rows(TRAIN)))
    batch, w3, c3 = _timed(lambda: tf.transform(data.frame))
    return {"model": "prepare", "rows": len(batch), "prepare_wall_s": w1, "fit_wall_s": w2, "transform_wall_s": w3,
            "wall_s": w1 + w2 + w3, "cpu_s": c1 + c2 + c3}


def worker(args) -> int:
    import longtail

    out = worker_prep(args) if args.model == "prepare" else worker_model(args)
    out["matmul_flops"] = _matmul_flops()
    out["tree"] = str(Path(longtail.__file__).resolve().parents[1])
    print("RESULT " + json.dumps(out), flush=True)
    return 0


# ---------------------------------------------------------------------- orchestrator
def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "uptime unavailable"


def base_tree(commit: str) -> Path:
    """A git worktree of ``commit`` under runs/bench-train/ (made once, detached)."""
    path = WORK / f"base-{commit}"
    if not (path / "longtail").exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), commit], check=True)
    return path


def make_tensors(data: str, path: Path, n_train: int, n_valid: int) -> None:
    """A fixed sample of TRAIN and VALID rows of the flights set as tensors (this tree's preparation)."""
    import torch

    from longtail.data.prepared import DataConfig, prepare
    from longtail.data.splits import TRAIN, VALID
    from longtail.data.transforms import FittedTransforms

    prepared = prepare(DataConfig(tables=data))
    train_rows = prepared.rows(TRAIN)
    tf = FittedTransforms.fit(prepared.spec, train_rows)
    train = train_rows.sample(min(n_train, len(train_rows)), random_state=0)
    valid_rows = prepared.rows(VALID)
    valid = valid_rows.sample(min(n_valid, len(valid_rows)), random_state=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    def fields(batch):  # what a Batch of the base commit takes (it has no teacher_logits)
        return {k: v for k, v in vars(batch).items() if v is not None}

    torch.save({"schema": tf.schema.to_dict(), "train": fields(tf.transform(train)),
                "valid": fields(tf.transform(valid))}, path)


def flights_of(tree: Path, args) -> str:
    """The flights table set ``tree`` prepares: this tree's ``--data``; for another tree, one built by its own
    builder (once, under runs/bench-train/)."""
    if tree == ROOT:
        return args.data
    out = WORK / f"flights-{tree.name}"
    if not (out / "manifest.json").exists():
        print(f"building the flights table set with {tree.name}'s builder ...", flush=True)
        env = {**os.environ, "PYTHONPATH": str(tree)}
        code = "import sys; from longtail.cli import main; sys.exit(main(sys.argv[1:]))"
        subprocess.run([sys.executable, "-c", code, "data", "build", "flights", "--out", str(out)], env=env,
                       cwd=tree, check=True, capture_output=True)
    return str(out)


def run_worker(tree: Path, model: str, args) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    env.pop("LONGTAIL_JOIN_CACHE", None)
    data = flights_of(tree, args) if model == "prepare" else args.data
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--model", model, "--data", data,
           "--tensors", str(args.tensors), "--steps", str(args.steps)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tree, check=False)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"worker {model} in {tree} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def summarise(runs: dict[str, dict[str, list[dict]]]) -> list[dict]:
    rows = []
    med = statistics.median
    for model, by_tree in runs.items():
        row: dict = {"model": model}
        for tree, results in by_tree.items():
            if model == "prepare":
                row[f"{tree}_prepare_s"] = med(r["wall_s"] for r in results)
                row[f"{tree}_prepare_cpu_s"] = med(r["cpu_s"] for r in results)
                for phase in ("prepare", "fit", "transform"):
                    row[f"{tree}_{phase}_phase_s"] = med(r[f"{phase}_wall_s"] for r in results)
                continue
            row[f"{tree}_train_rows_s"] = med(r["train_rows"] / r["train_wall_s"] for r in results)
            row[f"{tree}_train_rows_cpu_s"] = med(r["train_rows"] / r["train_cpu_s"] for r in results)
            row[f"{tree}_eval_rows_s"] = med(r["eval_rows"] / r["eval_wall_s"] for r in results)
            row[f"{tree}_eval_rows_cpu_s"] = med(r["eval_rows"] / r["eval_cpu_s"] for r in results)
            flops = results[0]["flops_per_sample"]
            mm = med(r["matmul_flops"] for r in results)
            row[f"{tree}_matmul_gflops"] = mm / 1e9
            if flops:
                row["flops_per_sample"] = flops
                row[f"{tree}_train_flops_share"] = 3 * flops * row[f"{tree}_train_rows_cpu_s"] / mm
                row[f"{tree}_eval_flops_share"] = flops * row[f"{tree}_eval_rows_cpu_s"] / mm
        if model == "prepare":
            row["speedup"] = row["base_prepare_cpu_s"] / row["new_prepare_cpu_s"]
        else:
            row["speedup"] = row["new_train_rows_cpu_s"] / row["base_train_rows_cpu_s"]
            row["eval_speedup"] = row["new_eval_rows_cpu_s"] / row["base_eval_rows_cpu_s"]
        rows.append(row)
    return rows


def write(rows: list[dict], meta: dict, tag: str) -> None:
    import pandas as pd

    from longtail.io import atomic_path, atomic_write_text

    RESULTS.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    with atomic_path(RESULTS / f"{tag}.csv") as tmp:
        df.to_csv(tmp, index=False, float_format="%.4g")

    def f(v, fmt="{:,.0f}"):
        return "—" if v is None or (isinstance(v, float) and v != v) else fmt.format(v)

    lines = [f"# Training throughput ({'quick' if meta['quick'] else 'full'} run)", "",
             f"Command: `python bench/train.py {' '.join(meta['argv'])}`; base = `{meta['base']}` (the commit before "
             f"issue 22, a git worktree), new = this tree at `{meta['commit']}`. One torch thread, default batch sizes "
             f"(512), {meta['steps']} timed steps after 2 warm-up steps, median of {meta['repeats']} alternating "
             f"run(s) per tree, each in a fresh process. Machine: {meta['machine']}.",
             "", f"Load before: `{meta['load_before']}`", f"Load after: `{meta['load_after']}`", "",
             "Rows/s per second of process CPU time (wall-clock rows/s in brackets: the cores were shared with "
             "other work, see the load). Speed-up = new / base CPU-time rows/s. FLOP share = achieved FLOP/s "
             "(analytical FLOPs per sample × 3 for a training step) / single-thread dense matmul FLOP/s measured "
             "in the same run.", "",
             "| model | base train rows/s | new train rows/s | speed-up | base eval rows/s | new eval rows/s | "
             "eval speed-up | FLOPs/sample | train FLOP share base → new |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if r["model"] == "prepare":
            continue
        share = (f"{r['base_train_flops_share']:.1%} → {r['new_train_flops_share']:.1%}"
                 if r.get("new_train_flops_share") == r.get("new_train_flops_share") and r.get("flops_per_sample")
                 else "— (sampled architecture)")
        lines.append(
            f"| {r['model']} | {f(r['base_train_rows_cpu_s'])} ({f(r['base_train_rows_s'])}) | "
            f"{f(r['new_train_rows_cpu_s'])} ({f(r['new_train_rows_s'])}) | **{r['speedup']:.2f}×** | "
            f"{f(r['base_eval_rows_cpu_s'])} ({f(r['base_eval_rows_s'])}) | {f(r['new_eval_rows_cpu_s'])} "
            f"({f(r['new_eval_rows_s'])}) | {r['eval_speedup']:.2f}× | {f(r.get('flops_per_sample'))} | {share} |")
    prep = next((r for r in rows if r["model"] == "prepare"), None)
    if prep is not None:
        lines += ["", "Preparation of the full flights set (join, validation, split, transforms fitted on TRAIN, every "
                  "row transformed), seconds of wall time (CPU seconds in brackets):", "",
                  "| | join + validate + split | fit transforms | transform | total | speed-up |",
                  "|---|---:|---:|---:|---:|---:|"]
        for tree in ("base", "new"):
            gain = "" if tree == "base" else f"{prep['speedup']:.2f}×"
            lines.append(f"| {tree} | {prep[f'{tree}_prepare_phase_s']:.1f} | {prep[f'{tree}_fit_phase_s']:.1f} | "
                         f"{prep[f'{tree}_transform_phase_s']:.1f} | {prep[f'{tree}_prepare_s']:.1f} "
                         f"({prep[f'{tree}_prepare_cpu_s']:.1f}) | "
                         f"{gain} |")
    mm = next((r["new_matmul_gflops"] for r in rows if "new_matmul_gflops" in r), None)
    if mm:
        lines += ["", f"Dense matmul (1024³, one thread): {mm:.1f} GFLOP/s."]
    atomic_write_text(RESULTS / f"{tag}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT / "data" / "flights"), help="the flights table set")
    p.add_argument("--quick", action="store_true", help="fewer steps, one repeat")
    p.add_argument("--steps", type=int, help="timed training steps per measurement (default 30, quick 10)")
    p.add_argument("--repeats", type=int, help="alternating runs per tree (default 3, quick 1)")
    p.add_argument("--base", default=BASE, help="the commit to compare with")
    p.add_argument("--models", default=",".join([*MODELS, "prepare"]), help="comma-separated subset")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--tensors", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.steps = args.steps or (10 if args.quick else 30)
    if args.worker:
        return worker(args)
    repeats = args.repeats or (1 if args.quick else 3)
    args.data = str(Path(args.data).resolve())
    args.tensors = WORK / "tensors.pt"
    base = base_tree(args.base)
    load_before = _uptime()
    if not args.tensors.exists():
        print("sampling 8,192 TRAIN and 4,096 VALID rows as tensors ...", flush=True)
        make_tensors(args.data, args.tensors, 8192, 4096)
    runs: dict[str, dict[str, list[dict]]] = {}
    for model in [m for m in args.models.split(",") if m]:
        runs[model] = {"base": [], "new": []}
        for k in range(repeats):
            for tree_name, tree in (("base", base), ("new", ROOT)) if k % 2 == 0 else (("new", ROOT), ("base", base)):
                r = run_worker(tree, model, args)
                runs[model][tree_name].append(r)
                print(f"{model} {tree_name} run {k + 1}: {json.dumps(r)}", flush=True)
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip()
    meta = {"quick": args.quick, "argv": sys.argv[1:], "base": args.base, "commit": commit, "steps": args.steps,
            "repeats": repeats, "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor()}",
            "load_before": load_before, "load_after": _uptime()}
    write(summarise(runs), meta, "train_quick" if args.quick else "train")
    return 0


if __name__ == "__main__":
    sys.exit(main())
