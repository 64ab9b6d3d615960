"""The trial runner: budget, parallel worker processes, early stopping, journal and resume.

`TrialRunner` owns everything outside the strategy and the evaluation:

* **budget** (`Budget`): trials, seconds for the whole job (over all its sessions), seconds
  per trial, trials at once;
* **parallel trials**: each trial is its own process (a spawned Python process for a
  `FunctionEvaluator`, a subprocess for a `CommandEvaluator`) and is killed, not asked, when
  it runs past its time limit or is stopped early;
* **early stopping** (`EarlyStopping`), either successive halving (a trial goes on past a rung only
  in the top 1/η of the trials that reached it: a multi-fidelity search) or median stopping: a
  trial whose best intermediate value up to step
  ``e`` is below the median of the finished trials' best values up to ``e`` is stopped and
  recorded as ``early_stopped`` (its best value so far still counts);
* **fault tolerance**: a trial that raises, exits without a result, times out or reports
  NaN is recorded as ``failed`` with the reason; the job goes on;
* **journal**: one JSON line per event (job, started, intermediate, finished, failed,
  early_stopped, cancelled), each appended with a single write; a rerun with the same journal
  replays it through the strategy (the same asks, the same tells, in the same order), skips
  finished trials and re-runs those that were cut off;
* **results**: ``trials.csv`` (params, status, reason, value, seconds) and ``best_auc.png``
  (best value against trials) beside the journal.
"""

from __future__ import annotations

import abc
import json
import math
import multiprocessing
import os
import re
import signal
import subprocess
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from longtail.hpo.algorithms import Algorithm
from longtail.hpo.space import SearchSpace

__all__ = [
    "KATIB_STDOUT_FILTER",
    "Budget",
    "CommandEvaluator",
    "Evaluator",
    "FunctionEvaluator",
    "HPOResult",
    "EarlyStopping",
    "Journal",
    "JournalMismatch",
    "MedianStopping",
    "RunningTrial",
    "TrialEvent",
    "TrialRunner",
    "parse_metrics",
    "plot_best",
]

# Katib's default StdOut metrics filter (v1beta1): a trainer prints ``name=value`` tokens.
KATIB_STDOUT_FILTER = r"([\w|-]+)\s*=\s*([+-]?\d*(\.\d+)?([Ee][+-]?\d+)?)"
_FILTER = re.compile(KATIB_STDOUT_FILTER)
TERMINAL = ("finished", "failed", "early_stopped")


def parse_metrics(line: str) -> dict[str, float]:
    """The ``name=value`` metrics of one output line, as Katib's default StdOut filter reads them.

    Args:
        line: one line of a trainer's output.

    Returns:
        name -> value for every token the filter matches with a number.
    """
    out: dict[str, float] = {}
    for m in _FILTER.finditer(line):
        try:
            out[m.group(1)] = float(m.group(2))
        except ValueError:
            continue  # e.g. "x=" or "x=nan": no number
    return out


@dataclass(frozen=True)
class Budget:
    """Args:
    max_trials: trials in total (finished, failed or stopped early), over every session.
    max_seconds: wall-clock seconds for the whole job, over every session (0: no limit).
    trial_seconds: wall-clock seconds for one trial before it is killed (0: no limit).
    parallel: trials running at once (worker processes).
    """

    max_trials: int = 20
    max_seconds: float = 0.0
    trial_seconds: float = 0.0
    parallel: int = 1

    def __post_init__(self) -> None:
        if self.max_trials < 1 or self.parallel < 1:
            raise ValueError("budget: max_trials and parallel must be >= 1")
        if self.max_seconds < 0 or self.trial_seconds < 0:
            raise ValueError("budget: max_seconds and trial_seconds must be >= 0 (0: no limit)")


EARLY_STOPPING_ALGORITHMS = ("medianstop", "successive_halving")


