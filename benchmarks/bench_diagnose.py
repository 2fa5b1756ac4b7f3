"""Fault benchmark of cs.diagnose: inject known faults, check the right finding fires on the right
layer, and count false positives on the healthy model.

    .venv/bin/python benchmarks/bench_diagnose.py              # 5 timing repeats
    .venv/bin/python benchmarks/bench_diagnose.py --quick      # 3 timing repeats

Setting: the zoo ResNet (width 16) trained briefly on Shapes (6,000 images, 6 epochs, seed 0; about
a minute on a CPU), diagnosed on 64 held-out ``val`` images in eval mode. Each fault is applied
to a copy of the trained model (or to the inputs); a fault counts as *detected* (true positive)
when a finding with the expected code fires on one of the expected layers. "Other" lists the
other warnings/errors (downstream effects of the fault are expected there). False positives:
warnings and errors on the healthy model. The DCGAN rows use Wang & Li's (2020) generator/discriminator at
32 x 32 (random init). Timing: diagnose of the healthy model against one forward pass of the same
batch (the baseline), medians of the repeats, measured in the same run.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

import convscope as cs  # noqa: E402
from convscope.training import DemoConfig, evaluate, fit  # noqa: E402

Fault = Callable[[nn.Module, torch.Tensor], tuple[nn.Module, torch.Tensor]]


@dataclass
class Case:
    name: str
    what: str
    apply: Fault
    code: str
    layers: tuple[str, ...]
    model: str = "resnet"


# ------------------------------------------------------------------------------------------------
# faults (each returns a new model / new inputs; the originals are left alone)


def dead_relu(m, x):
    m = copy.deepcopy(m)
    with torch.no_grad():
        m.layer2[0].bn1.bias -= 100.0  # every pre-activation far below 0
    return m, x


def collapsed(m, x):
    m = copy.deepcopy(m)
    with torch.no_grad():
        conv, bn = m.layer1[0].conv1, m.layer1[0].bn1
        conv.weight[:] = conv.weight[0:1].clone()
        for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
            t[:] = t[0].clone()
    return m, x


def wide_uniform(m, x):
    m = copy.deepcopy(m)
    with torch.no_grad():
        w = m.layer3[0].conv1.weight
        a = 8.0 / w[0].numel() ** 0.5  # gain 8 / sqrt(3) = 4.6
        w.uniform_(-a, a, generator=torch.Generator().manual_seed(0))
    return m, x


def input_0_255(m, x):
    return m, x * 255.0


def blank_input(m, x):
    return m, torch.zeros_like(x)


def zero_two_channels(m, x):
    x = x.clone()
    x[:, :2] = 0
    return m, x


class _LayoutBug(nn.Module):
    """Treats an NCHW tensor as NHWC: permutes then reshapes back (a classic layout bug)."""

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return t.permute(0, 2, 3, 1).reshape(t.shape)


def scrambled_stem(m, x):
    m = copy.deepcopy(m)
    m.bn1 = nn.Sequential(m.bn1, _LayoutBug())
    return m, x


def no_batchnorm(m, x):
    m = copy.deepcopy(m)

    def strip(mod):
        for n, c in mod.named_children():
            if isinstance(c, nn.BatchNorm2d):
                setattr(mod, n, nn.Identity())
            else:
                strip(c)

    strip(m)
    return m, x


def nan_weight(m, x):
    m = copy.deepcopy(m)
    with torch.no_grad():
        m.layer2[0].conv1.weight[0, 0, 0, 0] = float("nan")
    return m, x


def gen_dead_fc(m, z):
    m = copy.deepcopy(m)
    with torch.no_grad():
        m.fc1.bias -= 10.0
    return m, z


def disc_collapsed(m, x):
    m = copy.deepcopy(m)
    with torch.no_grad():
        m.conv1.weight[:] = m.conv1.weight[0:1].clone()
        m.conv1.bias[:] = m.conv1.bias[0].clone()
    return m, x


CASES = [
    Case("dead ReLUs", "layer2.0.bn1.bias -= 100", dead_relu, "dead-maps", ("layer2.0.relu1",)),
    Case("collapsed layer", "layer1.0.conv1 filters (and bn1) all = filter 0", collapsed,
         "low-diversity", ("layer1.0.relu1",)),
    Case("wide uniform init", "layer3.0.conv1.weight ~ U(+-8/sqrt(fan_in))", wide_uniform,
         "wide-uniform-params", ("layer3.0.conv1",)),
    Case("badly scaled input", "images in 0-255 instead of 0-1", input_0_255,
         "exploding-outputs", ("relu",)),
    Case("blank input", "all input channels zeroed", blank_input, "dead-maps", ("relu",)),
    Case("two input channels zeroed", "R and G channels zeroed", zero_two_channels,
         "dead-maps", ("relu",)),
    Case("scrambled stem", "NCHW read as NHWC after bn1", scrambled_stem,
         "maps-far-from-input", ("relu",)),
    Case("missing normalisation", "every BatchNorm2d replaced by Identity", no_batchnorm,
         "low-diversity", ("relu", "layer1.0.relu1")),
    Case("NaN weight", "one NaN in layer2.0.conv1.weight", nan_weight, "nonfinite-outputs",
         ("layer2.0.relu1",)),
    Case("DCGAN G v1 dead FC", "generator v1 fc1.bias -= 10", gen_dead_fc, "dead-maps",
         ("relu1",), model="gen"),
    Case("DCGAN D collapsed conv1", "discriminator v1 conv1 filters all = filter 0",
         disc_collapsed, "low-diversity", ("lrelu1",), model="disc"),
]


def train_resnet() -> tuple[nn.Module, float, float]:
    cfg = DemoConfig(n_train=6000, n_test=500, epochs=6, width=16)
    train, test = cfg.make_data()
    model = cfg.make_model()
    t = time.perf_counter()
    fit(model, train, test, quiet=True, **cfg.fit_kwargs())
    secs = time.perf_counter() - t
    acc = evaluate(model, test)["acc"]
    return model.eval(), acc, secs


def problems(report) -> list:
    return [f for f in report.findings if f.severity in ("error", "warning")]


def short(fs) -> str:
    return ", ".join(f"{f.code}@{f.layer}" for f in fs) or "-"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 timing repeats instead of 5")
    args = ap.parse_args(argv)
    repeats = 3 if args.quick else 5

    print("training the zoo ResNet on Shapes ...", file=sys.stderr, flush=True)
    resnet, acc, train_s = train_resnet()
    x = cs.data.Shapes(n=64, split="val").tensors()[0]
    torch.manual_seed(0)
    gen = cs.zoo.dcgan_generator(1, latent_dim=100, image_size=32, hidden=2560).eval()
    disc = cs.zoo.dcgan_discriminator(1, image_size=32).eval()
    z = torch.randn(64, 100, generator=torch.Generator().manual_seed(1))
    x32 = x  # Shapes images are 32 x 32, the discriminator's size here
    bases = {"resnet": (resnet, x), "gen": (gen, z), "disc": (disc, x32)}

    rows = []
    for case in CASES:
        base, inp = bases[case.model]
        m, xi = case.apply(base, inp)
        rep = cs.diagnose.diagnose(m, xi, quiet=True)
        hits = [f for f in rep.findings if f.code == case.code and f.layer in case.layers]
        first = next((f for f in rep.findings if f.severity != "note"), None)
        others = [f for f in problems(rep) if f not in hits]
        rows.append((case, bool(hits), hits[0] if hits else None, first, others))
        print(f"  {case.name}: {'detected' if hits else 'missed'}", file=sys.stderr, flush=True)

    healthy = {
        "ResNet, trained (the baseline)": cs.diagnose.diagnose(resnet, x, quiet=True),
    }
    torch.manual_seed(0)
    healthy["ResNet, random init"] = cs.diagnose.diagnose(
        cs.zoo.resnet(width=16).eval(), x, quiet=True)
    healthy["DCGAN G v2, random init"] = cs.diagnose.diagnose(
        cs.zoo.dcgan_generator(2, latent_dim=100, image_size=32).eval(), z, quiet=True)
    healthy["DCGAN D v3, random init"] = cs.diagnose.diagnose(
        cs.zoo.dcgan_discriminator(3, image_size=32).eval(), x32, quiet=True)
    healthy["DCGAN G v1, random init"] = cs.diagnose.diagnose(gen, z, quiet=True)
    healthy["DCGAN D v1, random init"] = cs.diagnose.diagnose(disc, x32, quiet=True)

    # timing: diagnose vs one forward pass of the same batch
    def fwd():
        with torch.no_grad():
            resnet(x)

    def diag():
        cs.diagnose.diagnose(resnet, x, quiet=True)

    def diag_views():
        cs.diagnose.diagnose(resnet, x, quiet=True, views=True)

    fwd()
    diag()
    times: dict[str, list[float]] = {"forward": [], "diagnose": [], "diagnose(views=True)": []}
    for _ in range(repeats):
        for k, fn in (("forward", fwd), ("diagnose", diag), ("diagnose(views=True)", diag_views)):
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)

    load = "/".join(f"{v:.2f}" for v in os.getloadavg())
    print("# cs.diagnose fault benchmark\n")
    print(f"command: `{' '.join([os.path.basename(sys.executable)] + sys.argv)}`  ")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load {load}  ")
    print(f"date: {datetime.datetime.now().isoformat(timespec='seconds')}  ")
    print(f"model: zoo ResNet width 16 trained {train_s:.0f} s on Shapes, test accuracy "
          f"{acc:.1%}; diagnosed on 64 val images\n")
    print("| fault | injected | expected finding | detected | evidence | first finding | "
          "other warnings/errors |")
    print("|---|---|---|---|---|---|---|")
    for case, ok, hit, first, others in rows:
        ev = hit.message.replace("|", "\\|") if hit else "-"
        print(f"| {case.name} | {case.what} | `{case.code}` at {'/'.join(case.layers)} | "
              f"{'yes' if ok else '**no**'} | {ev} | "
              f"{(first.code + '@' + first.layer) if first else '-'} | "
              f"{len(others)}: {short(others[:4])}{' ...' if len(others) > 4 else ''} |")
    n_ok = sum(r[1] for r in rows)
    print(f"\ndetected {n_ok} of {len(rows)} faults.\n")
    print("| healthy model | warnings/errors (false positives) | info |")
    print("|---|---|---|")
    for name, rep in healthy.items():
        infos = [f for f in rep.findings if f.severity == "info"]
        print(f"| {name} | {len(problems(rep))}: {short(problems(rep))} | "
              f"{len(infos)}: {short(infos)} |")
    base_t = statistics.median(times["forward"])
    print(f"\n| timing (median of {repeats}) | seconds | x one forward pass |")
    print("|---|---|---|")
    for k, v in times.items():
        med = statistics.median(v)
        print(f"| {k} | {med:.3f} | {med / base_t:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
