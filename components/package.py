"""Package what serves each scenario, and promote the light models that pass the gate."""


from kfp import dsl
from kfp.dsl import HTML, Markdown, Metrics, Output

from longtail.workflow.config import project_image


@dsl.component(base_image=project_image(), install_kfp_package=False)
def package_bento(config: dict, theta0_version: int, metrics: Output[Metrics], report: Output[HTML]) -> str:
    """Write the serving package (``package/serving.json``: model versions per scenario, feature
    service) and the per-scenario report of the workspace (AUC table, FLOPs, latency, pictures).

    Args:
        config: the stages' config.
        theta0_version: θ0's version after the update (orders the step after it).

    Returns:
        The package summary (JSON): paths of serving.json and the HTML report.
    """
    import json
    from pathlib import Path

    from longtail.workflow import artifacts as ks
    from longtail.workflow.stages import package

    out = package(ks.config(config), log=print)
    ks.log_metrics(metrics, {"scenarios": out["scenarios"], "failed": len(out["failed"]),
                             "theta0_version": theta0_version})
    ks.write_text(report.path, Path(out["report_html"]).read_text())
    return json.dumps(out)


@dsl.component(base_image=project_image(), install_kfp_package=False)
def promote_models(config: dict, results: list[str], package: str, metrics: Output[Metrics],
                   report: Output[Markdown]) -> str:
    """Serve each scenario's new light model when it passes the gate (registry compare-and-swap).

    Args:
        config: the stages' config.
        results: the onboarding results (JSON strings).
        package: the package step's output (orders this step after it).

    Returns:
        Promoted and held scenarios (JSON).
    """
    import json

    from longtail.workflow import artifacts as ks
    from longtail.workflow.stages import promote

    out = promote(ks.config(config), list(results), log=print)
    ks.log_metrics(metrics, {"promoted": len(out["promoted"]), "held": len(out["held"])})
    ks.write_text(report.path, ks.markdown_summary("Promotion", out))
    return json.dumps(out)
