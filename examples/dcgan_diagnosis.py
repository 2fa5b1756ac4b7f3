"""Wang & Li (2020)'s DCGAN tuning story, recorded: one run per round, browsed in the dashboard.

    .venv/bin/python examples/dcgan_diagnosis.py                      # the paper's settings
    .venv/bin/python examples/dcgan_diagnosis.py --steps 150 --size 40 --batch 32   # ~30 s here
    .venv/bin/python examples/dcgan_diagnosis.py --data ~/celeba      # CelebA img_align_celeba
    convscope serve runs

Wang & Li trained a DCGAN on CelebA (``img_align_celeba``, scaled and cropped to 160 x 160, mapped
to [-1, 1]; z of 256 standard normal values; BCE, RMSprop with lr D 3e-4 / G 7e-4, batch 64, 15,000
iterations) and tuned it by looking inside: generator v1 (FC 2560 ReLU -> FC 25600 ReLU -> three
5 x 5 stride-2 transposed convolutions, ReLU everywhere) had dead FC outputs, so v2 drops one FC
layer; discriminator v1 (three 5 x 5 stride-2 convolutions with LeakyReLU -> FC 160 -> FC 1
sigmoid) extracted features of little diversity, so v3 adds batch normalisation to every layer.

This script runs :func:`convscope.experiments.dcgan.run_experiment`: the exact architectures
(``cs.zoo.dcgan_generator`` / ``dcgan_discriminator``), trained in three rounds (G v1 + D v1,
G v2 + D v1, G v2 + D v3), each recorded as its own run with the losses, grids of generated
images over training, both diagnosis reports with the layer views the paper discusses, and the
trained networks. Without ``--data`` it trains on procedural face-like images
(``cs.data.Faces``, nothing downloaded). It prints what each diagnosis found.
"""

from __future__ import annotations

import argparse

import convscope as cs
from convscope.experiments.dcgan import run_experiment
from convscope.formats import diagnosis as fdiag


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--logdir", default="runs", help="where the three runs go")
    ap.add_argument("--name", default="dcgan", help="run name prefix")
    ap.add_argument("--data", default=None,
                    help="folder holding CelebA's img_align_celeba/ (default: procedural faces)")
    ap.add_argument("--steps", type=int, default=15000, help="training steps per round")
    ap.add_argument("--size", type=int, default=160, help="image side (multiple of 8)")
    ap.add_argument("--batch", type=int, default=64, help="batch size")
    ap.add_argument("--sample-every", type=int, default=500, help="steps between image grids")
    ap.add_argument("--threads", type=int, default=None, help="torch threads")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    paths = run_experiment(args.logdir, data=args.data, name=args.name, steps=args.steps,
                           batch_size=args.batch, image_size=args.size,
                           sample_every=args.sample_every, num_threads=args.threads,
                           seed=args.seed)
    for p in paths:
        r = cs.open_run(p)
        print(f"\n===== {p.name}")
        for key in ("generator", "discriminator"):
            d = fdiag.load(r, key)
            shown = d.findings[d.findings["severity"] != "note"]
            print(f"  {key}:" + (" no findings" if shown.empty else ""))
            for _, f in shown.iterrows():
                print(f"    [{f.severity}] {f.code} at {f.layer}: {f.message}")
    print("\nbrowse them: convscope serve " + args.logdir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
