"""A quick probe of the heavy model's toolbox on real data: a flat encoder with piecewise-linear numeric
embeddings against the default heavy model (6-layer LSTM), on the same carriers, rows and split.

Each model is one global model over the chosen carriers (``train_heavy``: transforms and edges fitted
on their TRAIN rows) and is scored per carrier on their TEST rows (``evaluate_heavy``). Prints the
per-carrier test AUC and its mean; writes nothing.

Run: ``python bench/toolbox_probe.py --data data/flights --scenarios EV MQ 9E --epochs 3``.
"""

from __future__ import annotations

import argparse
import time

import torch

from longtail.data.prepared import DataConfig, prepare
from longtail.models.heavy import HeavyConfig
from longtail.train import TrainConfig
from longtail.train_job import evaluate_heavy, train_heavy

CONFIGS = {
    "flat+ple": HeavyConfig(encoder="flat", num_layers=1, hidden_size=128, numeric_embedding="ple",
                            profile_dims=(128,), head_dims=(256, 128), dropout=0.1),
    "lstm": HeavyConfig(),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="table-set folder (e.g. data/flights)")
    ap.add_argument("--scenarios", nargs="+", default=["EV", "MQ", "9E"])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--models", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    args = ap.parse_args()
    data = prepare(DataConfig(tables=args.data, split_seed=0, scenarios=tuple(args.scenarios)))
    for name in args.models:
        t0 = time.perf_counter()
        torch.manual_seed(0)
        trained = train_heavy(data, args.scenarios, CONFIGS[name], TrainConfig(epochs=args.epochs, device="cpu"))
        auc = evaluate_heavy(trained.model, trained.transforms, data, args.scenarios)
        print(f"== {name}: {time.perf_counter() - t0:.0f} s, best epoch {trained.result.best_epoch}, "
              f"mean test AUC {auc['auc'].mean():.4f}")
        print(auc[["scenario", "n", "auc"]].to_string(index=False))


if __name__ == "__main__":
    main()
