"""The pipeline report: a summary first, then plots, then one section per scenario.

* **Summary**: mean test AUC per strategy (θ0, SinH, MeH, MeL, Ours and the LightGBM reference) with a
  95% bootstrap interval over the scenarios, the mean FLOPs per sample and batch-1 latency of each,
  paired differences (Ours − MeH, Ours − LightGBM), and the time spent per stage.
* **Plots**: per-scenario test AUC by strategy, test AUC against FLOPs per sample, and each model's
  gap to the LightGBM reference.
* **Per scenario**: row counts, the AUC of every strategy, FLOPs, latency, the promotion decision
  and the architecture pictures of Ours.

A scenario whose test split is too small for a meaningful AUC (fewer than `MIN_TEST_ROWS` rows or
fewer than `MIN_TEST_CLASS` of either class) says so instead of printing a number, and is left out
of every mean. Every choice was made on validation rows; test AUCs are reported only.

The HTML is one self-contained file (plots and pictures as data URIs, no script), what the
Kubeflow UI shows as the pipeline's HTML artifact; `summary_metrics` gives the numbers it logs as
Metrics.

Example:
    >>> table = scenario_table(results, lightgbm=lgbm)   # one row per scenario
    >>> md, html = render(results, title="flights", lightgbm=lgbm, test_counts=counts)
"""

from __future__ import annotations

import base64
import html as html_lib
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

AUC_COLUMNS = ["θ0", "SinH", "MeH", "MeL", "Ours", "LightGBM"]
STRATEGY_NAMES = {"θ0": "θ0 (agnostic heavy)", "SinH": "SinH (heavy, own rows only)", "MeH": "MeH (θu, meta-learned heavy)",
                  "MeL": "MeL (pre-defined light)", "Ours": "Ours (searched light)",
                  "LightGBM": "LightGBM global (scenario as a feature)"}
MIN_TEST_ROWS = 30
MIN_TEST_CLASS = 5
BOOTSTRAP = 2000
SMALL = "test split too small"


# ---------------------------------------------------------------------- tables
def _lightgbm_auc(lightgbm: Any) -> dict[str, float]:
    if lightgbm is None:
        return {}
    per = lightgbm.per_scenario if hasattr(lightgbm, "per_scenario") else pd.DataFrame(lightgbm["per_scenario"])
    return {str(s): (None if a is None or pd.isna(a) else float(a)) for s, a in zip(per["scenario"], per["auc"],
                                                                                   strict=True)}


def small_test_split(n_test: Any, positives: Any) -> bool:
    """Whether a test split is too small for a meaningful AUC (see the module docstring)."""
    if n_test is None or pd.isna(n_test):
        return False
    if int(n_test) < MIN_TEST_ROWS:
        return True
    if positives is None or pd.isna(positives):
        return False
    return min(int(positives), int(n_test) - int(positives)) < MIN_TEST_CLASS


