"""A real S3-protocol server (moto) on loopback, in a separate process, for the registry's S3 tests.

Run as a script it serves moto's S3 on 127.0.0.1, on a free port it picks itself and prints as
``PORT <n>``. :class:`S3Server` starts that script as a subprocess, waits until the server answers,
gives its endpoint URL and terminates it on exit.

Why not plain ``moto_server``: moto (5.2) implements ``IfNoneMatch``/``IfMatch`` on PutObject, but it
checks the condition and then writes without a lock, so two requests racing on one key can both
pass the check. S3 and MinIO make a conditional write atomic, and the registry relies on exactly
that; this server therefore hands requests to moto one at a time (a lock around the WSGI app), which
gives moto's conditional writes the atomicity of the real servers. Everything else is moto's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Any


class _OneAtATime:
    """WSGI middleware: one request inside the app at a time (the body is consumed under the lock)."""

    def __init__(self, app: Any):
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        with self.lock:
            result = self.app(environ, start_response)
            try:
                return [b"".join(result)]
            finally:
                if hasattr(result, "close"):
                    result.close()


def serve(host: str = "127.0.0.1") -> None:
    """Serve moto's S3 on ``host`` and a free port; print ``PORT <n>`` once listening."""
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    app = _OneAtATime(DomainDispatcherApplication(create_backend_app))
    server = make_server(host, 0, app, threaded=True, request_handler=MotoRequestHandler)
    print(f"PORT {server.server_port}", flush=True)
    server.serve_forever()


class S3Server:
    """Start the server in a subprocess; ``with S3Server() as endpoint: ...``.

    Args:
        timeout: seconds to wait for the server to answer.
    """

    def __init__(self, timeout: float = 30.0):
        self.timeout = timeout
        self.proc: subprocess.Popen[str] | None = None
        self.endpoint = ""

    def __enter__(self) -> str:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, __file__], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, env=env)
        try:
            port = self._read_port()
            self.endpoint = f"http://127.0.0.1:{port}"
            self._wait_until_answering()
        except BaseException:
            self.__exit__()
            raise
        return self.endpoint

    def _read_port(self) -> int:
        assert self.proc is not None and self.proc.stdout is not None
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(self.timeout)
        if not line or not line[0].startswith("PORT "):
            raise RuntimeError(f"the S3 test server did not start (exit code {self.proc.poll()}, "
                               f"first line {line[:1]!r})")
        return int(line[0].split()[1])

    def _wait_until_answering(self) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                urllib.request.urlopen(self.endpoint + "/", timeout=2).close()
                return
            except urllib.error.HTTPError:
                return  # an S3 error answer is an answer
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the S3 test server at {self.endpoint} does not answer") from None
                time.sleep(0.05)

    def __exit__(self, *exc: Any) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None


if __name__ == "__main__":
    serve()
