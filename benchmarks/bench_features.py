"""Benchmark cs.features.maximize (batched vs one unit at a time) and top_examples on the CPU.

Run:  .venv/bin/python benchmarks/bench_features.py [--runs 3] [--threads 1] [--units 64]
      [--steps 64] [--size 64] [--single 3] [--quick]

Workload of the issue: torchvision resnet18 (random weights), ``layer3``, 64 units, 64 x 64
inputs, 64 steps. Baselines measured in the same run: one forward + backward to the input at
batch 64 (the full network, as a plain activation-maximisation loop pays, and truncated after
``layer3``, which is what ``maximize`` runs by default with ``stop_early=True``), and
``maximize`` one unit at a time for ``--single`` units. Also seconds per unit on the demo model
(zoo ResNet width 16, 32 x 32, ``layer2.0.conv2``, 16 units, default 256 steps) and one
``top_examples`` pass. Prints a markdown table of medians.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time

import torch
import torchvision
from device import add_device_arg, describe, device, sync  # benchmarks/device.py

import convscope as cs

DEV = torch.device("cpu")  #: --device


def timed(fn, runs: int) -> tuple[float, list[float]]:  # noqa: ANN001
    times = []
    for _ in range(runs):
        sync(DEV)
        t0 = time.perf_counter()
        fn()
        sync(DEV)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def fwd_bwd(model: torch.nn.Module, x: torch.Tensor, layer: str | None) -> None:
    """One forward and a backward to the input only (no parameter gradients)."""
    x = x.detach().requires_grad_(True)
    if layer is None:
        out = model(x)
        score = out[:, 0].sum()
    else:
        out = cs.model.capture(model, x, layer, no_grad=False, clone=False)[layer]
        score = out[:, 0].mean((1, 2)).sum()
    torch.autograd.grad(score, x)


class Truncated(torch.nn.Module):
    """torchvision resnet18 up to layer3 (what maximize runs with stop_early=True)."""

    def __init__(self, m: torch.nn.Module) -> None:
        super().__init__()
        self.m = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.m
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        return m.layer3(m.layer2(m.layer1(x)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="runs per measurement (median reported)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--units", type=int, default=64)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--single", type=int, default=3, help="units timed one at a time")
    ap.add_argument("--quick", action="store_true", help="1 run, 16 units, 16 steps")
    add_device_arg(ap)
    args = ap.parse_args()
    global DEV
    DEV = device(args.device)
    if args.quick:
        args.runs, args.units, args.steps, args.single = 1, 16, 16, 2
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows: list[tuple[str, str, str, str, str]] = []

    # -- torchvision resnet18, layer3 ------------------------------------------------------------
    model = torchvision.models.resnet18(weights=None).eval().to(DEV)
    n, steps, size = args.units, args.steps, args.size
    x = torch.rand(n, 3, size, size).to(DEV)
    x1 = torch.rand(1, 3, size, size).to(DEV)
    fwd_bwd(model, x, None)  # warm up
    trunc = Truncated(model).eval()
    units = list(range(n))
    kw = dict(steps=steps, size=size, quiet=True, **cs.features.IMAGENET)
    # interleaved, so that load drifts on a shared machine hit baseline and candidate alike:
    # per run, the floor (`steps` forward+backward passes at batch n, run as a loop), the batched
    # maximize, and maximize one unit at a time
    floors, batched, singles, fb1, trs = [], [], [], [], []
    for r in range(args.runs):
        floors.append(timed(lambda: [fwd_bwd(model, x, None) for _ in range(steps)], 1)[0])
        batched.append(timed(lambda: cs.features.maximize(model, "layer3", units, **kw), 1)[0])
        singles.append(timed(
            lambda: [cs.features.maximize(model, "layer3", [u], **kw)
                     for u in units[: args.single]], 1)[0] / args.single)
        fb1.append(timed(lambda: fwd_bwd(model, x1, None), 4)[0])
        trs.append(timed(lambda: fwd_bwd(trunc, x, None), 2)[0])
        print(f"run {r + 1} done", file=sys.stderr)
    med = statistics.median
    floor, t_batch, per_unit_single = med(floors), med(batched), med(singles)
    r_floor = med([b / f for b, f in zip(batched, floors, strict=True)])
    r_single = med([s * n / b for s, b in zip(singles, batched, strict=True)])
    t_fb, t_tr = floor / steps, med(trs)
    rows += [
        (f"resnet18 fwd+bwd to input, batch {n}, {size}²", f"{t_fb:.3f}", "", "",
         f"batch 1: {med(fb1) * 1000:.1f} ms; up to layer3 only: {t_tr:.3f} s"),
        (f"maximize {n} units batched, {steps} steps", f"{t_batch:.2f}",
         f"{floor:.2f} ({steps} × fwd+bwd@{n}, looped)", f"{r_floor:.2f}×",
         f"vs {steps} × truncated fwd+bwd ({steps * t_tr:.2f} s): {t_batch / (steps * t_tr):.2f}×"),
        (f"maximize one unit at a time ({args.single} units), per unit", f"{per_unit_single:.2f}",
         "", "", f"projected {n} units: {per_unit_single * n:.1f} s"),
        ("speed-up batched vs one at a time", f"{r_single:.1f}×", "", "",
         f"per unit batched: {t_batch / n:.3f} s"),
    ]

    # -- demo model -------------------------------------------------------------------------------
    demo = cs.zoo.resnet(width=16).eval().to(DEV)
    d_units = list(range(16))
    t_demo, _ = timed(
        lambda: cs.features.maximize(demo, "layer2.0.conv2", d_units, quiet=True), args.runs
    )
    rows.append(("demo ResNet w16, layer2.0.conv2, 16 units, 256 steps, 32²", f"{t_demo:.2f}", "",
                 "", f"{t_demo / 16:.3f} s per unit"))
    imgs, _, _ = cs.data.Shapes(n=2000, split="test").tensors()
    imgs = imgs.to(DEV)
    t_top, _ = timed(
        lambda: cs.features.top_examples(demo, "layer2", imgs, k=9, batch_size=200, quiet=True),
        args.runs,
    )
    t_fwd, _ = timed(lambda: cs.model.capture(demo, imgs, "layer2"), args.runs)
    rows.append(("top_examples demo layer2, 2,000 images, k=9", f"{t_top:.2f}",
                 f"{t_fwd:.2f} (one capture pass)", f"{t_top / t_fwd:.2f}×", "crops kept"))

    cmd = "python benchmarks/bench_features.py " + " ".join(sys.argv[1:])
    print(f"command: `{cmd.strip()}`  ")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s), load average {os.getloadavg()[0]:.1f}, "
        f"device {describe(DEV)}  "
    )
    print(f"date: {dt.datetime.now().isoformat(timespec='seconds')}; medians of {args.runs} runs  ")
    print()
    print("| task | median s | baseline (same run) s | ratio | notes |")
    print("|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
