"""The Katib Experiment generated for a search: valid against Katib's published v1beta1 models
(`kubeflow-katib-api`), its trial Job valid against the Kubernetes models, its container command
the local trial command, and its metrics collector reading what a trial prints."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import yaml
from kubeflow_katib_api.models import V1beta1Experiment
from kubernetes.client import ApiClient

from longtail.hpo.algorithms import list_algorithms
from longtail.hpo.katib import KATIB_ALGORITHMS, KatibError, katib_algorithm, katib_experiment
from longtail.hpo.runner import KATIB_STDOUT_FILTER, Budget, EarlyStopping, MedianStopping, parse_metrics
from longtail.hpo.space import SearchSpace, format_value, load_space
from longtail.hpo.trial_protocol import METRIC, TRIAL_COMMAND, metric_line, trial_args

# Katib v1beta1's default StdOut filter (pkg/metricscollector/v1beta1/common/const.go), as documented.
KATIB_DEFAULT_FILTER = r"([\w|-]+)\s*=\s*([+-]?\d*(\.\d+)?([Ee][+-]?\d+)?)"

TYPED = """
hyperparameters:
  - {name: train.lr, type: logfloat, low: 1.0e-4, high: 1.0e-2}
  - {name: model.num_layers, type: int, low: 2, high: 6}
  - {name: model.dropout, type: float, low: 0.0, high: 0.3, step: 0.05}
  - {name: model.profile_dims, values: ['64, 16', '128, 32']}
  - {name: train.batch_size, values: [256, 512]}
