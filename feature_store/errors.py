"""Errors of the feature layer (importable without feast)."""


class FeatureStoreError(ValueError):
    """A feature repo or its settings are unusable; the message names the field and the fix."""