def scenario_table(results: list[dict[str, Any]], lightgbm: Any = None,
                   test_counts: Mapping[str, tuple[int, int]] | None = None) -> pd.DataFrame:
    """One row per scenario (largest first) with AUCs, FLOPs, latency and status.

    Args:
        results: stage results (`longtail.workflow.stages.onboard_one`), ok or failed.
        lightgbm: the LightGBM reference (`longtail.baselines.LightGBMResult` or its dict), or ``None``.
        test_counts: scenario -> (test rows, test positives), for the small-split rule.

    Returns:
        Columns ``scenario, n_train, n_test, test_positives, small_test, θ0, SinH, MeH, MeL, Ours,
        LightGBM, flops_heavy, flops_mel, flops_ours, budget, latency_heavy_ms, latency_mel_ms,
        latency_ours_ms, status``.
    """
    counts = dict(test_counts or {})
    lgbm = _lightgbm_auc(lightgbm)
    rows = []
    for r in results:
        if r.get("status") == "skipped":
            continue
        if r.get("status") != "ok":
            rows.append({"scenario": r["scenario"], "status": f"failed: {r.get('error', '')}"[:120]})
            continue
        a, f, lat = r["auc"], r["flops"], r["latency_ms"]
        n_test, positives = counts.get(r["scenario"], (r.get("n_test"), None))
        rows.append({"scenario": r["scenario"], "n_train": r["n_train"], "n_test": n_test, "test_positives": positives,
                     "small_test": small_test_split(n_test, positives),
                     "θ0": a.get("theta0"), "SinH": a.get("SinH"), "MeH": a.get("MeH"), "MeL": a.get("MeL"),
                     "Ours": a.get("Ours"), "LightGBM": lgbm.get(r["scenario"]), "flops_heavy": f.get("heavy"),
                     "flops_mel": f.get("MeL"), "flops_ours": f.get("Ours"), "budget": f.get("budget"),
                     "latency_heavy_ms": lat.get("heavy"), "latency_mel_ms": lat.get("MeL"),
                     "latency_ours_ms": lat.get("Ours"), "status": "ok"})
    cols = ["scenario", "n_train", "n_test", "test_positives", "small_test", *AUC_COLUMNS, "flops_heavy", "flops_mel",
            "flops_ours", "budget", "latency_heavy_ms", "latency_mel_ms", "latency_ours_ms", "status"]
    df = pd.DataFrame(rows, columns=cols)
    for c in AUC_COLUMNS:
        df[c] = pd.to_numeric(df[c], errors="coerce")
    df["small_test"] = df["small_test"].map(lambda v: bool(v) if isinstance(v, bool | np.bool_) else False).astype(bool)
    return df.sort_values(["n_train", "scenario"], ascending=[False, True], na_position="last").reset_index(drop=True)


def _counted(df: pd.DataFrame) -> pd.DataFrame:
    """The scenarios whose AUCs enter the means: onboarded, with a meaningful test split."""
    return df[(df["status"] == "ok") & ~df["small_test"]]


