"""The ``longtail serve`` command group: the online service (BentoML HTTP, plus gRPC) or the gRPC front alone.

Registered under the ``longtail.commands`` entry points (pyproject.toml); ``USER_ERRORS`` are
printed as one line, exit status 2. Relative paths (``--registry``, ``--config``, ``feast_repo``)
are resolved against the directory the command is run from, before the service starts.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from pathlib import Path

from longtail.config import ConfigError
from longtail.online.config import ENV_CONFIG, ENV_SET, absolute_overrides, load_serving_config
from longtail.online.errors import ServingError
from serving.launch import bentoml_command, bentoml_env

USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, ServingError)


def _serving_overrides(args: argparse.Namespace) -> list[str]:
    """The command's overrides with every relative path (given, in the config file or a default) made
    absolute here: the service runs in a working directory of its own."""
    sets = list(args.set or [])
    if args.registry:
        sets.insert(0, f"registry={args.registry}")
    cfg = load_serving_config(args.config, sets)
    return absolute_overrides([*sets, f"registry={cfg.registry}", f"feast_repo={cfg.feast_repo}"])


def cmd_serve_http(args: argparse.Namespace) -> int:
    """Run the BentoML service (HTTP, plus gRPC when ``grpc_port`` is set) in the foreground.

    This process becomes ``bentoml serve`` (exec), so a signal to it, or to its process group, reaches
    BentoML's arbiter itself; the workers die with the arbiter (see `serving.launch.die_with_parent`).
    """
    sets = _serving_overrides(args)
    cfg = load_serving_config(args.config, sets)  # fail fast, with the key named, before starting anything
    env = {**os.environ, ENV_SET: ";".join(sets)}
    if args.config:
        env[ENV_CONFIG] = str(Path(args.config).resolve())
    env = bentoml_env(cfg, env)
    workers = cfg.workers or "one per core"
    print(f"serving the registry {cfg.registry} on http://{args.host}:{args.port} ({workers} workers)"
          + (f" and gRPC {cfg.grpc_host}:{cfg.grpc_port}" if cfg.grpc_port else ""), flush=True)
    cmd = bentoml_command(args.host, args.port)
    os.execve(cmd[0], cmd, env)
    return 0  # not reached


def cmd_serve_grpc(args: argparse.Namespace) -> int:
    """Run the gRPC front alone (same predictor code, no HTTP)."""
    from longtail.online.predictor import Predictor
    from serving.feast_source import feature_source
    from serving.grpc_front import serve_grpc

    cfg = load_serving_config(args.config, _serving_overrides(args))
    predictor = Predictor(cfg, source=feature_source(cfg)).start()
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


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add the ``serve`` command group."""
    sv = sub.add_parser("serve", help="serve every scenario's promoted model (HTTP via BentoML, gRPC)")
    ssub = sv.add_subparsers(dest="serve_command", required=True)
    for name, func, port, what in (("http", cmd_serve_http, 3000, "BentoML HTTP service (+ gRPC if grpc_port)"),
                                   ("grpc", cmd_serve_grpc, 50051, "the gRPC front alone")):
        p = ssub.add_parser(name, help=what)
        p.add_argument("--registry", help="model registry (folder, file:// or s3://); sets registry=")
        p.add_argument("--config", help="serving YAML config (see longtail.online.ServingConfig)")
        p.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a serving key, e.g. --set unknown_scenario=refuse --set grpc_port=50051")
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, default=port)
        p.set_defaults(func=func)
