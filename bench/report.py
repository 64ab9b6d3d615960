"""Shared output of the benchmarks: a per-scenario AUC bar chart, written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from longtail.io import atomic_path


def auc_bars(table: pd.DataFrame, columns: list[str], path: Path, title: str) -> None:
    """Grouped bars of per-scenario AUC (one group per row of ``table``, labelled with its n_train)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 4.5))
    x = np.arange(len(table))
    w = 0.8 / len(columns)
    for i, c in enumerate(columns):
        ax.bar(x + (i - (len(columns) - 1) / 2) * w, table[c], w, label=c)
    ax.set_xticks(x, [f"{s}\n{n}" for s, n in zip(table["scenario"], table["n_train"], strict=True)], fontsize=8)
    values = table[columns].to_numpy(dtype=float)
    ax.set_ylim(min(0.4, float(np.nanmin(values)) - 0.02), max(0.9, float(np.nanmax(values)) + 0.02))
    ax.axhline(0.5, color="grey", lw=0.5)
    ax.set_ylabel("test AUC")
    ax.set_title(title)
    ax.legend(ncol=len(columns), fontsize=8, loc="upper right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