@dataclass(frozen=True)
class EarlyStopping:
    """Early stopping of futureless trials: Katib's ``medianstop`` (with its setting names), or
    asynchronous successive halving (ASHA, the rule of Optuna's ``SuccessiveHalvingPruner``), which
    makes a search multi-fidelity: most trials are cut at a low step, so many more fit the budget.

    Args:
        enabled: whether trials may be stopped early.
        algorithm: ``medianstop``: at every step from ``start_step`` on, a trial whose best value
            so far is below the median of the finished trials' best values by that step stops.
            ``successive_halving``: at the rungs ``start_step * reduction_factor**k`` (k = 0, 1, ...),
            a trial goes on only if its best value so far is in the top ``1 / reduction_factor`` of
            the values every trial that reached the rung had there (itself included; at least one
            goes on).
        min_trials_required: ``medianstop``: finished trials needed before the rule applies;
            ``successive_halving``: trials at a rung (itself included) before it can cut there.
        start_step: the first step (epoch) at which a trial may be stopped; the first rung.
        reduction_factor: ``successive_halving``: η, the share of trials kept at each rung is 1/η.
    """

    enabled: bool = True
    algorithm: str = "medianstop"
    min_trials_required: int = 3
    start_step: int = 1
    reduction_factor: int = 3

    def __post_init__(self) -> None:
        if self.algorithm not in EARLY_STOPPING_ALGORITHMS:
            raise ValueError(f"early_stopping.algorithm is {self.algorithm!r}; use one of "
                             f"{', '.join(EARLY_STOPPING_ALGORITHMS)}")
        if self.min_trials_required < 1 or self.start_step < 1:
            raise ValueError("early_stopping.min_trials_required and early_stopping.start_step must be >= 1")
        if self.reduction_factor < 2:
            raise ValueError(f"early_stopping.reduction_factor is {self.reduction_factor}; use 2 or more (3 is usual)")

    def rungs_up_to(self, step: int) -> list[int]:
        """The successive-halving rungs at or below ``step``."""
        rungs, r = [], self.start_step
        while r <= step:
            rungs.append(r)
            r *= self.reduction_factor
        return rungs


MedianStopping = EarlyStopping  # the name from before successive halving; the default algorithm is still medianstop


@dataclass(frozen=True)
class TrialEvent:
    """What a running trial reported: ``intermediate`` (step, value), ``result`` (value) or
    ``error`` (reason)."""

    kind: str
    value: float | None = None
    step: int | None = None
    reason: str = ""


class JournalMismatch(RuntimeError):
    """A journal was written by another job (space, algorithm or seed), so it cannot be resumed."""


# ---------------------------------------------------------------------- evaluators
class RunningTrial(abc.ABC):
    """A trial running in its own process."""

    @abc.abstractmethod
    def poll(self) -> tuple[list[TrialEvent], bool]:
        """New events since the last poll, and whether the process has ended (all events read)."""

    @abc.abstractmethod
    def kill(self) -> None:
        """Stop the process now (and what it started)."""

    @abc.abstractmethod
    def close(self, grace: float = 5.0) -> None:
        """After its result: let the process exit (killing it after ``grace`` seconds)."""


class Evaluator(abc.ABC):
    """Starts trials; each one runs in its own process so that it can be killed."""

    @abc.abstractmethod
    def start(self, trial_id: int, params: dict[str, Any], workdir: Path) -> RunningTrial:
        """Start evaluating ``params`` in a new process writing its files under ``workdir``."""


def _function_worker(fn: Callable[..., float], params: dict[str, Any], events_path: str) -> None:
    # runs in the spawned child: every report and the result go to an append-only JSONL file
    def emit(rec: dict[str, Any]) -> None:
        with open(events_path, "a") as f:
            f.write(json.dumps(rec) + "\n")

    def report(step: int, value: float) -> None:
        emit({"kind": "intermediate", "step": int(step), "value": float(value)})

    try:
        value = fn(params, report)
        emit({"kind": "result", "value": None if value is None else float(value)})
    except BaseException as e:  # noqa: BLE001 - any failure is a recorded trial failure
        last = traceback.extract_tb(e.__traceback__)[-1:] if e.__traceback__ else []
        where = f" ({Path(last[0].filename).name}:{last[0].lineno})" if last else ""
        emit({"kind": "error", "reason": f"{type(e).__name__}: {e}{where}"})
        raise SystemExit(1) from None


