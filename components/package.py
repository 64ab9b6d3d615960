"""Promote the light models that beat what serves, then build the serving Bento and the report."""


from kfp import dsl
from kfp.dsl import HTML, Markdown, Metrics, Output

from longtail.workflow.config import project_image


@dsl.component(base_image=project_image(), install_kfp_package=False)
def promote_models(config: dict, results: list[str], theta0_version: int, metrics: Output[Metrics],
                   report: Output[Markdown]) -> str:
    """Champion/challenger: serve each scenario's new light model if it beats the serving one (or, for a
    new scenario, θ0 at the fallback pointer) on the scenario's validation rows (registry compare-and-swap).

    Args:
        config: the stages' config.
        results: the onboarding results (JSON strings).
        theta0_version: θ0's version after the update (orders this step after it: θ0 is the floor).

    Returns:
        Promoted and held scenarios with the decisions (JSON).
    """
    import json

    from longtail.workflow import artifacts as ks
    from longtail.workflow.stages import promote

    out = promote(ks.config(config), list(results), log=print)
    ks.log_metrics(metrics, {"promoted": len(out["promoted"]), "held": len(out["held"]),
                             "theta0_version": theta0_version})
    ks.write_text(report.path, ks.markdown_summary("Promotion (validation rows)", {
        "promoted": out["promoted"], "held": out["held"]}))
    return json.dumps(out)


@dsl.component(base_image=project_image(), install_kfp_package=False)
def package_bento(config: dict, promotion: str, metrics: Output[Metrics], report: Output[HTML]) -> str:
    """Build the serving Bento (`serving.bento.build_bento`: the service with the registry as its
    configuration) and write the workspace's report (`longtail.workflow.stages.write_report`: mean AUC
    per strategy with bootstrap intervals, FLOPs, latency, time per stage, plots, per-scenario
    sections); the report is this step's HTML artifact and its summary numbers its Metrics.

    Args:
        config: the stages' config.
        promotion: the promotion step's output (orders this step after it).

    Returns:
        The package summary (JSON): the Bento tag, the paths of serving.json and the HTML report.
    """
    import json
    import os
    from pathlib import Path

    from longtail.workflow import artifacts as ks
    from longtail.workflow.stages import write_report
    from serving.bento import build_bento

    cfg = ks.config(config)
    out = write_report(cfg, log=print)
    home = os.environ.get("BENTOML_HOME") or str(Path(cfg.workspace) / "bentoml")
    out["bento"] = build_bento(cfg.registry_uri, overrides=[f"fallback_pointer={cfg.fallback_pointer}"],
                               bentoml_home=home)
    out["bentoml_home"] = home
    print(f"bento: {out['bento']} in {home}")
    ks.log_metrics(metrics, {"scenarios": out["scenarios"], "failed": len(out["failed"]), **out["summary"]})
    ks.write_text(report.path, Path(out["report_html"]).read_text())
    return json.dumps(out)