fixed: {train.epochs: 5}
"""


def _experiment(space: SearchSpace, algorithm: str, **kw) -> dict:
    return katib_experiment(space, algorithm, Budget(max_trials=12, parallel=3, trial_seconds=900),
                            image="registry.example.com/longtail-trainer:0.1.0", data_path="/data/flights",
                            early_stopping=MedianStopping(min_trials_required=3, start_step=2), seed=7, **kw)


def _spaces_for(katib_alg: str) -> list[SearchSpace]:
    spaces = [SearchSpace.from_yaml(TYPED), load_space("heavy")]
    if katib_alg != "cmaes":  # Katib's CMA-ES needs two numeric parameters; fig3 is all categorical
        spaces.append(load_space("fig3"))
    if katib_alg == "grid":  # Katib's grid needs quantised ranges
        spaces = [load_space("fig3")]
    return spaces


class _Response:
    def __init__(self, obj):
        self.data = json.dumps(obj)


def _roundtrip_job(job: dict) -> dict:
    client = ApiClient()
    model = client.deserialize(_Response(job), "V1Job")
    return client.sanitize_for_serialization(model)


@pytest.mark.unit
@pytest.mark.parametrize("algorithm", list_algorithms())
def test_experiment_matches_katib_models_for_every_algorithm(algorithm):
    katib_alg = katib_algorithm(algorithm)
    for space in _spaces_for(katib_alg):
        exp = _experiment(space, algorithm)
        # YAML round trip: the dict is plain data
        assert yaml.safe_load(yaml.safe_dump(exp)) == exp
        # Katib's pydantic models (strict types); a round trip drops nothing, so no field is unknown
        model = V1beta1Experiment.from_dict(exp)
        assert model.to_dict() == exp
        spec = model.spec
        assert spec.algorithm.algorithm_name == katib_alg
        assert spec.objective.objective_metric_name == METRIC and spec.objective.type == "maximize"
        assert [p.name for p in spec.parameters] == [t.reference for t in spec.trial_template.trial_parameters]
        assert spec.early_stopping.algorithm_name == "medianstop"
        # the trial template is a valid Kubernetes Job
        job = exp["spec"]["trialTemplate"]["trialSpec"]
        assert _roundtrip_job(job) == job
        assert job["spec"]["activeDeadlineSeconds"] == 900 and job["spec"]["backoffLimit"] == 0


@pytest.mark.unit
def test_the_round_trip_check_catches_unknown_fields_and_wrong_types():
    exp = _experiment(load_space("fig3"), "tpe")
    exp["spec"]["maxTrialCounts"] = 3  # a typo
    assert V1beta1Experiment.from_dict(exp).to_dict() != exp
    bad = _experiment(load_space("fig3"), "tpe")
    bad["spec"]["parameters"][0]["feasibleSpace"]["list"] = [0.001, 0.0001]  # Katib wants strings
    with pytest.raises(ValueError):
        V1beta1Experiment.from_dict(bad)
    job = _experiment(load_space("fig3"), "tpe")["spec"]["trialTemplate"]["trialSpec"]
    job["spec"]["template"]["spec"]["containers"][0]["comand"] = ["x"]
    assert _roundtrip_job(job) != job


def _katib_substitute(exp: dict, assignment: dict[str, str]) -> list[str]:
    """What Katib's controller does to the trial template: replace ${trialParameters.NAME} by
    the suggested value of the parameter that NAME references (same count required)."""
    tmpl = exp["spec"]["trialTemplate"]
    assert len(tmpl["trialParameters"]) == len(assignment)
    text = json.dumps(tmpl["trialSpec"])
    for tp in tmpl["trialParameters"]:
        text = text.replace(f"${{trialParameters.{tp['name']}}}", assignment[tp["reference"]])
    assert "${" not in text
    return json.loads(text)["spec"]["template"]["spec"]["containers"][0]["command"]


@pytest.mark.unit
@pytest.mark.parametrize("space_name", ["fig3", "typed"])
def test_container_command_is_the_local_trial_command(space_name):
    space = load_space("fig3") if space_name == "fig3" else SearchSpace.from_yaml(TYPED)
    settings = {"train.max_steps": 100}
    exp = _experiment(space, "tpe", trial_settings=settings)
    rng = np.random.default_rng(0)
    for _ in range(5):
        params = space.sample(rng)
        # Katib's suggestion service sends each value as text: what format_value writes
        names = {p["reference"]: p for p in exp["spec"]["trialTemplate"]["trialParameters"]}
        assignment = {katib: format_value(params[p.name]) for katib, p in zip(names, space, strict=True)}
        command = _katib_substitute(exp, assignment)
        local = trial_args({**settings, **space.overrides(params)}, data="/data/flights")
        assert command == [*TRIAL_COMMAND, *local]


@pytest.mark.unit
def test_feasible_spaces_follow_katib_types():
    exp = _experiment(SearchSpace.from_yaml(TYPED), "random")
    params = {p["name"]: p for p in exp["spec"]["parameters"]}
    assert params["train-lr"] == {"name": "train-lr", "parameterType": "double",
                                  "feasibleSpace": {"min": "0.0001", "max": "0.01", "distribution": "logUniform"}}
    assert params["model-num-layers"]["parameterType"] == "int"
    assert params["model-dropout"]["feasibleSpace"] == {"min": "0.0", "max": "0.3", "step": "0.05"}
    assert params["model-profile-dims"] == {"name": "model-profile-dims", "parameterType": "categorical",
                                            "feasibleSpace": {"list": ["64, 16", "128, 32"]}}
    assert params["train-batch-size"]["parameterType"] == "discrete"
    assert exp["spec"]["algorithm"]["algorithmSettings"] == [{"name": "random_state", "value": "7"}]
    assert exp["spec"]["earlyStopping"]["algorithmSettings"] == [
        {"name": "min_trials_required", "value": "3"}, {"name": "start_step", "value": "2"}]
    assert (exp["spec"]["maxTrialCount"], exp["spec"]["parallelTrialCount"], exp["spec"]["maxFailedTrialCount"]) == \
        (12, 3, 12)


@pytest.mark.unit
def test_trainer_output_is_parsed_by_katibs_default_stdout_filter():
    exp = _experiment(load_space("fig3"), "racos")
    collector = exp["spec"]["metricsCollectorSpec"]
    assert collector["collector"] == {"kind": "StdOut"}
    assert collector["source"]["filter"]["metricsFormat"] == [KATIB_DEFAULT_FILTER] == [KATIB_STDOUT_FILTER]
    # what `longtail hpo trial` prints (the same function formats its lines)
    output = ["trial: 2227 training and 247 validation rows, 6 scenarios",
              metric_line(0.7123456, epoch=1, train_loss=0.62), metric_line(0.75072, epoch=2, train_loss=0.58),
              metric_line(0.75072)]
    found = []
    for line in output:  # the collector keeps the pairs whose name is the objective
        for name, value, *_ in re.findall(KATIB_DEFAULT_FILTER, line):
            if name == exp["spec"]["objective"]["objectiveMetricName"]:
                found.append(float(value))
    assert found == [0.712346, 0.75072, 0.75072]
    assert parse_metrics(output[1]) == {"epoch": 1.0, METRIC: 0.712346, "train-loss": 0.62}


@pytest.mark.unit
def test_algorithm_names_map_to_katib():
    assert set(KATIB_ALGORITHMS) == set(list_algorithms())
    assert katib_algorithm("racos") == "tpe"  # Katib has no RACOS
    assert katib_algorithm("racos", custom_racos=True) == "racos"
    assert _experiment(load_space("fig3"), "racos", custom_racos=True)["spec"]["algorithm"]["algorithmName"] == "racos"
    with pytest.raises(KatibError, match="no Katib counterpart"):
        katib_algorithm("hyperband")
    with pytest.raises(KatibError, match="two int or double"):
        _experiment(load_space("fig3"), "cmaes")
    with pytest.raises(KatibError, match="'train.lr'.*step"):
        _experiment(SearchSpace.from_yaml(TYPED), "grid")


@pytest.mark.unit
def test_options_reach_the_trial_pod():
    exp = _experiment(load_space("heavy"), "tpe", resources={"limits": {"nvidia.com/gpu": 1}},
                      node_selector={"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"},
                      config_path="/config/trial.yaml", goal=0.9)
    pod = exp["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"] == {"limits": {"nvidia.com/gpu": 1}}
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    assert pod["containers"][0]["command"][3:5] == ["--config", "/config/trial.yaml"]
    assert exp["spec"]["objective"]["goal"] == 0.9
    assert V1beta1Experiment.from_dict(exp).to_dict() == exp
    no_stop = katib_experiment(load_space("fig3"), "tpe", Budget(), "img:1", "/d")
    assert "earlyStopping" not in no_stop["spec"]


def test_successive_halving_is_refused_for_katib_naming_the_setting():
    space = load_space("heavy")
    with pytest.raises(KatibError, match="early_stopping.algorithm=medianstop"):
        katib_experiment(space, "tpe", Budget(max_trials=4), "img:1", "/data",
                         early_stopping=EarlyStopping(algorithm="successive_halving"))
