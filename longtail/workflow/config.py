"""The one frozen config of the pipelines' stages (YAML round trip, defaults → file → --set).

Example:
    >>> cfg = PipelineConfig(tables="data/flights", workspace="runs/pipelines-demo/workspace")
    >>> PipelineConfig.from_dict(cfg.to_dict()) == cfg
    True
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from longtail.config import config_from_dict, config_to_dict
from longtail.meta.finetune import MetaConfig
from longtail.models.heavy import HeavyConfig
from longtail.nas.strategies import LightConfig
from longtail.nas.supernet import SearchConfig
from longtail.train import TrainConfig


def _drop_none(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _drop_none(v) for k, v in d.items() if v is not None}
    if isinstance(d, list):
        return [_drop_none(v) for v in d]
    return d


def _theta0_train() -> TrainConfig:
    return TrainConfig(epochs=3, patience=1)


def _meta() -> MetaConfig:
    return MetaConfig(finetune=TrainConfig(epochs=3, patience=1))


def _light() -> LightConfig:
    # the transfer set is drawn from the initial scenarios' rows (at most max_rows_per_scenario each);
    # Ours is retrained for as many epochs as MeL (retrain_epochs 0) with no learning-rate drops, and
    # runs once per scenario (restarts 1), to keep the demo's onboarding short
    return LightConfig(train=TrainConfig(epochs=3, patience=1), search=SearchConfig(epochs=2), min_steps=60,
                       latency_repeats=20, transfer_rows=4096, retrain_epochs=0, restarts=1, retrain_lr_drops=0)


@dataclass(frozen=True)
class PipelineConfig:
    """Settings of every stage of the bootstrap, onboard and retrain pipelines.

    Args:
        tables: the table set the feature repo's sources point at (folder or ``s3://`` prefix).
        workspace: the folder every stage reads and writes (a shared volume in a cluster).
        registry: model registry URI (default: ``<workspace>/registry``).
        feature_variant: ``local`` (SQLite online store) or ``production`` (Redis, S3 sources).
        service_version: the ``N`` of the feature service ``<dataset>_v<N>``.
        materialize_days: window of the first materialization into the online store.
        split_seed / test_frac / valid_frac: the train/valid/test split per scenario.
        max_rows_per_scenario: cap on a scenario's events (a seeded sample; 0 = all rows). The light
            search is the slow part; the cap keeps a 2-core demo short.
        theta0: ``predefined`` (train the pre-defined heavy model, `train_heavy`) or ``choose``
            (HPO-tuned pre-defined vs NAS heavy, the better kept: ``longtail.agnostic.choose_theta0``).
        model: the heavy architecture (θ0, θu and SinH).
        train: training of θ0 and of the SinH reference (same settings).
        meta: fine-tune of θu, support/query split and θ0's update rule (Eq. 2/3).
        light: MeL and Ours (search, budget, distillation).
        sinh: also train the SinH reference of each onboarded scenario.
        parallelism: scenarios onboarded at once in a ParallelFor.
        fail_scenarios: scenarios whose onboarding raises on purpose (resilience drills and tests).
    """

    tables: str = "data/flights"
    workspace: str = "runs/pipelines-demo/workspace"
    registry: str = ""
    feature_variant: Literal["local", "production"] = "local"
    service_version: int = 1
    materialize_days: float = 2.0
    split_seed: int = 0
    test_frac: float = 0.2
    valid_frac: float = 0.1
    max_rows_per_scenario: int = 2000
    theta0: Literal["predefined", "choose"] = "predefined"
    model: HeavyConfig = field(default_factory=HeavyConfig)
    train: TrainConfig = field(default_factory=_theta0_train)
    meta: MetaConfig = field(default_factory=_meta)
    light: LightConfig = field(default_factory=_light)
    sinh: bool = True
    parallelism: int = 2
    fail_scenarios: tuple[str, ...] = ()

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
        parallelism: scenarios onboarded at once (the ParallelFor limit).
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
    parallelism: int = 4
    image: str = ""

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClusterConfig:
        return config_from_dict(cls, dict(d), "cluster config")


@dataclass(frozen=True)
class PipelinesJobConfig:
    """The ``longtail pipelines`` config file: the stages' settings and the cluster placement."""

    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
