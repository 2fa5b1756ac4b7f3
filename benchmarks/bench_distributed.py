"""Benchmark a sharded data-set pass of ``convscope.distributed`` with 1 and 2 processes under
torchrun (CPU, gloo).

Run:  .venv/bin/python benchmarks/bench_distributed.py [--job top-examples] [--runs 3]
      [--images 4000] [--width 16] [--procs 1,2]

Jobs (``--job``), on the zoo ResNet (random weights, seed 0) of ``--width`` and ``--images``
Shapes test images (32 x 32):

* ``top-examples``: top 9 per channel with crops for ``layer1`` and ``layer2``
  (``top_examples_sharded``);
* ``attributions``: all seven attribution methods with their metrics
  (``attributions_sharded``, Grad-CAM / Score-CAM at ``layer3``);
* ``diagnosis``: the mergeable statistics of every activation output and the report
  (``diagnose_sharded``).

Each worker runs with one
thread (torchrun sets ``OMP_NUM_THREADS=1``); the time is measured inside the workers from a
barrier after the data is rendered to the end of the gather and merge (rank 0's clock), so
process start-up is excluded (it is reported apart as the launch's wall time). Baseline: the same
pass in one process under torchrun. Also a row for one plain process with 2 threads, the
alternative to spending the second core on a second process. Prints a markdown table of medians.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

LAYERS = ("layer1", "layer2")


def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    import convscope as cs
    from convscope.distributed import (
        attributions_sharded,
        diagnose_sharded,
        rank_world,
        top_examples_sharded,
    )
    from convscope.zoo import resnet

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("gloo")
    if args.threads:
        torch.set_num_threads(args.threads)
    rank, world = rank_world()
    torch.manual_seed(0)
    model = resnet(width=args.width).eval()
    images = cs.data.Shapes(n=args.images, split="test").tensors()[0]
    if world > 1:
        dist.barrier()
    t0 = time.perf_counter()
    if args.job == "top-examples":
        for layer in LAYERS:
            top_examples_sharded(model, layer, images, k=9, quiet=True)
    elif args.job == "attributions":
        attributions_sharded(model, images, layer="layer3", quiet=True)
    else:
        diagnose_sharded(model, images, quiet=True)
    seconds = time.perf_counter() - t0
    if rank == 0:
        print("RESULT " + json.dumps({"seconds": seconds, "world": world,
                                      "threads": torch.get_num_threads()}))
    if world > 1:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(nproc: int, args: argparse.Namespace, threads: int | None = None
           ) -> tuple[float, float]:
    """(seconds inside the workers, wall seconds of the whole launch)."""
    me = str(Path(__file__).resolve())
    opts = ["--worker", "--images", str(args.images), "--width", str(args.width),
            "--job", args.job]
    if threads:
        cmd = [sys.executable, me, *opts, "--threads", str(threads)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               "--master_addr=127.0.0.1", f"--master_port={_free_port()}", me, *opts]
    # torchrun sets OMP_NUM_THREADS=1 only with several processes: pin it for every launch, so
    # "1 process x 1 thread" is one thread (the plain 2-thread row overrides it)
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"worker failed:\n{res.stderr[-3000:]}")
    line = next(x for x in res.stdout.splitlines() if x.startswith("RESULT "))
    out = json.loads(line[len("RESULT "):])
    if out["threads"] != (threads or 1):
        raise SystemExit(f"worker ran {out['threads']} threads, expected {threads or 1}")
    return out["seconds"], wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--job", default="top-examples",
                   choices=["top-examples", "attributions", "diagnosis"])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--images", type=int, default=4000)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--procs", default="1,2")
    p.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    procs = [int(x) for x in args.procs.split(",")]
    setups = [*((f"{n} process{'es' if n > 1 else ''} x 1 thread (torchrun)", n, None)
                for n in procs), ("1 process x 2 threads (plain)", 1, 2)]
    inner: list[list[float]] = [[] for _ in setups]
    walls: list[list[float]] = [[] for _ in setups]
    for _ in range(args.runs):  # interleaved rounds: a slow spell of the machine hits them all
        for i, (_, nproc, threads) in enumerate(setups):
            s, w = launch(nproc, args, threads)
            inner[i].append(s)
            walls[i].append(w)
    rows = [(label, statistics.median(inner[i]), statistics.median(walls[i]), inner[i])
            for i, (label, _, _) in enumerate(setups)]
    paired = [statistics.median(b / x for b, x in zip(inner[0], inner[i], strict=True))
              for i in range(len(setups))]
    base = rows[0][1]
    print(f"command: `{' '.join([Path(sys.executable).name, *sys.argv])}`  ")
    print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores, "
          f"{platform.system()}, Python {platform.python_version()}  ")
    print(f"date: {dt.datetime.now().isoformat(timespec='minutes')}  ")
    what = {"top-examples": f"top 9 with crops of {', '.join(LAYERS)}",
            "attributions": "all 7 attribution methods + metrics (CAMs at layer3)",
            "diagnosis": "diagnosis statistics of every activation output + report"}[args.job]
    print(f"workload: zoo ResNet width {args.width}, {args.images} Shapes images 32x32, {what}; "
          f"medians of {args.runs} runs\n")
    print("| setup | pass (s, median) | speed-up vs 1 process (medians) | speed-up, median of "
          "per-round ratios | launch wall (s) | runs (s) |")
    print("|---|---:|---:|---:|---:|---|")
    for (label, med, wall, runs), pr in zip(rows, paired, strict=True):
        print(f"| {label} | {med:.2f} | {base / med:.2f}x | {pr:.2f}x | {wall:.1f} | "
              f"{', '.join(f'{x:.2f}' for x in runs)} |")


if __name__ == "__main__":
    main()
