"""Benchmark `longtail data import` on the real flights data: rows per second, side by side.

The flights raw files (`longtail.data.flights.export_raw`: events, the flight profile, the landings
log, the weather log) are imported in one run in several ways, each timed the same way (median of
``--repeats`` runs of `import_tables`, reading the files and writing the table set included):

* ``parquet, refresh``: the packaged flights import spec (daily profile, hourly logs), parquet files;
* ``csv, refresh``: the same spec over CSV copies of the files (times as ISO 8601 text);
* ``parquet, per event``: the aircraft log and the profile without ``refresh`` (each landing visible
  from the microsecond after it, one snapshot per landing);
* ``join``: `point_in_time_join` of the imported set (what a training run then reads), for scale.

Ratios are against ``parquet, refresh``. The machine's load average is written beside the figures.

    python bench/import.py            # all 12 months (336,776 flights)
    python bench/import.py --quick    # January only, one repeat
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from longtail.data import flights as F  # noqa: E402
from longtail.data.importer import ImportSpec, import_tables  # noqa: E402
from longtail.data.tables import TableSet, point_in_time_join  # noqa: E402
from longtail.io import atomic_path, atomic_write_text  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def csv_copy(raw: Path, out: Path) -> None:
    """The raw parquet files as CSV (what a user exporting from a database often has)."""
    out.mkdir(parents=True, exist_ok=True)
    for p in raw.glob("*.parquet"):
        pd.read_parquet(p).to_csv(out / f"{p.stem}.csv", index=False)


def variant(spec: ImportSpec, *, csv: bool = False, per_event: bool = False) -> ImportSpec:
    d = spec.to_dict()
    tables = [d["events"], *d["profiles"], *d["sequences"]]
    if csv:
        for t in tables:
            t["path"] = t["path"].replace(".parquet", ".csv")
    if per_event:
        for t in [*d["profiles"], d["sequences"][0]]:  # the flight profile and the aircraft log
            t["refresh"] = ""
    return ImportSpec.from_dict(d)


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="January only, one repeat")
    p.add_argument("--repeats", type=int, help="runs per variant (median; default 3, quick 1)")
    args = p.parse_args(argv)
    months = (1,) if args.quick else None
    repeats = args.repeats or (1 if args.quick else 3)
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-import-") as tmp:
        tmp = Path(tmp)
        raw = tmp / "raw"
        F.export_raw(raw, months=months)
        csv_copy(raw, raw)
        spec = F.flights_import_spec()
        inputs = {name: len(pd.read_parquet(raw / name)) for name in
                  ("events.parquet", "flight_profile.parquet", "landings.parquet", "weather.parquet")}
        n_rows = sum(inputs.values())
        runs = [("parquet, refresh", variant(spec)), ("csv, refresh", variant(spec, csv=True)),
                ("parquet, per event", variant(spec, per_event=True))]
        for label, s in runs:
            out = tmp / label.replace(", ", "-").replace(" ", "_")
            seconds, ts = timed(lambda s=s, out=out: import_tables(s, out, base_dir=raw), repeats)
            meta = ts.manifest["meta"]
            rows.append({"variant": label, "seconds": seconds, "events": meta["events"], "input_rows": n_rows,
                         "input_rows_per_s": n_rows / seconds, "events_per_s": meta["events"] / seconds,
                         "snapshot_rows": sum(v for k, v in ts.manifest["rows"].items() if k != "events"),
                         "events_without_aircraft_history": meta["coverage"]["aircraft"]["events_without_history"]})
        base = tmp / "parquet-refresh"
        seconds, joined = timed(lambda: point_in_time_join(TableSet.load(base)), repeats)
        rows.append({"variant": "join", "seconds": seconds, "events": len(joined), "input_rows": None,
                     "input_rows_per_s": None, "events_per_s": len(joined) / seconds, "snapshot_rows": None,
                     "events_without_aircraft_history": int((joined["aircraft__landed_at"].map(len) == 0).sum())})
    load_after = os.getloadavg()
    df = pd.DataFrame(rows)
    df["ratio_to_parquet_refresh"] = df["seconds"] / df.loc[0, "seconds"]
    stem = "import_quick" if args.quick else "import"
    RESULTS.mkdir(parents=True, exist_ok=True)
    with atomic_path(RESULTS / f"{stem}.csv") as f:
        df.to_csv(f, index=False)
    lines = [
        f"# `longtail data import` on flights ({'January' if args.quick else 'all 12 months'})",
        "",
        f"`python bench/import.py{' --quick' if args.quick else ''}`: median of {repeats} run(s) per variant, one "
        f"process, {os.cpu_count()} CPU(s); load average (1, 5, 15 min) {tuple(round(x, 2) for x in load_before)} "
        f"before, {tuple(round(x, 2) for x in load_after)} after. Inputs: "
        + ", ".join(f"{k} {v:,}" for k, v in inputs.items()) + " rows.",
        "",
        "| variant | seconds | × parquet, refresh | input rows/s | events/s | snapshot rows | events without "
        "aircraft history |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in df.itertuples():
        def num(v, fmt="{:,.0f}"):
            return "—" if v is None or pd.isna(v) else fmt.format(v)
        lines.append(f"| {r.variant} | {r.seconds:.2f} | {r.ratio_to_parquet_refresh:.2f} | {num(r.input_rows_per_s)} "
                     f"| {num(r.events_per_s)} | {num(r.snapshot_rows)} | {r.events_without_aircraft_history:,} |")
    lines += ["", "Variants: see the docstring of `bench/import.py`. Per event: the aircraft log and the flight "
              "profile without `refresh`, so a landing is in the history of every flight after it, not only from "
              "the next full hour on.", ""]
    atomic_write_text(RESULTS / f"{stem}.md", "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
