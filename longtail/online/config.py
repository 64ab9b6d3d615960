"""The serving configuration: one frozen dataclass, defaults -> YAML file -> overrides."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from longtail.config import ConfigError, load_config, parse_overrides


@dataclass(frozen=True)
class ServingConfig:
    """Args:
    registry: the model registry (folder, ``file://`` or ``s3://bucket/prefix``).
    unknown_scenario: ``fallback`` serves a scenario without its own model with the agnostic model
        (cold start) and says so in the response; ``refuse`` answers 404.
    fallback_pointer: the registry serving pointer whose model is the cold-start fallback
        (promote the agnostic model there: ``longtail registry promote _default agnostic 3``).
    scenarios: serve only these scenarios (empty: every scenario that has a serving pointer).
    poll_seconds: how often the registry's serving index is re-read (hot reload, one read per poll whatever
        the number of scenarios); 0 disables it (and the retries of failed loads).
    max_batch_size: adaptive batching: the most rows one forward pass takes.
    max_latency_ms: adaptive batching: how long the batcher waits for more requests after the first; 0 (the
        default) batches only what is already queued, so a request alone is scored at once.
    max_batch_request: the most items one client batch request may hold.
    workers: serving processes (each with its own models and batcher); 0: one per CPU core (cgroup limits
        respected). Applied by ``longtail serve http`` and ``serving.launch.ServiceProcess``.
    forward_backend: how models run: ``auto`` (ONNX Runtime, else TorchScript, else eager; the first whose
        output matches the eager model's on probe inputs), or the backend to start that order from
        (``onnxruntime``, ``torchscript``, ``eager``).
    model_cache_mb: memory bound of the loaded models (their weights and encoder tables, in MB); the least
        recently used model is dropped beyond it and loads again on its next request. The fallback stays.
    preload: after start, load the pointed-to models in a background thread while the cache has room (the
        service is ready before; a request for a model not loaded yet loads it).
    load_threads: threads that load models requested before they are in the cache.
    load_retry_seconds: a version that failed to load is tried again after this long (by the poller).
    start_wait_seconds: a request that reaches a worker still starting (reading the serving index, loading
        the fallback) waits this long for it, then gets 503; with several workers, ``/readyz`` is answered
        by whichever worker is ready first.
    feature_source: ``raw`` (requests carry features; entity requests are refused) or ``feast``.
    feast_repo: Feast repo folder (``feature_store.yaml``) for the ``feast`` source.
    feast_feature_service: the versioned Feast feature service (``<dataset>_v<N>``, as ``feature_repo/``
        defines it) to read; ``{dataset}`` is replaced with the
        model spec's dataset name.
    grpc_port: when > 0, the BentoML service also serves gRPC on this port (same predictor).
    grpc_host: the address the gRPC server binds.
    torch_threads: torch intra-op threads of the serving process (0: torch's default). The light models
        are tiny: one thread per process avoids contention on busy cores; scale out with replicas.
    access_log: BentoML's access log, one line per request (off: at hundreds of requests per second a line
        per request is a large share of the service's CPU; the Prometheus metrics on ``/metrics`` count every
        request, and refused requests are logged as one warning line each either way).
    trace_requests: OpenTelemetry spans for ``/predict`` and ``/predict_batch`` (off: BentoML makes a span per
        request even when no tracing exporter is configured; turn on with an exporter in BentoML's
        ``tracing`` config to see them). The other routes are traced as BentoML does.
    """

    registry: str = "runs/registry"
    unknown_scenario: Literal["fallback", "refuse"] = "fallback"
    fallback_pointer: str = "_default"
    scenarios: tuple[str, ...] = ()
    poll_seconds: float = 10.0
    max_batch_size: int = 64
    max_latency_ms: float = 0.0
    max_batch_request: int = 1024
    workers: int = 0
    forward_backend: Literal["auto", "onnxruntime", "torchscript", "eager"] = "auto"
    model_cache_mb: float = 512.0
    preload: bool = True
    load_threads: int = 1
    load_retry_seconds: float = 60.0
    start_wait_seconds: float = 30.0
    feature_source: Literal["raw", "feast"] = "raw"
    feast_repo: str = "feature_repo"
    feast_feature_service: str = "{dataset}_v1"
    grpc_port: int = 0
    grpc_host: str = "127.0.0.1"
    torch_threads: int = 1
    access_log: bool = False
    trace_requests: bool = False

    def __post_init__(self) -> None:
        if self.unknown_scenario not in ("fallback", "refuse"):
            raise ConfigError(f"unknown_scenario: {self.unknown_scenario!r}; use 'fallback' or 'refuse'")
        if self.feature_source not in ("raw", "feast"):
            raise ConfigError(f"feature_source: {self.feature_source!r}; use 'raw' or 'feast'")
        if self.max_batch_size < 1 or self.max_batch_request < 1:
            raise ConfigError("max_batch_size and max_batch_request must be >= 1")
        if min(self.max_latency_ms, self.poll_seconds, self.load_retry_seconds, self.start_wait_seconds) < 0:
            raise ConfigError("max_latency_ms, poll_seconds, load_retry_seconds and start_wait_seconds must be >= 0")
        if self.forward_backend not in ("auto", "onnxruntime", "torchscript", "eager"):
            raise ConfigError(f"forward_backend: {self.forward_backend!r}; use auto, onnxruntime, torchscript or eager")
        if self.workers < 0 or self.load_threads < 1 or self.model_cache_mb <= 0:
            raise ConfigError("workers must be >= 0 (0: one per core), load_threads >= 1 and model_cache_mb > 0")


ENV_CONFIG = "LONGTAIL_SERVING_CONFIG"  # a YAML file
ENV_SET = "LONGTAIL_SERVING_SET"  # overrides, "key=value" separated by ';'


PATH_KEYS = ("registry", "feast_repo")  # relative values are relative to the caller's directory


def absolute_overrides(pairs: list[str], base: str | Path | None = None) -> list[str]:
    """``key=value`` overrides with the relative paths of `PATH_KEYS` made absolute against ``base``.

    A service runs in a directory of its own (BentoML's working dir), so a relative registry path
    given on the command line must be resolved where the command was typed, before it starts.
    URIs (``s3://...``, ``file://...``) are kept as they are.
    """
    base = Path(base) if base is not None else Path.cwd()
    out = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if sep and key.strip() in PATH_KEYS and value and "://" not in value and not Path(value).is_absolute():
            pair = f"{key}={(base / value).resolve()}"
        out.append(pair)
    return out


def load_serving_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ServingConfig:
    """The effective serving config.

    Args:
        path: a YAML file (default: ``$LONGTAIL_SERVING_CONFIG`` if set).
        overrides: ``key=value`` strings applied last (default: ``$LONGTAIL_SERVING_SET`` split on ``;``;
            ``$LONGTAIL_REGISTRY`` sets ``registry`` below them).

    Returns:
        The config.

    Raises:
        ConfigError: naming the bad key.
    """
    path = path or os.environ.get(ENV_CONFIG) or None
    pairs: list[str] = []
    if os.environ.get("LONGTAIL_REGISTRY"):
        pairs.append(f"registry={os.environ['LONGTAIL_REGISTRY']}")
    if overrides is None:
        overrides = [p for p in os.environ.get(ENV_SET, "").split(";") if p.strip()]
    pairs += overrides
    return load_config(ServingConfig, path, parse_overrides(pairs))
