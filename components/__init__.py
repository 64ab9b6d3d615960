"""KFP v2 lightweight components: each is a typed signature, a docstring and one call into
`longtail.workflow.stages`; each logs KFP ``Metrics`` and writes a Markdown or HTML report.

Their ``base_image`` is the project's image (``Dockerfile`` at the root), tagged with the package
version (`longtail.workflow.config.project_image`); the image holds kfp, so no package is
installed at run time (``install_kfp_package=False``).
"""

from components.agnostic import build_agnostic_model
from components.drift import check_drift
from components.features import materialize_features, prepare_data
from components.onboard import onboard_scenario, retrain_scenario
from components.package import package_bento, promote_models
from components.theta0 import update_theta0

__all__ = ["build_agnostic_model", "check_drift", "materialize_features", "onboard_scenario", "package_bento",
           "prepare_data", "promote_models", "retrain_scenario", "update_theta0"]
