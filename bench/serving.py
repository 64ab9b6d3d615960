"""Serving benchmark: latency and errors of the real service on loopback, light vs heavy model of the
same scenario, single and batched requests at fixed request rates; then a schema-based fuzz run.

For one carrier of the flights tables (synthetic tables when they are not built), a heavy model (the
paper's heavy setting: 6-layer LSTM, hidden 15) and a light model (a 3-layer searched-style encoder,
hidden 15) are trained for one epoch, published to two registries (the scenario served by the heavy
model in one, by the light model in the other) and each is served in turn by the BentoML service
(``longtail serve http``'s code path) on 127.0.0.1. An open-loop load generator sends requests at a
fixed rate for a fixed time (bounded: rate x seconds requests, each with a timeout), timing each from
its scheduled send time (so queueing shows up in the latency). Batched requests carry ``--batch-items``
events each. Finally schemathesis fuzzes the light service's OpenAPI schema (``/docs.json``).

Writes ``bench/results/serving{_quick}.md``, ``.csv`` and ``_fuzz.txt``.

Usage: ``python bench/serving.py [--quick]`` (``make bench-serving QUICK=1``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import torch
from tiny import train_light

from longtail.data.prepared import DataConfig, prepare
from longtail.data.splits import TEST
from longtail.data.synthetic import SyntheticConfig, build_synthetic
from longtail.io import atomic_write_text
from longtail.models.flops import count_flops
from longtail.models.genotype import Genotype, LayerGene
from longtail.models.heavy import HeavyConfig
from longtail.online.rows import jsonable_row
from longtail.registry import lineage, open_registry
from longtail.train import TrainConfig
from longtail.train_job import train_heavy
from serving.launch import ServiceProcess

RESULTS = Path(__file__).resolve().parent / "results"
LIGHT_GENOTYPE = Genotype((LayerGene("conv_3", 0), LayerGene("avg_pool_3", 1, (0,)), LayerGene("conv_3", 2, (1,))),
                          hidden_size=15, num_heads=3)


def build_models(data_dir: str, root: Path, quick: bool) -> tuple[str, dict[str, str], list[dict], dict]:
    """Train the heavy and light model of one scenario and publish each in its own registry."""
    data = prepare(DataConfig(tables=data_dir))
    scenarios = data.scenarios
    scenario = scenarios[len(scenarios) // 2] if quick else scenarios[0]
    cfg = TrainConfig(epochs=1, device="cpu", patience=1)
    heavy = train_heavy(data, [scenario], HeavyConfig(), cfg, root / "heavy")
    light_dir = train_light(data, scenario, heavy.transforms, root / "light",
                            config=HeavyConfig(num_layers=3), genotype=LIGHT_GENOTYPE)
    from longtail.model_folder import load_model_dir

    flops = {"heavy": count_flops(heavy.model, heavy.transforms.schema)["total"],
             "light": count_flops(load_model_dir(light_dir)[0], heavy.transforms.schema)["total"]}
    registries = {}
    for variant, folder, kind in (("heavy", root / "heavy", "specific"), ("light", light_dir, "light")):
        reg = open_registry(root / f"registry-{variant}")
        mv = reg.publish(f"{kind}-{scenario}", folder, kind=kind, scenario=scenario, metrics={}, lineage=lineage())
        reg.promote(scenario, *mv.ref)
        agn = reg.publish("agnostic", root / "heavy", kind="agnostic", metrics={}, lineage=lineage())
        reg.promote("_default", *agn.ref)
        registries[variant] = str(root / f"registry-{variant}")
    test = data.rows(TEST, [scenario])
    spec = data.spec
    bodies = [{"scenario": scenario, "features": jsonable_row(spec, test.iloc[i:i + 1]),
               "event_timestamp": test[spec.event_timestamp].iloc[i].isoformat()} for i in range(min(200, len(test)))]
    return scenario, registries, bodies, flops


async def drive(url: str, path: str, make_body, rate: float, seconds: float, timeout: float = 10.0) -> dict:
    """Open-loop load at ``rate`` requests/s for ``seconds``; latency from each request's scheduled time."""
    n = int(rate * seconds)
    lat: list[float] = []
    errors: dict[str, int] = {}
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        t0 = time.perf_counter() + 0.05

        async def one(i: int) -> None:
            scheduled = t0 + i / rate
            await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
            try:
                r = await client.post(path, json=make_body(i))
                if r.status_code != 200:
                    errors[str(r.status_code)] = errors.get(str(r.status_code), 0) + 1
                    return
            except httpx.HTTPError as e:
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                return
            lat.append(time.perf_counter() - scheduled)

        await asyncio.gather(*(one(i) for i in range(n)))
        wall = time.perf_counter() - t0
    arr = np.array(lat) * 1000 if lat else np.array([np.nan])
    return {"sent": n, "ok": len(lat), "errors": sum(errors.values()), "error_kinds": json.dumps(errors),
            "p50_ms": float(np.percentile(arr, 50)), "p99_ms": float(np.percentile(arr, 99)),
            "achieved_rps": len(lat) / wall if wall > 0 else 0.0}


