"""Drift of features and predictions per scenario (Evidently), feeding the retrain pipeline."""

from monitoring.check import DriftConfig, ScenarioVerdict, check_scenario, drift_features, run_drift
from monitoring.job import DriftJobConfig, registry_scorer, run_drift_job

__all__ = ["DriftConfig", "DriftJobConfig", "ScenarioVerdict", "check_scenario", "drift_features",
           "registry_scorer", "run_drift", "run_drift_job"]
