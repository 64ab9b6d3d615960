"""Open a page in headless Chromium and report its console errors and broken images (DevTools protocol).

The browser is the system's ``chromium`` (Debian's package, installed by
``scripts/install-chromium.sh``, which ``make test`` runs); the protocol is spoken over its
``--remote-debugging-port`` websocket with ``websocket-client``. Nothing here downloads a browser.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

INSTALL = "scripts/install-chromium.sh"


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


def install_chromium() -> str:
    """Run the project's install script (``make test`` runs it first) when chromium is missing.

    Returns:
        ``""`` when chromium is installed afterwards, else why not (the script's last message).
    """
    script = Path(__file__).resolve().parents[1] / INSTALL
    try:
        proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=900, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{INSTALL} did not run: {e}"
    if proc.returncode == 0 and chromium_binary() is not None:
        return ""
    lines = (proc.stderr or proc.stdout).strip().splitlines()
    return lines[-1] if lines else f"{INSTALL} exited with {proc.returncode}"


@dataclass
class PageCheck:
    """What loading a page showed: console/log errors, images that did not load, and the images seen."""

    errors: list[str] = field(default_factory=list)
    broken_images: list[str] = field(default_factory=list)
    images: int = 0
    title: str = ""


def check_page(path: Path, timeout: float = 60.0) -> PageCheck:
    """Load ``path`` (a local HTML file) in headless Chromium and collect what went wrong.

    Errors are console messages of type ``error``, uncaught exceptions and browser log entries of
    level ``error`` (a resource that failed to load is one). An image is broken when it has not
    completed or has no natural width after the load event.

    Raises:
        RuntimeError: chromium is not installed (run ``scripts/install-chromium.sh``) or did not start.
    """
    import websocket  # websocket-client (dev extra)

    binary = chromium_binary()
    if binary is None:
        raise RuntimeError(f"chromium is not installed: run {INSTALL} (make test runs it)")
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        proc = subprocess.Popen([binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                 "--no-default-browser-check", "--disable-extensions", "--remote-debugging-port=0",
                                 f"--user-data-dir={profile}", "about:blank"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            port_file = Path(profile) / "DevToolsActivePort"
            deadline = time.monotonic() + timeout
            while not (port_file.exists() and port_file.read_text().strip()):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{binary} did not start (exit code {proc.poll()})")
                time.sleep(0.1)
            port = int(port_file.read_text().split()[0])
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                pages = [t for t in json.loads(r.read()) if t.get("type") == "page"]
            ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=timeout)
            try:
                return _inspect(ws, path.resolve().as_uri(), deadline)
            finally:
                ws.close()
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def _inspect(ws, url: str, deadline: float) -> PageCheck:
    out = PageCheck()
    ids = iter(range(1, 10_000))
    replies: dict[int, dict] = {}

    def send(method: str, **params) -> int:
        i = next(ids)
        ws.send(json.dumps({"id": i, "method": method, "params": params}))
        return i

    def pump(until) -> None:
        while not until():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not finish loading in time")
            msg = json.loads(ws.recv())
            if "id" in msg:
                replies[msg["id"]] = msg
                continue
            method, params = msg.get("method"), msg.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                out.errors.append("console: " + " ".join(str(a.get("value", a.get("description", "")))
                                                         for a in params.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                out.errors.append("exception: " + params.get("exceptionDetails", {}).get("text", ""))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                entry = params["entry"]
                out.errors.append(f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}")
            elif method == "Page.loadEventFired":
                replies["loaded"] = msg

    for method in ("Runtime.enable", "Log.enable", "Page.enable"):
        i = send(method)
        pump(lambda i=i: i in replies)
    send("Page.navigate", url=url)
    pump(lambda: "loaded" in replies)
    check = ("JSON.stringify({title: document.title, images: document.images.length, broken: "
             "[...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt || i.src.slice(0, 60))})")
    i = send("Runtime.evaluate", expression=check, returnByValue=True)
    pump(lambda: i in replies)
    # late entries (a failed load is logged after the load event) arrive within the drain window
    import websocket

    ws.settimeout(1.0)
    try:
        pump(lambda: False)
    except websocket.WebSocketTimeoutException:
        pass
    value = json.loads(replies[i]["result"]["result"]["value"])
    out.title, out.images, out.broken_images = value["title"], value["images"], value["broken"]
    return out
