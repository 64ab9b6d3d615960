"""What every command group of the CLI shares: the consoles, tables, number formats and config loading.

`longtail.cli` (the core commands), `longtail.nas.cli` and the integration layers' command groups
(`pipelines.cli`, `serving.cli`, `monitoring.cli`) import it; it imports none of them.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from longtail.config import load_config, parse_overrides

__all__ = ["auc_table", "config_args", "console", "err", "fmt", "human", "job_config"]

console = Console(stderr=False)
err = Console(stderr=True)


# ---------------------------------------------------------------------- printing
def auc_table(per: pd.DataFrame, title: str, auc_columns: list[str] | None = None) -> Table:
    """A rich table of per-scenario results with a mean row (``n``/``positives`` shown when present)."""
    cols = auc_columns or ["auc"]
    counts = [c for c in ("n", "positives") if c in per]
    t = Table(title=title)
    t.add_column("scenario")
    for c in counts:
        t.add_column("test n" if c == "n" else c, justify="right")
    for c in cols:
        t.add_column(c, justify="right")
    t.add_column("note")
    for _, r in per.iterrows():
        t.add_row(str(r["scenario"]), *[str(int(r[c])) for c in counts], *[fmt(r[c]) for c in cols],
                  str(r.get("note", "") or ""))
    t.add_section()
    t.add_row("mean", *[str(int(per[c].sum())) for c in counts], *[fmt(per[c].mean()) for c in cols],
              "mean over scenarios with an AUC")
    return t


def fmt(v: Any) -> str:
    return "—" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.4f}"


def human(n: float) -> str:
    for unit in ("", "K", "M", "G"):
        if abs(n) < 1000:
            return f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}T"


def job_config(cls, args: argparse.Namespace, **flags: Any):
    """Defaults < --config file < --set overrides < explicit flags (dotted keys)."""
    overrides = parse_overrides(args.set or [])
    for k, v in flags.items():
        if v is not None:
            deep(overrides, k, v)
    return load_config(cls, args.config, overrides)


def deep(d: dict, key: str, value: Any) -> dict:
    node = d
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return d


def config_args(p: argparse.ArgumentParser, example: str) -> None:
    """``--config FILE`` and repeated ``--set KEY=VALUE`` (defaults < file < --set < explicit flags)."""
    p.add_argument("--config", help="YAML config file (defaults < file < --set < flags)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help=f"override a config key, {example}")


