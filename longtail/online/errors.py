"""Errors of the online path; each front maps them to its own status codes (HTTP 4xx, gRPC codes)."""

from __future__ import annotations


class ServingError(Exception):
    """Base class: a request the service cannot answer with a prediction."""

    status = 400

    def __init__(self, message: str, field: str = ""):
        super().__init__(message)
        self.field = field

    def to_dict(self) -> dict[str, str]:
        return {"error": type(self).__name__, "field": self.field, "message": str(self)}


class RequestError(ServingError):
    """The client sent something invalid; ``field`` names the offending field (dotted path)."""

    status = 400


class UnknownScenarioError(ServingError):
    """No model serves the scenario and the service is configured to refuse (no cold-start fallback)."""

    status = 404


class NotReadyError(ServingError):
    """The models are not loaded yet (the service is starting)."""

    status = 503


class ModelUnavailableError(ServingError):
    """The scenario's promoted model could not be loaded (the scenario is degraded); it is not answered
    by another model. ``field`` is the request's scenario field."""

    status = 503
