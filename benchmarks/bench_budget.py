"""Seconds of each long ``run.log_*`` call against its stated budget (issue 14, item 2).

    .venv/bin/python benchmarks/bench_budget.py                  # resnet50, 8 images at 224²
    .venv/bin/python benchmarks/bench_budget.py --models resnet50,convnext_tiny,\
efficientnet_b0,regnet_y_800mf --runs 3
    .venv/bin/python benchmarks/bench_budget.py --size 64 --images 2 --quick   # a smoke run
    .venv/bin/python benchmarks/bench_budget.py --calls log_preferred_inputs --baseline \
--no-full --baseline-steps 4     # seconds per optimisation step, before and today

Each call runs ``--runs`` times on a torchvision model with random weights (nothing
downloads) and random images, each time into a fresh run, with today's defaults; the table
gives the median wall seconds, the median CPU seconds of the process (``time.process_time``:
on a busy machine wall time inflates, CPU time much less), the stated budget
(:data:`convscope.record.budget.BUDGETS`; per layer and per image where it says so) and the
budget warnings the call emitted.

``--baseline`` also measures, in the same process, the defaults before issue 14: ``log_model``
with 10 repeats and 2 warm-up passes, ``log_feature_maps`` with every leaf and block down to
depth 2, and ``log_preferred_inputs`` at the model's 224² with 256 steps (seconds per step from the
difference of ``--baseline-steps`` k and 2k steps, scaled to 256, since the full call takes
many minutes; today's defaults are scaled the same way to 128 steps); the ratio is today's /
before.

Preferred inputs use the demo's layers (``FEATURE_LAYERS``) for ResNets and three layers (stem,
middle, last stage) for the others, 16 units each; top examples the same layers but the last,
whose receptive-field crops are whole images (~9 GB in memory for resnet50's
``layer4.0.conv2`` at 224², see ``bench_run_size.py``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable

os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

import convscope as cs  # noqa: E402
from convscope.nn.budget import BudgetWarning  # noqa: E402
from convscope.record.budget import BUDGETS, TOP_EXAMPLES_PER_IMAGE  # noqa: E402

LAYERS = {
    "resnet50": ["conv1", "layer1.0.conv2", "layer2.0.conv2", "layer3.0.conv2",
                 "layer4.0.conv2"],
    "convnext_tiny": ["features.0.0", "features.3.0.block.0", "features.7.0.block.0"],
    "efficientnet_b0": ["features.0.0", "features.4.0.block.1.0", "features.8.0"],
    "regnet_y_800mf": ["stem.0", "trunk_output.block2.block2-0.f.b.0",
                       "trunk_output.block4.block4-0.f.b.0"],
}


def measure(fn: Callable[[], object], runs: int) -> tuple[float, float, int]:
    """Median wall and CPU seconds of ``runs`` calls, and the budget warnings of the first."""
    walls, cpus, warned = [], [], 0
    for i in range(runs):
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            walls.append(time.perf_counter() - w0)
            cpus.append(time.process_time() - c0)
        if i == 0:
            warned = sum(issubclass(r.category, BudgetWarning) for r in rec)
    return statistics.median(walls), statistics.median(cpus), warned


def old_map_layers(model: torch.nn.Module, x: torch.Tensor) -> list[str]:
    """``log_feature_maps(layers=None)`` before issue 14: every leaf and every block down to
    depth 2 whose output is a 4-D map."""
    from convscope.model import capture

    with torch.no_grad():
        probe = capture(model, x[:1], lambda name, m: name.count(".") <= 1 or
                        len(list(m.children())) == 0, clone=False)
    return [k for k, v in probe.items() if isinstance(v, torch.Tensor) and v.dim() == 4]


def bench(name: str, args: argparse.Namespace) -> list[tuple]:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    x = torch.randn(args.images, 3, args.size, args.size)
    layers = LAYERS.get(name, LAYERS["resnet50"])
    if args.quick:
        layers = layers[:2]
    n = args.images
    rows = []
    tmp = tempfile.mkdtemp(prefix="bench-budget-")
    counter = iter(range(10**6))

    def in_run(call: Callable[[cs.Run], object]) -> Callable[[], object]:
        def go() -> object:
            with cs.Run(tmp, f"{name}-{next(counter)}", quiet=True) as run:
                return call(run)
        return go

    steps = 4 if args.quick else None
    # the last stage's receptive-field crops are whole images: at 224² ~1.5 GB in the run and
    # ~9 GB in memory for resnet50's layer4.0.conv2 (benchmarks/bench_run_size.py): left out
    top_layers = layers[:-1] if len(layers) > 1 else layers
    calls = [
        ("log_model", BUDGETS["log_model"], lambda r: r.log_model(model, x, quiet=True)),
        ("log_feature_maps", BUDGETS["log_feature_maps"],
         lambda r: r.log_feature_maps(model, x, quiet=True)),
        ("log_diagnosis", BUDGETS["log_diagnosis"], lambda r: r.log_diagnosis(model, x,
                                                                            quiet=True)),
        ("log_preferred_inputs", BUDGETS["log_preferred_inputs"] * len(layers),
         lambda r: r.log_preferred_inputs(model, layers, max_units=16, steps=steps,
                                          quiet=True)),
        ("log_top_examples", (BUDGETS["log_top_examples"] + TOP_EXAMPLES_PER_IMAGE * n)
         * len(top_layers), lambda r: r.log_top_examples(model, top_layers, x, k=9,
                                                         quiet=True)),
    ]
    calls = [c for c in calls if c[0] in args.calls and args.full]
    for call, budget, fn in calls:
        wall, cpu, warned = measure(in_run(fn), args.runs)
        rows.append((name, call, wall, cpu, budget, warned, None))
        print(f"{name:16s} {call:22s} {wall:8.1f} s wall {cpu:8.1f} s CPU  budget "
              f"{budget:5.0f} s  warnings {warned}", flush=True)
    if args.baseline:
        from convscope.model import graph, profile

        def old_model() -> None:
            graph(model, x)
            profile(model, x, repeat=10, warmup=2, quiet=True)

        old = old_map_layers(model, x)
        base = [
            ("log_model", old_model),
            ("log_feature_maps", in_run(lambda r: r.log_feature_maps(model, x, old,
                                                                     quiet=True))),
        ]
        for call, fn in [b for b in base if b[0] in args.calls and args.full]:
            wall, cpu, _ = measure(fn, args.runs)
            new = next(r for r in rows if r[1] == call)
            print(f"{name:16s} {call:22s} before: {wall:8.1f} s wall {cpu:8.1f} s CPU; "
                  f"today / before = {new[2] / wall:.2f} (wall) {new[3] / cpu:.2f} (CPU)"
                  + (f" [{len(old)} layers before]" if call == "log_feature_maps" else ""),
                  flush=True)
        k = args.baseline_steps
        for label, size, full in (("before (224², 256 steps)", None, 256),
                                  ("today (128², 128 steps)", 128, 128)):
            if "log_preferred_inputs" not in args.calls:
                break
            opts = {} if size is None else {"size": size}
            # seconds per step = the slope between k and 2k steps (the probes, the first
            # step's set-up and the final values cancel)
            timed = [measure(in_run(lambda r, o=opts, s=s: r.log_preferred_inputs(
                model, layers, max_units=16, steps=s, quiet=True, **o)), args.runs)
                for s in (k, 2 * k)]
            wall = (timed[1][0] - timed[0][0]) / k
            cpu = (timed[1][1] - timed[0][1]) / k
            fixed = timed[0][0] - wall * k
            print(f"{name:16s} log_preferred_inputs   {label}: {wall:.2f} s/step wall, "
                  f"{cpu:.2f} s/step CPU over {len(layers)} layers -> ~{fixed + wall * full:.0f}"
                  f" s wall, ~{timed[0][1] - cpu * k + cpu * full:.0f} s CPU", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="resnet50")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--runs", type=int, default=1, help="runs per call (median)")
    ap.add_argument("--baseline", action="store_true", help="also the defaults before")
    ap.add_argument("--baseline-steps", type=int, default=4)
    ap.add_argument("--quick", action="store_true", help="2 layers, 4 steps: a smoke run")
    ap.add_argument("--calls", default="log_model,log_feature_maps,log_diagnosis,"
                    "log_preferred_inputs,log_top_examples", help="which calls to measure")
    ap.add_argument("--no-full", dest="full", action="store_false",
                    help="skip the full calls: with --baseline, only the per-step "
                    "preferred-input slopes")
    args = ap.parse_args()
    args.calls = set(args.calls.split(","))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; {args.images} images at "
          f"{args.size}², {args.runs} run(s) per call", flush=True)
    rows = []
    for name in args.models.split(","):
        rows += bench(name.strip(), args)
    print("\n| model | call | wall s | CPU s | budget s | within | warnings |")
    print("|---|---|---:|---:|---:|---|---:|")
    for name, call, wall, cpu, budget, warned, _ in rows:
        print(f"| {name} | {call} | {wall:.1f} | {cpu:.1f} | {budget:.0f} | "
              f"{'yes' if wall <= budget else 'NO'} | {warned} |")
    print(f"\nload at the end {os.getloadavg()[0]:.1f}", file=sys.stderr)


if __name__ == "__main__":
    main()
