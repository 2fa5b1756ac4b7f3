"""Time per epoch of ``convscope experiment resnet50-cifar10`` on this machine.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_experiment.py [--steps 12] [--repeats 3]
    PYTHONPATH=src .venv/bin/python benchmarks/bench_experiment.py --dcgan [--steps 3]

Trains :func:`convscope.zoo.resnet50_cifar` with the experiment's settings (SGD, batch 128,
channels-last, the shift-and-flip augmentation) on random 32 x 32 images for ``--steps``
optimiser steps after 2 warm-up steps, ``--repeats`` times, and reports the median seconds per
step and the implied time of one 50,000-image epoch (391 steps), with the same for the demo's
small ResNet (the baseline, measured in the same run). Random images cost what CIFAR-10's cost:
the time depends on the shapes only.

``--dcgan``: seconds per step of ``convscope experiment dcgan`` at the paper's settings (160 x 160,
batch 64, RMSprop, one discriminator and one generator update per step: ``train_gan``) for each of
the three rounds, on procedural faces, and the implied time of the paper's 15,000 steps; the demo
ResNet's step at batch 64 (32 x 32) is the baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time

import torch

from convscope.data import Faces
from convscope.experiments.dcgan import VERSIONS, train_gan
from convscope.experiments.resnet50_cifar10 import shift_flip
from convscope.zoo import dcgan_discriminator, dcgan_generator, resnet, resnet50_cifar


def _step_seconds(model: torch.nn.Module, steps: int, batch: int) -> float:
    model.train().to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))
    for i in range(steps + 2):
        if i == 2:
            t0 = time.perf_counter()
        xb = shift_flip(x, generator=g).contiguous(memory_format=torch.channels_last)
        loss = torch.nn.functional.cross_entropy(model(xb), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - t0) / steps


def _gan_step_seconds(version: tuple[int, int], steps: int, batch: int) -> float:
    torch.manual_seed(0)
    gen, disc = dcgan_generator(version[0]), dcgan_discriminator(version[1])
    real = Faces(n=batch * 2, size=160, seed=0).batch(range(batch * 2))

    def sample(g: torch.Generator) -> torch.Tensor:
        return real[torch.randint(0, len(real), (batch,), generator=g)]

    train_gan(gen, disc, sample, 1, batch_size=batch)  # warm-up
    t0 = time.perf_counter()
    train_gan(gen, disc, sample, steps, batch_size=batch)
    return (time.perf_counter() - t0) / steps


def dcgan(args: argparse.Namespace) -> None:
    names = [f"g{g}d{d}" for g, d in VERSIONS]
    times: dict[str, list[float]] = {n: [] for n in [*names, "demo resnet (width 16)"]}
    for _ in range(args.repeats):
        for name, v in zip(names, VERSIONS, strict=True):
            times[name].append(_gan_step_seconds(v, args.steps, 64))
        torch.manual_seed(0)
        times["demo resnet (width 16)"].append(_step_seconds(resnet(), args.steps, 64))
    base = statistics.median(times["demo resnet (width 16)"])
    print(f"| round | s / step (160 x 160, batch 64, median of {args.repeats} x {args.steps} "
          "steps) | min–max | the paper's 15,000 steps | × demo ResNet step (batch 64) |")
    print("|---|---:|---|---:|---:|")
    for name, ts in times.items():
        med = statistics.median(ts)
        hours = f"{med * 15000 / 3600:.1f} h" if name in names else "-"
        print(f"| {name} | {med:.3f} | {min(ts):.3f}–{max(ts):.3f} | {hours} | "
              f"{med / base:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--dcgan", action="store_true",
                    help="time the DCGAN experiment's step instead (160 x 160, batch 64)")
    args = ap.parse_args()
    print(f"# {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load {os.getloadavg()[0]:.1f}")
    if args.dcgan:
        dcgan(args)
        print(f"# load {os.getloadavg()[0]:.1f} at the end")
        return
    models = {"resnet50_cifar": resnet50_cifar, "demo resnet (width 16)": lambda: resnet()}
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(args.repeats):  # interleaved, so drift hits both alike
        for name, make in models.items():
            torch.manual_seed(0)
            times[name].append(_step_seconds(make(), args.steps, args.batch))
    base = statistics.median(times["demo resnet (width 16)"])
    steps_per_epoch = -(-50_000 // args.batch)
    print(f"| model | s / step (batch {args.batch}, median of {args.repeats}) | min–max | "
          f"one epoch of 50,000 ({steps_per_epoch} steps) | × demo ResNet |")
    print("|---|---:|---|---:|---:|")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {med:.3f} | {min(ts):.3f}–{max(ts):.3f} | "
              f"{med * steps_per_epoch / 60:.1f} min | {med / base:.1f} |")
    print(f"# load {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
