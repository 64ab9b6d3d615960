"""Feature components: apply + materialize the feature repo; point-in-time training data."""


from kfp import dsl
from kfp.dsl import Markdown, Metrics, Output

from longtail.workflow.config import project_image


@dsl.component(base_image=project_image(), install_kfp_package=False)
def materialize_features(config: dict, metrics: Output[Metrics], report: Output[Markdown]) -> str:
    """`feast apply` the feature repo and materialize the newest values into the online store.

    Args:
        config: the stages' `PipelineConfig` as a dict.

    Returns:
        The materialized window (JSON).
    """
    import json

    from feature_store.stages import materialize
    from longtail.workflow import artifacts as ks

    out = materialize(ks.config(config), log=print)
    ks.log_metrics(metrics, {"objects": len(out["objects"]), "seconds": out["seconds"]})
    ks.write_text(report.path, ks.markdown_summary("Feature store: apply + materialize", out))
    return json.dumps(out)


@dsl.component(base_image=project_image(), install_kfp_package=False)
def prepare_data(config: dict, scenarios: list[str], features: str, metrics: Output[Metrics],
                 report: Output[Markdown]) -> str:
    """Events joined point in time (Feast `get_historical_features`), validated and split per scenario.

    Args:
        config: the stages' config.
        scenarios: scenarios to prepare.
        features: the materialize step's output (orders this step after it).

    Returns:
        Rows per scenario (JSON).
    """
    import json

    from feature_store.stages import historical_join
    from longtail.workflow import artifacts as ks
    from longtail.workflow.stages import prepare

    cfg = ks.config(config)
    out = prepare(cfg, list(scenarios), join=historical_join(cfg), log=print)
    ks.log_metrics(metrics, {"rows": out["scenarios"], "seconds": out["seconds"]})
    ks.write_text(report.path, ks.markdown_summary("Training data (point in time, Feast)", out))
    return json.dumps(out["scenarios"])
