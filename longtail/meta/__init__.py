"""Meta-learning of the agnostic heavy model θ0 (paper sections III.C, IV.D and V.A).

* `longtail.meta.update`: the conservative, staleness-aware update rule of θ0 (Eq. 2 / 3);
* `longtail.meta.server`: the versioned θ0 store and its ledger (feedback applied once, under a lock);
* `longtail.meta.finetune`: onboard one scenario (θ0 → θu on its support set, query feedback),
  and the meta-train refresh of θ0;
* `longtail.meta.workers`: many scenarios at once in worker processes (asynchronous or Eq. 3);
* `longtail.meta.strategies`: the paper's SinH and MeH strategies for any dataset spec.

The names below are loaded on first use, so that a worker importing only the store
(`longtail.meta.server`) does not pay for the training stack.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "MetaUpdate": "update",
    "UpdateRule": "update",
    "Theta0Server": "server",
    "MetaConfig": "finetune",
    "OnboardResult": "finetune",
    "create_theta0_store": "finetune",
    "meta_train": "finetune",
    "onboard_scenario": "finetune",
    "refresh_theta0": "finetune",
    "onboard_many": "workers",
    "RefreshJobConfig": "strategies",
    "StrategyJobConfig": "strategies",
    "StrategyResult": "strategies",
    "run_meh": "strategies",
    "run_refresh": "strategies",
    "run_sinh": "strategies",
    "run_strategy": "strategies",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'longtail.meta' has no attribute {name!r}")
    return getattr(importlib.import_module(f"longtail.meta.{_EXPORTS[name]}"), name)
