"""Evaluation: predictions, AUC overall and per scenario (single-class scenarios reported, not crashed on)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from longtail.data.tensors import Batch


def auc(y: np.ndarray, p: np.ndarray) -> float | None:
    """ROC AUC, or None when ``y`` has a single class (AUC is undefined there)."""
    from sklearn.metrics import roc_auc_score  # imported here: spawned workers start faster

    y = np.asarray(y)
    if len(np.unique(y)) < 2:
        return None
    return float(roc_auc_score(y, p))


@torch.no_grad()
def predict_proba(model: torch.nn.Module, batch: Batch, *, batch_size: int = 4096,
                  device: torch.device | str = "cpu") -> np.ndarray:
    """Probabilities of the positive class for every row of ``batch``, in eval mode."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(batch), batch_size):
        part = batch.index(slice(start, start + batch_size)).to(device)
        out.append(torch.sigmoid(model(part)).float().cpu())
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


def per_scenario_auc(scenarios: np.ndarray | pd.Series, y: np.ndarray, p: np.ndarray) -> pd.DataFrame:
    """One row per scenario: n, positives, auc (NaN with a note when a split has one class).

    Returns:
        Columns ``scenario, n, positives, auc, note``, sorted by size (largest first).
    """
    df = pd.DataFrame({"scenario": np.asarray(scenarios).astype(str), "y": np.asarray(y), "p": np.asarray(p)})
    rows = []
    for scen, g in df.groupby("scenario", sort=False):
        a = auc(g["y"].to_numpy(), g["p"].to_numpy())
        rows.append({
            "scenario": scen,
            "n": len(g),
            "positives": int(g["y"].sum()),
            "auc": np.nan if a is None else a,
            "note": "" if a is not None else "single class in this split: AUC undefined",
        })
    out = pd.DataFrame(rows, columns=["scenario", "n", "positives", "auc", "note"])
    return out.sort_values(["n", "scenario"], ascending=[False, True]).reset_index(drop=True)
