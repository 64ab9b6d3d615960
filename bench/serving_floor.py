"""The floor of the serving benchmark: a BentoML service with the same API, settings and request body as
``serving.service:LongtailServing`` that answers a constant, so its CPU per request is BentoML's own
(HTTP, input validation, middlewares, metrics, access log) and nothing of longtail's.

Run by ``bench/serving.py`` as ``bentoml serve serving_floor:Floor --working-dir bench``.
"""

from __future__ import annotations

from typing import Any

import bentoml
from starlette.responses import JSONResponse

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
