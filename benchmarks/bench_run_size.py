"""Run-directory size of the standard recording of a torchvision model at 224²: MB per step.

    .venv/bin/python benchmarks/bench_run_size.py                       # resnet50, 8 images
    .venv/bin/python benchmarks/bench_run_size.py --models resnet50,convnext_tiny,\
efficientnet_b0,vit_b_16,regnet_y_800mf --size 224 --images 8
    .venv/bin/python benchmarks/bench_run_size.py --size 64 --images 2 --quick   # a smoke run

The *standard recording* is what ``convscope demo`` records after training, on a model with
random weights (``weights=None``: nothing downloads) and procedural images (Shapes at the given
size): ``log_model`` (graph and profile), ``log_feature_maps``, ``log_embedding`` (of the
classifier's input features), ``log_attributions`` (every method but Score-CAM, whose time on
``layer4`` of a ResNet-50 is a separate issue; ``--score-cam`` adds it), ``log_diagnosis``,
``log_preferred_inputs`` (16 units per layer as in the demo, few steps: the image size, not the
steps, sets the MB), ``log_top_examples`` (k=9, the same layers, ``layer4.0.conv2`` included:
at 224² its crops are whole images) and ``log_checkpoint``. Each step writes into one run; its
MB are the bytes the step added to the run directory (files' sizes; after the run is closed its
tables are compacted). A step that fails on a model (an architecture a call does not support)
is skipped with its reason printed. "peak RSS" is the process's peak resident memory after the
step (it only grows: a step that raises it is the one that needed it).

"old format" is what the same crops, preferred inputs and feature maps took as the float16
arrays at full size that convscope stored before they were stored as the Model page draws them
(uint8, at most 96 pixels a side, identical crops once): computed exactly from the stored
arrays' metadata (their original shapes), ``2 bytes x values + 128`` per file, not written.

MB are 10^6 bytes. "weights aside" leaves out ``checkpoints/``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

import convscope as cs  # noqa: E402
from convscope.demo import FEATURE_LAYERS  # noqa: E402

MB = 1e6
GOAL_MB = 60.0  #: issue 14: the whole standard recording of ResNet-50, weights aside
CAMS = ["saliency", "deconvnet", "guided_backprop", "cam", "grad_cam", "grad_cam_pp"]

# per model: (attribution layer, feature-map layers for the preferred inputs / top examples)
LAYERS: dict[str, tuple[str | None, list[str]]] = {
    "resnet50": ("layer4", list(FEATURE_LAYERS)),  # the demo's layers
    "convnext_tiny": (None, ["features.0.0", "features.3.0.block.0", "features.7.0.block.0"]),
    "efficientnet_b0": (None, ["features.0.0", "features.4.0.block.1.0",
                               "features.8.0"]),
    "vit_b_16": (None, ["conv_proj"]),
    "regnet_y_800mf": (None, ["stem.0", "trunk_output.block2.block2-0.f.b.0",
                              "trunk_output.block4.block4-0.f.b.0"]),
}


def files(root: Path) -> dict[str, int]:
    """{relative path: bytes} of every file under ``root``."""
    out = {}
    for p in root.rglob("*"):
        if p.is_file():
            out[str(p.relative_to(root))] = p.stat().st_size
    return out


def group(path: str) -> str:
    """The data kind a run file belongs to: ``arrays/<kind>``, ``objects/<kind>``,
    ``tables/<table>``, ``checkpoints/<file suffix>`` or the top-level name."""
    parts = path.split("/")
    if parts[0] in ("arrays", "objects", "tables") and len(parts) > 2:
        return "/".join(parts[:2])
    if parts[0] == "checkpoints":
        name = parts[-1]
        for suffix in (".state.pt", ".arch.json", ".pt"):
            if name.endswith(suffix):
                return f"checkpoints/*{suffix}"
    return parts[0]


def images(n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` procedural Shapes images at ``size``², normalised like ImageNet inputs."""
    x, y, _ = cs.data.Shapes(n=n, size=size, seed=0).tensors(quiet=True)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x - mean) / std, y


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB


def old_format_mb(path: Path, model: torch.nn.Module, x: torch.Tensor
                  ) -> dict[str, tuple[float, float]]:
    """Per concern, (MB the old full-size float16 arrays would take, MB stored now): the crops
    (``[C, k, C_in, h, w]``, ``h = min(receptive field, H)``), preferred inputs and feature maps
    of the run at ``path``, from their index meta and the layers' receptive fields."""
    from convscope.features.top import receptive_field
    from convscope.formats import feature_maps as fm
    from convscope.formats import preferred_inputs as pi
    from convscope.formats import top_examples as te

    reader = cs.open_run(path)
    on_disk = files(path)
    out: dict[str, tuple[float, float]] = {}

    def stored(kinds: list[str]) -> float:
        return sum(v for k, v in on_disk.items()
                   if k.split("/")[:2] in [["arrays", kd] for kd in kinds]) / MB

    old = 0
    for _, row in reader.arrays(te.CROPS_KIND).iterrows():
        size = receptive_field(model, row["key"], x[:1]).size or tuple(x.shape[2:])
        window = [min(int(size[0]), x.shape[2]), min(int(size[1]), x.shape[3])]
        old += 2 * int(torch.tensor(row["meta"].get("shape", row["shape"])[:3] + window).prod())
        old += 128
    out["top-example crops"] = (old / MB, stored([te.CROPS_KIND, te.RANGE_KIND, te.SLOTS_KIND]))
    old = 0
    for _, row in reader.arrays(pi.KIND).iterrows():
        hw = row["meta"].get("size", list(row["shape"][-2:]))
        old += 2 * int(torch.tensor(list(row["shape"][:2]) + hw).prod()) + 128
    out["preferred inputs"] = (old / MB, stored([pi.KIND]))
    old = sum(2 * int(torch.tensor(row["shape"]).prod()) + 128
              for _, row in reader.arrays(fm.KIND).iterrows())
    out["feature maps (samples aside)"] = (old / MB, stored([fm.KIND]))
    return out


def steps(model: torch.nn.Module, name: str, x: torch.Tensor, y: torch.Tensor, args
          ) -> list[tuple[str, Callable[[cs.Run], object]]]:
    layer, feat_layers = LAYERS.get(name, (None, []))
    methods = CAMS + (["score_cam"] if args.score_cam else [])

    def embedding(run: cs.Run) -> None:
        feats, labels = cs.model.collect_features(model, [(x, y)], quiet=True)
        run.log_embedding(feats, labels, name="penultimate", images=x, k=min(3, len(x)))

    return [
        ("log_model", lambda run: run.log_model(model, x, repeat=1 if args.quick else 3,
                                               quiet=True)),
        ("log_feature_maps", lambda run: run.log_feature_maps(model, x, labels=y)),
        ("log_embedding", embedding),
        ("log_attributions", lambda run: run.log_attributions(
            model, x, labels=y, methods=methods, layer=layer, quiet=True)),
        ("log_diagnosis", lambda run: run.log_diagnosis(model, x, quiet=True)),
        ("log_preferred_inputs", lambda run: run.log_preferred_inputs(
            model, feat_layers, max_units=args.units, steps=4 if args.quick else 16, quiet=True)),
        ("log_top_examples", lambda run: run.log_top_examples(model, feat_layers, x, k=9,
                                                             quiet=True)),
        ("log_checkpoint", lambda run: run.log_checkpoint(model, example_inputs=x)),
    ]


def record(name: str, args, logdir: Path) -> dict[str, object] | None:
    import torchvision

    torch.manual_seed(0)  # the random weights too: the crops shared between channels, so the
    # MB of the top examples, depend on them
    try:
        model = torchvision.models.get_model(name, weights=None).eval()
    except Exception as exc:  # an unknown name or an older torchvision
        print(f"{name}: skipped, cannot build it ({exc})")
        return None
    torch.manual_seed(0)
    x, y = images(args.images, args.size)
    sizes: dict[str, float] = {}
    seconds: dict[str, float] = {}
    skipped: dict[str, str] = {}
    by_kind: dict[str, dict[str, int]] = {}
    peak: dict[str, float] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with cs.Run(logdir, name, quiet=True) as run:
            for step, fn in steps(model, name, x, y, args):
                if args.steps and step not in args.steps:
                    continue
                before = files(run.path)
                t0 = time.perf_counter()
                try:
                    fn(run)
                except Exception as exc:  # a call that does not support this architecture
                    skipped[step] = f"{type(exc).__name__}: {str(exc)[:200]}"
                    if args.verbose:
                        traceback.print_exc()
                    continue
                run.flush()
                seconds[step] = time.perf_counter() - t0
                peak[step] = peak_rss_mb()
                after = files(run.path)
                sizes[step] = sum(v - before.get(k, 0) for k, v in after.items()) / MB
                kinds: dict[str, int] = defaultdict(int)
                for k, v in after.items():
                    if v != before.get(k):
                        kinds[group(k)] += v - before.get(k, 0)
                by_kind[step] = dict(kinds)
            path = run.path
    final = files(path)
    total = sum(final.values()) / MB
    weights = sum(v for k, v in final.items() if k.startswith("checkpoints/")) / MB
    per_kind: dict[str, int] = defaultdict(int)
    for k, v in final.items():
        per_kind[group(k)] += v
    return {"name": name, "sizes": sizes, "seconds": seconds, "skipped": skipped,
            "by_kind": by_kind, "total": total, "weights": weights, "peak": peak,
            "formats": old_format_mb(path, model, x),
            "params": sum(p.numel() for p in model.parameters()), "per_kind": dict(per_kind)}


