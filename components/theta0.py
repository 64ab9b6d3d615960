"""Update θ0 from the collected query feedback (Eq. 3)."""


from kfp import dsl
from kfp.dsl import Markdown, Metrics, Output

from longtail.workflow.config import project_image


@dsl.component(base_image=project_image(), install_kfp_package=False)
def update_theta0(config: dict, results: list[str], metrics: Output[Metrics], report: Output[Markdown]) -> int:
    """Apply the onboarded scenarios' feedback to θ0 as one summed, conservative step (Eq. 3).

    Args:
        config: the stages' config.
        results: the onboarding results (JSON strings, collected from the ParallelFor).

    Returns:
        θ0's new version.
    """
    from longtail.workflow import artifacts as ks
    from longtail.workflow.stages import update_theta0 as update

    out = update(ks.config(config), list(results), log=print)
    ks.log_metrics(metrics, {"version": out["version"], "applied": len(out["applied"]),
                             "dropped": len(out["dropped"]), "duplicates": len(out["duplicates"])})
    ks.write_text(report.path, ks.markdown_summary("θ0 update (Eq. 3)", out))
    return int(out["version"])
