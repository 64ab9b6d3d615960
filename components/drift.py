"""The retrain pipeline's drift gate."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Markdown, Metrics, Output

from longtail.workflow.config import project_image


@dsl.component(base_image=project_image(), install_kfp_package=False)
def check_drift(config: dict, verdict: str, scenarios: list[str], metrics: Output[Metrics],
                report: Output[Markdown]) -> NamedTuple("Drift", [("drifted", list[str]), ("tag", str)]):
    """The scenarios a drift verdict marks drifted, and the onboarding tag of their rebuild.

    Args:
        config: the stages' config.
        verdict: path of the drift verdict JSON ``{"<scenario>": {"drifted": bool, ...}}``.
        scenarios: restrict to these (empty: all in the verdict).

    Returns:
        ``drifted`` scenarios and the ``tag`` (same verdict, same tag: a rerun redoes nothing).
    """
    from collections import namedtuple

    from longtail.workflow import artifacts as ks
    from longtail.workflow.stages import drift_gate, retrain_tag

    drifted = drift_gate(ks.config(config), verdict, list(scenarios) or None)
    tag = retrain_tag(verdict)
    ks.log_metrics(metrics, {"drifted": len(drifted)})
    ks.write_text(report.path, ks.markdown_summary("Drift gate", {"drifted": drifted, "tag": tag}))
    return namedtuple("Drift", ["drifted", "tag"])(drifted, tag)
