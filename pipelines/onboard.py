"""``onboard``: one or more new scenarios against the current θ0, then the θ0 update, promotion and packaging."""


from kfp import dsl

from components import onboard_scenario, package_bento, prepare_data, promote_models, update_theta0
from longtail.workflow.config import ClusterConfig, PipelineConfig
from pipelines.placement import cpu_task, gpu_task

DEFAULT_CONFIG = PipelineConfig().to_dict()  # the config parameter's default (compile overrides it)


def finish(config, results, cluster: ClusterConfig):
    """The tail of every pipeline, once its scenarios are onboarded: update θ0 from their collected
    feedback (Eq. 3; the new θ0 serves at the fallback pointer), promote the light models that beat
    what serves on validation rows, then build the Bento and the report.

    Args:
        results: the onboarding task's output inside the ParallelFor (collected here, once per consumer).

    Returns:
        The package task's output (the pipeline's result).
    """
    update = cpu_task(update_theta0(config=config, results=dsl.Collected(results)), cluster, cache=False)
    promoted = cpu_task(promote_models(config=config, results=dsl.Collected(results),
                                       theta0_version=update.outputs["Output"]), cluster, cache=False)
    pkg = cpu_task(package_bento(config=config, promotion=promoted.outputs["Output"]), cluster, cache=False)
    return pkg.outputs["Output"]


def onboard_and_publish(config, scenarios, tag, after, cluster: ClusterConfig, parallelism: int):
    """Onboard ``scenarios`` in parallel once ``after`` is done, then `finish`."""
    with dsl.ParallelFor(items=scenarios, parallelism=parallelism) as scenario:
        # θ0's version is not passed into the loop: kfp.local 2.17 hands the loop item to an
        # integer input fed by a task outside the loop; ordering by .after() is enough here
        ob = gpu_task(onboard_scenario(config=config, scenario=scenario, tag=tag, theta0_version=-1),
                      cluster, cache=False)
        ob.after(after)
    return finish(config, ob.outputs["Output"], cluster)


def make_onboard(cluster: ClusterConfig, parallelism: int = PipelineConfig().parallelism):
    """The onboard pipeline with ``cluster``'s placement and ``parallelism`` scenarios at once."""

    @dsl.pipeline(name="longtail-onboard",
                  description="New scenarios: training data, onboarding against the current θ0 in parallel, "
                              "the θ0 update from their feedback (Eq. 3), promotion on validation rows, the Bento.")
    def onboard(config: dict = DEFAULT_CONFIG, scenarios: list[str] = [],  # noqa: B006
                tag: str = "onboard") -> str:
        data = cpu_task(prepare_data(config=config, scenarios=scenarios, features="online store kept"), cluster)
        return onboard_and_publish(config, scenarios, tag, data, cluster, parallelism)

    return onboard
