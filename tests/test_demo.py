"""The demo's progress bars: one per stage of each pipeline, advanced by kfp.local's task lines, with the time left."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

pytest.importorskip("kfp")

from pipelines.cli import STAGES, DemoProgress  # noqa: E402

pytestmark = pytest.mark.pipelines


def _lines(pipeline: str, n: int) -> list[str]:
    names = [t for _, tasks, count in STAGES[pipeline] for t in (tasks * (n if count is None else 1))]
    return ["22:05:11.593 - INFO - Executing task 'x'"] + [
        f"22:05:37.332 - INFO - Task '{name}' finished with status SUCCESS" for name in names]


def test_each_finished_task_advances_its_stage_and_says_the_time_left():
    out = io.StringIO()
    progress = DemoProgress(Console(file=out, force_terminal=False, width=200), [("bootstrap", 3), ("onboard", 2)])
    progress.start("bootstrap")
    for line in _lines("bootstrap", 3):
        progress.feed(line)
    progress.start("onboard")
    for line in _lines("onboard", 2)[:4]:  # prepare and both scenarios
        progress.feed(line)
    tasks = {t.description: t for t in progress.progress.tasks}
    assert tasks["bootstrap: onboard the initial scenarios"].completed == 3
    assert tasks["bootstrap: onboard the initial scenarios"].total == 3
    assert tasks["onboard: onboard the later scenarios"].completed == 2
    assert tasks["the whole demo"].completed == 2 + 1 + 3 + 3 + 1 + 2 and tasks["the whole demo"].total == 9 + 6
    text = out.getvalue()  # not a terminal: one line per finished task, with the time left
    assert "bootstrap: onboard the initial scenarios: onboard-scenario SUCCESS (6/15 tasks" in text
    assert text.count("min left)") == 12
    progress.feed("Task 'unknown-task' finished with status SUCCESS")  # not a stage's task: ignored
    assert progress.done == 12


def test_the_demo_runs_the_scenarios_with_the_most_events():
    from longtail.workflow.config import DemoConfig

    events = {"UA": 500, "OO": 3, "B6": 400, "HA": 20, "DL": 400}
    assert DemoConfig(scenarios=3, initial=2).choose(events) == ["B6", "DL", "UA"]  # ties by name
    assert DemoConfig().choose(events) == sorted(events)  # 0: every scenario
    with pytest.raises(ValueError, match="none of the 3"):
        DemoConfig(scenarios=3, initial=3)
