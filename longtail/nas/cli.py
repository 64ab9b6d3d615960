"""CLI groups ``longtail nas`` (light models of a MeH run; heavy-model search) and ``longtail theta0``."""

from __future__ import annotations

import argparse
from pathlib import Path

from longtail.cli_common import config_args, console, fmt, job_config

__all__ = ["USER_ERRORS", "add_commands"]


def cmd_nas_light(args: argparse.Namespace) -> int:
    from rich.table import Table

    from longtail.onboarding.protocol import LightJobConfig, run_light_job

    cfg = job_config(LightJobConfig, args, **{"data.tables": args.data, "meh_out": args.meh_out,
                                                   "out": args.out, "registry": args.registry,
                                                   "recipe.preset": args.recipe})
    table = run_light_job(cfg, log=lambda m: console.print(f"[dim]{m}[/dim]"))
    t = Table(title=f"Ours vs MeL vs MeH (θu) per scenario: test AUC, FLOPs per sample (recipe {cfg.recipe.preset})")
    for name in ("scenario", "test n", "MeH", "MeL", "Ours", "FLOPs MeL", "FLOPs Ours", "budget"):
        t.add_column(name, justify="left" if name == "scenario" else "right")
    for _, r in table.iterrows():
        t.add_row(str(r["scenario"]), f"{int(r['n_test']):,}", fmt(r["auc_meh"]), fmt(r["auc_mel"]),
                  fmt(r["auc_ours"]), f"{int(r['flops_mel']):,}", f"{int(r['flops_ours']):,}",
                  f"{int(r['budget']):,}")
    t.add_section()
    t.add_row("mean", "", fmt(table["auc_meh"].mean()), fmt(table["auc_mel"].mean()),
              fmt(table["auc_ours"].mean()), f"{table['flops_mel'].mean():,.0f}",
              f"{table['flops_ours'].mean():,.0f}", f"{table['budget'].mean():,.0f}")
    console.print(t)
    console.print(f"job folder: {cfg.out}")
    return 0


def cmd_nas_heavy(args: argparse.Namespace) -> int:
    from longtail.agnostic import AgnosticJobConfig, choose_theta0

    cfg = job_config(AgnosticJobConfig, args, **{"data.tables": args.data, "out": args.out,
                                                      "candidates": "nas"})
    choice = choose_theta0(cfg, log=console.print)
    r = choice.candidates["nas"]
    console.print(f"searched heavy model: validation AUC {r['valid_auc']}, {r['flops']:,} FLOPs/sample -> "
                      f"{r['model_dir']}")
    return 0


def cmd_theta0_choose(args: argparse.Namespace) -> int:
    from longtail.agnostic import AgnosticJobConfig, choose_theta0

    cfg = job_config(AgnosticJobConfig, args, **{"data.tables": args.data, "out": args.out,
                                                      "registry": args.registry})
    choice = choose_theta0(cfg, log=console.print)
    for name, r in choice.candidates.items():
        mark = "  <- θ0" if name == choice.chosen else ""
        console.print(f"{name:4s} validation AUC {r['valid_auc']:.4f}  {r['flops']:>12,} FLOPs/sample  "
                          f"{r['seconds']:.0f}s{mark}")
    console.print(f"choice: {Path(cfg.out) / 'choice.json'}; θ0 model folder: {choice.model_dir}")
    return 0


def add_commands(sub) -> None:
    """Add ``nas light``, ``nas heavy`` and ``theta0 choose`` to the top-level subparsers."""
    nas = sub.add_parser("nas", help="light models of a MeH run (MeL, Ours) and the heavy-model search")
    nsub = nas.add_subparsers(dest="nas_command", required=True)
    li = nsub.add_parser("light", help="MeL and Ours (budget-limited NAS + distillation) for every θu of a MeH run")
    li.add_argument("--meh-out", help="the MeH run folder (its models/<scenario> are the teachers)")
    li.add_argument("--data", help="table set (default: the MeH run's, from its config.yaml)")
    li.add_argument("--recipe", help="recipe preset (default, paper, toolbox); fields with --set recipe.light.x=y")
    li.add_argument("--out", help="job folder (default runs/light)")
    li.add_argument("--registry", help="publish every Ours model here (path, file:// or s3:// URI)")
    config_args(li, "e.g. --set recipe.light.budget_fraction_of_mel=0.5")
    li.set_defaults(func=cmd_nas_light)
    hv = nsub.add_parser("heavy", help="search and train a heavy encoder on the initial scenarios (θ0 candidate)")
    hv.add_argument("--data", help="table set")
    hv.add_argument("--out", help="job folder (default runs/theta0)")
    config_args(hv, "e.g. --set nas.budget_flops=2000000")
    hv.set_defaults(func=cmd_nas_heavy)
    t0 = sub.add_parser("theta0", help="the agnostic model θ0: build the HPO and NAS candidates, keep the better")
    tsub = t0.add_subparsers(dest="theta0_command", required=True)
    ch = tsub.add_parser("choose", help="HPO-tuned vs NAS-found heavy model on the same validation rows")
    ch.add_argument("--data", help="table set")
    ch.add_argument("--out", help="job folder (default runs/theta0)")
    ch.add_argument("--registry", help="publish both candidates here with their scores")
    config_args(ch, "e.g. --set hpo.budget.max_trials=12 --set n_initial=8")
    ch.set_defaults(func=cmd_theta0_choose)


USER_ERRORS: tuple[type[BaseException], ...] = ()
