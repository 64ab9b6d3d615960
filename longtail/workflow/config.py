"""The one frozen config of the pipelines' stages (YAML round trip, defaults → file → --set).

Example:
    >>> cfg = PipelineConfig(tables="data/flights", workspace="runs/pipelines/workspace")
    >>> PipelineConfig.from_dict(cfg.to_dict()) == cfg
    True
    >>> PipelineConfig.from_dict({"recipe": {"preset": "paper"}}).recipe.light.transfer.rows
    0
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from longtail.agnostic import HPOCandidateConfig
from longtail.config import config_from_dict, config_to_dict
from longtail.nas.heavy import HeavySearchConfig
from longtail.onboarding.recipe import Recipe


def _drop_none(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _drop_none(v) for k, v in d.items() if v is not None}
    if isinstance(d, list):
        return [_drop_none(v) for v in d]
    return d


@dataclass(frozen=True)
class Theta0ChoiceConfig:
    """How ``theta0: choose`` builds and picks θ0 (`longtail.agnostic.choose_theta0`).

    Args:
        candidates: which candidates to build (``hpo``: the recipe's heavy model tuned by an HPO job;
            ``nas``: a heavy encoder found by NAS); one of them skips the choice.
        hpo: the HPO job behind the ``hpo`` candidate (space, algorithm, trials, time).
        nas: the heavy-model search behind the ``nas`` candidate.
    """

    candidates: tuple[str, ...] = ("hpo", "nas")
    hpo: HPOCandidateConfig = field(default_factory=HPOCandidateConfig)
    nas: HeavySearchConfig = field(default_factory=HeavySearchConfig)


@dataclass(frozen=True)
class PromotionConfig:
    """Champion/challenger promotion of a scenario's new light model (on its VALID rows).

    Args:
        min_gain: the challenger must score more than the serving model (or, for a scenario nothing
            serves yet, more than θ0 at the fallback pointer) plus this.
    """

    min_gain: float = 0.0


# references computed over every scenario when the report is written (not by an onboarding)
REPORT_REFERENCES = ("LightGBM",)


@dataclass(frozen=True)
class PipelineConfig:
    """Settings of every stage of the bootstrap, onboard and retrain pipelines.

    The defaults are what a cluster run uses (every row, the default recipe, no reference model);
    the demo's caps and short epochs live in ``configs/demo.yaml``.

    Args:
        tables: the table set the feature repo's sources point at (folder or ``s3://`` prefix).
        workspace: the folder every stage reads and writes (a shared volume in a cluster).
        registry: model registry URI (default: ``<workspace>/registry``).
        feature_variant: ``local`` (SQLite online store) or ``production`` (Redis, S3 sources).
        service_version: the ``N`` of the feature service ``<dataset>_v<N>``.
        materialize_days: window of the first materialization into the online store.
        split_seed / test_frac / valid_frac: the train/valid/test split per scenario.
        max_rows_per_scenario: cap on a scenario's events (a seeded sample; 0 = all rows).
        theta0: ``predefined`` (train the recipe's heavy model) or ``choose`` (HPO-tuned pre-defined
            vs NAS heavy, the better on VALID rows kept, ``theta0_choice``).
        theta0_choice: the HPO and NAS settings of ``theta0: choose``.
        recipe: every onboarding setting (`longtail.onboarding.Recipe`: a named preset, overridable).
        references: reference models trained for the report only: ``MeL`` and ``SinH`` by each
            onboarding, ``LightGBM`` (one LightGBM over every scenario, the scenario as a feature,
            `longtail.baselines.lightgbm_global`) when the report is written; a production run needs none.
        promotion: champion/challenger promotion of the light models.
        fallback_pointer: the serving pointer of θ0, which answers scenarios without a model of their
            own (the serving config's ``fallback_pointer``).
        parallelism: scenarios onboarded at once (the ``ParallelFor`` limit).
    """

    tables: str = ""
    workspace: str = "runs/pipelines/workspace"
    registry: str = ""
    feature_variant: Literal["local", "production"] = "local"
    service_version: int = 1
    materialize_days: float = 2.0
    split_seed: int = 0
    test_frac: float = 0.2
    valid_frac: float = 0.1
    max_rows_per_scenario: int = 0
    theta0: Literal["predefined", "choose"] = "predefined"
    theta0_choice: Theta0ChoiceConfig = field(default_factory=Theta0ChoiceConfig)
    recipe: Recipe = field(default_factory=Recipe)
    references: tuple[str, ...] = ()
    promotion: PromotionConfig = field(default_factory=PromotionConfig)
    fallback_pointer: str = "_default"
    parallelism: int = 4

    def __post_init__(self) -> None:
        from longtail.onboarding import REFERENCES

        bad = sorted(set(self.references) - set(REFERENCES) - set(REPORT_REFERENCES))
        if bad:
            raise ValueError(f"references {bad}: use any of {[*REFERENCES, *REPORT_REFERENCES]}")
        if self.max_rows_per_scenario < 0:
            raise ValueError(f"max_rows_per_scenario is {self.max_rows_per_scenario}; use 0 (every row) or more")
        if self.parallelism < 1:
            raise ValueError(f"parallelism is {self.parallelism}; use 1 or more")
        if not 0 < self.test_frac < 1 or not 0 <= self.valid_frac < 1:
            raise ValueError(f"test_frac {self.test_frac} must be in (0, 1) and valid_frac {self.valid_frac} in [0, 1)")

    @property
    def registry_uri(self) -> str:
        return self.registry or f"{self.workspace.rstrip('/')}/registry"

    def to_dict(self) -> dict[str, Any]:
        """A YAML/JSON-safe dict; ``None`` values are left out (KFP parameters cannot hold null), so
        they read back as the field's default."""
        return _drop_none(config_to_dict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PipelineConfig:
        return config_from_dict(cls, dict(d), "pipeline config")

    def replace(self, **changes: Any) -> PipelineConfig:
        return dataclasses.replace(self, **changes)


IMAGE_REPOSITORY = "ghcr.io/longtail-ml/longtail"


def project_image(repository: str = IMAGE_REPOSITORY) -> str:
    """The project's container image, tagged with the package version (never ``latest``).

    ``$LONGTAIL_IMAGE`` overrides the whole reference (a private registry or a pinned digest).
    """
    import os

    from longtail import __version__

    return os.environ.get("LONGTAIL_IMAGE") or f"{repository}:{__version__}"


@dataclass(frozen=True)
class ClusterConfig:
    """How the compiled pipelines run on Kubernetes (kfp-kubernetes), all configurable.

    Training tasks (θ0, onboarding) go to the GPU node pool; every task gets the S3 credentials
    from a Kubernetes Secret, retries and caching.

    Args:
        node_selector_key / node_selector_value: the GPU node pool's label.
        toleration_key / toleration_operator / toleration_value / toleration_effect: the taint of
            the GPU nodes that training tasks tolerate.
        accelerator_type: the Kubernetes resource name of the accelerator (``nvidia.com/gpu``).
        accelerator_limit: accelerators per training task (0: no accelerator request).
        cpu_request / memory_request: requests of training tasks; ``light_*`` for the others.
        cpu_limit / memory_limit: limits of training tasks ("" = none).
        s3_secret: the Secret holding the S3 credentials (``""``: none).
        s3_secret_keys: env var -> key in the Secret.
        retries: retries of every task.
        caching: KFP caching of deterministic tasks (onboarding is never cached by KFP: the stage
            keeps its own per-scenario results, so a failed scenario is redone and a finished
            one is not).
        image: the component image (default: `project_image`).
    """

    node_selector_key: str = "cloud.google.com/gke-nodepool"
    node_selector_value: str = "gpu-pool"
    toleration_key: str = "nvidia.com/gpu"
    toleration_operator: str = "Exists"
    toleration_value: str = ""
    toleration_effect: str = "NoSchedule"
    accelerator_type: str = "nvidia.com/gpu"
    accelerator_limit: int = 1
    cpu_request: str = "4"
    memory_request: str = "16G"
    cpu_limit: str = ""
    memory_limit: str = ""
    light_cpu_request: str = "1"
    light_memory_request: str = "4G"
    s3_secret: str = "longtail-s3"
    s3_secret_keys: dict[str, str] = field(default_factory=lambda: {
        "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
        "AWS_ENDPOINT_URL": "AWS_ENDPOINT_URL"})
    retries: int = 2
    caching: bool = True
    image: str = ""

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClusterConfig:
        return config_from_dict(cls, dict(d), "cluster config")


@dataclass(frozen=True)
class DemoConfig:
    """Which scenarios `longtail pipelines demo` runs through the pipelines.

    Args:
        scenarios: how many scenarios the demo runs: those with the most labelled events (0: every
            scenario of the table set).
        initial: how many of them bootstrap θ0, drawn at random with the recipe's meta seed (the
            paper's protocol); the others arrive later and go through the onboard pipeline.
    """

    scenarios: int = 0
    initial: int = 8

    def __post_init__(self) -> None:
        if self.scenarios < 0 or self.initial < 1:
            raise ValueError(f"demo: scenarios {self.scenarios} (0 or more) and initial {self.initial} (1 or more)")
        if self.scenarios and self.initial >= self.scenarios:
            raise ValueError(f"demo: initial {self.initial} leaves none of the {self.scenarios} scenarios to arrive later")

    def choose(self, events_per_scenario: dict[str, int]) -> list[str]:
        """The scenarios the demo runs, sorted by name."""
        ranked = sorted(events_per_scenario, key=lambda s: (-events_per_scenario[s], s))
        return sorted(ranked[: self.scenarios] if self.scenarios else ranked)


@dataclass(frozen=True)
class PipelinesJobConfig:
    """The ``longtail pipelines`` config file: the stages' settings, the cluster placement and what
    the demo runs."""

    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
