"""The registry's errors: one base class, so a caller can catch everything the registry raises."""

from __future__ import annotations


class RegistryError(Exception):
    """Base class of every error raised by the storage backends and the model registry."""


class NotFoundError(RegistryError, LookupError):
    """A key, a model, a version or a serving pointer does not exist."""


class ConflictError(RegistryError):
    """A conditional write lost: the key already exists, or its current value is not the expected one."""


class IntegrityError(RegistryError):
    """A stored file does not match the checksum or size its version's manifest records."""


class UnsafeModelError(RegistryError):
    """A weights file is not a plain state dict (it would need unpickling arbitrary objects)."""
