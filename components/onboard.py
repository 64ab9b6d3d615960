"""Onboard one scenario: fine-tune → feedback → light NAS → distil → evaluate → register."""

from kfp import dsl
from kfp.dsl import HTML, Metrics, Output

from longtail.workflow.config import project_image


@dsl.component(base_image=project_image(), install_kfp_package=False)
def onboard_scenario(config: dict, scenario: str, tag: str, theta0_version: int, metrics: Output[Metrics],
                     report: Output[HTML]) -> str:
    """θu from the current θ0, its query feedback, MeL and Ours light models distilled from θu,
    SinH/MeL references, registry versions. A failure is returned as ``status: failed``, never raised,
    so that the other scenarios' results stand.

    Args:
        config: the stages' config.
        scenario: the scenario.
        tag: the onboarding's name (``onboard`` or ``retrain-<digest>``).
        theta0_version: the θ0 version this run expects (orders the step after θ0's build).

    Returns:
        The scenario's result (JSON).
    """
    import json

    from longtail.workflow import artifacts as ks
    from longtail.workflow.stages import onboard_one

    result = onboard_one(ks.config(config), scenario, tag=tag, log=print)
    ks.result_metrics(metrics, result)
    ks.write_text(report.path, ks.results_report([result], f"scenario {scenario}")[1])
    return json.dumps(result)


@dsl.component(base_image=project_image(), install_kfp_package=False)
def retrain_scenario(config: dict, scenario: str, verdict: str, metrics: Output[Metrics], report: Output[HTML]) -> str:
    """Rebuild one scenario (as `onboard_scenario`) when the drift verdict marks it drifted; otherwise
    return ``status: skipped``. The gate sits in the step so that the loop runs over a pipeline
    parameter (kfp.local 2.17 cannot loop over a task's output).

    Args:
        config: the stages' config.
        scenario: a candidate scenario.
        verdict: path of the drift verdict JSON.

    Returns:
        The scenario's result (JSON).
    """
    import json

    from longtail.workflow import artifacts as ks
    from longtail.workflow.stages import retrain_one

    result = retrain_one(ks.config(config), scenario, verdict, log=print)
    ks.result_metrics(metrics, result)
    ks.write_text(report.path, ks.results_report([result], f"retrain {scenario}")[1])
    return json.dumps(result)
