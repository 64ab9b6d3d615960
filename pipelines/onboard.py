"""``onboard``: one or more new scenarios against the current θ0, then the θ0 update and packaging."""


from kfp import dsl

from components import onboard_scenario, package_bento, prepare_data, promote_models, update_theta0
from longtail.workflow.config import ClusterConfig, PipelineConfig
from pipelines.placement import cpu_task, gpu_task

DEFAULT_CONFIG = PipelineConfig().to_dict()  # the config parameter's default (compile overrides it)


def onboard_and_publish(config, scenarios, tag, after, cluster: ClusterConfig):
    """The tail both ``bootstrap`` and ``onboard`` share, inside a pipeline: onboard ``scenarios`` in
    parallel once ``after`` is done, update θ0 from their collected feedback, package and promote.

    Returns:
        The package task's output (the pipeline's result).
    """
    with dsl.ParallelFor(items=scenarios, parallelism=cluster.parallelism) as scenario:
        # θ0's version is not passed into the loop: kfp.local 2.17 hands the loop item to an
        # integer input fed by a task outside the loop; ordering by .after() is enough here
        ob = gpu_task(onboard_scenario(config=config, scenario=scenario, tag=tag, theta0_version=-1),
                      cluster, cache=False)
        ob.after(after)
    update = cpu_task(update_theta0(config=config, results=dsl.Collected(ob.outputs["Output"])), cluster, cache=False)
    pkg = cpu_task(package_bento(config=config, theta0_version=update.outputs["Output"]), cluster, cache=False)
    cpu_task(promote_models(config=config, results=dsl.Collected(ob.outputs["Output"]), package=pkg.outputs["Output"]),
             cluster, cache=False)
    return pkg.outputs["Output"]


def make_onboard(cluster: ClusterConfig):
    """The onboard pipeline with ``cluster``'s placement and ParallelFor limit."""

    @dsl.pipeline(name="longtail-onboard",
                  description="New scenarios: training data, onboarding against the current θ0 in parallel, "
                              "the θ0 update from their feedback (Eq. 3), packaging and promotion.")
    def onboard(config: dict = DEFAULT_CONFIG, scenarios: list[str] = [],  # noqa: B006
                tag: str = "onboard") -> str:
        data = cpu_task(prepare_data(config=config, scenarios=scenarios, features="online store kept"), cluster)
        return onboard_and_publish(config, scenarios, tag, data, cluster)

    return onboard