def bench_variant(variant: str, registry: str, bodies: list[dict], rates: list[float], seconds: float,
                  batch_items: int, log_dir: Path, fuzz: dict | None) -> list[dict]:
    rows = []
    with ServiceProcess([f"registry={registry}", "poll_seconds=0"], grpc_port=0,
                        log_path=log_dir / f"service-{variant}.log") as svc:
        with httpx.Client(base_url=svc.url, timeout=30) as c:  # warm up
            for b in bodies[:20]:
                assert c.post("/predict", json=b).status_code == 200
        for rate in rates:
            single = asyncio.run(drive(svc.url, "/predict", lambda i: bodies[i % len(bodies)], rate, seconds))
            rows.append({"model": variant, "request": "single", "items_per_request": 1, "rate_rps": rate, **single})
            brate = max(1.0, rate / batch_items * 2)

            def batch_body(i: int) -> dict:
                return {"requests": [bodies[(i * batch_items + k) % len(bodies)] for k in range(batch_items)]}

            batched = asyncio.run(drive(svc.url, "/predict_batch", batch_body, brate, seconds))
            rows.append({"model": variant, "request": "batch", "items_per_request": batch_items, "rate_rps": brate,
                         **batched})
            print(f"{variant:>5} {rate:>5.0f} rps single p50 {single['p50_ms']:.1f} ms p99 {single['p99_ms']:.1f} ms "
                  f"errors {single['errors']}; batch x{batch_items} at {brate:.0f} rps p50 {batched['p50_ms']:.1f} "
                  f"p99 {batched['p99_ms']:.1f} errors {batched['errors']}", flush=True)
        if fuzz is not None:
            fuzz.update(run_fuzz(svc.url, fuzz["max_examples"], log_dir))
    return rows


def run_fuzz(url: str, max_examples: int, log_dir: Path) -> dict:
    """schemathesis against the service's OpenAPI schema; returns what it ran and found."""
    cmd = [str(Path(sys.executable).with_name("schemathesis")), "run", f"{url}/docs.json", "--checks", "all",
           "--max-examples", str(max_examples), "--seed", "0", "--workers", "1", "--request-timeout", "20",
           "--max-time", "240", "--report-json-path", str(log_dir / "fuzz.json"), "--report", "json"]
    t0 = time.perf_counter()
    # run in the scratch folder: schemathesis keeps a .schemathesis/ cache in its working directory
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=400, cwd=log_dir)
    text = out.stdout + out.stderr
    return {"command": " ".join(cmd[1:]).replace(url, "http://127.0.0.1:<port>"), "exit_code": out.returncode,
            "seconds": round(time.perf_counter() - t0, 1), "output": text}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a smaller carrier, lower rates, shorter runs, fewer fuzz cases")
    p.add_argument("--data", default="data/flights", help="table set (default: the flights tables; synthetic if absent)")
    p.add_argument("--rates", help="comma-separated request rates (requests/s)")
    p.add_argument("--seconds", type=float, help="seconds per rate")
    p.add_argument("--batch-items", type=int, default=16)
    p.add_argument("--fuzz-examples", type=int)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rates = [float(r) for r in (args.rates or ("10,40" if args.quick else "10,50,100")).split(",")]
    seconds = args.seconds or (4.0 if args.quick else 15.0)
    fuzz_examples = args.fuzz_examples or (25 if args.quick else 200)
    suffix = "_quick" if args.quick else ""
    with tempfile.TemporaryDirectory(prefix="longtail-bench-serving-") as tmp:
        root = Path(tmp)
        data_dir = args.data
        if not (Path(data_dir) / "manifest.json").exists():
            data_dir = str(build_synthetic(root / "tables", SyntheticConfig(n_scenarios=4, max_rows=3000)).root)
        t0 = time.perf_counter()
        scenario, registries, bodies, flops = build_models(data_dir, root, args.quick)
        print(f"trained heavy and light models of {scenario} in {time.perf_counter() - t0:.0f}s; FLOPs {flops}")
        fuzz = {"max_examples": fuzz_examples}
        rows = bench_variant("heavy", registries["heavy"], bodies, rates, seconds, args.batch_items, root, None)
        rows += bench_variant("light", registries["light"], bodies, rates, seconds, args.batch_items, root, fuzz)
    df = pd.DataFrame(rows)
    df.insert(1, "flops_per_sample", df["model"].map(flops))
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS / f"serving{suffix}.csv", df.to_csv(index=False))
    fuzz_text = (f"$ schemathesis {fuzz['command']}\n(exit code {fuzz['exit_code']}, {fuzz['seconds']} s)\n\n"
                 + fuzz["output"])
    atomic_write_text(RESULTS / f"serving{suffix}_fuzz.txt", fuzz_text)
    cols = ["model", "flops_per_sample", "request", "items_per_request", "rate_rps", "sent", "ok", "errors",
            "p50_ms", "p99_ms", "achieved_rps"]
    md = [f"# Serving benchmark{' (quick)' if args.quick else ''}", "",
          f"Scenario `{scenario}` of `{data_dir}`; service on 127.0.0.1 (BentoML HTTP, one worker, adaptive "
          f"batching in the predictor), open-loop load, {seconds:.0f} s per rate; latency from the scheduled send "
          f"time, in ms. Machine: 2 CPU cores shared with other jobs.", "",
          df[cols].to_markdown(index=False, floatfmt=".1f"), "",
          f"Fuzzing: `schemathesis {fuzz['command']}` exited {fuzz['exit_code']} in {fuzz['seconds']} s; "
          f"full output in `serving{suffix}_fuzz.txt`.", ""]
    atomic_write_text(RESULTS / f"serving{suffix}.md", "\n".join(md))
    print("\n".join(md))
    print(fuzz["output"][-2500:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
