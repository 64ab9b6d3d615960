"""Per-scenario result tables of the pipelines as a dataframe, Markdown and self-contained HTML.

Example:
    >>> table = scenario_table(results)          # one row per scenario: SinH, MeH, MeL, Ours AUC, FLOPs
    >>> md, html = render(results, title="flights")
"""

from __future__ import annotations

import base64
import html as html_lib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

AUC_COLUMNS = ["θ0", "SinH", "MeH", "MeL", "Ours"]


def scenario_table(results: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per scenario (largest first) with AUCs, FLOPs, latency and status.

    Args:
        results: stage results (`longtail.workflow.stages.onboard_one`), ok or failed.

    Returns:
        Columns ``scenario, n_train, n_test, θ0, SinH, MeH, MeL, Ours, flops_heavy, flops_mel,
        flops_ours, budget, latency_heavy_ms, latency_ours_ms, status``.
    """
    rows = []
    for r in results:
        if r.get("status") == "skipped":
            continue
        if r.get("status") != "ok":
            rows.append({"scenario": r["scenario"], "status": f"failed: {r.get('error', '')}"[:120]})
            continue
        a, f, lat = r["auc"], r["flops"], r["latency_ms"]
        rows.append({"scenario": r["scenario"], "n_train": r["n_train"], "n_test": r["n_test"],
                     "θ0": a.get("theta0"), "SinH": a.get("SinH"), "MeH": a.get("MeH"), "MeL": a.get("MeL"),
                     "Ours": a.get("Ours"), "flops_heavy": f.get("heavy"), "flops_mel": f.get("MeL"),
                     "flops_ours": f.get("Ours"), "budget": f.get("budget"), "latency_heavy_ms": lat.get("heavy"),
                     "latency_ours_ms": lat.get("Ours"), "status": "ok"})
    cols = ["scenario", "n_train", "n_test", *AUC_COLUMNS, "flops_heavy", "flops_mel", "flops_ours", "budget",
            "latency_heavy_ms", "latency_ours_ms", "status"]
    df = pd.DataFrame(rows, columns=cols)
    for c in AUC_COLUMNS:
        df[c] = pd.to_numeric(df[c], errors="coerce")
    return df.sort_values(["n_train", "scenario"], ascending=[False, True], na_position="last").reset_index(drop=True)


def _fmt(v: Any, kind: str = "auc") -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "—"
    if kind == "auc":
        return f"{v:.4f}"
    if kind == "ms":
        return f"{v:.2f}"
    return f"{int(v):,}"


def row_cells(row: pd.Series) -> list[str]:
    return [str(row["scenario"]), _fmt(row["n_train"], "int"), _fmt(row["n_test"], "int"),
            *[_fmt(row[c]) for c in AUC_COLUMNS], _fmt(row["flops_heavy"], "int"), _fmt(row["flops_mel"], "int"),
            _fmt(row["flops_ours"], "int"), _fmt(row["latency_heavy_ms"], "ms"), _fmt(row["latency_ours_ms"], "ms"),
            str(row["status"])]


HEADER = ["scenario", "train", "test", "θ0 AUC", "SinH AUC", "MeH AUC", "MeL AUC", "Ours AUC", "heavy FLOPs",
          "MeL FLOPs", "Ours FLOPs", "heavy ms", "Ours ms", "status"]


def mean_row(df: pd.DataFrame) -> list[str]:
    """The mean AUC row (over scenarios with an AUC)."""
    return ["mean", "", "", *[_fmt(df[c].mean()) for c in AUC_COLUMNS], "", "", "", "", "", ""]


def render(results: list[dict[str, Any]], title: str,
           decisions: dict[str, dict[str, Any]] | None = None) -> tuple[str, str]:
    """The Markdown and HTML reports of a set of scenario results.

    The HTML embeds each scenario's architecture pictures (Ours' genotypes) as data URIs, so the one
    file shows everything in the Kubeflow UI.

    Args:
        results: the scenarios' onboarding results.
        title: the report's title.
        decisions: scenario -> its promotion decision (`longtail.onboarding.promotion.Decision.to_dict`).

    Returns:
        ``(markdown, html)``.
    """
    decisions = decisions or {}
    df = scenario_table(results)
    lines = [f"# {title}", "", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row_cells(r)) + " |" for _, r in df.iterrows()]
    lines += ["| " + " | ".join(mean_row(df)) + " |", ""]
    lines.append("AUC on each scenario's test split (reported only: every choice was made on validation rows); "
                 "FLOPs per sample (analytical); batch-1 CPU latency p50.")
    if decisions:
        lines += ["", "## Promotion (champion/challenger on each scenario's validation rows)", ""]
        lines += [f"* {s}: {'promoted' if d['promoted'] else 'held'} ({d['reason']})" for s, d in sorted(decisions.items())]
    md = "\n".join(lines) + "\n"
    esc = html_lib.escape
    body = [f"<h1>{esc(title)}</h1>", "<table border='1' cellspacing='0' cellpadding='4'>",
            "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in HEADER) + "</tr>"]
    body += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row_cells(r)) + "</tr>" for _, r in df.iterrows()]
    body += ["<tr>" + "".join(f"<td><b>{esc(c)}</b></td>" for c in mean_row(df)) + "</tr>", "</table>"]
    if decisions:
        body.append("<h2>Promotion (champion/challenger on each scenario's validation rows)</h2><ul>")
        body += [f"<li>{esc(s)}: {'promoted' if d['promoted'] else 'held'} ({esc(d['reason'])})</li>"
                 for s, d in sorted(decisions.items())]
        body.append("</ul>")
    for r in results:
        for pic in r.get("pictures", []) or []:
            p = Path(pic)
            if p.exists():
                data = base64.b64encode(p.read_bytes()).decode()
                body.append(f"<h3>{esc(r['scenario'])}: {esc(p.stem)}</h3>"
                            f"<img alt='{esc(p.stem)}' src='data:image/png;base64,{data}'/>")
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>" + esc(title) + "</title></head><body>"
            + "\n".join(body) + "</body></html>\n")
    return md, page
