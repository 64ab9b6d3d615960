"""docs/your-data.md: the import spec it shows is the example's, every spec field is in its table, and
every command on the page runs (raw files -> import -> validate -> train -> pipelines -> a served model).

The page's ``bash`` blocks run in order in one folder with the ``longtail`` command of this
environment; a ``yaml`` block whose first line is ``# <file>: ...`` is written to that file first.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from longtail.data import importer
from longtail.spec import CategoricalFeature, NumericFeature, ScenarioRules

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "your-data.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def blocks(lang: str) -> list[str]:
    return [body for kind, body in FENCE.findall(DOC.read_text()) if kind == lang]


@pytest.mark.unit
def test_the_import_spec_on_the_page_is_the_example_file():
    shown = [b for b in blocks("yaml") if b.lstrip().startswith("# A ratings dataset")]
    assert len(shown) == 1
    packaged = (ROOT / "longtail" / "specs" / "ratings.import.yaml").read_text()
    assert shown[0] == packaged


@pytest.mark.unit
def test_every_field_of_the_import_spec_is_in_the_one_table():
    text = DOC.read_text()
    table = text[text.index("| field | where | default | what it does |"):]
    table = table[:table.index("\n\n")]
    cells = [row.split("|")[1] for row in table.splitlines()[2:]]  # the field column
    cells += re.findall(r"\{([a-z_, ]+)\}", table)  # a nested item's keys, e.g. join's {path, key, columns}
    named = {word for cell in cells for word in re.findall(r"[a-z_]+", cell)}
    classes = [importer.ImportSpec, importer.EventsSource, importer.ProfileSource, importer.LogSource,
               importer.Lookup, ScenarioRules, NumericFeature, CategoricalFeature]
    missing = sorted({f.name for c in classes for f in dataclasses.fields(c)} - named)
    assert not missing, f"fields not in the docs/your-data.md table: {missing}"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(script: str, cwd: Path, env: dict[str, str], timeout: float) -> str:
    """One block in bash, in a session of its own that is ended afterwards (a server started with & too).

    The output goes to a file: a server left running in the background keeps a pipe open forever.
    """
    log = cwd / f".block-{len(list(cwd.glob('.block-*')))}.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env, stdout=f,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        finally:
            _end_session(proc.pid)
    out = log.read_text()
    assert proc.returncode == 0, f"block failed ({proc.returncode}):\n{script}\n--- output ---\n{out[-6000:]}"
    return out


def _end_session(pgid: int) -> None:
    """SIGTERM to every process of the block's session, SIGKILL to what is left after 30 s."""
    import time

    for sig, wait in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.pipelines
@pytest.mark.serving
def test_every_command_on_the_page_runs(tmp_path):
    for body in blocks("yaml"):
        first = body.splitlines()[0]
        m = re.match(r"# ([\w.-]+\.yaml):", first)
        if m:
            (tmp_path / m.group(1)).write_text(body)
    port = str(_free_port())
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    outputs = []
    for body in blocks("bash"):
        outputs.append(_run(body.replace("3000", port), tmp_path, env, timeout=1200))
    text = "\n".join(outputs)
    assert "merged into other" in text and "valid" in text
    assert (tmp_path / "data" / "ratings" / "manifest.json").exists()
    assert (tmp_path / "runs" / "ratings-global" / "metrics.json").exists()
    answers = [json.loads(line) for line in outputs[-2].splitlines() if line.startswith("{")]
    assert [a["scenario"] for a in answers] == ["comedy", "western"]
    comedy, western = answers
    # comedy is served by its light model exactly when promotion (on its validation rows) chose it
    decisions = {d["scenario"]: d for d in (json.loads(p.read_text())
                                             for p in (tmp_path / "runs" / "ratings" / "promotion").glob("*.json"))}
    if decisions["comedy"]["promoted"]:
        assert comedy["model_kind"] == "light" and comedy["fallback"] is False
    else:
        assert comedy["fallback"] is True and comedy["model_name"] == "ratings.theta0"
    assert 0 < comedy["probability"] < 1
    assert western["fallback"] is True and western["model_name"] == "ratings.theta0"
    assert (tmp_path / "data" / "flights-january" / "manifest.json").exists()
