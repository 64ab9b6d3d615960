"""The predictor every front end shares: models per scenario from the registry, loaded lazily, hot reload, batching.

* **Which model**: the registry's serving index (one read, :meth:`ModelRegistry.serving_index`) names
  the ``(name, version)`` of every scenario; the pointer ``config.fallback_pointer`` names the
  cold-start model (the agnostic θ0) that serves a scenario without a pointer when
  ``unknown_scenario: fallback`` (the response says so), or the request is refused (404) with
  ``refuse``.
* **Lazy loading, bounded by memory**: ``/readyz`` turns ready once the index is read and the
  fallback model is loaded; every other model loads on its first request (the request waits for it),
  and, with ``preload``, in a background thread after start, while the cache has room. Loaded models
  sit in an LRU cache bounded by ``model_cache_mb`` (the bytes of their weights and encoder tables);
  the least recently used one is dropped when a load needs room, and loads again when asked for.
  A model is loaded completely (downloaded, verified, its encoder and forward compiled and checked)
  before any request sees it.
* **Degraded scenarios**: a scenario whose promoted version cannot be loaded (corrupt weights, a
  missing file) is answered ``503 ModelUnavailableError`` naming it, never silently by the fallback
  model; `health` and `models` list it with the error. Its load is retried every
  ``load_retry_seconds``.
* **Hot reload**: a background thread reads the index every ``poll_seconds``. A scenario whose
  pointer changed while its old version is loaded keeps being served by the old version until the
  new one is loaded, then one reference swap moves it (a failed load keeps the old version serving,
  reported as degraded); requests in flight finish on the version they resolved, none is dropped.
* **Batching without waiting**: requests are validated and encoded where they arrive (the compiled
  :class:`~longtail.online.encoder.ServingEncoder`, no pandas), then batched with what is already
  waiting (up to ``max_batch_size`` rows; with ``max_latency_ms`` > 0 the batch also waits that long
  for more) and scored by one compiled forward pass per model. Alone, a request is scored at once;
  under load the batches grow. The async API (HTTP) batches in its event loop, behind the requests
  the loop has already read; the sync API (gRPC threads) through one batcher thread.

Example::

    pred = Predictor(ServingConfig(registry="runs/registry")).start()
    p = pred.predict(PredictRequest(scenario="AA", features={...}, event_timestamp="2013-05-01T10:00Z"))
    p.probability, p.model_name, p.model_version, p.fallback
    pred.close()
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from longtail.data.transforms import FittedTransforms
from longtail.online.config import ServingConfig
from longtail.online.encoder import EncodedRow, ServingEncoder, parse_time_ns
from longtail.online.errors import (
    ModelUnavailableError,
    NotReadyError,
    RequestError,
    ServingError,
    UnknownScenarioError,
)
from longtail.online.features import FeatureSource, RawFeatureSource, check_entity
from longtail.online.forward import Forward, GraphCache
from longtail.online.rows import build_row, jsonable_row, spec_error_to_request
from longtail.registry import ModelRegistry, open_registry
from longtail.spec import SpecError

log = logging.getLogger("longtail.online")

Ref = tuple[str, int]


@dataclass(frozen=True)
class ModelSlot:
    """One loaded model version (immutable; replaced as a whole on reload).

    Attributes:
        encoder: the compiled serving encoder of its transforms.
        forward: its compiled forward pass (``forward.backend`` says which).
        transforms: its saved transforms (the spec; the prepared-row path of ``return_features``).
        nbytes: what it holds in the cache (weights and encoder tables).
    """

    name: str
    version: int
    kind: str
    encoder: ServingEncoder
    forward: Forward
    transforms: FittedTransforms
    loaded_at: float
    load_seconds: float
    nbytes: int

    @property
    def ref(self) -> Ref:
        return (self.name, self.version)

    def describe(self) -> dict[str, Any]:
        return {"model_name": self.name, "model_version": self.version, "model_kind": self.kind,
                "forward": self.forward.backend, "state": "loaded"}


@dataclass(frozen=True)
class PredictRequest:
    """One prediction request.

    Args:
        scenario: the scenario (e.g. a carrier).
        entity: entity keys; the features are then read from the feature source (online store).
        features: the raw feature values (profile values, lists for sequence fields) instead.
        event_timestamp: the prediction time (ISO 8601; default: now).
        return_features: echo the feature values that were scored (for debugging and parity checks).
    """

    scenario: str
    entity: Mapping[str, Any] | None = None
    features: Mapping[str, Any] | None = None
    event_timestamp: Any = None
    return_features: bool = False


@dataclass(frozen=True)
class Prediction:
    """A prediction and where it came from."""

    probability: float
    scenario: str
    model_name: str
    model_version: int
    model_kind: str
    fallback: bool
    features: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"probability": self.probability, "scenario": self.scenario, "model_name": self.model_name,
               "model_version": self.model_version, "model_kind": self.model_kind, "fallback": self.fallback,
               "served_by": "fallback" if self.fallback else "scenario"}
        if self.features is not None:
            out["features"] = self.features
        return out


@dataclass
class _Prepared:
    slot: ModelSlot
    scenario: str
    fallback: bool
    row: EncodedRow
    features: dict[str, Any] | None


@dataclass
class _Job:
    items: list[_Prepared]
    future: Future = field(default_factory=Future)


@dataclass
class _Failure:
    error: str
    at: float


Observer = Callable[[str, dict[str, Any]], None]


class Predictor:
    """Serves the promoted model of every scenario (see the module docstring).

    Args:
        config: the serving config.
        registry: an open registry (default: ``open_registry(config.registry)``).
        source: where entity requests' features come from (default: none, raw features only).
        observer: called as ``observer(event, data)`` for ``prediction``, ``error``, ``batch``, ``reload``,
            ``reload_error`` and ``load`` events (the service turns them into Prometheus metrics); must not raise.
    """

    def __init__(self, config: ServingConfig, registry: ModelRegistry | None = None,
                 source: FeatureSource | None = None, observer: Observer | None = None):
        self.config = config
        self.registry = registry or open_registry(config.registry)
        self.source: FeatureSource = source or RawFeatureSource()
        self.observer = observer or (lambda event, data: None)
        self.graphs = GraphCache(config.forward_backend, threads=max(1, config.torch_threads))
        self._wanted: dict[str, Ref] = {}  # what the registry says serves each scenario
        self._serving: dict[str, Ref] = {}  # what serves it now (lags `_wanted` while a new version loads)
        self._fallback_wanted: Ref | None = None  # what the fallback pointer names
        self._fallback_ref: Ref | None = None  # what answers unknown scenarios now
        self._loaded: OrderedDict[Ref, ModelSlot] = OrderedDict()  # LRU order: least recently used first
        self._bytes = 0
        self._loading: dict[Ref, Future] = {}
        self._failed: dict[Ref, _Failure] = {}
        self._lock = threading.RLock()
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()  # the batcher thread's (sync callers)
        self._loop_batches: dict[asyncio.AbstractEventLoop, list] = {}  # each event loop's waiting requests
        self._threads: list[threading.Thread] = []
        self._loader: ThreadPoolExecutor | None = None
        self.last_reload_error: str | None = None
        self.index_source = ""

    # ------------------------------------------------------------------ lifecycle
    def start(self, *, background: bool = True) -> Predictor:
        """Read the serving index and load the fallback model; then start the batcher, the poller and the
        background preload.

        Args:
            background: start the threads (False: `predict` runs unbatched and models load in the caller).
        """
        if self.config.torch_threads > 0:
            torch.set_num_threads(self.config.torch_threads)
        if background and self._loader is None:
            self._loader = ThreadPoolExecutor(max(1, self.config.load_threads), thread_name_prefix="longtail-load")
        self.refresh()  # raises if the registry cannot be read: the caller may try again
        self._ready.set()
        if background:
            self._spawn(self._batch_loop, "longtail-batcher")
            if self.config.poll_seconds > 0:
                self._spawn(self._poll_loop, "longtail-reloader")
            if self.config.preload:
                self._spawn(self._preload, "longtail-preload")
        return self

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def close(self) -> None:
        """Stop the threads (queued requests are answered first)."""
        self._stop.set()
        self._queue.put(None)
        for t in self._threads:
            t.join(timeout=10)
        self._threads.clear()
        if self._loader is not None:
            self._loader.shutdown(wait=False, cancel_futures=True)

    @property
    def ready(self) -> bool:
        """True once the serving index is read and the fallback model is loaded (or failed to load)."""
        return self._ready.is_set()

    # ------------------------------------------------------------------ the registry's pointers
    def refresh(self) -> list[str]:
        """Read the serving index once and follow its changes (see "Hot reload" in the module docstring).

        Returns:
            The scenarios (and ``fallback_pointer``) whose pointer changed.
        """
        index = self.registry.serving_index()
        self.index_source = index.source
        only = set(self.config.scenarios)
        wanted = {s: tuple(r) for s, r in index.pointers.items()
                  if s != self.config.fallback_pointer and (not only or s in only)}
        fallback = index.pointers.get(self.config.fallback_pointer)
        fallback = tuple(fallback) if fallback else None
        changed, reload = [], []
        with self._lock:
            for scenario in set(self._wanted) - set(wanted):
                self._wanted.pop(scenario)
                self._serving.pop(scenario, None)
                changed.append(scenario)
            for scenario, ref in wanted.items():
                if self._wanted.get(scenario) == ref:
                    continue
                self._wanted[scenario] = ref
                changed.append(scenario)
                old = self._serving.get(scenario)
                if old is not None and old in self._loaded and ref not in self._loaded:
                    reload.append(ref)  # the old version serves until the new one is in (see _run_load)
                else:
                    self._serving[scenario] = ref
            if fallback != self._fallback_wanted:
                changed.append(self.config.fallback_pointer)
                self._fallback_wanted = fallback
        if fallback is None:
            self._fallback_ref = None
        elif (fallback != self._fallback_ref or fallback not in self._loaded) and self._due(fallback):
            slot = self._load_now(fallback)  # the fallback is pinned: loaded before it answers
            if slot is not None or self._fallback_ref is None:
                self._fallback_ref = fallback
        for ref in reload:
            self._load_async(ref)
        with self._lock:
            due = {ref for ref in self._wanted.values() if ref in self._failed and self._due(ref)}
        for ref in sorted(due):
            self._load_async(ref)
        if changed:
            self.observer("reload", {"changed": changed})
            log.info("serving pointers changed: %s", changed if len(changed) <= 20 else f"{len(changed)} scenarios")
        return changed

    def _due(self, ref: Ref) -> bool:
        """Whether ``ref`` may be loaded now: never failed, or its last failure is ``load_retry_seconds`` old."""
        failure = self._failed.get(ref)
        return failure is None or time.time() - failure.at >= self.config.load_retry_seconds

    # ------------------------------------------------------------------ loading
    def _load_async(self, ref: Ref) -> Future:
        """The future of ``ref``'s slot (None if it failed); one load per version however many ask."""
        with self._lock:
            slot = self._loaded.get(ref)
            if slot is not None:
                done: Future = Future()
                done.set_result(slot)
                return done
            future = self._loading.get(ref)
            if future is not None:
                return future
            future = Future()
            self._loading[ref] = future
        if self._loader is None:
            self._run_load(ref, future)
        else:
            self._loader.submit(self._run_load, ref, future)
        return future

    def _load_now(self, ref: Ref) -> ModelSlot | None:
        """Load ``ref`` in this thread (or wait for the load already running)."""
        with self._lock:
            if ref in self._loaded:
                return self._loaded[ref]
            future = self._loading.get(ref)
            mine = future is None
            if mine:
                future = Future()
                self._loading[ref] = future
        if mine:
            self._run_load(ref, future)
        return future.result()

    def _run_load(self, ref: Ref, future: Future) -> None:
        try:
            slot = self._build_slot(ref)
        except Exception as e:  # a broken version never takes the service down
            error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            with self._lock:
                self._failed[ref] = _Failure(error, time.time())
                self._loading.pop(ref, None)
            self.last_reload_error = f"{ref[0]} v{ref[1]}: {error}"
            log.error("could not load %s v%s: %s", ref[0], ref[1], error)
            self.observer("reload_error", {"model": f"{ref[0]} v{ref[1]}", "error": error})
            future.set_result(None)
            return
        with self._lock:
            self._failed.pop(ref, None)
            self._loaded[ref] = slot
            self._bytes += slot.nbytes
            self._evict(keep=ref)
            self._loading.pop(ref, None)
            for scenario, wanted in self._wanted.items():  # a new version waiting for its load serves now
                if wanted == ref:
                    self._serving[scenario] = ref
        self.observer("load", {"model": f"{ref[0]} v{ref[1]}", "seconds": slot.load_seconds,
                               "forward": slot.forward.backend})
        future.set_result(slot)

    def _build_slot(self, ref: Ref) -> ModelSlot:
        t0 = time.perf_counter()
        name, version = ref
        kind = self.registry.get(name, version).kind
        model, transforms, info = self.registry.load(name, version)
        model.eval()
        encoder = ServingEncoder(transforms)
        forward = self.graphs.compile(model, encoder, info)
        seconds = time.perf_counter() - t0
        return ModelSlot(name, int(version), kind, encoder, forward, transforms, time.time(), seconds,
                         forward.nbytes + encoder.nbytes)

    def _evict(self, keep: Ref) -> None:
        """Drop least recently used models until the cache fits its budget (never ``keep`` or the fallback).
        Called under the lock."""
        budget = self.config.model_cache_mb * 1e6
        for ref in list(self._loaded):
            if self._bytes <= budget:
                return
            if ref not in (keep, self._fallback_ref, self._fallback_wanted):
                self._bytes -= self._loaded.pop(ref).nbytes

    def _preload(self) -> None:
        """Load the pointed-to models in the background after start, while the cache has room."""
        budget = self.config.model_cache_mb * 1e6
        for scenario in sorted(self._wanted):
            if self._stop.is_set():
                return
            with self._lock:
                ref = self._serving.get(scenario)
                if ref is None or ref in self._loaded or ref in self._failed:
                    continue
                if self._loaded and self._bytes + self._bytes / len(self._loaded) > budget:
                    return  # the next one would not fit: stop; requests load the rest on demand
            self._load_now(ref)

    # ------------------------------------------------------------------ resolving a scenario
    def _not_ready(self) -> NotReadyError:
        return NotReadyError(f"this worker is still starting (reading the serving index, loading the fallback "
                             f"model) after {self.config.start_wait_seconds:g}s; retry shortly", field="")

    def _wait_ready(self) -> None:
        if not self._ready.wait(self.config.start_wait_seconds):
            raise self._not_ready()

    async def _await_ready(self) -> None:
        deadline = time.monotonic() + self.config.start_wait_seconds
        while not self._ready.is_set():
            if time.monotonic() >= deadline:
                raise self._not_ready()
            await asyncio.sleep(0.02)

    def _lookup(self, scenario: Any, field: str) -> tuple[ModelSlot | Ref, bool]:
        """The loaded slot serving ``scenario`` (touched in the LRU), or the ref to load; and whether it is
        the fallback."""
        if not isinstance(scenario, str) or not scenario.strip() or len(scenario) > 256:
            raise RequestError(f"'{field}' must be a non-empty string (at most 256 characters)", field=field)
        with self._lock:
            ref = self._serving.get(scenario)
            fallback = ref is None
            if fallback:
                if self.config.unknown_scenario == "refuse":
                    raise UnknownScenarioError(
                        f"'{field}': no model serves scenario {scenario!r} and this service refuses unknown "
                        f"scenarios (unknown_scenario: refuse); {len(self._serving)} scenarios have a model",
                        field=field)
                ref = self._fallback_ref
                if ref is None:
                    raise UnknownScenarioError(f"'{field}': no model serves scenario {scenario!r} and no fallback "
                                               f"model is promoted at pointer {self.config.fallback_pointer!r}",
                                               field=field)
            slot = self._loaded.get(ref)
            if slot is not None:
                self._loaded.move_to_end(ref)
                return slot, fallback
            failure = self._failed.get(ref)
        if failure is not None:
            raise self._unavailable(scenario, ref, failure, field, fallback)
        return ref, fallback

    def _unavailable(self, scenario: str, ref: Ref, failure: _Failure, field: str, fallback: bool
                     ) -> ModelUnavailableError:
        whose = f"the fallback model (pointer {self.config.fallback_pointer!r})" if fallback else \
            f"the promoted model of scenario {scenario!r}"
        retry = (f"the load is retried every {self.config.load_retry_seconds:g}s" if self.config.poll_seconds > 0
                 else "restart the service to retry (poll_seconds: 0)")
        return ModelUnavailableError(
            f"'{field}': {whose}, {ref[0]} v{ref[1]}, could not be loaded ({failure.error}); it is not answered by "
            f"another model. Promote a good version or roll back; {retry}", field=field)

    def _loaded_or_raise(self, scenario: str, ref: Ref, slot: ModelSlot | None, field: str,
                         fallback: bool) -> ModelSlot:
        if slot is None:
            failure = self._failed.get(ref) or _Failure("the load failed", time.time())
            raise self._unavailable(scenario, ref, failure, field, fallback)
        return slot

    def resolve(self, scenario: Any, field: str = "scenario", timeout: float = 60.0) -> tuple[ModelSlot, bool]:
        """The slot serving ``scenario`` (loaded first if needed) and whether it is the cold-start fallback.

        Raises:
            RequestError: ``scenario`` is not a non-empty string.
            UnknownScenarioError: no model serves it and fallback is off (or there is no fallback model).
            ModelUnavailableError: its model could not be loaded (the scenario is degraded).
            NotReadyError: the worker is still starting after ``start_wait_seconds``.
        """
        self._wait_ready()
        found, fallback = self._lookup(scenario, field)
        if isinstance(found, ModelSlot):
            return found, fallback
        slot = self._load_async(found).result(timeout=timeout)
        return self._loaded_or_raise(scenario, found, slot, field, fallback), fallback

    async def aresolve(self, scenario: Any, field: str = "scenario") -> tuple[ModelSlot, bool]:
        """`resolve` for an event loop: a model that must load first is awaited, never waited for in the loop."""
        await self._await_ready()
        found, fallback = self._lookup(scenario, field)
        if isinstance(found, ModelSlot):
            return found, fallback
        slot = await asyncio.wrap_future(self._load_async(found))
        return self._loaded_or_raise(scenario, found, slot, field, fallback), fallback

    # ------------------------------------------------------------------ what the service reports
    def health(self) -> dict[str, Any]:
        """Readiness and the degraded scenarios (``/readyz``'s body)."""
        return {"ready": self.ready, "scenarios": len(self._wanted), "loaded_models": len(self._loaded),
                "degraded": self.degraded()}

    def degraded(self) -> dict[str, dict[str, Any]]:
        """Scenarios (and the fallback pointer) whose promoted version could not be loaded."""
        out: dict[str, dict[str, Any]] = {}
        with self._lock:
            wanted = dict(self._wanted)
            serving_now = dict(self._serving)
            if self._fallback_wanted is not None:
                wanted[self.config.fallback_pointer] = self._fallback_wanted
                serving_now[self.config.fallback_pointer] = self._fallback_ref
            for scenario, ref in wanted.items():
                failure = self._failed.get(ref)
                if failure is None:
                    continue
                serving = serving_now.get(scenario)
                older = serving if serving != ref and serving in self._loaded else None
                out[scenario] = {"model_name": ref[0], "model_version": ref[1], "error": failure.error,
                                 "serving": None if older is None else {"model_name": older[0],
                                                                        "model_version": older[1]}}
        return out

    def models(self) -> dict[str, Any]:
        """What serves each scenario (for the ``/models`` endpoint)."""
        with self._lock:
            scenarios = {}
            for scenario, wanted in sorted(self._wanted.items()):
                scenarios[scenario] = self._describe(self._serving.get(scenario, wanted), wanted)
            fb = None if self._fallback_wanted is None else self._describe(self._fallback_ref or self._fallback_wanted,
                                                                            self._fallback_wanted)
            cache = {"models": len(self._loaded), "bytes": self._bytes,
                     "budget_bytes": int(self.config.model_cache_mb * 1e6), "graphs": len(self.graphs)}
        return {"scenarios": scenarios, "unknown_scenario": self.config.unknown_scenario, "fallback": fb,
                "feature_source": self.source.name, "last_reload_error": self.last_reload_error,
                "index": self.index_source, "cache": cache, "degraded": self.degraded()}

    def request_schemas(self) -> dict[str, dict[str, Any]] | None:
        """OpenAPI schemas of the ``features`` and ``entity`` objects the served dataset takes (see
        `longtail.online.schema`): the spec of the fallback model, which every scenario's model is fine-tuned or
        derived from. ``entity`` is None when the feature source is ``raw`` (entity requests are refused). None
        before the fallback is loaded, or when a loaded model's dataset differs from it (the request fields are
        then those of each scenario's model)."""
        from longtail.online.schema import request_schemas

        with self._lock:
            fallback = self._loaded.get(self._fallback_ref) if self._fallback_ref is not None else None
            specs = [slot.transforms.spec for slot in self._loaded.values()]
        if fallback is None:
            return None
        spec = fallback.transforms.spec
        if any(other is not spec and other != spec for other in specs):
            return None
        schemas = request_schemas(spec)
        if self.source.name == "raw":
            schemas["entity"] = None
        return schemas

    async def arequest_schemas(self) -> dict[str, dict[str, Any]] | None:
        """`request_schemas` once the worker is ready (the fallback loaded), awaited as a request awaits it.

        Raises:
            NotReadyError: the worker is still starting after ``start_wait_seconds``.
        """
        await self._await_ready()
        return self.request_schemas()

    def _describe(self, ref: Ref, wanted: Ref) -> dict[str, Any]:
        slot = self._loaded.get(ref)
        out = slot.describe() if slot is not None else {
            "model_name": ref[0], "model_version": ref[1],
            "state": "failed" if ref in self._failed else "loading" if ref in self._loading else "not_loaded"}
        if ref in self._failed:
            out["error"] = self._failed[ref].error
        if wanted != ref:
            out["pending"] = {"model_name": wanted[0], "model_version": wanted[1],
                              **({"error": self._failed[wanted].error} if wanted in self._failed else {})}
        return out

    # ------------------------------------------------------------------ requests
    def _prepare_with(self, slot: ModelSlot, fallback: bool, req: PredictRequest, prefix: str) -> _Prepared:
        spec = slot.transforms.spec
        ts_field = f"{prefix}event_timestamp"
        event_ns = time.time_ns() if req.event_timestamp is None else parse_time_ns(req.event_timestamp, ts_field)
        if (req.entity is None) == (req.features is None):
            raise RequestError(f"send exactly one of '{prefix}entity' (features from the online store) or "
                               f"'{prefix}features' (raw feature values)", field=f"{prefix}features")
        entity = None
        if req.entity is not None:
            entity = check_entity(spec, req.entity, f"{prefix}entity")
            features = self.source.lookup(spec, entity, pd.Timestamp(event_ns, unit="ns", tz="UTC"))
            where = f"{prefix}entity"
        else:
            features = req.features
            where = f"{prefix}features"
        row = slot.encoder.encode(req.scenario, event_ns, features, where)
        echo = None
        if req.return_features:  # a debugging echo: the prepared row, as the offline path builds it
            try:
                echo = jsonable_row(spec, build_row(spec, req.scenario, pd.Timestamp(event_ns, unit="ns", tz="UTC"),
                                                    features, entity, field=where))
            except SpecError as e:
                raise spec_error_to_request(e, where) from None
        return _Prepared(slot, req.scenario, fallback, row, echo)

    def prepare(self, req: PredictRequest, prefix: str = "") -> _Prepared:
        """Validate a request, fetch its features and encode them.

        Raises:
            ServingError: a :class:`RequestError` naming the field, an unknown scenario, a degraded one.
        """
        slot, fallback = self.resolve(req.scenario, f"{prefix}scenario")
        return self._prepare_with(slot, fallback, req, prefix)

    async def aprepare(self, req: PredictRequest, prefix: str = "") -> _Prepared:
        """`prepare` for an event loop (a feature-store lookup runs in a thread)."""
        slot, fallback = await self.aresolve(req.scenario, f"{prefix}scenario")
        if req.entity is not None:
            return await asyncio.to_thread(self._prepare_with, slot, fallback, req, prefix)
        return self._prepare_with(slot, fallback, req, prefix)

    def _refused(self, req: Any, e: ServingError) -> None:
        self.observer("error", {"scenario": str(getattr(req, "scenario", ""))[:64], "error": type(e).__name__})

    def predict(self, req: PredictRequest, timeout: float = 30.0) -> Prediction:
        """Score one request (through the shared batcher when it runs).

        Raises:
            ServingError: invalid request (names the field), unknown or degraded scenario, not ready.
        """
        try:
            item = self.prepare(req)
        except ServingError as e:
            self._refused(req, e)
            raise
        if not self._threads:
            return self._score([item])[0]
        job = _Job([item])
        self._queue.put(job)
        return job.future.result(timeout=timeout)[0]

    async def apredict(self, req: PredictRequest) -> Prediction:
        """`predict` for an event loop (the HTTP front): a model load is awaited, never waited for in the loop;
        the forward pass runs in the loop, batched with the requests already waiting there."""
        try:
            item = await self.aprepare(req)
        except ServingError as e:
            self._refused(req, e)
            raise
        return (await self._in_loop([item]))[0]

    def _in_loop(self, items: list[_Prepared]) -> asyncio.Future:
        """Queue ``items`` on this event loop's batch: a flush is scheduled behind the callbacks already ready,
        so every request the loop has already read joins the same forward pass (no thread hand-off: a light
        model's forward pass is shorter than two thread switches)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        batch = self._loop_batches.get(loop)
        if batch is None:
            batch = self._loop_batches[loop] = []
        batch.append((items, future))
        if len(batch) == 1:
            wait = self.config.max_latency_ms / 1000.0
            if wait > 0:
                loop.call_later(wait, self._flush_loop_batch, loop)
            else:
                loop.call_soon(self._flush_loop_batch, loop)
        return future

    def _flush_loop_batch(self, loop: asyncio.AbstractEventLoop) -> None:
        jobs = self._loop_batches.pop(loop, [])
        while jobs:
            take, rows = [], 0
            while jobs and (not take or rows + len(jobs[0][0]) <= self.config.max_batch_size):
                take.append(jobs.pop(0))
                rows += len(take[-1][0])
            try:
                results = self._score([it for items, _ in take for it in items])
            except Exception as e:  # surfaced to each caller
                log.exception("scoring a batch of %d rows failed", rows)
                for _, future in take:
                    if not future.done():
                        future.set_exception(e)
                continue
            k = 0
            for items, future in take:
                if not future.done():  # a cancelled request (client gone)
                    future.set_result(results[k:k + len(items)])
                k += len(items)

    def _check_many(self, reqs: Any, field: str) -> None:
        if not isinstance(reqs, Sequence) or isinstance(reqs, str | bytes):
            raise RequestError(f"'{field}' must be a list of requests", field=field)
        if not reqs:
            raise RequestError(f"'{field}' is empty; send at least one request", field=field)
        if len(reqs) > self.config.max_batch_request:
            raise RequestError(f"'{field}' holds {len(reqs)} requests; at most {self.config.max_batch_request} "
                               "per call (max_batch_request)", field=field)

    def predict_many(self, reqs: Sequence[PredictRequest], field: str = "requests") -> list[Prediction | ServingError]:
        """Score a client's batch: one forward pass per model over its valid items.

        Returns:
            One entry per item, in order: its prediction, or the error that refused it (naming
            ``requests[i].field``); an invalid item fails only itself.

        Raises:
            RequestError: the list itself is invalid (not a list, empty, longer than ``max_batch_request``).
            NotReadyError: the worker is still starting after ``start_wait_seconds``.
        """
        self._check_many(reqs, field)
        self._wait_ready()
        out: list[Any] = []
        for i, r in enumerate(reqs):
            try:
                out.append(self.prepare(r, prefix=f"{field}[{i}]."))
            except ServingError as e:
                self._refused(r, e)
                out.append(e)
        return self._score_many(out)

    async def apredict_many(self, reqs: Sequence[PredictRequest], field: str = "requests"
                            ) -> list[Prediction | ServingError]:
        """`predict_many` for an event loop."""
        self._check_many(reqs, field)
        await self._await_ready()
        out: list[Any] = []
        for i, r in enumerate(reqs):
            try:
                out.append(await self.aprepare(r, prefix=f"{field}[{i}]."))
            except ServingError as e:
                self._refused(r, e)
                out.append(e)
        items = [x for x in out if isinstance(x, _Prepared)]
        return self._merge(out, await self._in_loop(items) if items else [])

    def _score_many(self, out: list[Any]) -> list[Prediction | ServingError]:
        items = [x for x in out if isinstance(x, _Prepared)]
        return self._merge(out, self._score(items) if items else [])

    @staticmethod
    def _merge(out: list[Any], scored: list[Prediction]) -> list[Prediction | ServingError]:
        it = iter(scored)
        return [next(it) if isinstance(x, _Prepared) else x for x in out]

    # ------------------------------------------------------------------ scoring
    def _score(self, items: list[_Prepared]) -> list[Prediction]:
        """One compiled forward pass per distinct model over ``items``; results in ``items`` order."""
        t0 = time.perf_counter()
        probs = np.zeros(len(items), dtype=np.float64)
        groups: dict[int, list[int]] = {}
        for i, it in enumerate(items):
            groups.setdefault(id(it.slot), []).append(i)
        for idx in groups.values():
            slot = items[idx[0]].slot
            logits = slot.forward(slot.encoder.stack([items[i].row for i in idx]))
            probs[idx] = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
        seconds = time.perf_counter() - t0
        out = []
        for it, p in zip(items, probs.tolist(), strict=True):
            out.append(Prediction(p, it.scenario, it.slot.name, it.slot.version, it.slot.kind, it.fallback,
                                  it.features))
            self.observer("prediction", {"scenario": it.scenario, "model_name": it.slot.name,
                                         "model_version": it.slot.version, "fallback": it.fallback,
                                         "seconds": seconds})
        self.observer("batch", {"size": len(items)})
        return out

    def _batch_loop(self) -> None:
        max_rows = self.config.max_batch_size
        wait = self.config.max_latency_ms / 1000.0
        while True:
            job = self._queue.get()
            if job is None:
                return
            jobs = [job]
            rows = len(job.items)
            deadline = time.perf_counter() + wait
            stop = False
            while rows < max_rows:  # what is already queued; with max_latency_ms, what arrives meanwhile too
                try:
                    left = deadline - time.perf_counter()
                    nxt = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                jobs.append(nxt)
                rows += len(nxt.items)
            try:
                results = self._score([it for j in jobs for it in j.items])
            except Exception as e:  # surfaced to each caller, never kills the batcher
                log.exception("scoring a batch of %d rows failed", rows)
                for j in jobs:
                    j.future.set_exception(e)
            else:
                k = 0
                for j in jobs:
                    j.future.set_result(results[k:k + len(j.items)])
                    k += len(j.items)
            if stop:
                return

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.config.poll_seconds):
            try:
                self.refresh()
            except Exception as e:  # keep polling; the current models keep serving
                self.last_reload_error = f"serving index: {type(e).__name__}: {e}"
                log.error("could not read the serving index: %s", e)
                self.observer("reload_error", {"model": "index", "error": str(e)})