def bootstrap_mean(values: np.ndarray, n: int = BOOTSTRAP, seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``values`` and its 95% percentile bootstrap interval (resampling the values).

    Returns:
        ``(mean, low, high)``; NaN when there are no values.
    """
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if not len(v):
        return (np.nan, np.nan, np.nan)
    means = np.random.default_rng(seed).choice(v, size=(n, len(v)), replace=True).mean(axis=1)
    return float(v.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def strategy_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per strategy: mean test AUC with its 95% bootstrap interval over the counted scenarios, FLOPs, latency.

    Returns:
        Columns ``strategy, scenarios, mean_auc, low, high, flops, latency_ms`` (strategies without
        any AUC are left out).
    """
    ok = _counted(df)
    cost = {"θ0": ("flops_heavy", "latency_heavy_ms"), "SinH": ("flops_heavy", "latency_heavy_ms"),
            "MeH": ("flops_heavy", "latency_heavy_ms"), "MeL": ("flops_mel", "latency_mel_ms"),
            "Ours": ("flops_ours", "latency_ours_ms"), "LightGBM": (None, None)}
    rows = []
    for c in AUC_COLUMNS:
        values = ok[c].to_numpy(dtype=float)
        if not np.isfinite(values).any():
            continue
        mean, low, high = bootstrap_mean(values)
        flops_col, lat_col = cost[c]
        flops = pd.to_numeric(ok[flops_col], errors="coerce").mean() if flops_col else np.nan
        lat = pd.to_numeric(ok[lat_col], errors="coerce").mean() if lat_col else np.nan
        rows.append({"strategy": c, "scenarios": int(np.isfinite(values).sum()), "mean_auc": mean, "low": low,
                     "high": high, "flops": flops, "latency_ms": lat})
    return pd.DataFrame(rows, columns=["strategy", "scenarios", "mean_auc", "low", "high", "flops", "latency_ms"])


def paired_differences(df: pd.DataFrame, pairs=(("Ours", "MeH"), ("Ours", "LightGBM"), ("MeH", "θ0"))) -> pd.DataFrame:
    """Mean per-scenario difference of two strategies' test AUC with its 95% bootstrap interval."""
    ok = _counted(df)
    rows = []
    for a, b in pairs:
        d = (ok[a] - ok[b]).to_numpy(dtype=float)
        if not np.isfinite(d).any():
            continue
        mean, low, high = bootstrap_mean(d)
        rows.append({"difference": f"{a} − {b}", "scenarios": int(np.isfinite(d).sum()), "mean": mean, "low": low,
                     "high": high, "wins": int((d[np.isfinite(d)] > 0).sum())})
    return pd.DataFrame(rows, columns=["difference", "scenarios", "mean", "low", "high", "wins"])


def summary_metrics(results: list[dict[str, Any]], lightgbm: Any = None,
                    test_counts: Mapping[str, tuple[int, int]] | None = None) -> dict[str, float]:
    """The summary's numbers as flat metrics (``mean_auc_<strategy>``, ``..._low``, ``..._high``, FLOPs,
    latency, scenarios counted): what the pipeline logs as Kubeflow Metrics."""
    df = scenario_table(results, lightgbm, test_counts)
    out: dict[str, float] = {"scenarios_ok": float((df["status"] == "ok").sum()),
                             "scenarios_counted": float(len(_counted(df))),
                             "scenarios_small_test": float(df["small_test"].sum())}
    names = {"θ0": "theta0"}
    for _, r in strategy_summary(df).iterrows():
        key = names.get(r["strategy"], r["strategy"])
        out[f"mean_auc_{key}"] = r["mean_auc"]
        out[f"mean_auc_{key}_low"] = r["low"]
        out[f"mean_auc_{key}_high"] = r["high"]
        if np.isfinite(r["flops"]):
            out[f"flops_{key}"] = r["flops"]
        if np.isfinite(r["latency_ms"]):
            out[f"latency_ms_{key}"] = r["latency_ms"]
    return {k: float(v) for k, v in out.items() if v is not None and np.isfinite(v)}


# ---------------------------------------------------------------------- cells (also the demo's table)
def _fmt(v: Any, kind: str = "auc") -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "—"
    if kind == "auc":
        return f"{v:.4f}"
    if kind == "ms":
        return f"{v:.2f}"
    return f"{int(v):,}"


HEADER = ["scenario", "train", "test", "θ0 AUC", "SinH AUC", "MeH AUC", "MeL AUC", "Ours AUC", "LightGBM AUC",
          "heavy FLOPs", "MeL FLOPs", "Ours FLOPs", "heavy ms", "Ours ms", "status"]


def row_cells(row: pd.Series) -> list[str]:
    """The cells of one scenario in `HEADER` order (AUCs of a small test split say so)."""
    small = bool(row.get("small_test", False))
    aucs = ["(too small)" if small and not pd.isna(row[c]) else _fmt(row[c]) for c in AUC_COLUMNS]
    return [str(row["scenario"]), _fmt(row["n_train"], "int"), _fmt(row["n_test"], "int"), *aucs,
            _fmt(row["flops_heavy"], "int"), _fmt(row["flops_mel"], "int"), _fmt(row["flops_ours"], "int"),
            _fmt(row["latency_heavy_ms"], "ms"), _fmt(row["latency_ours_ms"], "ms"), str(row["status"])]


def mean_row(df: pd.DataFrame) -> list[str]:
    """The mean AUC row over the scenarios counted (onboarded, meaningful test split)."""
    ok = _counted(df)
    return [f"mean ({len(ok)})", "", "", *[_fmt(ok[c].mean()) for c in AUC_COLUMNS], "", "", "", "", "", ""]


# ---------------------------------------------------------------------- plots
def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _strategies_present(df: pd.DataFrame) -> list[str]:
    return [c for c in AUC_COLUMNS if df[c].notna().any()]


def plots(df: pd.DataFrame) -> dict[str, bytes]:
    """The report's plots as PNG bytes: ``per_scenario_auc``, ``auc_vs_flops``, ``lightgbm_gap``
    (the last one only with the LightGBM reference)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, bytes] = {}
    ok = df[df["status"] == "ok"].reset_index(drop=True)
    present = _strategies_present(ok)
    if not len(ok) or not present:
        return out
    x = np.arange(len(ok))
    fig, ax = plt.subplots(figsize=(max(8, 0.75 * len(ok) + 3), 4.5))
    w = 0.8 / len(present)
    for i, c in enumerate(present):
        values = ok[c].where(~ok["small_test"])
        ax.bar(x + (i - (len(present) - 1) / 2) * w, values, w, label=c)
    labels = [f"{s}\n{n:,}" + ("\n(small test)" if small else "")
              for s, n, small in zip(ok["scenario"], ok["n_train"].fillna(0).astype(int), ok["small_test"], strict=True)]
    ax.set_xticks(x, labels, fontsize=8)
    values = ok[present].where(~ok["small_test"], axis=0).to_numpy(dtype=float)
    lo = np.nanmin(values) if np.isfinite(values).any() else 0.5
    ax.set_ylim(min(0.4, lo - 0.02), 1.0)
    ax.axhline(0.5, color="grey", lw=0.5)
    ax.set_ylabel("test AUC")
    ax.set_title("Per-scenario test AUC by strategy (scenarios by TRAIN rows, largest first)")
    ax.legend(ncol=len(present), fontsize=8, loc="lower left")
    fig.tight_layout()
    out["per_scenario_auc"] = _png(fig)

    counted = _counted(ok)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for c, col, marker in (("MeH", "flops_heavy", "s"), ("MeL", "flops_mel", "^"), ("Ours", "flops_ours", "o")):
        if c not in present:
            continue
        pts = counted[[col, c]].apply(pd.to_numeric, errors="coerce").dropna()
        if not len(pts):
            continue
        dots = ax.scatter(pts[col], pts[c], marker=marker, alpha=0.45, label=f"{c} (per scenario)")
        ax.scatter([pts[col].mean()], [pts[c].mean()], marker=marker, s=160, edgecolor="black",
                   color=dots.get_facecolor()[0], label=f"{c} (mean)")
    if "LightGBM" in present and counted["LightGBM"].notna().any():
        ax.axhline(counted["LightGBM"].mean(), color="black", ls="--", lw=1, label="LightGBM global (mean)")
    ax.set_xscale("log")
    ax.set_xlabel("FLOPs per sample (analytical)")
    ax.set_ylabel("test AUC")
    ax.set_title("Test AUC against FLOPs per sample")
    ax.legend(fontsize=8)
    fig.tight_layout()
    out["auc_vs_flops"] = _png(fig)

    if "LightGBM" in present:
        others = [c for c in present if c != "LightGBM"]
        fig, ax = plt.subplots(figsize=(max(8, 0.75 * len(ok) + 3), 4))
        w = 0.8 / max(1, len(others))
        for i, c in enumerate(others):
            gap = (ok[c] - ok["LightGBM"]).where(~ok["small_test"])
            ax.bar(x + (i - (len(others) - 1) / 2) * w, gap, w, label=f"{c} − LightGBM")
        ax.axhline(0.0, color="black", lw=0.8)
        ax.set_xticks(x, labels, fontsize=8)
        ax.set_ylabel("test AUC difference")
        ax.set_title("Each strategy against the LightGBM reference (above 0: better than LightGBM)")
        ax.legend(ncol=len(others), fontsize=8)
        fig.tight_layout()
        out["lightgbm_gap"] = _png(fig)
    return out


# ---------------------------------------------------------------------- render
def _interval(r: pd.Series) -> str:
    return f"{r['mean_auc']:.4f} [{r['low']:.4f}, {r['high']:.4f}]"


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.0f} s"


def render(results: list[dict[str, Any]], title: str, decisions: dict[str, dict[str, Any]] | None = None, *,
           lightgbm: Any = None, test_counts: Mapping[str, tuple[int, int]] | None = None,
           timings: Mapping[str, float] | None = None, image_dir: str | Path | None = None) -> tuple[str, str]:
    """The Markdown and HTML reports of a set of scenario results.

    Args:
        results: the scenarios' onboarding results.
        title: the report's title.
        decisions: scenario -> its promotion decision (`longtail.onboarding.promotion.Decision.to_dict`).
        lightgbm: the LightGBM reference (`longtail.baselines.LightGBMResult` or its dict), or ``None``.
        test_counts: scenario -> (test rows, test positives), for the small-split rule (without it,
            only the row count is checked).
        timings: stage -> seconds, for the time-per-stage table.
        image_dir: when set, the plots are also written there as PNG files, which the Markdown links.

    Returns:
        ``(markdown, html)``.
    """
    decisions = decisions or {}
    df = scenario_table(results, lightgbm, test_counts)
    summary = strategy_summary(df)
    diffs = paired_differences(df)
    pngs = plots(df)
    if image_dir is not None:
        Path(image_dir).mkdir(parents=True, exist_ok=True)
        for name, data in pngs.items():
            (Path(image_dir) / f"{name}.png").write_bytes(data)
    small = df[df["small_test"]]
    counted = _counted(df)
    note_small = ("" if not len(small) else
                  f"{len(small)} scenario(s) have a test split too small for a meaningful AUC (fewer than "
                  f"{MIN_TEST_ROWS} rows or {MIN_TEST_CLASS} of a class): "
                  + ", ".join(f"{r['scenario']} ({_fmt(r['n_test'], 'int')} test rows"
                              + (f", {int(r['test_positives'])} positive" if pd.notna(r['test_positives']) else "")
                              + ")" for _, r in small.iterrows())
                  + "; they are left out of every mean.")
    intro = (f"Means over the {len(counted)} scenario(s) with a meaningful test split; 95% intervals are "
             f"percentile bootstraps over those scenarios ({BOOTSTRAP:,} resamples). Test AUCs are reported only: "
             "every choice (kept epoch, architecture, restart, promotion) was made on validation rows.")
    failed = df[df["status"] != "ok"]

    # ---------------- markdown
    md = [f"# {title}", "", "## Summary", "", intro, ""]
    if note_small:
        md += [f"**Note:** {note_small}", ""]
    md += ["| strategy | mean test AUC [95% interval] | scenarios | FLOPs per sample | batch-1 latency (ms) |",
           "|---|---:|---:|---:|---:|"]
    md += [f"| {STRATEGY_NAMES[r['strategy']]} | {_interval(r)} | {r['scenarios']} | {_fmt(r['flops'], 'int')} | "
           f"{_fmt(r['latency_ms'], 'ms')} |" for _, r in summary.iterrows()]
    if len(diffs):
        md += ["", "| paired difference | mean [95% interval] | scenarios | first ahead on |", "|---|---:|---:|---:|"]
        md += [f"| {r['difference']} | {r['mean']:+.4f} [{r['low']:+.4f}, {r['high']:+.4f}] | {r['scenarios']} | "
               f"{r['wins']} |" for _, r in diffs.iterrows()]
    if timings:
        md += ["", "| stage | time |", "|---|---:|"] + [f"| {k} | {_duration(v)} |" for k, v in timings.items()]
    if len(failed):
        md += ["", f"**Failed:** {', '.join(failed['scenario'])} (see the per-scenario table)."]
    md += ["", "## Plots", ""]
    md += [f"![{name}]({name}.png)" for name in pngs] if image_dir is not None else ["(plots: see the HTML report)"]
    md += ["", "## Per scenario", "", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    md += ["| " + " | ".join(row_cells(r)) + " |" for _, r in df.iterrows()]
    md += ["| " + " | ".join(mean_row(df)) + " |", "",
           "AUC on each scenario's test split; FLOPs per sample (analytical); batch-1 CPU latency p50."]
    if decisions:
        md += ["", "## Promotion (champion/challenger on each scenario's validation rows)", ""]
        md += [f"* {s}: {'promoted' if d['promoted'] else 'held'} ({d['reason']})" for s, d in sorted(decisions.items())]
    markdown = "\n".join(md) + "\n"

    # ---------------- html
    esc = html_lib.escape
    body = [f"<h1>{esc(title)}</h1>", "<h2>Summary</h2>", f"<p>{esc(intro)}</p>"]
    if note_small:
        body.append(f"<p class='warn'><b>Note:</b> {esc(note_small)}</p>")
    body.append("<table><tr><th>strategy</th><th>mean test AUC [95% interval]</th><th>scenarios</th>"
                "<th>FLOPs per sample</th><th>batch-1 latency (ms)</th></tr>")
    body += [f"<tr><td>{esc(STRATEGY_NAMES[r['strategy']])}</td><td>{esc(_interval(r))}</td><td>{r['scenarios']}</td>"
             f"<td>{esc(_fmt(r['flops'], 'int'))}</td><td>{esc(_fmt(r['latency_ms'], 'ms'))}</td></tr>"
             for _, r in summary.iterrows()]
    body.append("</table>")
    if len(diffs):
        body.append("<table><tr><th>paired difference</th><th>mean [95% interval]</th><th>scenarios</th>"
                    "<th>first ahead on</th></tr>")
        body += [f"<tr><td>{esc(r['difference'])}</td><td>{r['mean']:+.4f} [{r['low']:+.4f}, {r['high']:+.4f}]</td>"
                 f"<td>{r['scenarios']}</td><td>{r['wins']}</td></tr>" for _, r in diffs.iterrows()]
        body.append("</table>")
    if timings:
        body.append("<h3>Time per stage</h3><table><tr><th>stage</th><th>time</th></tr>")
        body += [f"<tr><td>{esc(k)}</td><td>{esc(_duration(v))}</td></tr>" for k, v in timings.items()]
        body.append("</table>")
    if len(failed):
        body.append(f"<p class='warn'><b>Failed:</b> {esc(', '.join(failed['scenario']))}</p>")
    body.append("<h2>Plots</h2>")
    for name, data in pngs.items():
        body.append(f"<figure><img alt='{esc(name)}' src='data:image/png;base64,{base64.b64encode(data).decode()}'/>"
                    f"<figcaption>{esc(name.replace('_', ' '))}</figcaption></figure>")
    body.append("<h2>Per scenario</h2><table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in HEADER) + "</tr>")
    body += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row_cells(r)) + "</tr>" for _, r in df.iterrows()]
    body += ["<tr>" + "".join(f"<td><b>{esc(c)}</b></td>" for c in mean_row(df)) + "</tr>", "</table>"]
    by_scenario = {r["scenario"]: r for r in results}
    for _, row in df.iterrows():
        r = by_scenario.get(row["scenario"], {})
        body.append(f"<h3 id='{esc(str(row['scenario']))}'>{esc(str(row['scenario']))}</h3>")
        if row["status"] != "ok":
            body.append(f"<p class='warn'>{esc(str(row['status']))}</p>")
            continue
        counts = f"{_fmt(row['n_train'], 'int')} TRAIN rows, {_fmt(row['n_test'], 'int')} TEST rows"
        if pd.notna(row["test_positives"]):
            counts += f" ({int(row['test_positives'])} positive)"
        body.append(f"<p>{esc(counts)}.</p>")
        if row["small_test"]:
            body.append(f"<p class='warn'>The {esc(SMALL)} for a meaningful AUC (fewer than {MIN_TEST_ROWS} rows or "
                        f"{MIN_TEST_CLASS} of a class): no AUC is shown for this scenario.</p>")
        else:
            cells = "".join(f"<tr><td>{esc(STRATEGY_NAMES[c])}</td><td>{esc(_fmt(row[c]))}</td></tr>"
                            for c in AUC_COLUMNS if pd.notna(row[c]))
            body.append(f"<table><tr><th>strategy</th><th>test AUC</th></tr>{cells}</table>")
        body.append(f"<p>FLOPs per sample: heavy {esc(_fmt(row['flops_heavy'], 'int'))}, MeL "
                    f"{esc(_fmt(row['flops_mel'], 'int'))}, Ours {esc(_fmt(row['flops_ours'], 'int'))} (budget "
                    f"{esc(_fmt(row['budget'], 'int'))}); batch-1 latency: heavy {esc(_fmt(row['latency_heavy_ms'], 'ms'))}"
                    f" ms, Ours {esc(_fmt(row['latency_ours_ms'], 'ms'))} ms.</p>")
        d = decisions.get(row["scenario"])
        if d:
            body.append(f"<p>Promotion: {'promoted' if d['promoted'] else 'held'} ({esc(str(d['reason']))}).</p>")
        for pic in r.get("pictures", []) or []:
            p = Path(pic)
            if p.exists():
                data = base64.b64encode(p.read_bytes()).decode()
                body.append(f"<figure><img alt='{esc(p.stem)}' src='data:image/png;base64,{data}'/>"
                            f"<figcaption>{esc(p.stem)}</figcaption></figure>")
    style = ("body{font-family:sans-serif;margin:1.5em;max-width:1400px}table{border-collapse:collapse;margin:.6em 0}"
             "td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}td:first-child,th:first-child{text-align:left}"
             ".warn{color:#8a4b00}img{max-width:100%}figure{margin:.8em 0}")
    page = ("<!doctype html><html lang='en'><head><meta charset='utf-8'><title>" + esc(title) + "</title><style>"
            + style + "</style></head><body>" + "\n".join(body) + "</body></html>\n")
    return markdown, page
