"""The floor of the serving benchmark: BentoML services that answer a constant, so that their CPU per request is
the serving stack's own (HTTP, input validation, middlewares, metrics, access log, tracing) and nothing of
longtail's models.

* `Floor`: the API as a plain ``@bentoml.api`` with BentoML's defaults (access log and tracing on): what a
  BentoML service of this API costs before any model runs.
* `FloorRoute`: the route ``serving.service:LongtailServing`` uses for ``POST /predict`` (answered by an ASGI
  middleware after validating with the same input model) with the service's default settings (no access log,
  no spans for the prediction routes): the part of the service's CPU per request that is not the model's.

Run by ``bench/serving.py`` as ``bentoml serve bench.serving_floor:Floor --working-dir .`` from the checkout (or
``FloorRoute``; from the checkout, so that ``serving`` is the service package, not ``bench/serving.py``).
"""

from __future__ import annotations

from typing import Any

import bentoml
from starlette.responses import JSONResponse

from longtail.online.config import ServingConfig
from serving.service import _send_json, bentoml_options, read_predict_input

_ANSWER = {"probability": 0.5, "scenario": "", "model_name": "floor", "model_version": 1, "model_kind": "none",
           "fallback": False, "served_by": "scenario"}


@bentoml.service(name="longtail_floor", traffic={"timeout": 30, "concurrency": 256}, workers="cpu_count")
class Floor:
    """Answers every request with the same body."""

    @bentoml.api
    async def predict(self, scenario: str = "", entity: dict[str, str | int | float] | None = None,
                      features: dict[str, Any] | None = None, event_timestamp: str | None = None,
                      return_features: bool = False) -> dict[str, Any]:
        return JSONResponse({**_ANSWER, "scenario": scenario})


class ConstantRoute:
    """``POST /predict`` answered as `serving.service.ServiceRoutes` answers it, with a constant for the model."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") != "http" or scope.get("path") != "/predict" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        item = await read_predict_input(receive, send)
        if item is not None:
            await _send_json(send, 200, {**_ANSWER, "scenario": item.scenario})


@bentoml.service(name="longtail_floor_route", traffic={"timeout": 30, "concurrency": 256}, workers="cpu_count",
                 **bentoml_options(ServingConfig()))
class FloorRoute:
    """Answers every request with the same body, on the service's own route and settings."""

    @bentoml.api
    async def predict(self, scenario: str = "", entity: dict[str, str | int | float] | None = None,
                      features: dict[str, Any] | None = None, event_timestamp: str | None = None,
                      return_features: bool = False) -> dict[str, Any]:
        return JSONResponse({**_ANSWER, "scenario": scenario})


FloorRoute.add_asgi_middleware(ConstantRoute)
