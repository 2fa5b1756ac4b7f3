"""Wang & Li (2020)'s DCGAN story at small size, diagnosed with cs.diagnose.

    .venv/bin/python examples/dcgan_diagnosis.py [--steps 300] [--size 32]

The seed trained a DCGAN on CelebA at 160 x 160 and tuned it by looking inside:
generator v1 (FC 2560 ReLU -> FC ReLU -> 3 transposed convs) had dead FC outputs, so v2 drops one FC
layer; discriminator v1 (3 convs, LeakyReLU, no normalisation) extracted features of little
diversity, so v3 adds batch normalisation to every layer. Here: the same architectures
(``cs.zoo``) at ``--size`` pixels, trained for ``--steps`` steps on procedural Shapes images (no
download; scaled to [-1, 1]) with Wang & Li's settings (BCE loss, RMSprop, lr D 3e-4 / G 7e-4, batch
64), in three rounds: G v1 + D v1, G v2 + D v1, G v2 + D v3. After each round both networks are
diagnosed: the generator on a batch of latent vectors (its low-abstraction layers are compared
with the generated images), the discriminator on real images. The script prints what the
diagnosis said and the numbers the seed looked at.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import convscope as cs  # noqa: E402
from convscope.training import auto_threads  # noqa: E402


def train_gan(gen, disc, images, steps: int, seed: int = 0, batch: int = 64) -> dict[str, float]:
    """Plain non-saturating GAN training with Wang & Li's optimiser settings."""
    g = torch.Generator().manual_seed(seed)
    opt_d = torch.optim.RMSprop(disc.parameters(), lr=3e-4)
    opt_g = torch.optim.RMSprop(gen.parameters(), lr=7e-4)
    gen.train()
    disc.train()
    n = images.shape[0]
    ld = lg = float("nan")
    for _ in range(steps):
        real = images[torch.randint(0, n, (batch,), generator=g)]
        z = torch.randn(batch, gen.latent_dim, generator=g)
        fake = gen(z)
        p_real, p_fake = disc(real), disc(fake.detach())
        loss_d = F.binary_cross_entropy(p_real, torch.ones_like(p_real)) + \
            F.binary_cross_entropy(p_fake, torch.zeros_like(p_fake))
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        p = disc(fake)
        loss_g = F.binary_cross_entropy(p, torch.ones_like(p))
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
        ld, lg = loss_d.item(), loss_g.item()
    gen.eval()
    disc.eval()
    return {"loss_d": ld, "loss_g": lg}


def describe(title: str, report) -> None:
    print(f"\n--- {title}")
    print("   " + report.headline())
    shown = [f for f in report.findings if f.severity != "note"]
    for f in shown:
        print(f"   [{f.severity}] {f.code} at {f.layer}: {f.message}")
    if not shown:
        print("   no findings")
    for st in report.layers:
        sim = "-" if st.input_similarity is None else f"{st.input_similarity:.2f}"
        merge = "-" if st.merge_median is None else f"{st.merge_median:.3f}"
        print(f"     {st.name:<8} {st.abstraction:<4} {str(st.shape):<20} dead "
              f"{st.dead_fraction:6.1%}  ~0 {st.near_zero_share:6.1%}  merge {merge:>6}  "
              f"sim {sim}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300, help="training steps per round")
    ap.add_argument("--size", type=int, default=32, help="image side (multiple of 8)")
    ap.add_argument("--images", type=int, default=4096, help="Shapes images to train on")
    args = ap.parse_args(argv)
    torch.set_num_threads(auto_threads())  # a busy CPU runs small nets faster on fewer threads

    images = cs.data.Shapes(n=args.images, size=args.size, split="train").tensors()[0] * 2 - 1
    real = cs.data.Shapes(n=64, size=args.size, split="val").tensors()[0] * 2 - 1
    z = torch.randn(64, 100, generator=torch.Generator().manual_seed(123))
    rounds = [(1, 1), (2, 1), (2, 3)]
    for gv, dv in rounds:
        torch.manual_seed(0)
        gen = cs.zoo.dcgan_generator(gv, latent_dim=100, image_size=args.size)
        disc = cs.zoo.dcgan_discriminator(dv, image_size=args.size)
        t = time.perf_counter()
        losses = train_gan(gen, disc, images, args.steps)
        secs = time.perf_counter() - t
        print(f"\n===== generator v{gv} + discriminator v{dv}: {args.steps} steps in {secs:.0f} s, "
              f"final loss D {losses['loss_d']:.3f} G {losses['loss_g']:.3f}")
        describe(f"generator v{gv}", cs.diagnose.diagnose(gen, z, quiet=True))
        describe(f"discriminator v{dv}", cs.diagnose.diagnose(disc, real, quiet=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
