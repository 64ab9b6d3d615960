"""``bootstrap``: features → data → θ0 → onboard the initial scenarios in parallel → θ0 update → promotion → Bento."""


from kfp import dsl

from components import build_agnostic_model, materialize_features, prepare_data
from longtail.workflow.config import ClusterConfig, PipelineConfig
from pipelines.onboard import onboard_and_publish
from pipelines.placement import cpu_task, gpu_task

DEFAULT_CONFIG = PipelineConfig().to_dict()  # the config parameter's default (compile overrides it)


def make_bootstrap(cluster: ClusterConfig, parallelism: int = PipelineConfig().parallelism):
    """The bootstrap pipeline with ``cluster``'s placement and ``parallelism`` scenarios at once."""

    @dsl.pipeline(name="longtail-bootstrap",
                  description="Features, training data, θ0 on the initial scenarios, their onboarding in "
                              "parallel, the θ0 update from their feedback (Eq. 3), promotion and the Bento.")
    def bootstrap(config: dict = DEFAULT_CONFIG, initial_scenarios: list[str] = [],  # noqa: B006
                  tag: str = "onboard") -> str:
        feats = cpu_task(materialize_features(config=config), cluster)
        data = cpu_task(prepare_data(config=config, scenarios=initial_scenarios, features=feats.outputs["Output"]), cluster)
        theta0 = gpu_task(build_agnostic_model(config=config, scenarios=initial_scenarios, data=data.outputs["Output"]), cluster)
        return onboard_and_publish(config, initial_scenarios, tag, theta0, cluster, parallelism)

    return bootstrap
