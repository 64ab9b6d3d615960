"""CLI groups ``serve`` (the online service) and ``drift`` (per-scenario drift checks).

Registered in ``longtail.cli.PLUGIN_COMMANDS``; ``USER_ERRORS`` are printed as one line, exit 2.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from longtail.config import ConfigError, config_to_dict, load_config, parse_overrides
from longtail.serving.config import ENV_CONFIG, ENV_SET, load_serving_config
from longtail.serving.errors import ServingError
from longtail.serving.launch import DEFAULT_SERVICE_DIR

USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, ServingError)


def _serving_overrides(args: argparse.Namespace) -> list[str]:
    sets = list(args.set or [])
    if args.registry:
        sets.insert(0, f"registry={args.registry}")
    return sets


def cmd_serve_http(args: argparse.Namespace) -> int:
    """Run the BentoML service (HTTP, plus gRPC when ``grpc_port`` is set) in the foreground."""
    sets = _serving_overrides(args)
    load_serving_config(args.config, sets)  # fail fast, with the key named, before starting anything
    env = {**os.environ, ENV_SET: ";".join(sets),
           "PYTHONPATH": os.pathsep.join([str(args.service_dir), os.environ.get("PYTHONPATH", "")])}
    if args.config:
        env[ENV_CONFIG] = str(Path(args.config).resolve())
    cmd = [sys.executable, "-m", "bentoml", "serve", "service:LongtailServing", "--working-dir",
           str(args.service_dir), "--host", args.host, "--port", str(args.port)]
    return subprocess.call(cmd, env=env)


def cmd_serve_grpc(args: argparse.Namespace) -> int:
    """Run the gRPC front alone (same predictor code, no HTTP)."""
    cfg = load_serving_config(args.config, _serving_overrides(args))
    sys.path.insert(0, str(args.service_dir))
    from grpc_front import serve_grpc

    from longtail.serving.predictor import Predictor

    source = None
    if cfg.feature_source == "feast":
        from feast_source import FeastFeatureSource

        source = FeastFeatureSource(cfg.feast_repo, cfg.feast_feature_service)
    predictor = Predictor(cfg, source=source).start()
    server = serve_grpc(predictor, args.host, args.port)
    print(f"gRPC serving {len(predictor.models()['scenarios'])} scenario(s) on {args.host}:{args.port}", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        done.wait()
    except KeyboardInterrupt:
        pass
    server.stop(grace=5).wait()
    predictor.close()
    return 0


def cmd_drift_check(args: argparse.Namespace) -> int:
    """Per-scenario drift verdicts and reports (see `longtail.drift`)."""
    from longtail.drift import DriftJobConfig, run_drift_job

    overrides = parse_overrides(args.set or [])
    for key in ("reference", "current", "registry"):
        if getattr(args, key):
            overrides[key] = getattr(args, key)
    if args.scenarios:
        overrides["scenarios"] = args.scenarios
    cfg = load_config(DriftJobConfig, args.config, overrides)
    result = run_drift_job(cfg, args.out)
    for name, v in result["scenarios"].items():
        share = "-" if v["drifted_share"] is None else f"{v['drifted_share']:.2f}"
        print(f"{name:>16}  {v['status']:<18} drifted share {share:>5}  prediction drift "
              f"{v['prediction_drift']}  columns {v['drifted_columns']}")
    print(f"drifted scenarios: {result['drifted_scenarios']} (verdicts in {Path(args.out) / 'drift.json'}, "
          f"config {config_to_dict(cfg)['drift']})")
    return 1 if args.fail_on_drift and result["drifted_scenarios"] else 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add the ``serve`` and ``drift`` command groups."""
    sv = sub.add_parser("serve", help="serve every scenario's promoted model (HTTP via BentoML, gRPC)")
    ssub = sv.add_subparsers(dest="serve_command", required=True)
    for name, func, port, what in (("http", cmd_serve_http, 3000, "BentoML HTTP service (+ gRPC if grpc_port)"),
                                   ("grpc", cmd_serve_grpc, 50051, "the gRPC front alone")):
        p = ssub.add_parser(name, help=what)
        p.add_argument("--registry", help="model registry (folder, file:// or s3://); sets registry=")
        p.add_argument("--config", help="serving YAML config (see longtail.serving.ServingConfig)")
        p.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a serving key, e.g. --set unknown_scenario=refuse --set grpc_port=50051")
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, default=port)
        p.add_argument("--service-dir", type=Path, default=DEFAULT_SERVICE_DIR, help="folder of service.py")
        p.set_defaults(func=func)

    dr = sub.add_parser("drift", help="feature and prediction drift per scenario (Evidently)")
    dsub = dr.add_subparsers(dest="drift_command", required=True)
    c = dsub.add_parser("check", help="compare current rows with the training data, per scenario")
    c.add_argument("--reference", help="table set of the training data")
    c.add_argument("--current", help="table set of the recent events")
    c.add_argument("--registry", help="score both sides with the serving models of this registry")
    c.add_argument("--scenarios", help="comma-separated scenarios (default: all in --current)")
    c.add_argument("--out", required=True, help="output folder (drift.json, <scenario>.html)")
    c.add_argument("--config", help="YAML config (DriftJobConfig)")
    c.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a key, e.g. --set drift.drift_share=0.3 --set drift.method=psi")
    c.add_argument("--fail-on-drift", action="store_true", help="exit 1 when any scenario drifted")
    c.set_defaults(func=cmd_drift_check)
