"""The agnostic heavy model θ0 on the initial scenarios."""


from kfp import dsl
from kfp.dsl import Markdown, Metrics, Output

from longtail.workflow.config import project_image


@dsl.component(base_image=project_image(), install_kfp_package=False)
def build_agnostic_model(config: dict, scenarios: list[str], data: str, metrics: Output[Metrics],
                         report: Output[Markdown]) -> int:
    """Build θ0 (pre-defined heavy model, or HPO ∥ NAS → the better one) as version 0 of the θ0 store.

    Args:
        config: the stages' config (``theta0: predefined|choose``).
        scenarios: the initial scenarios.
        data: the prepare step's output (orders this step after it).

    Returns:
        θ0's store version.
    """
    from longtail.workflow import artifacts as ks
    from longtail.workflow.stages import build_theta0

    out = build_theta0(ks.config(config), list(scenarios), log=print)
    ks.log_metrics(metrics, {f"auc_{r['scenario']}": r["auc"] for r in out["per_scenario"]})
    ks.write_text(report.path, ks.markdown_summary("θ0 (agnostic heavy model)", out))
    return int(out["version"])
