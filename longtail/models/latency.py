"""Measured serving latency: batch-1 forward passes on one CPU thread, as a service runs them."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["measure_latency"]


def measure_latency(model: nn.Module, batch: Any, repeats: int = 100, warmup: int = 10,
                    num_threads: int = 1) -> dict[str, float]:
    """Wall-clock latency of ``model(batch)`` under ``torch.no_grad`` in eval mode.

    The model's training mode and torch's thread count are restored afterwards.

    Args:
        model: the model (on CPU for a serving figure).
        batch: its input, normally a ``Batch`` of one row.
        repeats: timed forward passes (>= 1).
        warmup: untimed passes first (allocator and kernel warm-up).
        num_threads: intra-op threads during the measure (1: one request per core).

    Returns:
        ``{"p50_ms", "p90_ms", "mean_ms", "repeats", "num_threads", "batch_size"}``.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError("repeats must be >= 1 and warmup >= 0")
    was_training = model.training
    threads = torch.get_num_threads()
    times = np.empty(repeats)
    try:
        torch.set_num_threads(num_threads)
        model.eval()
        with torch.no_grad():
            for _ in range(warmup):
                model(batch)
            for i in range(repeats):
                start = time.perf_counter()
                model(batch)
                times[i] = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
        model.train(was_training)
    ms = times * 1e3
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "mean_ms": float(ms.mean()),
        "repeats": repeats,
        "num_threads": num_threads,
        "batch_size": len(batch) if hasattr(batch, "__len__") else 1,
    }
