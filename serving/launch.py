"""Start the serving service as a child process on loopback (tests, the benchmark, ``longtail serve``).

The service is the BentoML app in ``serving/``; this module only builds the ``bentoml serve`` command
and its environment (the serving config, the worker count), runs it and waits for ``/readyz``. It
never imports bentoml.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from longtail.online.config import ENV_SET, ServingConfig, absolute_overrides

SERVICE = "serving.service:LongtailServing"  # the BentoML service, as `bentoml serve` names it
SERVICE_NAME = "longtail_serving"  # its name in BentoML's configuration
WORKING_DIR = Path(__file__).resolve().parents[1]  # the folder that holds the `serving` package
_PR_SET_PDEATHSIG = 1


def bentoml_command(host: str, port: int) -> list[str]:
    """The ``bentoml serve`` command line of the service."""
    return [sys.executable, "-m", "bentoml", "serve", SERVICE, "--working-dir", str(WORKING_DIR),
            "--host", host, "--port", str(port)]


def bentoml_env(config: ServingConfig, env: dict[str, str]) -> dict[str, str]:
    """``env`` with the worker count of ``config`` for BentoML (``workers: 0`` keeps one per core)."""
    env = dict(env)
    if config.workers > 0:
        option = f"services.{SERVICE_NAME}.workers={config.workers}"
        env["BENTOML_CONFIG_OPTIONS"] = " ".join(x for x in (env.get("BENTOML_CONFIG_OPTIONS", ""), option) if x)
    env.setdefault("BENTOML_DO_NOT_TRACK", "true")
    return env


def die_with_parent() -> None:
    """Make this process die (SIGKILL) when its parent does (Linux ``PR_SET_PDEATHSIG``; a no-op elsewhere).

    BentoML's arbiter starts each worker in a session of its own, so killing the serving command's
    process group used to leave the workers running, holding the port. A worker calls this first.
    """
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            return
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGKILL)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class ServiceProcess:
    """A running service; use as a context manager (always stopped on exit).

    Args:
        overrides: serving config ``key=value`` overrides (e.g. ``registry=/tmp/r``, ``workers=2``).
        host: bind address (loopback by default).
        port: HTTP port (default: a free one).
        grpc_port: gRPC port (default: a free one; 0 disables gRPC).
        log_path: where the child's output goes (default: discarded).
    """

    overrides: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 0
    grpc_port: int | None = None
    log_path: Path | None = None
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def grpc_target(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def start(self, timeout: float = 120.0) -> ServiceProcess:
        """Start the child and wait until ``/readyz`` answers 200.

        Raises:
            RuntimeError: the service exited or did not become ready in time (its log tail included).
        """
        self.port = self.port or free_port(self.host)
        if self.grpc_port is None:
            self.grpc_port = free_port(self.host)
        sets = [*absolute_overrides(self.overrides), f"grpc_port={self.grpc_port}", f"grpc_host={self.host}"]
        from longtail.online.config import load_serving_config

        config = load_serving_config(None, sets)  # a bad key fails here, named, before anything starts
        env = bentoml_env(config, {**os.environ, ENV_SET: ";".join(sets)})
        log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(bentoml_command(self.host, self.port), env=env, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the service exited with {self.proc.returncode}; {self._tail()}")
            if self.readyz() == 200:
                return self
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"the service was not ready after {timeout:.0f}s; {self._tail()}")

    @property
    def pids(self) -> list[int]:
        """The process ids of the command and its workers (for CPU and memory figures)."""
        if self.proc is None:
            return []
        import psutil

        try:
            parent = psutil.Process(self.proc.pid)
            return [parent.pid, *(c.pid for c in parent.children(recursive=True))]
        except psutil.NoSuchProcess:
            return []

    def readyz(self) -> int | None:
        """The HTTP status of ``/readyz`` (None when nothing answers)."""
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except (urllib.error.URLError, OSError):
            return None

    def _tail(self) -> str:
        if self.log_path and Path(self.log_path).exists():
            return "log tail:\n" + Path(self.log_path).read_text(errors="replace")[-3000:]
        return "(no log_path given)"

    def stop(self) -> None:
        """Stop the child and its workers (SIGTERM to its process group, then SIGKILL)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        except ProcessLookupError:
            pass

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
