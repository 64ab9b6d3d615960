"""``retrain``: drift-gated; only the scenarios the drift verdict marks drifted are rebuilt."""

from kfp import dsl

from components import check_drift, materialize_features, prepare_data, retrain_scenario
from longtail.workflow.config import ClusterConfig, PipelineConfig
from pipelines.onboard import finish
from pipelines.placement import cpu_task, gpu_task

DEFAULT_CONFIG = PipelineConfig().to_dict()  # the config parameter's default (compile overrides it)


def make_retrain(cluster: ClusterConfig, parallelism: int = PipelineConfig().parallelism):
    """The retrain pipeline with ``cluster``'s placement and ``parallelism`` scenarios at once.

    The loop runs over the candidate ``scenarios`` (a pipeline parameter, e.g. every served
    scenario) and each step rebuilds its scenario only if the verdict marks it drifted: kfp.local
    2.17 cannot loop over a task's output, and a cluster run shows the skipped ones as such.
    """

    @dsl.pipeline(name="longtail-retrain",
                  description="Drift gate, then fresh features and data for the drifted scenarios, their "
                              "re-onboarding against the current θ0, the θ0 update, promotion and the Bento.")
    def retrain(config: dict = DEFAULT_CONFIG, drift_verdict: str = "drift/drift.json",
                scenarios: list[str] = []) -> str:  # noqa: B006
        gate = cpu_task(check_drift(config=config, verdict=drift_verdict, scenarios=scenarios), cluster, cache=False)
        feats = cpu_task(materialize_features(config=config), cluster, cache=False)
        feats.after(gate)
        data = cpu_task(prepare_data(config=config, scenarios=gate.outputs["drifted"],
                                     features=feats.outputs["Output"]), cluster)
        with dsl.ParallelFor(items=scenarios, parallelism=parallelism) as scenario:
            rebuilt = gpu_task(retrain_scenario(config=config, scenario=scenario, verdict=drift_verdict), cluster,
                               cache=False)
            rebuilt.after(data)
        return finish(config, rebuilt.outputs["Output"], cluster)

    return retrain
