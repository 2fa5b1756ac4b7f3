"""Score-CAM: the fast mode on ResNet-50 layer4, and the exact mode against pytorch-grad-cam.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_scorecam.py          # full (issue 14)
    PYTHONPATH=src .venv/bin/python benchmarks/bench_scorecam.py --quick  # reduced: checks it runs

The full run takes about half an hour on a quiet 2-core CPU (most of it the exact maps of
resnet50 at 224², ~2,000 masked passes each, run by both libraries).

Part 1 (fast mode): torchvision resnet50 (random weights, seed 0, head x100 so scores differ by
O(1) between masks), ``layer4`` (2,048 channels, 7 x 7), ``--images`` images (8) at ``--size``
(224²), ``score_cam(..., channels=K)`` for ``K`` in ``--channels`` (default 128, the
``channels="auto"`` value); median of ``--repeats`` runs. Fidelity: per-image Pearson r of each
fast map against the exact map on the first ``--exact-images`` images (1: the exact mode takes
one masked forward pass per channel, ~2,000 per image; ``--exact-size`` to check at a smaller
size), also with the head unscaled (x1: scores close together, a flat channel softmax). Each row
gives the channels scored per image (first round K, at most 2K after the extra rounds), the
rounds and the largest estimated relative map error when scoring stopped.

Part 2 (exact mode vs pytorch-grad-cam's ScoreCAM, same process, interleaved): ``--peer-images``
image(s) (1) at 224² on resnet50 ``layer3`` (1,024 channels, 14 x 14) and ``layer4`` (2,048,
7 x 7), resnet18 ``layer4`` (512) and mobilenet_v3_small ``features`` (576), each library's
default batch size (pytorch-grad-cam: 16, and it holds every masked input of an image at once;
convscope: from its byte budget, ``score_cam_batch``), and convscope again without its
batch-norm folding (``SCORE_CAM_FOLD_PASSES`` raised: what the folding is worth); medians of
``--repeats`` runs, time ratio, peak extra resident memory of one call in a fresh child process
per implementation (RSS
sampled every 2 ms minus the RSS just before the call; with ``--device cuda``, the CUDA memory
allocated above what was allocated before the call), and r between the two maps. ``--device``
runs both parts there (default cpu; clocks are read after ``torch.cuda.synchronize``).

Goals (issue 14): fast mode <= 60 s for 8 images with r >= 0.99 against exact; exact <= 0.5x
pytorch-grad-cam's time with lower peak memory. Timings move with the machine's load: compare
the ratios, measured in the same run.
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

os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported: peers' bars off

import torch  # noqa: E402
import torchvision  # noqa: E402
from device import add_device_arg, describe, device, peak_extra, sync  # benchmarks/device.py

import convscope as cs  # noqa: E402
from convscope.explain.cams import score_cam_info  # noqa: E402

warnings.filterwarnings("ignore")

DEV = torch.device("cpu")  #: --device

PEER_CASES = {  # name: (arch, layer, size)
    "resnet50-layer3-224": ("resnet50", "layer3", 224),
    "resnet50-layer4-224": ("resnet50", "layer4", 224),
    "resnet18-layer4-224": ("resnet18", "layer4", 224),
    "mobilenet_v3_small-224": ("mobilenet_v3_small", "features", 224),
}
QUICK_PEER_CASES = {
    "resnet50-layer3-32": ("resnet50", "layer3", 32),
    "resnet50-layer4-64": ("resnet50", "layer4", 64),
    "resnet18-layer3-64": ("resnet18", "layer3", 64),
    "mobilenet_v3_small-64": ("mobilenet_v3_small", "features", 64),
}


def model_of(arch: str, head_scale: float) -> torch.nn.Module:
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None).eval().to(DEV)
    with torch.no_grad():
        if arch.startswith("resnet"):
            model.fc.weight.mul_(head_scale)
        else:
            model.classifier[0].weight.mul_(head_scale)
            model.classifier[-1].weight.mul_(head_scale)
    return model


def pearson(a: torch.Tensor, b) -> torch.Tensor:
    b = torch.as_tensor(b)
    a = a.reshape(a.shape[0], -1).double()
    b = b.reshape(b.shape[0], -1).double()
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


def timed(fn) -> tuple[float, object]:
    sync(DEV)
    t0 = time.perf_counter()
    out = fn()
    sync(DEV)
    return time.perf_counter() - t0, out


# ---------------------------------------------------------------------------- part 1: fast mode
def part_fast(args: argparse.Namespace) -> list[str]:
    lines = []
    x = torch.randn(args.images, 3, args.size, args.size,
                    generator=torch.Generator().manual_seed(1)).to(DEV)
    targets = [(7 * i + 1) % 1000 for i in range(args.images)]
    ks = [int(k) for k in args.channels.split(",")]
    n, es = args.exact_images, args.exact_size or args.size
    xe = torch.randn(n, 3, es, es, generator=torch.Generator().manual_seed(3)).to(DEV)
    lines.append(f"| resnet50 layer4, {args.images} images at {args.size}², head x100 | median s "
                 f"| min–max s | masked forwards | scored per image (rounds, bound) "
                 f"| min r vs exact, {n} image(s) at {es}²: x100 / x1 |")
    lines.append("|---|---|---|---|---|---|")
    exact = {}
    for scale in (100.0, 1.0) if n else ():
        model = model_of("resnet50", scale)
        t, (maps, info) = timed(lambda m=model: score_cam_info(m, xe, targets[:n], "layer4",
                                                               quiet=True))
        exact[scale] = maps
        print(f"  exact on {n} image(s) at {es}², x{scale:g}: {t:.1f} s, {info.forwards} "
              "forwards", file=sys.stderr, flush=True)
        exact[(scale, "s")] = t
    models = {scale: model_of("resnet50", scale) for scale in (100.0, 1.0)}
    for k in ks:
        times, info = [], None
        for r in range(args.repeats):
            t, (_, info) = timed(lambda k=k: score_cam_info(models[100.0], x, targets, "layer4",
                                                            quiet=True, channels=k))
            times.append(t)
            print(f"  fast K={k} repeat {r + 1}: {t:.1f} s", file=sys.stderr, flush=True)
        rs = []
        for scale in (100.0, 1.0) if n else ():
            fast, fi = score_cam_info(models[scale], xe, targets[:n], "layer4", quiet=True,
                                      channels=k)
            rs.append(f"{float(pearson(fast.cpu(), exact[scale].cpu()).min()):.4f} "
                      f"({fi.scored} scored)")
        lines.append(f"| fast, channels={k} | {statistics.median(times):.1f} | "
                     f"{min(times):.1f}–{max(times):.1f} | {info.forwards} | "
                     f"{info.first}–{info.scored} ({info.rounds}, {info.bound:.3f}) | "
                     f"{' / '.join(rs) or 'not measured'} |")
    if n:
        lines.append(f"| exact, {n} image(s) at {es}² (x100 / x1) | {exact[(100.0, 's')]:.1f} / "
                     f"{exact[(1.0, 's')]:.1f} | | | | |")
    return lines


# ------------------------------------------------------------- part 2: exact vs pytorch-grad-cam
def impls(model: torch.nn.Module, layer: str, x: torch.Tensor) -> dict:
    from pytorch_grad_cam import ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    module = dict(model.named_modules())[layer]

    def peer():
        with ScoreCAM(model=model, target_layers=[module]) as extractor:
            return extractor(input_tensor=x,
                             targets=[ClassifierOutputTarget(3)] * x.shape[0])

    def ours():
        return cs.explain.score_cam(model, x, target=3, layer=layer, quiet=True)  # exact

    def unfolded():  # the same without batch-norm folding: what the folding is worth
        from convscope.explain import cams

        keep = cams.SCORE_CAM_FOLD_PASSES
        cams.SCORE_CAM_FOLD_PASSES = 1 << 62
        try:
            return ours()
        finally:
            cams.SCORE_CAM_FOLD_PASSES = keep

    return {"pytorch-grad-cam": peer, "convscope": ours, "convscope unfolded": unfolded}


def child(case: str, impl: str, images: int) -> None:
    """One call in this fresh process; prints the peak extra memory in bytes (RSS; on CUDA,
    allocated device memory) as JSON."""
    arch, layer, size = {**PEER_CASES, **QUICK_PEER_CASES}[case]
    model = model_of(arch, 100.0)
    x = torch.randn(images, 3, size, size, generator=torch.Generator().manual_seed(2)).to(DEV)
    with torch.no_grad():
        model(x)
    fn = impls(model, layer, x)[impl]
    extra, what = peak_extra(fn, DEV)
    print(json.dumps({"peak_extra": extra, "what": what}))


def part_peer(args: argparse.Namespace) -> list[str]:
    cases = QUICK_PEER_CASES if args.quick else PEER_CASES
    if args.cases:
        every = {**PEER_CASES, **QUICK_PEER_CASES}
        cases = {c: every[c] for c in args.cases.split(",")}
    lines = [f"| {args.peer_images} image(s), head x100 | pytorch-grad-cam s | convscope exact s "
             "| × | unfolded s (×) | peak extra RSS (peer / convscope) | convscope batch | r |",
             "|---|---|---|---|---|---|---|---|"]
    from convscope.explain.cams import score_cam_batch

    for case, (arch, layer, size) in cases.items():
        model = model_of(arch, 100.0)
        x = torch.randn(args.peer_images, 3, size, size,
                        generator=torch.Generator().manual_seed(2)).to(DEV)
        fns = impls(model, layer, x)
        times: dict[str, list[float]] = {k: [] for k in fns}
        maps = {}
        for r in range(args.repeats):
            for k, fn in fns.items():
                t, maps[k] = timed(fn)
                times[k].append(t)
            print(f"  {case} repeat {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f} s"
                                                          for k, v in times.items()),
                  file=sys.stderr, flush=True)
        mem = {}
        for k in ("pytorch-grad-cam", "convscope"):
            out = subprocess.run([sys.executable, __file__, "--child", case, k,
                                  str(args.peer_images), "--device", str(DEV)],
                                 capture_output=True, text=True, check=True)
            got = json.loads(out.stdout.strip().splitlines()[-1])
            mem[k], mem_what = got["peak_extra"] / 2**20, got["what"]
        med = {k: statistics.median(v) for k, v in times.items()}
        a = maps["convscope"].float().cpu()
        p = torch.as_tensor(maps["pytorch-grad-cam"]).float().cpu()
        if float(a.std()) > 0 and float(p.std()) > 0:
            r = f"{float(pearson(a, p).min()):.4f}"
        else:  # a constant map (one channel wins a sharp softmax at a tiny size): compare values
            r = f"constant, max |diff| {float((a - p).abs().max()):.1e}"
        lines.append(
            f"| {arch} {layer} at {size}² | {med['pytorch-grad-cam']:.2f} | "
            f"{med['convscope']:.2f} | {med['convscope'] / med['pytorch-grad-cam']:.2f} | "
            f"{med['convscope unfolded']:.2f} "
            f"({med['convscope unfolded'] / med['pytorch-grad-cam']:.2f}) | "
            f"{mem['pytorch-grad-cam']:.0f} / {mem['convscope']:.0f} MB {mem_what} | "
            f"{score_cam_batch(model, x)} | {r} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="2 images at 96², 1 repeat, smaller part-2 cases: checks the script")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--channels", default="128", help="comma-separated K values")
    ap.add_argument("--exact-images", type=int, default=1,
                    help="images for the r check against exact (0: no check)")
    ap.add_argument("--exact-size", type=int, default=0,
                    help="their size (default: --size)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--peer-images", type=int, default=1, help="images per part-2 call")
    ap.add_argument("--cases", default="", help="comma-separated part-2 cases (default: all "
                    "of the full or the --quick set): " + ", ".join([*PEER_CASES,
                                                                     *QUICK_PEER_CASES]))
    ap.add_argument("--skip-fast", action="store_true")
    ap.add_argument("--skip-peer", action="store_true")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    add_device_arg(ap)
    args = ap.parse_args()
    global DEV
    DEV = device(args.device)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return
    if args.quick:  # explicit --images / --size / --repeats win
        dflt = ap.parse_args([])
        args.images = 2 if args.images == dflt.images else args.images
        args.size = 96 if args.size == dflt.size else args.size
        args.repeats = 1 if args.repeats == dflt.repeats else args.repeats
    print(f"# bench_scorecam {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, "
          f"torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} threads, "
          f"load {os.getloadavg()[0]:.1f}, device {describe(DEV)}, command: "
          f"{' '.join(sys.argv)}")
    if not args.skip_fast:
        print("\n".join(part_fast(args)), flush=True)
    if not args.skip_peer:
        print("\n".join(part_peer(args)), flush=True)
    print(f"# load at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
