"""The BentoML service: every scenario's promoted model over HTTP (and gRPC on a second port).

A thin wrapper: requests become :class:`longtail.online.PredictRequest` and go to the worker's
:class:`longtail.online.Predictor` (serving index, lazy loading, hot reload, batching); errors
become 4xx/5xx JSON bodies that name the field. The APIs are ``async``: a request is validated and
encoded in the event loop and awaits its forward pass, so concurrent requests never queue behind
one another. One worker process per CPU core by default (``workers`` in the serving config, applied
by ``longtail serve http``); every worker dies with the serving command. ``POST /predict`` is answered by
`ServiceRoutes` itself (validated with the same input model as the API declares), so a single request does
not pay for BentoML's per-API machinery; BentoML's access log and its OpenTelemetry spans for the prediction
routes are off unless the serving config turns them on (``access_log``, ``trace_requests``). Configuration:
``$LONGTAIL_SERVING_CONFIG`` (YAML) and ``$LONGTAIL_SERVING_SET`` (``key=value;...``), see
:class:`longtail.online.ServingConfig`.

Run: ``longtail serve http`` (or ``bentoml serve serving.service:LongtailServing``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import bentoml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
)
from starlette.responses import JSONResponse

# light imports only: BentoML's arbiter process imports this module too, and needs no torch; the predictor
# (torch, ONNX Runtime), the feature source and the gRPC front are imported by each worker's __init__
from longtail.online.config import load_serving_config
from longtail.online.errors import ServingError
from serving.launch import die_with_parent

log = logging.getLogger("longtail.online")

# read when the module is imported (by BentoML's arbiter and by every worker): the BentoML settings that follow it
SETTINGS = load_serving_config()
PREDICTION_ROUTES = ("/predict", "/predict_batch")


def bentoml_options(settings: Any) -> dict[str, Any]:
    """The ``@bentoml.service`` options that follow the serving config: BentoML's access log (``access_log``)
    and its OpenTelemetry spans for the prediction routes (``trace_requests``)."""
    return {"logging": {"access": {"enabled": settings.access_log}},
            "tracing": {"excluded_urls": [] if settings.trace_requests else list(PREDICTION_ROUTES)}}

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
LOADS = bentoml.metrics.Histogram(
    name="longtail_model_load_seconds", documentation="Time to load a model version (download, verify, compile)",
    labelnames=["forward"], buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0))


SCENARIO_FIELD = Field(min_length=1, max_length=256, description="the scenario, e.g. a carrier")
BATCH_FIELD = Field(min_length=1, max_length=1024, description="the requests (at most 1024)")


# "send exactly one of entity or features", in the OpenAPI schema too: a request with neither (or both) is not
# schema-valid, so a client generated from the schema (or a fuzzer) knows it is refused
EXACTLY_ONE_SOURCE = {"oneOf": [{"required": ["entity"], "properties": {"entity": {"type": "object"}}},
                                {"required": ["features"], "properties": {"features": {"type": "object"}}}]}


class PredictItem(BaseModel):
    """One prediction request (an item of ``/predict_batch``: an item without its source fails alone, in a 200)."""

    scenario: str = SCENARIO_FIELD
    # strict: a JSON true is not an entity key of 1 (the schema says string, integer or number, and means it)
    entity: dict[str, StrictStr | StrictInt | StrictFloat] | None = Field(
        default=None, description="entity keys: features are read from the online store")
    features: dict[str, Any] | None = Field(default=None, description="raw feature values instead of entity")
    event_timestamp: str | None = Field(default=None, description="prediction time, ISO 8601 (default now)")
    return_features: StrictBool = Field(default=False, description="echo the scored feature values (true or false)")


class PredictInput(PredictItem):
    """The body of ``/predict``: one request, with exactly one of ``entity`` and ``features``."""

    model_config = ConfigDict(json_schema_extra=EXACTLY_ONE_SOURCE)

    # a date-time in the schema (a batch item keeps any string: a bad time fails that item alone, in a 200)
    event_timestamp: str | None = Field(default=None, description="prediction time, ISO 8601 (default now)",
                                        json_schema_extra={"format": "date-time", "nullable": True})


def _request(item: PredictItem) -> Any:
    from longtail.online.predictor import PredictRequest

    return PredictRequest(scenario=item.scenario, entity=item.entity, features=item.features,
                          event_timestamp=item.event_timestamp, return_features=item.return_features)


def _log_refused(e: ServingError, path: str) -> None:
    log.warning("%d %s on %s: %s", e.status, type(e).__name__, path, e)


def _refused(e: ServingError, path: str) -> JSONResponse:
    _log_refused(e, path)
    return JSONResponse(e.to_dict(), status_code=e.status)


async def _answer_one(predictor: Any, request: Any) -> tuple[int, dict[str, Any]]:
    """One ``/predict`` request's status and body: its prediction, or the error that refused it (logged as one
    line)."""
    try:
        prediction = await predictor.apredict(request)
    except ServingError as e:
        _log_refused(e, "/predict")
        return e.status, e.to_dict()
    return 200, prediction.to_dict()


def _item(result: Any) -> dict[str, Any]:
    """One entry of a ``/predict_batch`` answer: a prediction, or the error of that item alone."""
    if isinstance(result, ServingError):
        return {**result.to_dict(), "status": result.status}
    return result.to_dict()


def _observe():
    """Predictor events -> Prometheus metrics (scenario labels only for served scenarios: bounded)."""
    children: dict[tuple, tuple[Any, Any]] = {}  # labelled series, looked up once per (scenario, version)

    def observer(event: str, data: dict[str, Any]) -> None:
        if event == "prediction":
            scenario = data["scenario"] if not data["fallback"] else "_fallback"  # unknown names: one series
            key = (scenario, data["model_name"], data["model_version"])
            series = children.get(key)
            if series is None:
                series = children[key] = (
                    PREDICTIONS.labels(scenario=scenario, model_name=data["model_name"],
                                       model_version=str(data["model_version"]),
                                       served_by="fallback" if data["fallback"] else "scenario"),
                    LATENCY.labels(scenario=scenario))
            series[0].inc()
            series[1].observe(data["seconds"])
        elif event == "batch":
            BATCH.observe(data["size"])
        elif event == "error":
            ERRORS.labels(error=data["error"]).inc()
        elif event == "reload":
            RELOADS.labels(outcome="changed").inc()
        elif event == "reload_error":
            RELOADS.labels(outcome="failed").inc()
        elif event == "load":
            LOADS.labels(forward=data["forward"]).observe(data["seconds"])

    return observer


class OneLineClientErrors(logging.Filter):
    """BentoML logs a request its input model rejects (bad JSON, a wrong type: a 400) with the whole traceback;
    a client's mistake is one warning line here, naming what was wrong."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None or not (type(exc).__name__ == "ValidationError" or 400 <= _status(exc) < 500):
            return True
        if hasattr(exc, "errors"):
            first = exc.errors(include_url=False)[0] if exc.error_count() else {}
            where = ".".join(str(x) for x in first.get("loc", ())) or "body"
            what = f"{exc.error_count()} validation error(s); first: {where}: {first.get('msg', '')}"
        else:
            what = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        status = 400 if type(exc).__name__ == "ValidationError" else _status(exc)
        record.msg, record.args = "%d on %s", (status, f"{record.args[0] if record.args else '?'}: {what}")
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def _status(exc: BaseException) -> int:
    code = getattr(exc, "error_code", None)
    return int(getattr(code, "value", code) or 500) if code is not None else 500


