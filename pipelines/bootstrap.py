"""``bootstrap``: features → data → θ0 → onboard the initial scenarios in parallel → θ0 update → package."""


from kfp import dsl

from components import (
    build_agnostic_model,
    materialize_features,
    onboard_scenario,
    package_bento,
    prepare_data,
    promote_models,
    update_theta0,
)
from longtail.pipelines.config import ClusterConfig, PipelineConfig
from pipelines.placement import cpu_task, gpu_task

DEFAULT_CONFIG = PipelineConfig().to_dict()  # the config parameter's default (compile overrides it)


def make_bootstrap(cluster: ClusterConfig):
    """The bootstrap pipeline with ``cluster``'s placement and ParallelFor limit."""

    @dsl.pipeline(name="longtail-bootstrap",
                  description="Features, training data, θ0 on the initial scenarios, their onboarding in "
                              "parallel, the θ0 update from their feedback (Eq. 3), packaging and promotion.")
    def bootstrap(config: dict = DEFAULT_CONFIG, initial_scenarios: list[str] = [],  # noqa: B006
                  tag: str = "onboard") -> str:
        feats = cpu_task(materialize_features(config=config), cluster)
        data = cpu_task(prepare_data(config=config, scenarios=initial_scenarios, features=feats.outputs["Output"]), cluster)
        theta0 = gpu_task(build_agnostic_model(config=config, scenarios=initial_scenarios, data=data.outputs["Output"]), cluster)
        with dsl.ParallelFor(items=initial_scenarios, parallelism=cluster.parallelism) as scenario:
            # θ0's version is not passed into the loop: kfp.local 2.17 hands the loop item to an
            # integer input fed by a task outside the loop; ordering by .after() is enough here
            onboard = gpu_task(onboard_scenario(config=config, scenario=scenario, tag=tag, theta0_version=-1),
                               cluster, cache=False)
            onboard.after(theta0)
        update = cpu_task(update_theta0(config=config, results=dsl.Collected(onboard.outputs["Output"])), cluster, cache=False)
        pkg = cpu_task(package_bento(config=config, theta0_version=update.outputs["Output"]), cluster, cache=False)
        cpu_task(promote_models(config=config, results=dsl.Collected(onboard.outputs["Output"]), package=pkg.outputs["Output"]), cluster,
                 cache=False)
        return pkg.outputs["Output"]

    return bootstrap
