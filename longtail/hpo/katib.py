"""The same search as a Katib ``v1beta1`` Experiment (HPO trials on a Kubernetes cluster).

`katib_experiment` turns a search space, a strategy name and a budget into the Experiment
resource (a YAML-serialisable dict): the objective (maximise ``valid-auc``), Katib's algorithm,
the parameters, the trial budget, median early stopping, a StdOut metrics collector whose
filter is Katib's default (what `longtail hpo trial` prints), and a trial template: a
``batch/v1`` Job whose container runs exactly the local trial command,
``longtail hpo trial --data DIR --set key=value ...``, with ``${trialParameters.x}`` in place
of each parameter's value.

Strategies on the cluster (`KATIB_ALGORITHMS`): ``random``, ``grid``, ``tpe`` and ``cmaes``
map to Katib's algorithms of the same names. **Katib has no RACOS.** By default a ``racos``
job runs Katib's ``tpe``: like RACOS it splits the observed trials into a good and a bad set
and samples where the good set is dense, handles categorical parameters, and ships with every
Katib install. To run RACOS itself, register a custom suggestion service in the
``katib-config`` ConfigMap (``suggestion: {racos: {image: <our suggestion image>}}``): a gRPC
server implementing Katib's ``Suggestion`` API (``GetSuggestions``,
``ValidateAlgorithmSettings``) whose ``GetSuggestions`` replays the request's trials into
`longtail.hpo.algorithms.RACOS` (an ask per trial in creation order, a tell per finished
observation, as the local runner replays its journal) and returns
``current_request_number`` new asks; then pass ``custom_racos=True`` here.

Differences from local runs: Katib has no conditional parameters (every parameter gets a value;
the heavy model ignores Transformer-only settings for an LSTM, so a conditional parameter costs
only search efficiency), no whole-experiment time limit (the budget is ``maxTrialCount``; each
trial's Job gets ``activeDeadlineSeconds``), and Katib's ``cmaes`` needs at least two int or
double parameters.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from longtail.hpo.runner import KATIB_STDOUT_FILTER, Budget, EarlyStopping
from longtail.hpo.space import Param, SearchSpace, format_value
from longtail.hpo.trial_protocol import METRIC, TRIAL_COMMAND, trial_args

__all__ = ["KATIB_ALGORITHMS", "KatibError", "katib_algorithm", "katib_experiment", "katib_name"]

KATIB_ALGORITHMS: dict[str, str] = {
    "random": "random",
    "grid": "grid",
    "tpe": "tpe",
    "cmaes": "cmaes",
    "racos": "tpe",  # no RACOS in Katib: see the module docstring (custom_racos=True for a custom service)
}
CONTAINER = "training-container"


class KatibError(ValueError):
    """The search cannot be expressed as a Katib Experiment; the message says why and what to do."""


def katib_name(name: str) -> str:
    """A parameter name as a Katib search parameter (``train.lr`` -> ``train-lr``)."""
    return re.sub(r"[^A-Za-z0-9-]+", "-", name).strip("-").lower()


def _trial_parameter_name(name: str) -> str:
    # ${trialParameters.<camelCase>}: letters and digits only
    parts = [x for x in re.split(r"[^A-Za-z0-9]+", name) if x]
    return parts[0].lower() + "".join(x[:1].upper() + x[1:] for x in parts[1:])


def katib_algorithm(name: str, custom_racos: bool = False) -> str:
    """Katib's algorithm name for one of ours.

    Args:
        name: our registered algorithm name.
        custom_racos: a RACOS suggestion service is registered in the cluster as ``racos``.

    Returns:
        The Katib ``algorithmName``.

    Raises:
        KatibError: for an algorithm with no Katib counterpart.
    """
    if name == "racos" and custom_racos:
        return "racos"
    if name not in KATIB_ALGORITHMS:
        raise KatibError(f"algorithm {name!r} has no Katib counterpart; use one of {sorted(KATIB_ALGORITHMS)}")
    return KATIB_ALGORITHMS[name]


def _feasible(p: Param, algorithm: str) -> tuple[str, dict[str, Any]]:
    if p.type == "categorical":
        values = [format_value(v) for v in p.values]
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in p.values)
        return ("discrete" if numeric else "categorical"), {"list": values}
    if p.type == "int":
        space = {"min": str(int(p.low)), "max": str(int(p.high))}
        if p.step:
            space["step"] = str(int(p.step))
        return "int", space
    if algorithm == "grid" and not p.step:
        raise KatibError(f"parameter {p.name!r}: Katib's grid needs a step for a float range; add 'step:' "
                         "(type float) or list its values")
    space = {"min": format_value(float(p.low)), "max": format_value(float(p.high))}
    if p.type == "logfloat":
        space["distribution"] = "logUniform"
    elif p.step:
        space["step"] = format_value(float(p.step))
    return "double", space


def katib_experiment(space: SearchSpace, algorithm: str, budget: Budget, image: str, data_path: str,
                     namespace: str = "kubeflow", name: str = "longtail-hpo", *,
                     trial_settings: Mapping[str, Any] | None = None, config_path: str | None = None,
                     early_stopping: EarlyStopping | None = None, seed: int | None = None,
                     max_failed_trials: int | None = None, resources: Mapping[str, Any] | None = None,
                     node_selector: Mapping[str, str] | None = None, custom_racos: bool = False,
                     goal: float | None = None) -> dict[str, Any]:
    """A Katib ``kubeflow.org/v1beta1`` Experiment for the search.

    Args:
        space: the search space.
        algorithm: our algorithm name (mapped by `katib_algorithm`).
        budget: ``max_trials`` -> ``maxTrialCount``, ``parallel`` -> ``parallelTrialCount``,
            ``trial_seconds`` -> the trial Job's ``activeDeadlineSeconds`` (``max_seconds`` has no
            Katib counterpart).
        image: the trainer image (with ``longtail`` installed); pin it by tag or digest.
        data_path: the table-set folder as the trial container sees it (``--data``).
        namespace / name: the Experiment's metadata.
        trial_settings: config keys set for every trial (e.g. ``{"train.epochs": 5}``).
        config_path: a base trial config file inside the container (``--config``).
        early_stopping: median stopping (``medianstop``); None or disabled: none; successive halving
            is refused (`KatibError`): Katib has no such early-stopping service.
        seed: the suggestion's ``random_state`` (for algorithms that take it).
        max_failed_trials: ``maxFailedTrialCount`` (default: ``max_trials``: failures never end
            the experiment, as locally).
        resources: the container's resources, e.g. ``{"limits": {"nvidia.com/gpu": 1}}``.
        node_selector: the trial pod's node selector (e.g. a GPU node pool).
        custom_racos: a RACOS suggestion service is registered as ``racos`` (module docstring).
        goal: stop when the objective reaches this value.

    Returns:
        The Experiment as a plain dict (``yaml.safe_dump`` writes it).

    Raises:
        KatibError: when the space cannot be expressed for the chosen Katib algorithm.
    """
    katib_alg = katib_algorithm(algorithm, custom_racos)
    params, trial_params, overrides = [], [], {}
    overrides.update(trial_settings or {})
    overrides.update(space.fixed)
    for p in space:
        kname, tname = katib_name(p.name), _trial_parameter_name(p.name)
        ptype, feasible = _feasible(p, katib_alg)
        params.append({"name": kname, "parameterType": ptype, "feasibleSpace": feasible})
        trial_params.append({"name": tname, "description": p.description or f"sets {p.target}", "reference": kname})
        overrides[p.target] = f"${{trialParameters.{tname}}}"
    if len({d["name"] for d in params}) != len(params):
        raise KatibError(f"parameter names {space.names} collide as Katib names {[d['name'] for d in params]}; "
                         "rename them")
    if katib_alg == "cmaes" and sum(d["parameterType"] in ("int", "double") for d in params) < 2:
        raise KatibError("Katib's cmaes needs at least two int or double parameters; use tpe for this space")

    algorithm_spec: dict[str, Any] = {"algorithmName": katib_alg}
    if seed is not None and katib_alg in ("random", "tpe", "cmaes"):
        algorithm_spec["algorithmSettings"] = [{"name": "random_state", "value": str(int(seed))}]

    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": image,
        "command": [*TRIAL_COMMAND, *trial_args(overrides, data=data_path, config=config_path)],
    }
    if resources:
        container["resources"] = dict(resources)
    pod_spec: dict[str, Any] = {"containers": [container], "restartPolicy": "Never"}
    if node_selector:
        pod_spec["nodeSelector"] = dict(node_selector)
    job_spec: dict[str, Any] = {
        "backoffLimit": 0,  # a failed trial is recorded, not retried (as locally)
        "template": {"metadata": {"annotations": {"sidecar.istio.io/inject": "false"}}, "spec": pod_spec},
    }
    if budget.trial_seconds:
        job_spec["activeDeadlineSeconds"] = int(max(1, round(budget.trial_seconds)))

    objective: dict[str, Any] = {
        "type": "maximize",
        "objectiveMetricName": METRIC,
        "additionalMetricNames": ["train-loss"],
        "metricStrategies": [{"name": METRIC, "value": "max"}, {"name": "train-loss", "value": "min"}],
    }
    if goal is not None:
        objective["goal"] = float(goal)
    spec: dict[str, Any] = {
        "objective": objective,
        "algorithm": algorithm_spec,
        "parallelTrialCount": int(budget.parallel),
        "maxTrialCount": int(budget.max_trials),
        "maxFailedTrialCount": int(max_failed_trials if max_failed_trials is not None else budget.max_trials),
        "metricsCollectorSpec": {
            "collector": {"kind": "StdOut"},
            "source": {"filter": {"metricsFormat": [KATIB_STDOUT_FILTER]}},  # Katib's default, stated
        },
        "parameters": params,
        "trialTemplate": {
            "primaryContainerName": CONTAINER,
            "trialParameters": trial_params,
            "trialSpec": {"apiVersion": "batch/v1", "kind": "Job", "spec": job_spec},
        },
    }
    if early_stopping is not None and early_stopping.enabled:
        if early_stopping.algorithm != "medianstop":
            raise KatibError(f"early_stopping.algorithm={early_stopping.algorithm} has no Katib counterpart: Katib "
                             "v1beta1's early-stopping service is medianstop (its hyperband is a suggestion algorithm "
                             "that samples at random, not an early-stopping rule); use early_stopping.algorithm="
                             "medianstop for the Katib experiment, or run the search with `longtail hpo run`")
        spec["earlyStopping"] = {"algorithmName": "medianstop", "algorithmSettings": [
            {"name": "min_trials_required", "value": str(int(early_stopping.min_trials_required))},
            {"name": "start_step", "value": str(int(early_stopping.start_step))},
        ]}
    return {"apiVersion": "kubeflow.org/v1beta1", "kind": "Experiment",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}