def report(r: dict[str, object], args) -> None:
    print(f"\n## {r['name']} ({r['params'] / 1e6:.1f} M parameters), {args.images} images at "
          f"{args.size}²\n")
    print("| step | MB | s | peak RSS MB | largest kinds (MB) |")
    print("|---|---:|---:|---:|---|")
    for step, mb in r["sizes"].items():
        kinds = sorted(r["by_kind"][step].items(), key=lambda kv: -kv[1])[:4]
        top = ", ".join(f"{k} {v / MB:.2f}" for k, v in kinds if v > 0.005 * MB)
        print(f"| {step} | {mb:.2f} | {r['seconds'][step]:.1f} | {r['peak'][step]:,.0f} | "
              f"{top} |")
    for step, why in r["skipped"].items():
        print(f"| {step} | skipped | | | {why} |")
    aside = r["total"] - r["weights"]
    verdict = "met" if aside <= GOAL_MB else "NOT met"
    print(f"| **total, weights aside** | **{aside:.2f}** | | | goal ≤ {GOAL_MB:.0f}: "
          f"{verdict} |")
    print(f"| total with weights | {r['total']:.2f} | | | checkpoints {r['weights']:.2f} |")
    print("\n| stored as the page draws them | old format MB | stored MB | ratio |")
    print("|---|---:|---:|---:|")
    for what, (old, new) in r["formats"].items():
        ratio = f"{old / new:,.0f}x smaller" if new > 0 else "-"
        print(f"| {what} | {old:,.2f} | {new:,.2f} | {ratio} |")
    if args.kinds:
        print("\nper kind after closing the run (MB):")
        for k, v in sorted(r["per_kind"].items(), key=lambda kv: -kv[1]):
            print(f"  {k:40s} {v / MB:9.3f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="resnet50",
                    help="comma-separated torchvision model names (resnet50, convnext_tiny, "
                         "efficientnet_b0, vit_b_16, ...)")
    ap.add_argument("--size", type=int, default=224, help="image side")
    ap.add_argument("--images", type=int, default=8, help="images recorded")
    ap.add_argument("--units", type=int, default=16,
                    help="preferred inputs per layer (the demo's 16)")
    ap.add_argument("--score-cam", action="store_true", help="add Score-CAM to the attributions")
    ap.add_argument("--steps", type=lambda v: [s.strip() for s in v.split(",") if s.strip()],
                    default=None, help="only these steps, comma-separated (e.g. "
                    "log_top_examples,log_preferred_inputs): the total is then partial")
    ap.add_argument("--quick", action="store_true", help="fewer profile repeats and render steps")
    ap.add_argument("--kinds", action="store_true", help="also list MB per data kind")
    ap.add_argument("--keep", metavar="DIR", help="write the runs here and keep them")
    ap.add_argument("--verbose", action="store_true", help="tracebacks of skipped steps")
    args = ap.parse_args(argv)
    print(f"# convscope run size — {datetime.date.today()}, {platform.machine()} "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}, convscope {cs.__version__}, "
          f"python {sys.version.split()[0]}")
    logdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="cs-size-"))
    try:
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            r = record(name, args, logdir)
            if r is not None:
                report(r, args)
    finally:
        if not args.keep:
            shutil.rmtree(logdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