def _where(loc: Any) -> str:
    """A pydantic error location as the dotted field path of the service's own errors: requests[0].scenario."""
    out = ""
    for part in loc or ():
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def _request_error(errors: list[Any]) -> dict[str, str]:
    """Pydantic errors (``loc``, ``msg``) as the service's error format: ``error``, ``field`` (the first error's
    dotted path), ``message`` and ``detail`` (every error, one line)."""
    errors = [e for e in errors if isinstance(e, dict)]
    lines = [f"{_where(e.get('loc'))}: {e.get('msg', '')}" for e in errors]
    field = _where(errors[0].get("loc")) if errors else "body"
    message = "; ".join(lines) or "invalid request"
    return {"error": "RequestError", "field": field, "message": message, "detail": message}


def _as_request_error(body: bytes) -> bytes | None:
    """BentoML answers a body its input model rejects with ``detail`` as a list of pydantic errors, which its own
    OpenAPI schema declares a string; the same error in the service's format (see `_request_error`). None for
    any other body."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("detail"), list):
        return None
    return json.dumps(_request_error(data["detail"])).encode()


async def _read_body(receive: Any) -> bytes | None:
    """The whole request body (None if the client went away first)."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def read_predict_input(receive: Any, send: Any) -> PredictInput | None:
    """``POST /predict``'s body validated with `PredictInput`; None when it is refused (a 400 in the service's
    format is sent, logged as one line and counted) or the client went away."""
    body = await _read_body(receive)
    if body is None:
        return None
    try:
        return PredictInput.model_validate_json(body)
    except ValidationError as e:
        refused = _request_error(e.errors(include_url=False, include_context=False, include_input=False))
        log.warning("400 RequestError on /predict: %s", refused["message"])
        ERRORS.labels(error="RequestError").inc()
        await _send_json(send, 400, refused)
        return None


