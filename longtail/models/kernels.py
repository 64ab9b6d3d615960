"""Optional native kernels: C sources of this package compiled at first use, loaded with ctypes.

`native_kernels()` returns the library of ``kernels.c`` (hashed dropout, the fused steps of the
wavefront LSTM), or ``None`` when it cannot be built (no C compiler, or ``LONGTAIL_NATIVE_KERNELS=0``); callers then
run the same steps as torch operations. The library is built once per source, compiler and CPU
into ``$LONGTAIL_KERNEL_CACHE`` (default ``~/.cache/longtail/kernels``), written atomically, so
concurrent processes (kfp.local tasks, pytest) share one build.

It is compiled with ``-ffast-math`` (vectorised ``expf``) but linked without it: linking with it
would add GCC's start-up code that switches the whole process to flush-to-zero arithmetic.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import torch

__all__ = ["ENV_DISABLE", "differentiable_backward", "fast_kernels_enabled", "kernel_cache_dir", "native_kernels",
           "reference_kernels"]

log = logging.getLogger(__name__)

ENV_DISABLE = "LONGTAIL_NATIVE_KERNELS"
ENV_CACHE = "LONGTAIL_KERNEL_CACHE"
_SOURCE = Path(__file__).with_name("kernels.c")
# tried in order; the first that compiles and links is used
_FLAG_SETS = (
    (["-O3", "-ffast-math", "-march=native"], ["-lmvec", "-lm"]),
    (["-O3", "-ffast-math"], ["-lmvec", "-lm"]),
    (["-O3", "-ffast-math"], ["-lm"]),
    (["-O2"], ["-lm"]),
)


_REFERENCE = 0


@contextmanager
def reference_kernels():
    """Run the models' plain torch implementations inside this block (``nn.LSTM``, attention as
    explicit matrix products): what ``torch.utils.flop_counter`` and cross-checks against the
    reference see. Outside it the fast paths run (the wavefront LSTM, the fused attention), which
    compute the same functions."""
    global _REFERENCE
    _REFERENCE += 1
    try:
        yield
    finally:
        _REFERENCE -= 1


def fast_kernels_enabled() -> bool:
    """False inside `reference_kernels` and while a model is traced or exported (TorchScript, ONNX):
    a graph holds the torch operations, not calls into the C library."""
    if _REFERENCE:
        return False
    return not (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export())


def differentiable_backward(reference, inputs, grads):
    """The gradients of ``reference(*inputs)`` (the same function as a fused kernel, as torch operations)
    with respect to ``inputs``, as a graph: what a fused kernel's backward returns when a second-order
    gradient is asked for (``create_graph=True``, e.g. second-order meta-learning), which the kernels'
    own backward passes cannot give.

    Args:
        reference: the function as differentiable torch operations.
        inputs: its tensor inputs (those that need no gradient get ``None``).
        grads: the gradients of its output(s).
    """
    with torch.enable_grad():
        out = reference(*inputs)
        wanted = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
        got = iter(torch.autograd.grad(out, wanted, grads, create_graph=True, allow_unused=True))
    return tuple(next(got) if isinstance(t, torch.Tensor) and t.requires_grad else None for t in inputs)


def kernel_cache_dir() -> Path:
    """Where built kernels are kept (``$LONGTAIL_KERNEL_CACHE`` or ``~/.cache/longtail/kernels``)."""
    return Path(os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "longtail" / "kernels")


def _cpu_fingerprint() -> str:
    # -march=native code must not run on another CPU that shares the cache folder
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        flags = ""
    return f"{platform.machine()}:{platform.processor()}:{flags}"


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _build(source: Path, name: str) -> Path | None:
    cc = _compiler()
    if cc is None:
        return None
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, check=False).stdout
    key = hashlib.sha256(source.read_bytes() + version.encode() + _cpu_fingerprint().encode()).hexdigest()[:16]
    cache = kernel_cache_dir()
    target = cache / f"{name}-{key}.so"
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=f".{name}-") as tmp:
        obj, lib = Path(tmp) / f"{name}.o", Path(tmp) / f"{name}.so"
        for compile_flags, libs in _FLAG_SETS:
            step1 = subprocess.run([cc, *compile_flags, "-fPIC", "-c", str(source), "-o", str(obj)],
                                   capture_output=True, text=True, check=False)
            if step1.returncode != 0:
                continue
            step2 = subprocess.run([cc, "-shared", str(obj), "-o", str(lib), *libs], capture_output=True, text=True,
                                   check=False)
            if step2.returncode == 0:
                os.replace(lib, target)  # atomic: a reader sees no file or a whole one
                return target
        log.warning("could not compile %s with %s; its kernels run as torch operations", source.name, cc)
    return None


@lru_cache(maxsize=1)
def native_kernels() -> ctypes.CDLL | None:
    """The compiled kernels, or ``None`` (see the module docstring)."""
    if os.environ.get(ENV_DISABLE, "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    try:
        path = _build(_SOURCE, "longtail_kernels")
        if path is None:
            return None
        lib = ctypes.CDLL(str(path))
    except OSError as e:  # a broken cache entry or loader: fall back, never fail training
        log.warning("native kernels unavailable (%s); they run as torch operations", e)
        return None
    ptr, i, long, f, u32 = ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_float, ctypes.c_uint32
    lib.dropout_apply.argtypes = [long, ptr, ptr, u32, u32, f, long]
    lib.dropout_apply.restype = None
    lib.attention_forward.argtypes = [i, i, i, i, ptr, ptr, ptr, ptr, i, u32, u32, f]
    lib.attention_forward.restype = None
    lib.attention_backward.argtypes = [i, i, i, i, ptr, ptr, ptr, ptr, ptr, i, u32, u32, f]
    lib.attention_backward.restype = None
    lib.layer_norm_forward.argtypes = [long, i, ptr, ptr, ptr, f, ptr, ptr, ptr]
    lib.layer_norm_forward.restype = None
    lib.layer_norm_backward.argtypes = [long, i, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr]
    lib.layer_norm_backward.restype = None
    lib.keep_rows.argtypes = [long, i, ptr, ptr, ptr]
    lib.keep_rows.restype = None
    drop = [i, u32, u32, f, long, long]
    lib.lstm_forward_step.argtypes = [i, i, i, i, i, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, *drop]
    lib.lstm_forward_step.restype = None
    lib.lstm_backward_step.argtypes = [i, i, i, i, i, ptr, ptr, ptr, ptr, ptr, ptr, *drop, ptr, ptr, ptr, ptr, ptr,
                                       ptr]
    lib.lstm_backward_step.restype = None
    return lib
