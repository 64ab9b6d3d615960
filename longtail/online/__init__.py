"""Online prediction core shared by every front end (BentoML HTTP, gRPC, the offline checks).

Nothing here imports bentoml, grpcio or feast: the fronts in ``serving/`` are thin wrappers that
turn their wire format into :class:`PredictRequest` and call :class:`Predictor`. The hot path is
:mod:`longtail.online.encoder` (raw values -> arrays, no pandas) and :mod:`longtail.online.forward`
(one compiled graph per architecture).

The names below are imported on first use, so that ``longtail.online.config`` and
``longtail.online.errors`` load without torch (the service's arbiter process needs only those).
"""

from __future__ import annotations

import importlib
from typing import Any

_NAMES = {
    "ServingConfig": "config", "load_serving_config": "config", "ServingEncoder": "encoder",
    "ModelUnavailableError": "errors", "NotReadyError": "errors", "RequestError": "errors", "ServingError": "errors",
    "UnknownScenarioError": "errors", "FeatureSource": "features", "RawFeatureSource": "features",
    "Prediction": "predictor", "Predictor": "predictor", "PredictRequest": "predictor",
}
__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    if name not in _NAMES:
        raise AttributeError(f"module 'longtail.online' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"longtail.online.{_NAMES[name]}"), name)
    globals()[name] = value
    return value
