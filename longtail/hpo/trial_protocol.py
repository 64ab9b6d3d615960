"""The trial command line: one definition for local trials and Katib trial containers.

A trial is ``longtail hpo trial [--config FILE] --data DIR --set key=value ... [--out DIR]``.
It prints ``epoch=E valid-auc=V train-loss=L`` after each epoch and finally
``valid-auc=BEST``, which Katib's default StdOut metrics filter parses (see
`longtail.hpo.runner.parse_metrics`). This module imports nothing heavy, so the Katib
generator can use it without torch.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from longtail.hpo.space import format_value

__all__ = ["METRIC", "STEP_KEY", "TRIAL_COMMAND", "flatten", "local_trial_command", "metric_line", "trial_args"]

TRIAL_COMMAND = ("longtail", "hpo", "trial")  # the console script, as a trial container runs it
METRIC = "valid-auc"  # the objective metric a trial prints (Katib objectiveMetricName)
STEP_KEY = "epoch"  # the step token on intermediate metric lines


def metric_line(value: float, epoch: int | None = None, train_loss: float | None = None) -> str:
    """One metrics line of a trial: ``epoch=E valid-auc=V train-loss=L`` per epoch, or the final
    ``valid-auc=V`` (no ``epoch`` token: that is how the local runner tells the final value).

    Args:
        value: the validation AUC.
        epoch: the epoch of an intermediate line.
        train_loss: the epoch's training loss.

    Returns:
        The line (without newline).
    """
    parts = [] if epoch is None else [f"{STEP_KEY}={int(epoch)}"]
    parts.append(f"{METRIC}={value:.6f}")
    if train_loss is not None:
        parts.append(f"train-loss={train_loss:.6f}")
    return " ".join(parts)


def local_trial_command() -> list[str]:
    """The same trial entry point run by this interpreter (no console script on PATH needed)."""
    return [sys.executable, "-m", "longtail.hpo.trial"]


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"epochs": 1}, "model.encoder": "bert"}`` -> ``{"train.epochs": 1, "model.encoder": "bert"}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def trial_args(overrides: Mapping[str, Any], data: str | None = None, config: str | None = None,
               out: str | None = None) -> list[str]:
    """The arguments of one trial after the command (``longtail hpo trial``).

    Args:
        overrides: dotted config key -> value (a value may be a Katib ``${trialParameters.x}``
            placeholder, which is passed through as text).
        data: the table-set folder (``--data``).
        config: a base trial config file (``--config``).
        out: a folder to save the trained model in (``--out``).

    Returns:
        The argument list.
    """
    args: list[str] = []
    if config:
        args += ["--config", str(config)]
    if data:
        args += ["--data", str(data)]
    for key, value in overrides.items():
        args += ["--set", f"{key}={format_value(value)}"]
    if out:
        args += ["--out", str(out)]
    return args
