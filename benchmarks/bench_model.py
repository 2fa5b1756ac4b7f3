"""Benchmark cs.model.graph, cs.profile and cs.embed.pca on the CPU.

Run:  .venv/bin/python benchmarks/bench_model.py [--runs 3] [--size 224] [--profile-size 128]
      [--threads 1] [--quick]

Prints a markdown table: medians over --runs runs, each next to a baseline measured in the same
run (one plain no-grad forward pass for the model rows, scikit-learn's PCA (its default solver,
randomised for this shape, BLAS limited to the same thread count) for the PCA rows), and
the profile's timing coverage (sum of leaf forward times / whole forward, the figure the issue asks
to be within 15 %).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch
import torchvision
from sklearn.decomposition import PCA
from threadpoolctl import threadpool_limits

import convscope as cs


def timed(fn, runs: int) -> tuple[float, list[float], object]:  # noqa: ANN001
    out = None
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, out


def fmt(s: float) -> str:
    return f"{s:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="runs per measurement (median reported)")
    ap.add_argument("--size", type=int, default=224, help="image size for graph extraction")
    ap.add_argument("--profile-size", type=int, default=128, help="image size for cs.profile")
    ap.add_argument("--profile-repeat", type=int, default=5, help="cs.profile(repeat=...)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--quick", action="store_true", help="resnet50 only, smaller PCA")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    rows: list[tuple[str, str, str, str, str]] = []
    models = ["resnet50"] if args.quick else ["resnet50", "resnet152"]
    for name in models:
        model = getattr(torchvision.models, name)(weights=None).eval()
        x = torch.randn(1, 3, args.size, args.size)
        with torch.no_grad():
            model(x)  # warm-up
            base, _, _ = timed(lambda m=model, x=x: m(x), args.runs)
        t_fx, _, g = timed(lambda m=model, x=x: cs.model.graph(m, x), args.runs)
        t_hooks, _, gh = timed(lambda m=model, x=x: cs.model.graph(m, x, method="hooks"), args.runs)
        rows.append(
            (f"graph {name} (fx) [1,3,{args.size},{args.size}]", fmt(t_fx),
             f"forward {fmt(base)}", f"{t_fx / base:.1f}x", f"{len(g)} nodes, {len(g.edges)} edges")
        )
        rows.append(
            (f"graph {name} (hooks) [1,3,{args.size},{args.size}]", fmt(t_hooks),
             f"forward {fmt(base)}", f"{t_hooks / base:.1f}x", f"{len(gh)} nodes")
        )
        xp = torch.randn(1, 3, args.profile_size, args.profile_size)
        with torch.no_grad():
            pbase, _, _ = timed(lambda m=model, x=xp: m(x), args.runs)
        t_prof, _, df = timed(
            lambda m=model, x=xp: cs.profile(m, x, repeat=args.profile_repeat, warmup=1),
            args.runs,
        )
        a = df.attrs
        rows.append(
            (
                f"profile {name} fwd+bwd [1,3,{args.profile_size},{args.profile_size}] "
                f"repeat={args.profile_repeat}",
                fmt(t_prof),
                f"forward {fmt(pbase)}",
                f"{t_prof / pbase:.0f}x",
                f"leaf fwd sum {a['leaf_forward_sum_s']:.4f}s / whole {a['whole_forward_s']:.4f}s"
                f" = {a['forward_coverage']:.3f}; bwd coverage {a['backward_coverage']:.3f}",
            )
        )
        print(f"done {name}", file=sys.stderr)

    n, d = (2000, 512) if args.quick else (10_000, 2048)
    g = torch.Generator().manual_seed(0)
    scales = 3.0 * 0.97 ** torch.arange(d, dtype=torch.float32)
    feats = (torch.randn(n, d, generator=g) * scales) @ torch.linalg.qr(torch.randn(d, d, generator=g))[0]
    xn = feats.numpy()
    with threadpool_limits(args.threads):  # scikit-learn's BLAS gets the same threads as torch
        t_sk, _, sk = timed(lambda: PCA(n_components=3).fit(xn), args.runs)
    proj_sk = sk.transform(xn)
    for method in ("covariance", "eigh", "lowrank"):
        t_cs, _, res = timed(lambda m=method: cs.embed.pca(feats, k=3, method=m), args.runs)
        corr = min(
            abs(np.corrcoef(res.projections[:, i].numpy(), proj_sk[:, i])[0, 1]) for i in range(3)
        )
        evr = float(np.abs(res.explained_variance_ratio.numpy() - sk.explained_variance_ratio_).max())
        rows.append(
            (f"pca {n}x{d} float32 k=3 ({method})", fmt(t_cs), f"scikit-learn {fmt(t_sk)}",
             f"{t_cs / t_sk:.2f}x", f"min abs corr {corr:.5f}, max EVR diff {evr:.1e}")
        )

    cmd = " ".join([".venv/bin/python", *sys.argv])
    print(f"command: `{cmd}`  ")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), torchvision {torchvision.__version__}, "
        f"Python {platform.python_version()}  "
    )
    print(f"date: {dt.datetime.now().isoformat(timespec='seconds')}; medians of {args.runs} runs  ")
    print()
    print("| task | median s | baseline (same run) s | ratio | notes |")
    print("|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