class _Tail:
    """Complete lines appended to a file since the last read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def lines(self) -> list[str]:
        if not self.path.exists():
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n")
        if end < 0:
            return []
        self.offset += end + 1
        return data[:end].decode(errors="replace").splitlines()


class _ProcessTrial(RunningTrial):
    def __init__(self, proc: Any, events: Path) -> None:
        self.proc = proc
        self.tail = _Tail(events)

    def poll(self) -> tuple[list[TrialEvent], bool]:
        ended = not self.proc.is_alive()  # before reading: once ended, the file is complete
        events = []
        for line in self.tail.lines():
            rec = json.loads(line)
            events.append(TrialEvent(rec["kind"], rec.get("value"), rec.get("step"), rec.get("reason", "")))
        if ended:
            self.proc.join()
            if not any(e.kind in ("result", "error") for e in events):
                events.append(TrialEvent("error", reason=f"worker process ended with exit code {self.proc.exitcode} "
                                                         "and no result"))
        return events, ended

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join()

    def close(self, grace: float = 5.0) -> None:
        self.proc.join(grace)
        self.kill()


class FunctionEvaluator(Evaluator):
    """Evaluates ``fn(params, report) -> value`` in a fresh spawned process per trial.

    ``report(step, value)`` sends an intermediate value (used by median stopping). ``fn`` must
    be importable by name (a module-level function), as the spawned child imports it.

    Args:
        fn: the objective (higher is better); raising or returning NaN fails the trial.
        start_method: multiprocessing start method (``spawn``: safe with torch and threads).
    """

    def __init__(self, fn: Callable[..., float], start_method: str = "spawn") -> None:
        self.fn = fn
        self.ctx = multiprocessing.get_context(start_method)

    def start(self, trial_id: int, params: dict[str, Any], workdir: Path) -> RunningTrial:
        workdir.mkdir(parents=True, exist_ok=True)
        events = workdir / "events.jsonl"
        events.unlink(missing_ok=True)
        proc = self.ctx.Process(target=_function_worker, args=(self.fn, params, str(events)), daemon=True)
        proc.start()
        return _ProcessTrial(proc, events)


class _CommandTrial(RunningTrial):
    def __init__(self, proc: subprocess.Popen, log: Path, metric: str, step_key: str) -> None:
        self.proc, self.log, self.metric, self.step_key = proc, log, metric, step_key
        self.tail = _Tail(log)
        self.final: float | None = None
        self.last_line = ""

    def poll(self) -> tuple[list[TrialEvent], bool]:
        ended = self.proc.poll() is not None
        events = []
        for line in self.tail.lines():
            if line.strip():
                self.last_line = line.strip()
            metrics = parse_metrics(line)
            if self.metric not in metrics:
                continue
            if self.step_key in metrics:
                events.append(TrialEvent("intermediate", metrics[self.metric], int(metrics[self.step_key])))
            else:
                self.final = metrics[self.metric]
        if ended:
            self.proc.wait()
            rc = self.proc.returncode
            if rc == 0 and self.final is not None:
                events.append(TrialEvent("result", self.final))
            elif rc == 0:
                events.append(TrialEvent("error", reason=f"exited 0 without a final {self.metric}=VALUE line"))
            else:
                events.append(TrialEvent("error", reason=f"exit code {rc}: {self.last_line[-300:]}"))
        return events, ended

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the trial and anything it started
            except ProcessLookupError:
                pass
        self.proc.wait()

    def close(self, grace: float = 5.0) -> None:
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.kill()


class CommandEvaluator(Evaluator):
    """Runs a command line per trial and reads its output the way Katib's StdOut collector does.

    The command prints ``epoch=E metric=VALUE`` per step (intermediate values) and finally
    ``metric=VALUE`` (the trial's value); output goes to ``workdir/stdout.log``.

    Args:
        argv: ``argv(params, workdir) -> list[str]``, the command line of one trial.
        metric: the objective's metric name (e.g. ``valid-auc``).
        step_key: the name of the step token on intermediate lines.
        env: extra environment variables.
    """

    def __init__(self, argv: Callable[[dict[str, Any], Path], list[str]], metric: str = "valid-auc",
                 step_key: str = "epoch", env: dict[str, str] | None = None) -> None:
        self.argv, self.metric, self.step_key, self.env = argv, metric, step_key, env or {}

    def start(self, trial_id: int, params: dict[str, Any], workdir: Path) -> RunningTrial:
        workdir.mkdir(parents=True, exist_ok=True)
        log = workdir / "stdout.log"
        argv = self.argv(params, workdir)
        (workdir / "command.json").write_text(json.dumps(argv) + "\n")
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, env={**os.environ, **self.env})
        return _CommandTrial(proc, log, self.metric, self.step_key)


# ---------------------------------------------------------------------- journal
class Journal:
    """Append-only JSONL event log; each event is one ``write`` of one line (O_APPEND).

    Args:
        path: the journal file (created with its folder on the first append).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        """Append one event (``t`` = wall-clock time is added) and flush it to disk."""
        rec = {"event": event, "t": time.time(), **fields}
        line = (json.dumps(rec, sort_keys=True, default=_json_default) + "\n").encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        return rec

    def read(self) -> list[dict[str, Any]]:
        """All complete events (a torn last line from a crash mid-write is ignored)."""
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# ---------------------------------------------------------------------- runner
@dataclass
class TrialRecord:
    """One trial as the journal tells it."""

    trial: int
    params: dict[str, Any]
    status: str = "running"  # running, finished, failed, early_stopped, cancelled
    value: float | None = None
    reason: str = ""
    seconds: float = 0.0
    curve: dict[int, float] = field(default_factory=dict)  # step -> intermediate value
    order: int | None = None  # completion order (1, 2, ...)

    def best_up_to(self, step: int) -> float | None:
        vals = [v for s, v in self.curve.items() if s <= step]
        return max(vals) if vals else None


@dataclass
class HPOResult:
    """What a job produced.

    Args:
        trials: one row per trial: trial, status, value, reason, seconds, steps, then the params.
        best_trial / best_value / best_params: the best finished (or early-stopped) trial.
        journal / table / plot: the files written (journal, ``trials.csv``, ``best_auc.png``).
        complete: False when the job was interrupted or ran out of time with trials left.
    """

    trials: pd.DataFrame
    best_trial: int | None
    best_value: float | None
    best_params: dict[str, Any] | None
    journal: Path
    table: Path
    plot: Path
    complete: bool = True


class TrialRunner:
    """Runs a search: asks the strategy, evaluates trials in parallel processes, enforces the budget.

    Args:
        space: the search space (recorded in the journal; a resume must use the same one).
        algorithm: the strategy (its name and seed are recorded; a resume must match them).
        evaluator: starts one trial process.
        budget: trials, seconds and parallelism.
        journal_path: the JSONL journal; trial folders, ``trials.csv`` and ``best_auc.png`` go
            beside it. An existing journal is resumed.
        early_stopping: the early-stopping rule (median stopping or successive halving).
        log: called with one progress line per event (default: printed with rich).
        poll_seconds: how often running trials are polled.
        context: what else defines the job (e.g. the settings every trial gets); recorded in the
            journal, and a resume with a different context is refused.

    Example:
        >>> runner = TrialRunner(space, create_algorithm("racos", space, seed=0), FunctionEvaluator(objective),
        ...                      Budget(max_trials=20, parallel=2), "runs/hpo/journal.jsonl")  # doctest: +SKIP
        >>> result = runner.run()  # doctest: +SKIP
    """

    def __init__(self, space: SearchSpace, algorithm: Algorithm, evaluator: Evaluator, budget: Budget,
                 journal_path: str | Path, early_stopping: EarlyStopping | None = None,
                 log: Callable[[str], None] | None = None, poll_seconds: float = 0.05,
                 context: dict[str, Any] | None = None) -> None:
        self.space, self.algorithm, self.evaluator, self.budget = space, algorithm, evaluator, budget
        self.journal = Journal(journal_path)
        self.root = self.journal.path.parent
        self.early_stopping = early_stopping or EarlyStopping(enabled=False)
        self.log = log or _rich_log()
        self.poll_seconds = poll_seconds
        self.context = json.loads(json.dumps(context or {}, sort_keys=True, default=_json_default))
        self.records: dict[int, TrialRecord] = {}
        self._done_count = 0
        self._used_seconds = 0.0

    # ------------------------------------------------------------------ replay
    def _header(self) -> dict[str, Any]:
        return {"algorithm": self.algorithm.name, "seed": self.algorithm.seed,
                "space_fingerprint": self.space.fingerprint(), "context": self.context,
                "space": self.space.to_dict(),
                "budget": asdict(self.budget), "early_stopping": asdict(self.early_stopping)}

    def check_journal(self) -> None:
        """Refuse a journal written by another job (space, algorithm, seed or context) before anything runs.

        Raises:
            JournalMismatch: naming what differs and how to start afresh.
        """
        from longtail.runs import dict_differences

        first = next((e for e in self.journal.read() if e["event"] == "job"), None)
        if first is None:
            return
        header = self._header()
        diffs = []
        for key in ("algorithm", "seed", "space_fingerprint", "context"):
            old, new = first.get(key, {}), header[key]
            if old != new:
                diffs += (dict_differences(old, new, f"{key}.") if isinstance(old, dict) and isinstance(new, dict)
                          else [f"{key} {old!r} -> {new!r}"])
        if diffs:
            shown = "; ".join(diffs[:8]) + (f"; and {len(diffs) - 8} more" if len(diffs) > 8 else "")
            raise JournalMismatch(
                f"{self.journal.path} was written by another job ({shown}); rerun with the same space, algorithm, "
                f"seed, table set and trial settings to resume, or use a new output folder (or remove "
                f"{self.root})")

    def _replay(self) -> list[int]:
        """Feed the journal to the strategy; returns the ids of asked trials that must (re-)run."""
        self.check_journal()
        events = self.journal.read()
        session_start = last_t = None
        for e in events:
            kind = e["event"]
            if kind == "job":
                if session_start is not None:
                    self._used_seconds += last_t - session_start
                session_start = e["t"]
            last_t = e["t"]
            if kind == "started" and e["trial"] not in self.records:
                s = self.algorithm.ask()
                if s is None or s.trial_id != e["trial"] or _canon(s.params) != _canon(e["params"]):
                    raise JournalMismatch(
                        f"{self.journal.path}: replaying trial {e['trial']} gave "
                        f"{None if s is None else s.params} instead of {e['params']} (the strategy's code or "
                        "library versions changed); use a new output folder")
                self.records[s.trial_id] = TrialRecord(s.trial_id, s.params)
            elif kind == "intermediate":
                self.records[e["trial"]].curve[int(e["step"])] = float(e["value"])
            elif kind in TERMINAL:
                rec = self.records[e["trial"]]
                rec.status, rec.value = kind, e.get("value")
                rec.reason, rec.seconds = e.get("reason", ""), float(e.get("seconds", 0.0))
                self._done_count += 1
                rec.order = self._done_count
                self.algorithm.tell(rec.trial, None if kind == "failed" else rec.value)
            elif kind == "cancelled":
                self.records[e["trial"]].status = "cancelled"
        if session_start is not None:
            self._used_seconds += last_t - session_start
        return sorted(t for t, r in self.records.items() if r.status not in TERMINAL)

    # ------------------------------------------------------------------ main loop
    def run(self) -> HPOResult:
        """Run (or resume) the job until its budget is spent or the strategy has nothing left.

        Returns:
            The `HPOResult` (also written as ``trials.csv`` and ``best_auc.png``).

        Raises:
            JournalMismatch: when the journal belongs to another job.
            KeyboardInterrupt: after recording running trials as cancelled (a rerun resumes).
        """
        reruns = self._replay()
        resumed = bool(self.records)
        self.journal.append("job", **self._header())
        t0 = time.monotonic()
        if resumed:
            self.log(f"resuming {self.journal.path}: {self._done_count} trial(s) done, "
                     f"{len(reruns)} to re-run, {self._used_seconds:.0f}s used before")
        running: dict[int, tuple[RunningTrial, float]] = {}
        exhausted = False
        complete = True
        try:
            while True:
                elapsed = self._used_seconds + time.monotonic() - t0
                out_of_time = bool(self.budget.max_seconds) and elapsed >= self.budget.max_seconds
                if out_of_time:
                    for tid in list(running):
                        self._cancel(tid, running.pop(tid)[0], "job time limit reached")
                    if reruns or not exhausted and self._done_count < self.budget.max_trials:
                        complete = False
                        self.log(f"job time limit ({self.budget.max_seconds:.0f}s) reached")
                    break
                while len(running) < self.budget.parallel and \
                        self._done_count + len(running) < self.budget.max_trials:
                    if reruns:
                        tid = reruns.pop(0)
                        params = self.records[tid].params
                        self.journal.append("started", trial=tid, params=params, rerun=True)
                    elif not exhausted:
                        s = self.algorithm.ask()
                        if s is None:
                            exhausted = True
                            self.log("the search space is exhausted")
                            break
                        tid, params = s.trial_id, s.params
                        self.records[tid] = TrialRecord(tid, params)
                        self.journal.append("started", trial=tid, params=params)
                    else:
                        break
                    rec = self.records[tid]
                    rec.status, rec.curve = "running", {}
                    try:
                        trial = self.evaluator.start(tid, params, self.root / "trials" / str(tid))
                    except Exception as e:  # noqa: BLE001 - a trial that cannot start is a failed trial
                        self._finish(rec, "failed", None, f"could not start: {type(e).__name__}: {e}", 0.0)
                        continue
                    running[tid] = (trial, time.monotonic())
                    self.log(f"trial {tid} started: {_fmt_params(params)}")
                if not running:
                    break
                time.sleep(self.poll_seconds)
                for tid in list(running):
                    self._poll(tid, running)
        except KeyboardInterrupt:
            for tid in list(running):
                self._cancel(tid, running.pop(tid)[0], "interrupted")
            self.log("interrupted: rerun the same job to resume from its journal")
            self.result(complete=False)
            raise
        finally:
            for trial, _ in running.values():
                trial.kill()
        return self.result(complete=complete)

    def _poll(self, tid: int, running: dict[int, tuple[RunningTrial, float]]) -> None:
        trial, started = running[tid]
        rec = self.records[tid]
        seconds = time.monotonic() - started
        events, ended = trial.poll()
        for ev in events:
            if ev.kind == "intermediate" and ev.value is not None and math.isfinite(ev.value):
                rec.curve[int(ev.step)] = float(ev.value)
                self.journal.append("intermediate", trial=tid, step=int(ev.step), value=float(ev.value))
                reason = self._should_stop(rec, int(ev.step))
                if reason:
                    trial.kill()
                    running.pop(tid)
                    self._finish(rec, "early_stopped", max(rec.curve.values()), reason, seconds)
                    return
            elif ev.kind == "result":
                running.pop(tid)
                trial.close()
                if ev.value is None or not math.isfinite(ev.value):
                    self._finish(rec, "failed", None, f"objective is {ev.value}", seconds)
                else:
                    self._finish(rec, "finished", float(ev.value), "", seconds)
                return
            elif ev.kind == "error":
                running.pop(tid)
                trial.close()
                self._finish(rec, "failed", None, ev.reason, seconds)
                return
        if ended:  # ended without a result or error event (cannot happen with our trials)
            running.pop(tid)
            self._finish(rec, "failed", None, "ended without a result", seconds)
        elif self.budget.trial_seconds and seconds > self.budget.trial_seconds:
            trial.kill()
            running.pop(tid)
            self._finish(rec, "failed", None, f"timeout: killed after {seconds:.1f}s "
                                              f"(trial_seconds={self.budget.trial_seconds:g})", seconds)

    def _should_stop(self, rec: TrialRecord, step: int) -> str:
        rule = self.early_stopping
        if not rule.enabled or step < rule.start_step:
            return ""
        if rule.algorithm == "successive_halving":
            return self._halving_stop(rec, step)
        others = [r.best_up_to(step) for r in self.records.values() if r.status == "finished"]
        others = [v for v in others if v is not None]
        if len(others) < rule.min_trials_required:
            return ""
        median = float(np.median(others))
        mine = rec.best_up_to(step)
        if mine is not None and mine < median:
            return (f"median stopping: best {mine:.4f} by step {step} < median {median:.4f} of "
                    f"{len(others)} finished trials")
        return ""

    def _halving_stop(self, rec: TrialRecord, step: int) -> str:
        rule = self.early_stopping
        if step not in rule.rungs_up_to(step):
            return ""
        mine = rec.best_up_to(step)
        # every trial that reached the rung, whatever became of it later (finished, stopped, still running)
        at_rung = [r.best_up_to(step) for r in self.records.values()
                   if r is not rec and r.curve and max(r.curve) >= step]
        at_rung = [v for v in at_rung if v is not None]
        if mine is None or len(at_rung) + 1 < rule.min_trials_required:
            return ""
        keep = max(1, (len(at_rung) + 1) // rule.reduction_factor)
        rank = 1 + sum(v > mine for v in at_rung)
        if rank > keep:
            return (f"successive halving: best {mine:.4f} by step {step} ranks {rank} of {len(at_rung) + 1} "
                    f"trials at this rung; the top {keep} go on")
        return ""

    def _finish(self, rec: TrialRecord, status: str, value: float | None, reason: str, seconds: float) -> None:
        rec.status, rec.value, rec.reason, rec.seconds = status, value, reason, seconds
        self._done_count += 1
        rec.order = self._done_count
        self.journal.append(status, trial=rec.trial, value=value, reason=reason, seconds=seconds)
        self.algorithm.tell(rec.trial, value if status != "failed" else None)
        best = self._best()
        head = f"[{self._done_count}/{self.budget.max_trials}] trial {rec.trial} {status.replace('_', ' ')}"
        what = f"value {value:.4f}" if value is not None else reason
        extra = f" ({reason})" if status == "early_stopped" else ""
        tail = f" | best {best.value:.4f} (trial {best.trial})" if best else ""
        self.log(f"{head}: {what}{extra} in {seconds:.1f}s{tail}")

    def _cancel(self, tid: int, trial: RunningTrial, reason: str) -> None:
        trial.kill()
        self.records[tid].status = "cancelled"
        self.records[tid].reason = reason
        self.journal.append("cancelled", trial=tid, reason=reason)

    def _best(self) -> TrialRecord | None:
        ok = [r for r in self.records.values() if r.status in ("finished", "early_stopped") and r.value is not None]
        return max(ok, key=lambda r: (r.value, -r.trial)) if ok else None

    # ------------------------------------------------------------------ results
    def table(self) -> pd.DataFrame:
        """One row per trial (in id order): trial, status, value, reason, seconds, steps, params."""
        rows = []
        for r in sorted(self.records.values(), key=lambda r: r.trial):
            rows.append({"trial": r.trial, "status": r.status, "value": r.value, "reason": r.reason,
                         "seconds": round(r.seconds, 3), "steps": len(r.curve),
                         **{name: r.params.get(name) for name in self.space.names}})
        cols = ["trial", "status", "value", "reason", "seconds", "steps", *self.space.names]
        return pd.DataFrame(rows, columns=cols)

    def result(self, complete: bool = True) -> HPOResult:
        """Write ``trials.csv`` and ``best_auc.png`` beside the journal and return the `HPOResult`."""
        from longtail.io import atomic_path

        table = self.table()
        table_path, plot_path = self.root / "trials.csv", self.root / "best_auc.png"
        with atomic_path(table_path) as tmp:
            table.to_csv(tmp, index=False)
        done = sorted((r for r in self.records.values() if r.order is not None), key=lambda r: r.order)
        plot_best([(r.trial, r.status, r.value) for r in done], plot_path)
        best = self._best()
        return HPOResult(table, best.trial if best else None, best.value if best else None,
                         dict(best.params) if best else None, self.journal.path, table_path, plot_path, complete)


def plot_best(trials: Sequence[tuple[int, str, float | None]], path: str | Path, metric: str = "valid AUC") -> Path:
    """Plot each trial's value and the best value so far against the number of trials done.

    Args:
        trials: ``(trial id, status, value)`` in completion order.
        path: the PNG to write (atomically).
        metric: the y-axis label.

    Returns:
        ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from longtail.io import atomic_path

    fig = Figure(figsize=(6, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    xs = np.arange(1, len(trials) + 1)
    vals = [v if v is not None else np.nan for _, _, v in trials]
    best = np.fmax.accumulate(np.array(vals, dtype=float)) if trials else np.array([])
    ok = [(x, v) for x, (_, s, v) in zip(xs, trials, strict=True) if s == "finished"]
    early = [(x, v) for x, (_, s, v) in zip(xs, trials, strict=True) if s == "early_stopped"]
    failed = [x for x, (_, s, _) in zip(xs, trials, strict=True) if s == "failed"]
    if ok:
        ax.scatter(*zip(*ok, strict=True), s=18, color="tab:blue", label="finished")
    if early:
        ax.scatter(*zip(*early, strict=True), s=18, color="tab:orange", marker="v", label="stopped early")
    if len(xs):
        ax.step(xs, best, where="post", color="tab:green", label="best so far")
    if failed:
        finite = [v for v in vals if not np.isnan(v)]
        y = min(finite) if finite else 0.0
        ax.scatter(failed, [y] * len(failed), marker="x", color="tab:red", label="failed")
    ax.set_xlabel("trials done")
    ax.set_ylabel(metric)
    ax.set_title("best value against trials")
    ax.grid(alpha=0.3)
    if trials:
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def _canon(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=_json_default)


def _fmt_params(params: dict[str, Any]) -> str:
    def f(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    return ", ".join(f"{k}={f(v)}" for k, v in params.items())


def _rich_log() -> Callable[[str], None]:
    from rich.console import Console
    from rich.markup import escape

    console = Console(stderr=True)
    return lambda line: console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {escape(line)}", soft_wrap=True)
