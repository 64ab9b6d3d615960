"""Probe: the FLOPs term of the light search, linear (Eq. 4) vs hinge, on one flights carrier.

Trains MeL, then Ours with three search settings (linear λ=0.1, hinge λ=0.1, linear λ=0.01) from the
carrier's θu of ``make bench-meta`` (``runs/bench-meta/lstm/meh/models/<carrier>``), 5 epochs each, and
prints test AUC, FLOPs per sample and the chosen operations. The figures behind the hinge default of
``LightConfig.search`` came from ``python bench/nas_penalty.py VX``.
"""

from __future__ import annotations

import dataclasses
import sys
import time

from longtail.data.prepared import DataConfig, prepare
from longtail.model_folder import load_model_dir
from longtail.models.heavy import HeavyConfig
from longtail.nas import SearchConfig
from longtail.nas.strategies import LightConfig, run_mel, run_ours
from longtail.train import TrainConfig


def main(argv: list[str]) -> int:
    scen = argv[0] if argv else "VX"
    data = prepare(DataConfig(tables="data/flights", scenarios=(scen,)))
    teacher, tf, info = load_model_dir(f"runs/bench-meta/lstm/meh/models/{scen}")
    mc = HeavyConfig.from_dict(info["config"])
    base = LightConfig(search=SearchConfig(epochs=5, flops_penalty="linear"), train=TrainConfig(epochs=5),
                       mel_encoder="lstm", latency_repeats=5, pretrain_epochs=0, transfer_rows=0)
    t = time.time()
    mel = run_mel(teacher, tf, data, scen, mc, base)
    print("MeL", round(mel.auc, 4), mel.flops, round(time.time() - t), flush=True)
    variants = [("linear0.1", base.search), ("hinge0.1", dataclasses.replace(base.search, flops_penalty="hinge")),
                ("linear0.01", dataclasses.replace(base.search, lambda_flops=0.01))]
    for name, s in variants:
        t = time.time()
        o = run_ours(teacher, tf, data, scen, mc, dataclasses.replace(base, search=s))
        ops = {k: [layer["op"] for layer in g["layers"]] for k, g in o.genotypes.items()}
        print(name, round(o.auc, 4), o.flops, ops, round(time.time() - t), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
