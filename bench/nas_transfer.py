"""Probe: MeL and Ours with and without a transfer set (``LightConfig.transfer_rows``) on flights carriers.

For each carrier, loads its θu from ``make bench-meta`` (``runs/bench-meta/<encoder>/meh/models/<carrier>``)
and trains MeL and Ours (5 epochs of search and training, the bench-nas settings) once on the carrier's
own TRAIN rows (the paper) and once with ``--transfer`` extra rows of the other carriers labelled by θu.
Prints one line per carrier and setting, and a mean per setting, with the carrier's MeH test AUC
from ``bench/results/meta.csv`` beside them. Nothing is written under ``bench/results``.

Run: ``python bench/nas_transfer.py --carriers OO,HA,YV,F9 --transfer 0,16384``
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd

from longtail.data.prepared import DataConfig, prepare
from longtail.data.splits import TEST
from longtail.metrics import auc, predict_proba
from longtail.model_folder import load_model_dir
from longtail.models.flops import count_flops
from longtail.models.heavy import HeavyConfig
from longtail.nas import SearchConfig, build_light_model, build_supernet_model, derive, inherit_weights
from longtail.nas.strategies import LightConfig, mel_budget, run_mel, run_ours
from longtail.train import TrainConfig


def pretrained_only(teacher, transforms, data, scenario: str, model_cfg: HeavyConfig, cfg: LightConfig,
                    pretrained: dict) -> SimpleNamespace:
    """Test AUC and FLOPs of the model derived (within the MeL budget) from the pooled pre-trained
    supernet, with its weights and no search or training on the carrier."""
    _, budget = mel_budget(transforms.schema, model_cfg, cfg)
    supernet = build_supernet_model(transforms.schema, model_cfg, cfg.space)
    supernet.load_state_dict(pretrained)
    model = build_light_model(transforms.schema, model_cfg, derive(supernet, budget).genotypes)
    inherit_weights(model, supernet)
    test = data.rows(TEST, [scenario])
    a = auc(test[data.spec.label].to_numpy(), predict_proba(model, transforms.transform(test)))
    return SimpleNamespace(auc=float("nan") if a is None else float(a), flops=count_flops(model)["total"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/flights")
    p.add_argument("--encoder", default="lstm")
    p.add_argument("--carriers", default="OO,HA,YV,F9")
    p.add_argument("--transfer", default="0,16384", help="comma-separated transfer_rows settings")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--search-epochs", type=int, help="epochs of the supernet search (default: --epochs)")
    p.add_argument("--strategies", default="MeL,Ours",
                   help="MeL, Ours, OursS (Ours retrained from the supernet), OursP (Ours from the pooled "
                        "pre-trained supernet, --pretrain-epochs), Pre (the pre-trained supernet's own "
                        "derived model, no search or training on the carrier: what the carrier starts from)")
    p.add_argument("--pretrain-epochs", type=int, default=2, help="epochs of the pooled pre-training (OursP)")
    p.add_argument("--pretrain-rows", type=int, default=0, help="pooled TRAIN rows of the pre-training (0: all)")
    p.add_argument("--min-steps", type=int, default=LightConfig().min_steps, help="LightConfig.min_steps")
    p.add_argument("--select-on", default="auc", choices=["auc", "distill"], help="LightConfig.select_on")
    p.add_argument("--delta", type=float, default=LightConfig().delta, help="LightConfig.delta (Eq. 5's δ)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the carrier's training and of its transfer-row sample (train.seed and transfer_seed; "
                        "the pooled pre-training keeps its own): how much of a carrier's AUC is chance")
    p.add_argument("--retrain-epochs", type=int, default=LightConfig().retrain_epochs,
                   help="LightConfig.retrain_epochs (most epochs of Ours' retraining or fine-tuning)")
    p.add_argument("--retrain-lr-drops", type=int, default=LightConfig().retrain_lr_drops,
                   help="LightConfig.retrain_lr_drops (learning-rate drops at VALID plateaus of that training)")
    p.add_argument("--restarts", type=int, default=1,
                   help="LightConfig.restarts (default 1: one run per carrier and seed, what --seed studies)")
    args = p.parse_args(argv)
    data = prepare(DataConfig(tables=args.data))
    meta = pd.read_csv(Path(__file__).resolve().parent / "results" / "meta.csv").set_index("scenario")
    base = LightConfig(search=SearchConfig(epochs=args.search_epochs or args.epochs, flops_penalty="hinge"),
                       train=TrainConfig(epochs=args.epochs, seed=args.seed), transfer_seed=args.seed,
                       mel_encoder=args.encoder, latency_repeats=5, min_steps=args.min_steps, pretrain_epochs=0,
                       select_on=args.select_on, delta=args.delta, restarts=args.restarts,
                       retrain_epochs=args.retrain_epochs, retrain_lr_drops=args.retrain_lr_drops)
    pretrained = None
    if {"OursP", "Pre"} & set(args.strategies.split(",")):
        from longtail.nas.pretrain import pretrained_supernet, theta0_dir

        base = dataclasses.replace(base, pretrain_epochs=args.pretrain_epochs, pretrain_rows=args.pretrain_rows)
        pretrained, path = pretrained_supernet(theta0_dir(f"runs/bench-meta/{args.encoder}/meh"), data, base,
                                               "runs/nas-pretrain", log=lambda m: print(m, flush=True))
        print(f"pre-trained supernet: {path}", flush=True)
    rows = []
    for scen in args.carriers.split(","):
        teacher, tf, info = load_model_dir(f"runs/bench-meta/{args.encoder}/meh/models/{scen}")
        mc = HeavyConfig.from_dict(info["config"])
        for n in (int(x) for x in args.transfer.split(",")):
            cfg = dataclasses.replace(base, transfer_rows=n)
            for strategy in args.strategies.split(","):
                t = time.perf_counter()
                if strategy == "MeL":
                    r = run_mel(teacher, tf, data, scen, mc, cfg)
                elif strategy == "Pre":
                    r = pretrained_only(teacher, tf, data, scen, mc, cfg, pretrained)
                elif strategy == "OursP":
                    r = run_ours(teacher, tf, data, scen, mc, cfg, pretrained=pretrained)
                else:  # OursS: Ours retrained from the supernet's weights (LightConfig.from_supernet)
                    r = run_ours(teacher, tf, data, scen, mc, dataclasses.replace(
                        cfg, from_supernet=strategy == "OursS", pretrain_epochs=0))
                rows.append({"scenario": scen, "transfer_rows": n, "strategy": strategy, "auc": r.auc,
                             "flops": r.flops, "meh": meta.loc[scen, f"MeH_{args.encoder}"],
                             "seconds": time.perf_counter() - t})
                kept = getattr(r, "info", {})  # Pre has no training
                extra = (f" VALID AUC {kept['best_valid_auc']:.4f} after {kept['epochs_run']} epochs"
                         if kept.get("best_valid_auc") is not None else "")
                print(f"{scen} transfer={n} {strategy}: AUC {r.auc:.4f} (MeH {rows[-1]['meh']:.4f}) "
                      f"{r.flops:,} FLOPs {rows[-1]['seconds']:.0f}s{extra}", flush=True)
    df = pd.DataFrame(rows)
    print(df.pivot_table(index=["scenario"], columns=["strategy", "transfer_rows"], values="auc").round(4))
    print(df.groupby(["strategy", "transfer_rows"])[["auc", "meh"]].mean().round(4))
    return 0


if __name__ == "__main__":
    sys.exit(main())
