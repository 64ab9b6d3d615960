"""Online prediction core shared by every front end (BentoML HTTP, gRPC, the offline checks).

Nothing here imports bentoml, grpcio or feast: the fronts in ``serving/`` are thin wrappers that
turn their wire format into :class:`PredictRequest` and call :class:`Predictor`.
"""

from longtail.online.config import ServingConfig, load_serving_config
from longtail.online.errors import NotReadyError, RequestError, ServingError, UnknownScenarioError
from longtail.online.features import FeatureSource, RawFeatureSource
from longtail.online.predictor import Prediction, Predictor, PredictRequest

__all__ = [
    "FeatureSource", "NotReadyError", "PredictRequest", "Prediction", "Predictor", "RawFeatureSource",
    "RequestError", "ServingConfig", "ServingError", "UnknownScenarioError", "load_serving_config",
]
