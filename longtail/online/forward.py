"""Compiled forward passes of served models: ONNX Runtime, TorchScript or eager PyTorch.

A service holds many models of few architectures (every light model of a NAS space shares one
of a handful of shapes), so the compiled graph is made once per *architecture* and takes the
weights as inputs: a model adds only its weight arrays, never another graph. For each model,
the backends are tried in order (``auto``: ONNX Runtime, then TorchScript, then eager) and the
first whose output on probe inputs equals the eager model's (``PARITY_ATOL`` on the logits, at
batch 1 and at batch 3 with full, partial and empty sequences) serves it; an architecture that
a backend cannot compile (e.g. ONNX has no stable sort, used by the LSTM encoders) is tried once
and remembered. ONNX Runtime needs ``pip install 'longtail[serving]'``; without it ``auto``
starts at TorchScript. `bench/serving.py` measures the backends side by side.

Example::

    graphs = GraphCache("auto", threads=1)
    forward = graphs.compile(model, encoder, info)      # info: the folder's model.json
    logits = forward(encoder.stack(rows))               # (B,) float32
    forward.backend                                     # "onnxruntime", "torchscript" or "eager"
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from longtail.data.tensors import Batch
from longtail.online.encoder import ServingEncoder

__all__ = ["BACKENDS", "PARITY_ATOL", "Forward", "GraphCache", "probe_inputs"]

log = logging.getLogger("longtail.online")

BACKENDS = ("auto", "onnxruntime", "torchscript", "eager")
PARITY_ATOL = 2e-6  # on the logits: a compiled graph must give the eager model's output to this
_ORDER = ("onnxruntime", "torchscript", "eager")
_EXPORT_LOCK = threading.Lock()


def _state_names(model: nn.Module) -> list[str]:
    return ([n for n, _ in model.named_parameters(remove_duplicate=False)]
            + [n for n, _ in model.named_buffers(remove_duplicate=False)])


def _state_tensors(model: nn.Module) -> list[torch.Tensor]:
    state = dict(model.named_parameters(remove_duplicate=False))
    state.update(model.named_buffers(remove_duplicate=False))
    return [state[n].detach() for n in _state_names(model)]


def _to_batch(arrays: Sequence[torch.Tensor], sequences: Sequence[str]) -> Batch:
    k = len(sequences)
    pn, pc, rest = arrays[0], arrays[1], arrays[2:]
    return Batch(profile_num=pn, profile_cat=pc, seq_num=dict(zip(sequences, rest[:k], strict=True)),
                 seq_cat=dict(zip(sequences, rest[k:2 * k], strict=True)),
                 seq_mask=dict(zip(sequences, rest[2 * k:], strict=True)),
                 label=pn.new_zeros((pn.shape[0],)), scenario=pc.new_zeros((pc.shape[0],)))  # unused by models


class _WeightsAsInputs(nn.Module):
    """``model`` as a function of (its weights..., its inputs...): one graph serves every model of the shape."""

    def __init__(self, model: nn.Module, sequences: Sequence[str]):
        super().__init__()
        self.model = model
        self.names = _state_names(model)
        self.sequences = list(sequences)

    def forward(self, *flat: torch.Tensor) -> torch.Tensor:
        n = len(self.names)
        saved = []
        for name, tensor in zip(self.names, flat[:n], strict=True):
            path, _, leaf = name.rpartition(".")
            module = self.model.get_submodule(path)
            store = module._parameters if leaf in module._parameters else module._buffers
            saved.append((store, leaf, store[leaf]))
            store[leaf] = tensor
        rnns = [m for m in self.model.modules() if isinstance(m, nn.RNNBase)]
        for m in rnns:  # an RNN reads its weights from a cached list, not from its attributes
            m._init_flat_weights()
        try:
            return self.model(_to_batch(flat[n:], self.sequences))  # (B,) logits
        finally:
            for store, leaf, old in saved:
                store[leaf] = old
            for m in rnns:
                m._init_flat_weights()


def probe_inputs(encoder: ServingEncoder, batch_size: int, seed: int = 0) -> list[np.ndarray]:
    """Deterministic inputs in ``encoder.input_names`` order: random values and categories; at batch 3 the
    sequences are full, half and empty (the shapes a compiled graph must get right)."""
    rng = np.random.default_rng(seed)
    schema = encoder.schema
    B = batch_size
    pc_cards = schema.profile_cat_cardinalities
    out: list[np.ndarray] = [rng.normal(size=(B, schema.n_profile_numeric)).astype(np.float32),
                             np.stack([rng.integers(0, c, size=B) for c in pc_cards], axis=1).astype(np.int64)
                             if pc_cards else np.zeros((B, 0), np.int64)]
    seqs = schema.sequences
    out += [rng.normal(size=(B, s.max_length, s.n_numeric)).astype(np.float32) for s in seqs]
    out += [np.stack([rng.integers(0, c, size=(B, s.max_length)) for c in s.cat_cardinalities], axis=2).astype(np.int64)
            if s.cat_cardinalities else np.zeros((B, s.max_length, 0), np.int64) for s in seqs]
    for s in seqs:
        mask = np.zeros((B, s.max_length), dtype=bool)
        for b in range(B):
            real = (s.max_length, s.max_length // 2 or 1, 0)[b % 3] if B > 1 else max(1, s.max_length // 2)
            mask[b, s.max_length - real:] = True
        out.append(mask)
    return out


class Forward:
    """One model's forward pass: ``forward(arrays) -> (B,) float32 logits`` (arrays in the encoder's order).

    Attributes:
        backend: ``onnxruntime``, ``torchscript`` or ``eager``.
        nbytes: bytes of the model's own weights (the shared graph is not counted).
    """

    def __init__(self, backend: str, run: Callable[[list[np.ndarray]], np.ndarray], nbytes: int):
        self.backend = backend
        self._run = run
        self.nbytes = nbytes

    def __call__(self, arrays: list[np.ndarray]) -> np.ndarray:
        return self._run(arrays)


class _Failed:
    """An architecture a backend could not compile (remembered so that it is tried once)."""

    def __init__(self, reason: str):
        self.reason = reason


class GraphCache:
    """Compiled graphs by architecture, shared by every model of that architecture in this process.

    Args:
        backend: ``auto`` (the fastest that compiles and matches: ONNX Runtime, TorchScript, eager) or one
            backend to start the same order from.
        threads: intra-op threads of a compiled graph (one request per core: 1).
    """

    def __init__(self, backend: str = "auto", threads: int = 1):
        if backend not in BACKENDS:
            raise ValueError(f"forward backend {backend!r}: use one of {list(BACKENDS)}")
        start = 0 if backend == "auto" else _ORDER.index(backend)
        self.order = [b for b in _ORDER[start:] if b != "onnxruntime" or _has_onnxruntime()]
        self.threads = max(1, int(threads))
        self._graphs: dict[tuple[str, str], Any] = {}
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return sum(not isinstance(g, _Failed) for g in self._graphs.values())

    def compile(self, model: nn.Module, encoder: ServingEncoder, info: Mapping[str, Any] | None = None) -> Forward:
        """The fastest forward of ``model`` whose output matches its eager output on probe inputs.

        Args:
            model: the loaded model (eval mode, CPU).
            encoder: its serving encoder (input layout and shapes).
            info: the folder's ``model.json`` (its architecture fields join the graph's key).

        Returns:
            The forward; eager PyTorch when no compiled graph matches.
        """
        model.eval()
        sequences = [s.name for s in encoder.schema.sequences]
        probe = probe_inputs(encoder, 3, seed=2)  # rows: full, half and empty sequences
        with torch.no_grad():
            eager = model(_to_batch([torch.from_numpy(a) for a in probe], sequences)).numpy()
        probes = [[a[1:2] for a in probe], probe]  # batch 1 (the half-full row) and batch 3
        want = [eager[1:2], eager]
        key = _architecture_key(model, info)
        for backend in self.order:
            if backend == "eager":
                break
            graph = self._graph(backend, key, model, encoder, sequences)
            if isinstance(graph, _Failed):
                continue
            forward = graph.bind(model)
            got = [forward(p) for p in probes]
            if all(g.shape == w.shape and np.allclose(g, w, rtol=0, atol=PARITY_ATOL) for g, w in zip(got, want,
                                                                                                        strict=True)):
                return forward
            worst = max(float(np.abs(g - w).max()) for g, w in zip(got, want, strict=True))
            log.warning("%s graph of architecture %s differs from the eager model by %.3g; trying the next backend",
                        backend, key[:12], worst)
        return _eager(model, sequences)

    def _graph(self, backend: str, key: str, model: nn.Module, encoder: ServingEncoder,
               sequences: list[str]) -> Any:
        with self._lock:
            lock = self._locks.setdefault((backend, key), threading.Lock())
        with lock:  # one compile per architecture, however many models of it load at once
            graph = self._graphs.get((backend, key))
            if graph is None:
                example = probe_inputs(encoder, 2, seed=0)
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        graph = (_OrtGraph if backend == "onnxruntime" else _TorchScriptGraph)(
                            model, sequences, example, self.threads)
                except Exception as e:  # this backend cannot compile this architecture: remember, move on
                    reason = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                    log.info("%s cannot compile architecture %s (%s); the next backend serves it",
                             backend, key[:12], reason)
                    graph = _Failed(reason)
                self._graphs[(backend, key)] = graph
            return graph


def _architecture_key(model: nn.Module, info: Mapping[str, Any] | None) -> str:
    """What makes two models share a graph: the fields of ``model.json`` a builder rebuilds the module from, the
    classes of its modules, and the names, shapes and dtypes of its weights (each model is still checked against
    its own eager output)."""
    fields = {k: (info or {}).get(k) for k in ("kind", "config", "genotypes", "schema")}
    submodules = list(model.modules())
    if isinstance(fields["schema"], dict) and not _embeds_numerics(submodules):
        # the transforms' bin edges differ from model to model but only a piecewise-linear embedding computes with
        # them (as constants of its graph); without one, models of one shape share a graph whatever their edges
        fields["schema"] = _without_edges(fields["schema"])
    shapes = [(n, list(t.shape), str(t.dtype)) for n, t in zip(_state_names(model), _state_tensors(model), strict=True)]
    modules = [type(m).__qualname__ for m in submodules]
    text = json.dumps({"info": fields, "modules": modules, "state": shapes}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _embeds_numerics(submodules: Sequence[nn.Module]) -> bool:
    from longtail.models.numeric import PiecewiseLinearEmbedding

    return any(isinstance(m, PiecewiseLinearEmbedding) for m in submodules)


def _without_edges(schema: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in schema.items() if "edges" not in k}
    if isinstance(out.get("sequences"), list):
        out["sequences"] = [{k: v for k, v in s.items() if "edges" not in k} if isinstance(s, dict) else s
                            for s in out["sequences"]]
    return out


def _nbytes(tensors: Sequence[torch.Tensor]) -> int:
    return int(sum(t.numel() * t.element_size() for t in tensors))


def _eager(model: nn.Module, sequences: list[str]) -> Forward:
    @torch.no_grad()
    def run(arrays: list[np.ndarray]) -> np.ndarray:
        return model(_to_batch([torch.from_numpy(a) for a in arrays], sequences)).numpy()

    return Forward("eager", run, _nbytes(_state_tensors(model)))


class _TorchScriptGraph:
    def __init__(self, model: nn.Module, sequences: list[str], example: list[np.ndarray], threads: int):
        module = _WeightsAsInputs(model, sequences).eval()
        inputs = (*_state_tensors(model), *(torch.from_numpy(a) for a in example))
        with torch.no_grad():
            self.graph = torch.jit.trace(module, inputs, check_trace=False)

    def bind(self, model: nn.Module) -> Forward:
        weights = _state_tensors(model)
        graph = self.graph

        @torch.no_grad()
        def run(arrays: list[np.ndarray]) -> np.ndarray:
            return graph(*weights, *(torch.from_numpy(a) for a in arrays)).numpy()

        return Forward("torchscript", run, _nbytes(weights))


class _OrtGraph:
    def __init__(self, model: nn.Module, sequences: list[str], example: list[np.ndarray], threads: int):
        import onnxruntime as ort

        module = _WeightsAsInputs(model, sequences).eval()
        weights = _state_tensors(model)
        self.weight_names = [f"w{i}" for i in range(len(weights))]
        self.input_names = [f"x{i}" for i in range(len(example))]
        buf = io.BytesIO()
        with torch.no_grad(), _quiet_onnx_export():
            torch.onnx.export(module, (*weights, *(torch.from_numpy(a) for a in example)), buf,
                              input_names=self.weight_names + self.input_names, output_names=["logits"],
                              dynamic_axes={n: {0: "batch"} for n in [*self.input_names, "logits"]},
                              dynamo=False, opset_version=17)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(buf.getvalue(), options, providers=["CPUExecutionProvider"])
        self.used = {i.name for i in self.session.get_inputs()}

    def bind(self, model: nn.Module) -> Forward:
        tensors = _state_tensors(model)
        weights = {n: np.ascontiguousarray(t.numpy()) for n, t in zip(self.weight_names, tensors, strict=True)
                   if n in self.used}
        inputs = [(i, n) for i, n in enumerate(self.input_names) if n in self.used]
        session = self.session
        # the weights are bound once (an I/O binding per model); a call binds only the request's arrays, which
        # saves converting every weight array on every call. A binding is state: one call at a time per model
        binding = session.io_binding()
        for n, a in weights.items():
            binding.bind_cpu_input(n, a)
        lock = threading.Lock()

        def run(arrays: list[np.ndarray]) -> np.ndarray:
            with lock:
                for i, n in inputs:
                    binding.bind_cpu_input(n, np.ascontiguousarray(arrays[i]))
                binding.bind_output("logits")
                session.run_with_iobinding(binding)
                return binding.copy_outputs_to_cpu()[0]

        run.weights = weights  # the binding points into these arrays: they live as long as the forward
        return Forward("onnxruntime", run, _nbytes(tensors))


@contextlib.contextmanager
def _quiet_onnx_export():
    """The TorchScript-based ONNX exporter prints the whole graph to stdout when an operator has no ONNX
    form (then TorchScript serves the architecture); that print goes to the service log once per
    architecture, so it is silenced (one export at a time: the hook is process-wide)."""
    with _EXPORT_LOCK:
        original = getattr(torch._C, "_jit_onnx_log", None)
        if original is not None:
            torch._C._jit_onnx_log = lambda *args: None
        try:
            yield
        finally:
            if original is not None:
                torch._C._jit_onnx_log = original


def _has_onnxruntime() -> bool:
    try:
        import onnx  # noqa: F401  (torch.onnx.export needs it)
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True
