"""Store write throughput and read latency.

    .venv/bin/python benchmarks/bench_store.py [--rows 2000000] [--repeat 5]

Measures, medians over ``--repeat`` runs:
- ``run.log_scalars`` throughput (rows/s) as a training loop sees it (the call returns once the
  row is queued) and until durable (``close()`` included);
- bulk ``run.log_rows`` throughput (columnar appends, the path watch/validation use);
- bytes on disk per scalar;
- DuckDB fetch of one series and of per-100-step means;
- baseline measured in the same run: writing the same rows as one Parquet file with pyarrow
  directly (the floor for the format), and appending them as CSV lines with Python's csv module.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import convscope as cs
from convscope.store.layout import dir_size


def _median(xs):
    return statistics.median(xs)


def bench(rows: int, repeat: int, tags: int) -> dict[str, list[float]]:
    res: dict[str, list[float]] = {k: [] for k in (
        "log_scalars_call", "log_scalars_durable", "log_rows", "bytes_per_row", "series_ms",
        "bucket_ms", "arrow_direct", "csv",
    )}
    steps = rows // tags
    names = [f"layer{i}.stat" for i in range(tags)]
    values = np.random.default_rng(0).normal(size=(steps, tags))
    for _ in range(repeat):
        root = Path(tempfile.mkdtemp(prefix="cs-bench-"))
        try:
            # per-step dict logging, as a training loop does
            run = cs.Run(root, "scalars")
            t0 = time.perf_counter()
            for s in range(steps):
                run.log_scalars(s, dict(zip(names, values[s].tolist(), strict=True)))
            t1 = time.perf_counter()
            run.close()
            t2 = time.perf_counter()
            res["log_scalars_call"].append(steps * tags / (t1 - t0))
            res["log_scalars_durable"].append(steps * tags / (t2 - t0))
            res["bytes_per_row"].append(dir_size(root / "scalars" / "tables") / (steps * tags))
            reader = cs.open_run(root / "scalars")
            t0 = time.perf_counter()
            reader.query("SELECT step, value FROM scalars WHERE tag = ? ORDER BY step", [names[3]])
            res["series_ms"].append((time.perf_counter() - t0) * 1e3)
            t0 = time.perf_counter()
            reader.query(
                "SELECT tag, step // 100 AS b, avg(value) FROM scalars GROUP BY tag, b"
            )
            res["bucket_ms"].append((time.perf_counter() - t0) * 1e3)

            # columnar appends
            run = cs.Run(root, "rows")
            chunk = 10_000
            flat_steps = np.repeat(np.arange(steps), tags)
            flat_tags = np.tile(np.array(names, dtype=object), steps)
            flat_vals = values.reshape(-1)
            t0 = time.perf_counter()
            for i in range(0, steps * tags, chunk):
                run.log_rows("scalars", {
                    "step": flat_steps[i:i + chunk], "tag": flat_tags[i:i + chunk],
                    "value": flat_vals[i:i + chunk],
                })
            run.close()
            res["log_rows"].append(steps * tags / (time.perf_counter() - t0))

            # baselines: pyarrow straight to one file; csv module
            t0 = time.perf_counter()
            table = pa.table({"step": flat_steps, "tag": flat_tags.astype(str), "value": flat_vals})
            pq.write_table(table, root / "direct.parquet", compression="zstd")
            res["arrow_direct"].append(steps * tags / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            with open(root / "rows.csv", "w", newline="") as fh:
                w = csv.writer(fh)
                for s in range(steps):
                    for j in range(tags):
                        w.writerow((s, names[j], values[s, j]))
            res["csv"].append(steps * tags / (time.perf_counter() - t0))
        finally:
            shutil.rmtree(root, ignore_errors=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--tags", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    res = bench(args.rows, args.repeat, args.tags)
    m = {k: _median(v) for k, v in res.items()}
    print(f"### Store ({date.today()}, {platform.node()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()})\n")
    print(f"`{' '.join([Path(sys.executable).name, *sys.argv])}` — {args.rows:,} scalar rows "
          f"({args.tags} tags per step), median of {args.repeat}\n")
    print("| measure | median | vs csv module |")
    print("|---|---|---|")
    for key, label in [
        ("log_scalars_call", "`run.log_scalars` per-step dict, call returns (rows/s)"),
        ("log_scalars_durable", "`run.log_scalars` until `close()` durable (rows/s)"),
        ("log_rows", "`run.log_rows` 10k-row columnar appends, durable (rows/s)"),
        ("arrow_direct", "baseline: pyarrow one file, zstd (rows/s)"),
        ("csv", "baseline: Python csv module (rows/s)"),
    ]:
        print(f"| {label} | {m[key]:,.0f} | {m[key] / m['csv']:.2f}× |")
    print(f"| bytes on disk per scalar | {m['bytes_per_row']:.2f} | |")
    print(f"| DuckDB: one series ({args.rows // args.tags:,} points) | {m['series_ms']:.1f} ms | |")
    print(f"| DuckDB: per-100-step means of every tag | {m['bucket_ms']:.1f} ms | |")


if __name__ == "__main__":
    main()
