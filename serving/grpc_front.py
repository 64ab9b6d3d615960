"""The gRPC front: ``longtail_serving.proto`` served by grpcio over the same Predictor as HTTP.

BentoML 1.4's new-style services serve HTTP only, so the service starts this server on a second
port inside the same process (``grpc_port`` in the serving config); ``longtail serve grpc`` runs it
alone. Only the wire format lives here: validation, features, batching and models are the
predictor's.
"""

from __future__ import annotations

from concurrent import futures
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2

from longtail.online import (
    ModelUnavailableError,
    NotReadyError,
    Predictor,
    PredictRequest,
    ServingError,
    UnknownScenarioError,
)
from serving import longtail_serving_pb2 as pb
from serving import longtail_serving_pb2_grpc as pb_grpc

_CODES = {NotReadyError: grpc.StatusCode.UNAVAILABLE, ModelUnavailableError: grpc.StatusCode.UNAVAILABLE,
          UnknownScenarioError: grpc.StatusCode.NOT_FOUND}


def _ints(v: Any) -> Any:
    """Struct numbers are doubles: give integral ones back as ints (entity keys, category codes)."""
    if isinstance(v, float) and v.is_integer() and abs(v) < 2**53:
        return int(v)
    if isinstance(v, list):
        return [_ints(x) for x in v]
    if isinstance(v, dict):
        return {k: _ints(x) for k, x in v.items()}
    return v


def to_request(msg: pb.PredictRequest) -> PredictRequest:
    """A protobuf request as the predictor's request."""
    entity = _ints(json_format.MessageToDict(msg.entity)) if msg.HasField("entity") else None
    features = _ints(json_format.MessageToDict(msg.features)) if msg.HasField("features") else None
    return PredictRequest(scenario=msg.scenario, entity=entity, features=features,
                          event_timestamp=msg.event_timestamp or None, return_features=msg.return_features)


def to_response(d: dict[str, Any]) -> pb.PredictResponse:
    """A prediction dict (as the HTTP API returns it) as a protobuf response."""
    out = pb.PredictResponse(probability=d["probability"], scenario=d["scenario"], model_name=d["model_name"],
                             model_version=d["model_version"], model_kind=d["model_kind"],
                             fallback=d["fallback"], served_by=d["served_by"])
    if d.get("features") is not None:
        s = struct_pb2.Struct()
        s.update(d["features"])
        out.features.CopyFrom(s)
    return out


def _item(result: Any) -> pb.PredictResponse:
    """One item of a batch: its prediction, or (alone) the error that refused it."""
    if isinstance(result, ServingError):
        return pb.PredictResponse(error=pb.ItemError(error=type(result).__name__, field=result.field,
                                                     message=str(result), status=result.status))
    return to_response(result.to_dict())


class PredictorServicer(pb_grpc.PredictorServicer):
    """Maps the predictor's errors to gRPC status codes (INVALID_ARGUMENT names the field)."""

    def __init__(self, predictor: Predictor):
        self.predictor = predictor

    def _abort(self, context: grpc.ServicerContext, e: ServingError) -> None:
        context.set_trailing_metadata((("longtail-field", e.field),))
        context.abort(_CODES.get(type(e), grpc.StatusCode.INVALID_ARGUMENT), str(e))

    def Predict(self, request, context):  # noqa: N802 (gRPC method name)
        try:
            return to_response(self.predictor.predict(to_request(request)).to_dict())
        except ServingError as e:
            self._abort(context, e)

    def PredictBatch(self, request, context):  # noqa: N802
        try:
            results = self.predictor.predict_many([to_request(r) for r in request.requests])
        except ServingError as e:  # the call itself is invalid (empty, too long) or the service is starting
            self._abort(context, e)
        return pb.PredictBatchResponse(predictions=[_item(r) for r in results])


def serve_grpc(predictor: Predictor, host: str, port: int, max_workers: int = 32) -> grpc.Server:
    """Start a gRPC server on ``host:port`` for ``predictor`` (returns the running server).

    Raises:
        RuntimeError: the port could not be bound.
    """
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="longtail-grpc"),
                         options=[("grpc.max_receive_message_length", 8 * 1024 * 1024)])
    pb_grpc.add_PredictorServicer_to_server(PredictorServicer(predictor), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise RuntimeError(f"gRPC: could not bind {host}:{port}")
    server.start()
    return server
