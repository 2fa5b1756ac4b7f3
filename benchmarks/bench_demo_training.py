"""Benchmark: the demo's training run end to end (data generation + training to >= 90 %).

    .venv/bin/python benchmarks/bench_demo_training.py [--repeats 3] [--threads N] [--small]

Prints a markdown table: data generation (vectorised ``Shapes.tensors()`` against the per-item
``Shapes[i]`` path measured in the same run), and for each demo run its wall time (data + fit),
the fit's time, the test accuracy and the torch threads used, with the medians and the ratio to
the goal of 300 s. The machine's 1-minute load average before and after is printed: other jobs on a
shared CPU change these figures a lot.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import statistics
import sys
import time

import torch

from convscope.data import Shapes
from convscope.training import DemoConfig, train_demo

GOAL_S = 300.0


def _load() -> str:
    try:
        return "/".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover
        return "n/a"


def bench_data(n: int, repeats: int) -> tuple[float, float]:
    """Median seconds for n images: vectorised path, and per-item path (scaled from n/10)."""
    vec, item = [], []
    for r in range(repeats):
        ds = Shapes(n=n, seed=100 + r)
        t = time.perf_counter()
        ds.tensors()
        vec.append(time.perf_counter() - t)
        m = max(1, n // 10)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        t = time.perf_counter()
        for i in range(m):
            ds[i]
        item.append((time.perf_counter() - t) * n / m)
        torch.set_num_threads(threads)
    return statistics.median(vec), statistics.median(item)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=1, help="demo training runs (about 2 min each)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: auto)")
    ap.add_argument("--small", action="store_true", help="DemoConfig.small(): seconds, no goal")
    args = ap.parse_args(argv)

    cfg = DemoConfig.small() if args.small else DemoConfig()
    if args.threads:
        cfg.num_threads = args.threads
    load_before = _load()
    n_data = cfg.n_train + cfg.n_test
    vec_s, item_s = bench_data(n_data, 3)

    runs = []
    for r in range(args.repeats):
        t = time.perf_counter()
        res = train_demo(cfg, quiet=True)
        wall = time.perf_counter() - t
        runs.append((wall, res.data_seconds, res.history.seconds, res.history.test_acc or 0.0,
                     res.history.num_threads))
        print(f"run {r + 1}: wall {wall:.1f} s, test acc {runs[-1][3]:.4f}", file=sys.stderr)
    load_after = _load()

    cmd = "python benchmarks/bench_demo_training.py " + " ".join(argv or sys.argv[1:])
    print("## Demo training benchmark\n")
    print(f"- command: `{cmd.strip()}`")
    print(f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"Python {platform.python_version()}")
    print(f"- date: {_dt.datetime.now().isoformat(timespec='seconds')}")
    print(f"- load average (1/5/15 min) before: {load_before}, after: {load_after}")
    print(f"- config: {cfg.to_dict()}\n")
    print(f"| data generation ({n_data} images, {cfg.size}x{cfg.size}) | s (median of 3) "
          "| ratio to per-item |")
    print("|---|---|---|")
    print(f"| per-item `Shapes[i]` (baseline, from n/10) | {item_s:.2f} | 1.00 |")
    print(f"| vectorised `Shapes.tensors()` | {vec_s:.2f} | {vec_s / item_s:.3f} |")
    print()
    print("| run | wall s (data + fit) | data s | fit s | test acc | threads | wall / 300 s goal |")
    print("|---|---|---|---|---|---|---|")
    for k, (wall, data_s, fit_s, acc, th) in enumerate(runs, 1):
        print(f"| {k} | {wall:.1f} | {data_s:.1f} | {fit_s:.1f} | {acc:.4f} | {th} "
              f"| {wall / GOAL_S:.2f} |")
    if runs:
        med = [statistics.median(x[i] for x in runs) for i in range(4)]
        print(f"| median | {med[0]:.1f} | {med[1]:.1f} | {med[2]:.1f} | {med[3]:.4f} | "
              f"| {med[0] / GOAL_S:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
