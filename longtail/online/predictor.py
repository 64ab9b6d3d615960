"""The predictor every front end shares: models per scenario from the registry, hot reload, batching.

* **Which model**: the registry's serving pointer of each scenario names ``(name, version)``; the
  pointer ``config.fallback_pointer`` names the cold-start model (the agnostic θ0) that serves a
  scenario without a pointer when ``unknown_scenario: fallback`` (the response says so), or the
  request is refused (404) with ``refuse``.
* **Hot reload**: a background thread re-reads the pointers every ``poll_seconds``; a changed pointer
  is loaded completely (downloaded, verified, built) *before* it replaces the old model in one
  reference swap. A request holds the slot it resolved, so requests in flight finish on the old
  version and none is dropped or sees a half-loaded model.
* **Adaptive batching**: single requests are validated and transformed in the caller's thread, then
  queued; one batcher thread takes whatever is queued (up to ``max_batch_size`` rows, waiting at most
  ``max_latency_ms`` for more after the first) and runs one forward pass per model. Under load the
  batches grow; alone, a request waits at most ``max_latency_ms``. HTTP and gRPC share the queue.

Example::

    pred = Predictor(ServingConfig(registry="runs/registry")).start()
    p = pred.predict(PredictRequest(scenario="AA", features={...}, event_timestamp="2013-05-01T10:00Z"))
    p.probability, p.model_name, p.model_version, p.fallback
    pred.close()
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch

from longtail.data.transforms import FittedTransforms
from longtail.online.config import ServingConfig
from longtail.online.errors import NotReadyError, RequestError, ServingError, UnknownScenarioError
from longtail.online.features import FeatureSource, RawFeatureSource, check_entity
from longtail.online.pointers import list_pointer_scenarios
from longtail.online.rows import (
    build_row,
    check_vocabularies,
    jsonable_row,
    parse_time,
    spec_error_to_request,
)
from longtail.registry import ModelRegistry, RegistryError, open_registry
from longtail.spec import SpecError

log = logging.getLogger("longtail.online")


@dataclass(frozen=True)
class ModelSlot:
    """One loaded model version (immutable; replaced as a whole on reload)."""

    name: str
    version: int
    kind: str
    model: torch.nn.Module
    transforms: FittedTransforms
    loaded_at: float

    @property
    def ref(self) -> tuple[str, int]:
        return (self.name, self.version)


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
    row: pd.DataFrame  # the one-row prepared dataframe; transformed with its model's batch-mates
    features: dict[str, Any] | None


@dataclass
class _Job:
    items: list[_Prepared]
    future: Future = field(default_factory=Future)


Observer = Callable[[str, dict[str, Any]], None]


class Predictor:
    """Serves the promoted model of every scenario (see the module docstring).

    Args:
        config: the serving config.
        registry: an open registry (default: ``open_registry(config.registry)``).
        source: where entity requests' features come from (default: none, raw features only).
        observer: called as ``observer(event, data)`` for ``prediction``, ``error``, ``batch`` and ``reload``
            events (the service turns them into Prometheus metrics); must not raise.
    """

    def __init__(self, config: ServingConfig, registry: ModelRegistry | None = None,
                 source: FeatureSource | None = None, observer: Observer | None = None):
        self.config = config
        self.registry = registry or open_registry(config.registry)
        self.source: FeatureSource = source or RawFeatureSource()
        self.observer = observer or (lambda event, data: None)
        self._slots: dict[str, ModelSlot] = {}  # scenario -> slot; replaced whole, never mutated
        self._fallback: ModelSlot | None = None
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._reload_lock = threading.Lock()
        self.last_reload_error: str | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self, *, background: bool = True) -> Predictor:
        """Load every promoted model, then start the batcher and (if ``poll_seconds``) the poller.

        Args:
            background: start the threads (False: load only; `predict` then runs unbatched).
        """
        if self.config.torch_threads > 0:
            torch.set_num_threads(self.config.torch_threads)
        self.refresh()
        self._ready.set()
        if background:
            self._spawn(self._batch_loop, "longtail-batcher")
            if self.config.poll_seconds > 0:
                self._spawn(self._poll_loop, "longtail-reloader")
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

    @property
    def ready(self) -> bool:
        """True once the models are loaded (at least one model, or an explicitly empty registry)."""
        return self._ready.is_set()

    # ------------------------------------------------------------------ models
    def refresh(self) -> list[str]:
        """Re-read the serving pointers; load changed versions and swap them in.

        A version that fails to load keeps the old one serving (the error is kept in
        ``last_reload_error`` and reported to the observer).

        Returns:
            The scenarios (and ``fallback_pointer``) whose model changed.
        """
        with self._reload_lock:
            changed = []
            wanted = set(self.config.scenarios) or set(list_pointer_scenarios(self.registry))
            wanted.discard(self.config.fallback_pointer)
            old = dict(self._slots)
            new: dict[str, ModelSlot] = {}
            for scenario in sorted(wanted):
                slot = self._load_pointer(scenario, old.get(scenario))
                if slot is not None:
                    new[scenario] = slot
                    if old.get(scenario) is not slot:
                        changed.append(scenario)
            fallback = self._load_pointer(self.config.fallback_pointer, self._fallback)
            if fallback is not self._fallback:
                changed.append(self.config.fallback_pointer)
            self._slots, self._fallback = new, fallback  # two reference swaps; each slot is complete
            if changed:
                self.observer("reload", {"changed": changed})
                log.info("serving models changed: %s", changed)
            return changed

    def _load_pointer(self, scenario: str, current: ModelSlot | None) -> ModelSlot | None:
        try:
            ref = self.registry.serving(scenario)
        except RegistryError as e:
            self._reload_failed(scenario, e)
            return current
        if ref is None:
            return None
        if current is not None and current.ref == tuple(ref):
            return current
        try:
            model, transforms, info = self.registry.load(*ref)
        except Exception as e:  # a broken version must not take the service down; the old one keeps serving
            self._reload_failed(scenario, e)
            return current
        model.eval()
        try:  # the registry's kind (agnostic / specific / light) says more than the folder's builder kind
            kind = self.registry.get(*ref).kind
        except RegistryError:
            kind = str(info.get("kind", "heavy"))
        return ModelSlot(ref[0], int(ref[1]), kind, model, transforms, time.time())

    def _reload_failed(self, scenario: str, e: Exception) -> None:
        self.last_reload_error = f"{scenario}: {type(e).__name__}: {e}"
        log.error("could not load the model of %s: %s", scenario, e)
        self.observer("reload_error", {"scenario": scenario, "error": str(e)})

    def models(self) -> dict[str, Any]:
        """What serves each scenario (for the ``/models`` endpoint)."""
        slots, fb = self._slots, self._fallback
        out = {s: {"model_name": x.name, "model_version": x.version, "model_kind": x.kind} for s, x in slots.items()}
        return {"scenarios": out, "unknown_scenario": self.config.unknown_scenario,
                "fallback": None if fb is None else {"model_name": fb.name, "model_version": fb.version,
                                                     "model_kind": fb.kind},
                "feature_source": self.source.name, "last_reload_error": self.last_reload_error}

    def resolve(self, scenario: Any, field: str = "scenario") -> tuple[ModelSlot, bool]:
        """The slot serving ``scenario`` and whether it is the cold-start fallback.

        Raises:
            RequestError: ``scenario`` is not a non-empty string.
            UnknownScenarioError: no model serves it and fallback is off (or there is no fallback model).
            NotReadyError: models are not loaded yet.
        """
        if not self.ready:
            raise NotReadyError("models are still loading; retry shortly", field="")
        if not isinstance(scenario, str) or not scenario.strip() or len(scenario) > 256:
            raise RequestError(f"'{field}' must be a non-empty string (at most 256 characters)", field=field)
        slot = self._slots.get(scenario)
        if slot is not None:
            return slot, False
        if self.config.unknown_scenario == "refuse":
            raise UnknownScenarioError(f"'{field}': no model serves scenario {scenario!r} and this service refuses "
                                       f"unknown scenarios (unknown_scenario: refuse); known: {sorted(self._slots)}",
                                       field=field)
        fb = self._fallback
        if fb is None:
            raise UnknownScenarioError(f"'{field}': no model serves scenario {scenario!r} and no fallback model is "
                                       f"promoted at pointer {self.config.fallback_pointer!r}", field=field)
        return fb, True

    # ------------------------------------------------------------------ requests
    def prepare(self, req: PredictRequest, prefix: str = "") -> _Prepared:
        """Validate a request and fetch its features: the one-row prepared dataframe it will be scored on.

        Raises:
            ServingError: a :class:`RequestError` naming the field, or an unknown scenario.
        """
        slot, fallback = self.resolve(req.scenario, f"{prefix}scenario")
        spec = slot.transforms.spec
        ts_field = f"{prefix}event_timestamp"
        event_time = (pd.Timestamp.now(tz="UTC") if req.event_timestamp is None
                      else parse_time(req.event_timestamp, ts_field))
        if (req.entity is None) == (req.features is None):
            raise RequestError(f"send exactly one of '{prefix}entity' (features from the online store) or "
                               f"'{prefix}features' (raw feature values)", field=f"{prefix}features")
        entity = None
        if req.entity is not None:
            entity = check_entity(spec, req.entity, f"{prefix}entity")
            features = self.source.lookup(spec, entity, event_time)
            where = f"{prefix}entity"
        else:
            features = req.features
            where = f"{prefix}features"
        try:
            row = build_row(spec, req.scenario, event_time, features, entity, field=where)
            check_vocabularies(slot.transforms, row, where)
        except SpecError as e:
            raise spec_error_to_request(e, where) from None
        return _Prepared(slot, req.scenario, fallback, row,
                         jsonable_row(spec, row) if req.return_features else None)

    def predict(self, req: PredictRequest, timeout: float = 30.0) -> Prediction:
        """Score one request (through the shared batcher when it runs).

        Raises:
            ServingError: invalid request (names the field), unknown scenario, not ready.
        """
        try:
            item = self.prepare(req)
        except ServingError as e:
            self.observer("error", {"scenario": str(req.scenario)[:64], "error": type(e).__name__})
            raise
        if not self._threads:
            return self._score([item])[0]
        job = _Job([item])
        self._queue.put(job)
        return job.future.result(timeout=timeout)[0]

    def predict_many(self, reqs: Sequence[PredictRequest], field: str = "requests") -> list[Prediction]:
        """Score a client's batch: every item is validated first (an error names ``requests[i].field``),
        then the batch runs as one forward pass per model."""
        if not isinstance(reqs, Sequence) or isinstance(reqs, str | bytes):
            raise RequestError(f"'{field}' must be a list of requests", field=field)
        if not reqs:
            raise RequestError(f"'{field}' is empty; send at least one request", field=field)
        if len(reqs) > self.config.max_batch_request:
            raise RequestError(f"'{field}' holds {len(reqs)} requests; at most {self.config.max_batch_request} "
                               "per call (max_batch_request)", field=field)
        try:
            items = [self.prepare(r, prefix=f"{field}[{i}].") for i, r in enumerate(reqs)]
        except ServingError as e:
            self.observer("error", {"scenario": "", "error": type(e).__name__})
            raise
        return self._score(items)

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def _score(self, items: list[_Prepared]) -> list[Prediction]:
        """One transform and one forward pass per distinct model over ``items``; results in ``items`` order.

        The rows are transformed together with the model's saved transforms (row-wise: the same
        tensors as one by one, as in training and evaluation)."""
        t0 = time.perf_counter()
        probs: list[float] = [0.0] * len(items)
        groups: dict[int, list[int]] = {}
        for i, it in enumerate(items):
            groups.setdefault(id(it.slot), []).append(i)
        for idx in groups.values():
            slot = items[idx[0]].slot
            frame = pd.concat([items[i].row for i in idx], ignore_index=True)
            batch = slot.transforms.transform(frame, require_label=False)
            p = torch.sigmoid(slot.model(batch)).float().cpu().numpy()
            for j, i in enumerate(idx):
                probs[i] = float(p[j])
        seconds = time.perf_counter() - t0
        out = []
        for it, p in zip(items, probs, strict=True):
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
            while rows < max_rows:
                left = deadline - time.perf_counter()
                try:
                    nxt = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)  # let the outer loop stop after this batch
                    break
                jobs.append(nxt)
                rows += len(nxt.items)
            try:
                results = self._score([it for j in jobs for it in j.items])
            except Exception as e:  # surfaced to each caller, never kills the batcher
                for j in jobs:
                    j.future.set_exception(e)
                continue
            k = 0
            for j in jobs:
                j.future.set_result(results[k:k + len(j.items)])
                k += len(j.items)

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.config.poll_seconds):
            try:
                self.refresh()
            except Exception as e:  # keep polling; the current models keep serving
                self._reload_failed("*", e)
