"""The model registry: immutable model versions with lineage, and serving pointers per scenario.

Backends: the local filesystem (embedded default) and S3 through boto3 (MinIO in a cluster); see
:mod:`longtail.registry.store` for the storage contract and :mod:`longtail.registry.registry` for the
layout and the concurrency design.
"""

from longtail.registry.errors import (
    ConflictError,
    IntegrityError,
    NotFoundError,
    RegistryError,
    UnsafeModelError,
)
from longtail.registry.registry import (
    FileEntry,
    ModelRegistry,
    ModelVersion,
    ServingIndex,
    ServingState,
    check_weights_only,
    current_code_version,
    lineage,
    open_registry,
)
from longtail.registry.store import LocalStore, ObjectStore, S3Store, open_store

__all__ = [
    "ConflictError", "FileEntry", "IntegrityError", "LocalStore", "ModelRegistry", "ModelVersion",
    "NotFoundError", "ObjectStore", "RegistryError", "S3Store", "ServingIndex", "ServingState", "UnsafeModelError",
    "check_weights_only", "current_code_version", "lineage", "open_registry", "open_store",
]