def _json_or_unset(scope: dict) -> bool:
    for key, value in scope.get("headers", ()):
        if key == b"content-type":
            kind = value.split(b";")[0].strip().lower()
            return kind in (b"", b"application/json", b"text/plain") or kind.endswith(b"+json")
    return True


async def _send_json(send: Any, status: int, data: dict, extra: list | None = None, head: bool = False) -> None:
    body = json.dumps(data).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(extra or [])]})
    await send({"type": "http.response.body", "body": b"" if head else body})


def _buffered(send: Any, when: Any, rewrite: Any) -> Any:
    """A ``send`` that holds a response whose start message ``when`` accepts, and sends ``rewrite(body)``
    (or the body unchanged where it returns None) with its length; other responses pass straight through."""
    held: dict[str, Any] = {}

    async def wrapped(message: dict) -> None:
        if message["type"] == "http.response.start" and when(message):
            held["start"], held["body"] = message, b""
            return
        if "start" not in held or message["type"] != "http.response.body":
            await send(message)
            return
        held["body"] += message.get("body", b"")
        if message.get("more_body"):
            return
        body = rewrite(held["body"]) or held["body"]
        headers = [(k, v) for k, v in held["start"].get("headers", []) if k.lower() != b"content-length"]
        await send({**held["start"], "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return wrapped


# what a worker whose service instance is not built yet answers (one whose predictor is still starting answers the
# predictor's own NotReadyError once ``start_wait_seconds`` have passed)
_STARTING = {"error": "NotReadyError", "field": "", "message": "this worker is still starting; retry shortly"}


def _patch_docs(body: bytes, served: dict[str, Any] | None) -> bytes | None:
    """BentoML's OpenAPI document, with: a POST whose body has required fields needs its body; and ``/predict``'s
    ``features`` and ``entity`` described as the served dataset's (``served``, see
    `longtail.online.Predictor.request_schemas`; left as plain objects when None), and no ``entity`` at all where
    the service has no online store. ``/predict_batch`` items keep plain objects: an item whose features are
    wrong fails alone, in a 200."""
    try:
        schema = json.loads(body)
        for route, path in schema.get("paths", {}).items():
            request_body = path.get("post", {}).get("requestBody")
            if not isinstance(request_body, dict):
                continue
            for media in request_body.get("content", {}).values():
                body_schema = media.get("schema", {})
                if body_schema.get("required"):
                    request_body["required"] = True
                if route == "/predict" and served:
                    for name, described in served.items():
                        if name in body_schema.get("properties", {}) and described is not None:
                            body_schema["properties"][name] = {**described, "default": None}
                    if served.get("entity", True) is None:  # no online store here: only features are served
                        body_schema["properties"].pop("entity", None)
                        body_schema["oneOf"] = [b for b in body_schema.get("oneOf", [])
                                                if b.get("required") != ["entity"]]
                        body_schema["not"] = {"required": ["entity"]}
    except (ValueError, AttributeError, TypeError):
        return None
    return json.dumps(schema).encode()


def _patching_docs(send: Any, served: dict[str, Any] | None) -> Any:
    return _buffered(send, lambda m: m.get("status") == 200, lambda body: _patch_docs(body, served))


class ServiceRoutes:
    """ASGI middleware in front of BentoML's app.

    * ``/readyz`` with a JSON body: 200 once the worker's models can answer, with the degraded scenarios (a
      promoted version that failed to load) listed; 503 before; 405 for methods other than GET and HEAD. The
      liveness routes are BentoML's.
    * A 400 from BentoML's input validation is rewritten into the service's error format (see
      `_as_request_error`); other responses pass through untouched (nothing is buffered).
    * A POST whose body is declared as anything but JSON (a form, a multipart body without a boundary) is a 415
      naming the content type to use, before BentoML tries to parse it.
    * ``/docs.json`` says that a POST whose body has required fields needs its body (BentoML's schema leaves
      ``requestBody`` optional, and an empty POST is refused), and describes ``/predict``'s ``features`` and
      ``entity`` as the served dataset's: every key, its type, the steps of a sequence (see `_patch_docs`); a
      worker still starting waits for its fallback model as a request does (then 503), so that every worker
      describes the same API.
    * ``POST /predict`` is answered here: the body is validated with `PredictInput` (the API's own input model,
      so the same requests are refused with the same errors) and goes to the worker's predictor. BentoML's
      outer middlewares (timeout, concurrency limit, HTTP metrics, access log and tracing where on) still
      wrap it; its per-API request and response handling (a large share of a light model's request: the
      floor rows of ``bench/results/serving.md``) does not run. ``/predict_batch`` and every other route are
      BentoML's.
    """

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
        elif scope.get("path") == "/readyz":
            await self._readyz(scope, send)
        elif scope.get("method") == "POST" and not _json_or_unset(scope):
            await _send_json(send, 415, {"error": "UnsupportedMediaType", "field": "content-type",
                                         "message": "send the body as JSON: Content-Type: application/json"})
        elif scope.get("path") == "/predict" and scope.get("method") == "POST":
            await self._predict(receive, send)
        elif scope.get("path") == "/docs.json":
            await self._docs(scope, receive, send)
        else:
            await self.app(scope, receive, self._rewriting_400(send))

    @staticmethod
    async def _readyz(scope: dict, send: Any) -> None:
        method = scope.get("method", "GET")
        if method not in ("GET", "HEAD"):
            await _send_json(send, 405, {"error": "MethodNotAllowed", "field": "method",
                                         "message": f"{method} /readyz: use GET or HEAD"}, [(b"allow", b"GET, HEAD")])
            return
        try:
            health = bentoml.get_current_service().predictor.health()
        except Exception:  # the service instance is not built yet
            health = {"ready": False, "degraded": {}}
        await _send_json(send, 200 if health["ready"] else 503, health, head=method == "HEAD")

    async def _docs(self, scope: dict, receive: Any, send: Any) -> None:
        """The OpenAPI document once this worker can describe the served dataset: a worker still starting waits
        as a request does, then answers 503 (each worker loads its models on its own, so an early answer would
        describe less than the next worker's)."""
        try:
            predictor = bentoml.get_current_service().predictor
        except Exception:  # the worker's service instance is not built yet
            await _send_json(send, 503, _STARTING)
            return
        try:
            served = await predictor.arequest_schemas()
        except ServingError as e:
            await _send_json(send, e.status, e.to_dict())
            return
        await self.app(scope, receive, _patching_docs(send, served))

    @staticmethod
    async def _predict(receive: Any, send: Any) -> None:
        item = await read_predict_input(receive, send)
        if item is None:
            return
        try:
            service = bentoml.get_current_service()
        except Exception:  # the worker's service instance is not built yet
            await _send_json(send, 503, _STARTING)
            return
        try:
            status, body = await _answer_one(service.predictor, _request(item))
        except Exception:  # a bug, not the client's: logged with its traceback, answered as BentoML answers one
            log.exception("POST /predict failed")
            status, body = 500, {"error": "InternalServerError", "field": "",
                                 "message": "an unexpected error has occurred; see the service log"}
        await _send_json(send, status, body)

    @staticmethod
    def _rewriting_400(send: Any) -> Any:
        return _buffered(send, lambda m: m.get("status") == 400, _as_request_error)


@bentoml.service(name="longtail_serving", traffic={"timeout": 30, "concurrency": 256}, workers="cpu_count",
                 **bentoml_options(SETTINGS))
class LongtailServing:
    """Serves the promoted model of every scenario (light models in production)."""

    def __init__(self) -> None:
        die_with_parent()
        logging.getLogger("bentoml._internal.server.http_app").addFilter(OneLineClientErrors())
        from longtail.online.predictor import Predictor, PredictRequest
        from serving.feast_source import feature_source

        self.request = PredictRequest
        self.config = SETTINGS  # read once, when the module was imported
        self.predictor = Predictor(self.config, source=feature_source(self.config), observer=_observe())
        self.grpc_server = None
        # the index and the fallback load in the background: /readyz answers 503 until then (liveness stays green)
        threading.Thread(target=self._start, name="longtail-start", daemon=True).start()

    def _start(self) -> None:
        for attempt in range(1, 10**9):
            try:
                self.predictor.start()
                break
            except Exception as e:  # e.g. the registry is unreachable: stay unready, try again
                log.error("could not start serving (attempt %d): %s: %s; retrying in 5s", attempt,
                          type(e).__name__, e)
                time.sleep(5)
        if self.config.grpc_port > 0:
            from serving.grpc_front import serve_grpc

            self.grpc_server = serve_grpc(self.predictor, self.config.grpc_host, self.config.grpc_port)

    def __is_ready__(self) -> bool:
        return self.predictor.ready

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        if self.grpc_server is not None:
            self.grpc_server.stop(grace=5).wait()
        self.predictor.close()

    @bentoml.api(input_spec=PredictInput)
    async def predict(self, scenario: str = SCENARIO_FIELD,
                      entity: dict[str, str | int | float] | None = None, features: dict[str, Any] | None = None,
                      event_timestamp: str | None = None, return_features: bool = False) -> dict[str, Any]:
        """Probability for one request: the scenario plus its entity keys or its raw features. Over HTTP,
        `ServiceRoutes` answers ``POST /predict`` with the same `_answer_one`; this method gives the API its
        schema and serves in-process callers."""
        status, body = await _answer_one(self.predictor, self.request(scenario, entity, features, event_timestamp,
                                                                      return_features))
        return JSONResponse(body, status_code=status)  # a Response is sent as it is (no per-call output schema)

    @bentoml.api
    async def predict_batch(self, requests: list[PredictItem] = BATCH_FIELD) -> list[dict[str, Any]]:
        """Probabilities for a list of requests (one forward pass per model); an invalid item fails alone:
        its entry is its error (``error``, ``field`` naming ``requests[i]``, ``message``, ``status``)."""
        try:
            results = await self.predictor.apredict_many([_request(r) for r in requests])
        except ServingError as e:
            return _refused(e, "/predict_batch")
        return JSONResponse([_item(r) for r in results])

    @bentoml.api
    async def models(self) -> dict[str, Any]:
        """What serves each scenario (loaded or not, degraded), the fallback model and the cache."""
        return self.predictor.models()


LongtailServing.add_asgi_middleware(ServiceRoutes)
