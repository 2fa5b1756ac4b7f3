"""Grad-CAM on torchvision ``vit_b_16`` / ``swin_t`` / ``convnext_tiny`` at 224² (random weights):
convscope with ``layer=None`` (automatic layer and token reshape) against pytorch-grad-cam with
its documented manual layer and ``reshape_transform``; medians of N runs in one process, the
ratio ours / peer, and the smallest per-image Pearson r between the two maps.

    PYTHONPATH=src python benchmarks/bench_transformers.py [--runs N] [--batch B]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.reshape_transforms import (
    swinT_reshape_transform,
    vit_reshape_transform,
)

import convscope as cs

CASES = {  # model: (the layer pytorch-grad-cam's docs use, its reshape_transform)
    "vit_b_16": ("encoder.layers.encoder_layer_11.ln_1",
                 lambda t: vit_reshape_transform(t, 14, 14)),
    "swin_t": ("norm", lambda t: swinT_reshape_transform(t.flatten(1, 2), 7, 7)),
    "convnext_tiny": ("features.7", None),
}


def head_of(arch: str, m: torch.nn.Module) -> torch.nn.Linear:
    return m.heads.head if arch == "vit_b_16" else m.head if arch == "swin_t" else m.classifier[-1]


def min_r(a: torch.Tensor, b: torch.Tensor) -> float:
    a = a.flatten(1).double()
    b = torch.as_tensor(b).flatten(1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return float(((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).min())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"224², medians of {args.runs}")
    for arch, (layer, reshape) in CASES.items():
        m = getattr(torchvision.models, arch)(weights=None).eval()
        with torch.no_grad():  # torchvision's ViT head starts at zero: give it weights
            head_of(arch, m).weight.normal_(0, 0.05)
        x = torch.randn(args.batch, 3, 224, 224)
        targets = list(range(args.batch))
        t = time.perf_counter()
        auto = cs.explain.auto_layer(m, x)
        t_auto = time.perf_counter() - t

        def ours(m=m, x=x, targets=targets) -> torch.Tensor:
            return cs.explain.grad_cam(m, x, target=targets)

        def peer(m=m, x=x, targets=targets, layer=layer, reshape=reshape) -> torch.Tensor:
            with GradCAM(model=m, target_layers=[dict(m.named_modules())[layer]],
                         reshape_transform=reshape) as g:
                return g(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in targets])

        ours(), peer()  # warm-up
        t_ours, t_peer = [], []
        for _ in range(args.runs):  # interleaved
            s = time.perf_counter()
            a = ours()
            t_ours.append(time.perf_counter() - s)
            s = time.perf_counter()
            b = peer()
            t_peer.append(time.perf_counter() - s)
        mo, mp = statistics.median(t_ours), statistics.median(t_peer)
        print(f"{arch:14s} auto layer {auto!r} ({t_auto:.2f} s first call)  convscope {mo:.3f} s"
              f"  pytorch-grad-cam {mp:.3f} s  ratio {mo / mp:.2f}  min r {min_r(a, b):.4f}")


if __name__ == "__main__":
    main()
