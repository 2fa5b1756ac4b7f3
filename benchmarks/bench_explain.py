"""Benchmark cs.explain against its peers and against the cost of plain passes.

    .venv/bin/python benchmarks/bench_explain.py            # 5 repeats (Score-CAM: 5)
    .venv/bin/python benchmarks/bench_explain.py --quick    # 3 repeats (Score-CAM: 2)

Setting: torchvision resnet50 (random weights, seed 0), CPU, eval mode. Part 1: batch 8 at
224 x 224, layer4, one target per image. Part 2 (Score-CAM, which scores one masked input per
channel): 1 image at 64 x 64, layer3 (1024 channels, 4 x 4 maps), each library's default batch
size (pytorch-grad-cam 16, convscope automatic: 256 at this size); peak memory measured in a fresh child
process per implementation (resident set size sampled every 2 ms, minus the size just before the
call; with ``--device cuda``, the CUDA memory allocated above what was allocated before it).
``--device`` runs everything there (default cpu; clocks read after ``torch.cuda.synchronize``).

Every repeat runs every method once, in turn, so machine load drifts over all of them alike;
the table gives medians and ratios to the baselines measured in the same run.

Goals (issue 8): Grad-CAM, Grad-CAM++ <= 1.1x one forward pass and no slower than torchcam;
saliency, guided backprop, DeconvNet <= 1.05x forward + backward to the input without parameter
gradients; Score-CAM <= 0.5x pytorch-grad-cam's time, lower peak memory, correlation >= 0.99.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable

os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported: peers' bars off

import torch  # noqa: E402
import torchvision  # noqa: E402
from device import add_device_arg, describe, device, peak_extra, sync  # benchmarks/device.py

import convscope as cs  # noqa: E402

warnings.filterwarnings("ignore")

TARGETS8 = [1, 5, 7, 9, 11, 13, 17, 19]
DEV = torch.device("cpu")  #: --device


def resnet50(head_scale: float = 1.0) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval().to(DEV)
    with torch.no_grad():
        model.fc.weight.mul_(head_scale)
    return model


def timed(fn: Callable[[], object]) -> float:
    sync(DEV)
    t0 = time.perf_counter()
    fn()
    sync(DEV)
    return time.perf_counter() - t0


def pearson(a, b) -> torch.Tensor:
    a, b = torch.as_tensor(a).cpu(), torch.as_tensor(b).cpu()
    a = a.reshape(a.shape[0], -1).double()
    b = b.reshape(b.shape[0], -1).double()
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


def run_interleaved(methods: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    for fn in methods.values():  # warm-up (allocator, oneDNN primitives, auto-layer cache)
        fn()
    times: dict[str, list[float]] = {k: [] for k in methods}
    for r in range(repeats):
        for name, fn in methods.items():
            times[name].append(timed(fn))
        print(f"  repeat {r + 1}/{repeats} done", file=sys.stderr, flush=True)
    return times


# ------------------------------------------------------------------------------- part 1
def part1(repeats: int) -> list[str]:
    from captum.attr import Deconvolution, GuidedBackprop, Saliency
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from torchcam.methods import GradCAM as TcGradCAM
    from torchcam.methods import GradCAMpp as TcGradCAMpp

    model = resnet50()
    torch.manual_seed(1)
    x = torch.randn(8, 3, 224, 224).to(DEV)
    t = torch.tensor(TARGETS8, device=DEV)

    def forward() -> object:
        with torch.no_grad():
            return model(x)

    def fwd_bwd_input() -> object:
        flags = [p.requires_grad for p in model.parameters()]
        for p in model.parameters():
            p.requires_grad_(False)
        try:
            xi = x.clone().requires_grad_(True)
            out = model(xi)
            return torch.autograd.grad(out.gather(1, t[:, None]).sum(), xi)[0]
        finally:
            for p, f in zip(model.parameters(), flags, strict=True):
                p.requires_grad_(f)

    def torchcam(cls) -> Callable[[], object]:
        def run() -> object:
            with cls(model, target_layer="layer4") as extractor:
                out = model(x)
                return extractor(class_idx=TARGETS8, scores=out)

        return run

    pcam_targets = [ClassifierOutputTarget(i) for i in TARGETS8]

    def pcam(cls) -> Callable[[], object]:
        def run() -> object:
            with cls(model=model, target_layers=[model.layer4]) as extractor:
                return extractor(input_tensor=x, targets=pcam_targets)

        return run

    def captum(cls, **kw) -> Callable[[], object]:
        return lambda: cls(model).attribute(x.clone().requires_grad_(True), target=TARGETS8, **kw)

    methods: dict[str, Callable[[], object]] = {
        "forward, no grad (baseline F)": forward,
        "forward + backward to input, no param grads (baseline FB)": fwd_bwd_input,
        "convscope grad_cam": lambda: cs.explain.grad_cam(model, x, TARGETS8, layer="layer4"),
        "convscope grad_cam, layer=None": lambda: cs.explain.grad_cam(model, x, TARGETS8),
        "convscope grad_cam_pp": lambda: cs.explain.grad_cam_pp(model, x, TARGETS8, layer="layer4"),
        "torchcam GradCAM (incl. forward)": torchcam(TcGradCAM),
        "torchcam GradCAMpp (incl. forward)": torchcam(TcGradCAMpp),
        "pytorch-grad-cam GradCAM": pcam(GradCAM),
        "pytorch-grad-cam GradCAMPlusPlus": pcam(GradCAMPlusPlus),
        "convscope saliency": lambda: cs.explain.saliency(model, x, TARGETS8),
        "convscope guided_backprop": lambda: cs.explain.guided_backprop(model, x, TARGETS8),
        "convscope deconvnet": lambda: cs.explain.deconvnet(model, x, TARGETS8),
        "captum Saliency": captum(Saliency, abs=False),
        "captum GuidedBackprop": captum(GuidedBackprop),
        "captum Deconvolution": captum(Deconvolution),
    }
    times = run_interleaved(methods, repeats)
    med = {k: statistics.median(v) for k, v in times.items()}
    f = med["forward, no grad (baseline F)"]
    fb = med["forward + backward to input, no param grads (baseline FB)"]
    fmin = min(times["forward, no grad (baseline F)"])
    fbmin = min(times["forward + backward to input, no param grads (baseline FB)"])
    goals = {
        "convscope grad_cam": ("<= 1.1 F and <= torchcam", med["torchcam GradCAM (incl. forward)"]),
        "convscope grad_cam, layer=None": ("<= 1.1 F", None),
        "convscope grad_cam_pp": ("<= 1.1 F and <= torchcam", med["torchcam GradCAMpp (incl. forward)"]),
        "convscope saliency": ("<= 1.05 FB", None),
        "convscope guided_backprop": ("<= 1.05 FB", None),
        "convscope deconvnet": ("<= 1.05 FB", None),
    }
    rows = [
        "| method | median s | min–max s | × F | × FB | × F, mins | × FB, mins | goal (medians) | met |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, ts in times.items():
        goal, met = "", ""
        if name in goals:
            goal, peer = goals[name]
            ok = med[name] <= 1.1 * f if "F and" in goal or goal == "<= 1.1 F" else med[name] <= 1.05 * fb
            if peer is not None:
                ok = ok and med[name] <= peer
            met = "yes" if ok else "NO"
        rows.append(
            f"| {name} | {med[name]:.3f} | {min(ts):.3f}–{max(ts):.3f} | {med[name] / f:.2f} | "
            f"{med[name] / fb:.2f} | {min(ts) / fmin:.2f} | {min(ts) / fbmin:.2f} | {goal} | {met} |"
        )
    return rows


# ------------------------------------------------------------------------------- part 2
SC_LAYER = "layer3"
SC_SIZE = 64


def child_memory(impl: str) -> None:
    """Run one Score-CAM in this (fresh) process; print the peak extra RSS in bytes as JSON."""
    model = resnet50(100.0)
    torch.manual_seed(2)
    x = torch.randn(1, 3, SC_SIZE, SC_SIZE).to(DEV)
    with torch.no_grad():
        model(x)
    fn = _scorecam_impls(model, x)[impl]
    extra, what = peak_extra(fn, DEV)
    print(json.dumps({"peak_extra": extra, "what": what}))


def _scorecam_impls(model, x) -> dict[str, Callable[[], object]]:
    from pytorch_grad_cam import ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    layer = dict(model.named_modules())[SC_LAYER]

    def pcam() -> object:
        with ScoreCAM(model=model, target_layers=[layer]) as extractor:
            return extractor(input_tensor=x, targets=[ClassifierOutputTarget(3)])

    def ours() -> object:
        return cs.explain.score_cam(model, x, target=3, layer=SC_LAYER, quiet=True)

    return {"pytorch-grad-cam ScoreCAM": pcam, "convscope score_cam": ours}


def part2(repeats: int) -> list[str]:
    model = resnet50(100.0)  # O(1) score differences between masks: a sharp channel softmax
    torch.manual_seed(2)
    x = torch.randn(1, 3, SC_SIZE, SC_SIZE).to(DEV)
    impls = _scorecam_impls(model, x)
    maps = {k: fn() for k, fn in impls.items()}
    corr = {k: float(pearson(maps[k], maps["pytorch-grad-cam ScoreCAM"])[0]) for k in maps}
    times: dict[str, list[float]] = {k: [] for k in impls}
    for r in range(repeats):
        for k, fn in impls.items():
            times[k].append(timed(fn))
        print(f"  score-cam repeat {r + 1}/{repeats} done", file=sys.stderr, flush=True)
    mem = {}
    for k in impls:
        res = subprocess.run(
            [sys.executable, __file__, "--memory-child", k, "--device", str(DEV)],
            capture_output=True, text=True, check=True,
        )
        mem[k] = json.loads(res.stdout.strip().splitlines()[-1])["peak_extra"] / 2**20
    med = {k: statistics.median(v) for k, v in times.items()}
    ref = med["pytorch-grad-cam ScoreCAM"]
    rows = [
        f"| Score-CAM, 1 image {SC_SIZE}², resnet50 {SC_LAYER} (1024 ch), defaults | median s | min–max s | × pytorch-grad-cam "
        "| peak extra MB (RSS; CUDA: allocated) | r vs pytorch-grad-cam | goal met (<= 0.5x, less memory, r >= 0.99) |",
        "|---|---|---|---|---|---|---|",
    ]
    for k, ts in times.items():
        met = ""
        if k.startswith("convscope"):
            ok = med[k] <= 0.5 * ref and mem[k] < mem["pytorch-grad-cam ScoreCAM"] and corr[k] >= 0.99
            met = "yes" if ok else "NO"
        rows.append(
            f"| {k} | {med[k]:.2f} | {min(ts):.2f}–{max(ts):.2f} | {med[k] / ref:.2f} | {mem[k]:.0f} "
            f"| {corr[k]:.4f} | {met} |"
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--skip-scorecam", action="store_true")
    ap.add_argument("--only-scorecam", action="store_true")
    ap.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    add_device_arg(ap)
    args = ap.parse_args()
    global DEV
    DEV = device(args.device)
    if args.memory_child:
        child_memory(args.memory_child)
        return
    repeats = args.repeats or (3 if args.quick else 5)
    sc_repeats = args.repeats or (2 if args.quick else 5)
    load0 = os.getloadavg()
    t0 = time.time()
    out = [
        "## cs.explain benchmark",
        "",
        f"- command: `{' '.join([os.path.basename(sys.executable)] + sys.argv)}`",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), Python "
        f"{platform.python_version()}, device {describe(DEV)}",
        f"- load average at start: {load0[0]:.2f} / {load0[1]:.2f} / {load0[2]:.2f}",
        f"- repeats: {repeats} (Score-CAM: {sc_repeats}), medians; ratios to baselines of the same run",
        "",
    ]
    if not args.only_scorecam:
        out += [f"resnet50, batch 8, 224 × 224, {DEV}, one target per image, CAM layer `layer4`:",
                ""]
        out += part1(repeats)
        out.append("")
    if not args.skip_scorecam:
        out += part2(sc_repeats)
        out.append("")
    load1 = os.getloadavg()
    out.append(
        f"- load average at end: {load1[0]:.2f} / {load1[1]:.2f} / {load1[2]:.2f}; wall time "
        f"{time.time() - t0:.0f} s"
    )
    print("\n".join(out))


if __name__ == "__main__":
    main()
