"""The ``longtail drift`` command group: per-scenario drift verdicts and Evidently reports.

Registered under the ``longtail.commands`` entry points (pyproject.toml).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from longtail.config import ConfigError, config_to_dict, load_config, parse_overrides

USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError,)


def cmd_drift_check(args: argparse.Namespace) -> int:
    """Per-scenario drift verdicts and reports (see `monitoring.job`)."""
    from monitoring import DriftJobConfig, run_drift_job

    overrides = parse_overrides(args.set or [])
    for key in ("reference", "current", "registry"):
        if getattr(args, key):
            overrides[key] = getattr(args, key)
    if args.scenarios:
        overrides["scenarios"] = args.scenarios
    cfg = load_config(DriftJobConfig, args.config, overrides)
    result = run_drift_job(cfg, args.out)
    for name, v in result["scenarios"].items():
        share = "-" if v["drifted_share"] is None else f"{v['drifted_share']:.2f}"
        print(f"{name:>16}  {v['status']:<18} drifted share {share:>5}  prediction drift "
              f"{v['prediction_drift']}  columns {v['drifted_columns']}")
    print(f"drifted scenarios: {result['drifted_scenarios']} (verdicts in {Path(args.out) / 'drift.json'}, "
          f"config {config_to_dict(cfg)['drift']})")
    return 1 if args.fail_on_drift and result["drifted_scenarios"] else 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add the ``drift`` command group."""
    dr = sub.add_parser("drift", help="feature and prediction drift per scenario (Evidently)")
    dsub = dr.add_subparsers(dest="drift_command", required=True)
    c = dsub.add_parser("check", help="compare current rows with the training data, per scenario")
    c.add_argument("--reference", help="table set of the training data")
    c.add_argument("--current", help="table set of the recent events")
    c.add_argument("--registry", help="score both sides with the serving models of this registry")
    c.add_argument("--scenarios", help="comma-separated scenarios (default: all in --current)")
    c.add_argument("--out", required=True, help="output folder (drift.json, <scenario>.html)")
    c.add_argument("--config", help="YAML config (DriftJobConfig)")
    c.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a key, e.g. --set drift.drift_share=0.3 --set drift.method=psi")
    c.add_argument("--fail-on-drift", action="store_true", help="exit 1 when any scenario drifted")
    c.set_defaults(func=cmd_drift_check)
