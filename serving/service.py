"""The BentoML service: every scenario's promoted model over HTTP (and gRPC on a second port).

A thin wrapper: requests become :class:`longtail.online.PredictRequest` and go to one shared
:class:`longtail.online.Predictor` (registry pointers, hot reload, adaptive batching); errors
become 4xx JSON bodies that name the field. Configuration: ``$LONGTAIL_SERVING_CONFIG`` (YAML) and
``$LONGTAIL_SERVING_SET`` (``key=value;...``), see :class:`longtail.online.ServingConfig`.

Run: ``bentoml serve service:LongtailServing --working-dir serving`` (or ``longtail serve http``).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import bentoml
from pydantic import BaseModel, Field
from starlette.responses import JSONResponse

from longtail.online import (
    Predictor,
    PredictRequest,
    ServingError,
    load_serving_config,
)
from serving.feast_source import feature_source
from serving.grpc_front import serve_grpc

log = logging.getLogger("longtail.online")

PREDICTIONS = bentoml.metrics.Counter(
    name="longtail_predictions_total", documentation="Predictions served, per scenario and model version",
    labelnames=["scenario", "model_name", "model_version", "served_by"])
ERRORS = bentoml.metrics.Counter(
    name="longtail_request_errors_total", documentation="Requests refused (4xx), per error type",
    labelnames=["error"])
LATENCY = bentoml.metrics.Histogram(
    name="longtail_inference_seconds", documentation="Forward-pass time of the batch a prediction was in",
    labelnames=["scenario"], buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0))
BATCH = bentoml.metrics.Histogram(
    name="longtail_batch_size", documentation="Rows per forward pass (adaptive batching)",
    labelnames=[], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
RELOADS = bentoml.metrics.Counter(
    name="longtail_model_reloads_total", documentation="Model version changes picked up without a restart",
    labelnames=["outcome"])


SCENARIO_FIELD = Field(min_length=1, max_length=256, description="the scenario, e.g. a carrier")
BATCH_FIELD = Field(min_length=1, max_length=1024, description="the requests (at most 1024)")


class PredictItem(BaseModel):
    """One prediction request (an item of ``/predict_batch``)."""

    scenario: str = Field(min_length=1, max_length=256, description="the scenario, e.g. a carrier")
    entity: dict[str, str | int | float] | None = Field(
        default=None, description="entity keys: features are read from the online store")
    features: dict[str, Any] | None = Field(default=None, description="raw feature values instead of entity")
    event_timestamp: str | None = Field(default=None, description="prediction time, ISO 8601 (default now)")
    return_features: bool = Field(default=False, description="echo the scored feature values")


def _request(item: PredictItem) -> PredictRequest:
    return PredictRequest(scenario=item.scenario, entity=item.entity, features=item.features,
                          event_timestamp=item.event_timestamp, return_features=item.return_features)


def _refused(e: ServingError) -> JSONResponse:
    return JSONResponse(e.to_dict(), status_code=e.status)


def _observe():
    """Predictor events -> Prometheus metrics (scenario labels only for served scenarios: bounded)."""

    def observer(event: str, data: dict[str, Any]) -> None:
        if event == "prediction":
            scenario = data["scenario"] if not data["fallback"] else "_fallback"
            PREDICTIONS.labels(scenario=scenario, model_name=data["model_name"],
                               model_version=str(data["model_version"]),
                               served_by="fallback" if data["fallback"] else "scenario").inc()
            LATENCY.labels(scenario=scenario).observe(data["seconds"])
        elif event == "batch":
            BATCH.observe(data["size"])
        elif event == "error":
            ERRORS.labels(error=data["error"]).inc()
        elif event == "reload":
            RELOADS.labels(outcome="changed").inc()
        elif event == "reload_error":
            RELOADS.labels(outcome="failed").inc()

    return observer


@bentoml.service(name="longtail_serving", traffic={"timeout": 30, "concurrency": 256}, workers=1)
class LongtailServing:
    """Serves the promoted model of every scenario (light models in production)."""

    def __init__(self) -> None:
        self.config = load_serving_config()
        self.predictor = Predictor(self.config, source=feature_source(self.config), observer=_observe())
        self.grpc_server = None
        # models load in the background: /readyz answers 503 until they are in (liveness stays green)
        threading.Thread(target=self._start, name="longtail-start", daemon=True).start()

    def _start(self) -> None:
        try:
            self.predictor.start()
        except Exception:
            log.exception("could not load the models; the service stays unready")
            return
        if self.config.grpc_port > 0:
            self.grpc_server = serve_grpc(self.predictor, self.config.grpc_host, self.config.grpc_port)

    def __is_ready__(self) -> bool:
        return self.predictor.ready

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        if self.grpc_server is not None:
            self.grpc_server.stop(grace=5).wait()
        self.predictor.close()

    @bentoml.api
    def predict(self, scenario: str = SCENARIO_FIELD,
                entity: dict[str, str | int | float] | None = None, features: dict[str, Any] | None = None,
                event_timestamp: str | None = None, return_features: bool = False) -> dict[str, Any]:
        """Probability for one request: the scenario plus its entity keys or its raw features."""
        try:
            return self.predictor.predict(PredictRequest(scenario, entity, features, event_timestamp,
                                                         return_features)).to_dict()
        except ServingError as e:
            return _refused(e)

    @bentoml.api
    def predict_batch(self, requests: list[PredictItem] = BATCH_FIELD) -> list[dict[str, Any]]:
        """Probabilities for a list of requests (one forward pass per model)."""
        try:
            return [p.to_dict() for p in self.predictor.predict_many([_request(r) for r in requests])]
        except ServingError as e:
            return _refused(e)

    @bentoml.api
    def models(self) -> dict[str, Any]:
        """What serves each scenario, the fallback model and the last reload error."""
        return self.predictor.models()
