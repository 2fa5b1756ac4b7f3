"""Wang & Li (2020)'s DCGAN tuning story, runnable end to end: each version its own run.

The paper trains a DCGAN on CelebA (``img_align_celeba``, scaled and cropped to 160 x 160, mapped
to [-1, 1]) with binary cross-entropy, RMSprop (learning rate 3e-4 for the discriminator, 7e-4 for
the generator), batch 64, 15,000 iterations, z of 256 standard normal values, and tunes it by
looking inside (:mod:`convscope.zoo.dcgan` has the architectures, Tables 1-4):

1. generator v1 + discriminator v1: the generator's layers 3-5 (its transposed convolutions)
   produce mostly zeros, and the two ReLU FC layers (1-2) have many outputs that are always 0
   (the ``dead-maps`` / ``near-zero-outputs`` findings);
2. generator v2 (one FC layer removed) + discriminator v1: the FC output is healthy, but the
   discriminator's layers 1-3 extract features of little diversity (``low-diversity``) and the
   parameter distributions of its layers 1, 2, 3 and 5 grow alike towards the top;
3. generator v2 + discriminator v3 (batch normalisation on every layer): the best images.

:func:`run_experiment` trains the three rounds (:data:`VERSIONS`) and records each as its own run
(``<name>-g1d1``, ``<name>-g2d1``, ``<name>-g2d3``):

* scalars every step: ``loss/d``, ``loss/g``, ``d/real`` and ``d/fake`` (the discriminator's
  mean probability of "real" on the real and the generated batch);
* generated image grids over training (the same latent vectors each time): 4 x 4 images tiled
  into one ``[1, 3, 4S, 4S]`` image in [0, 1], stored as sample images (the ``samples`` kind of
  :mod:`convscope.formats.feature_maps`) under the key ``generated.step<NNNNNN>`` (see
  :func:`grid_key`), with meta ``{"step": N, "grid": [4, 4]}``;
* the two diagnosis reports with their layer views (``run.log_diagnosis(views=True)``, keys
  ``generator`` on 64 fixed latent vectors and ``discriminator`` on 64 real images): the
  generator's layer outputs (``deconv1``-``deconv3``, the paper's layers 3-5 of v1) and FC
  output distributions (``relu1``, ``relu2``), the discriminator's layer 1-3 outputs and the
  parameter views of every layer; shown on the Diagnosis page;
* both trained networks (``run.log_checkpoint``, keys ``generator`` and ``discriminator``).

By default the data are :class:`convscope.data.Faces` (procedural face-like images: nothing is
downloaded) at the paper's 160 x 160; ``data=DIR`` reads CelebA from a local folder
(:class:`convscope.data.CelebAFolder`). The paper's full settings are the defaults except the
number of steps (``steps=15000`` is the paper's: 0.7-1.2 s per step at 160 x 160 on a quiet
2-core CPU, so 3-5 hours per round there; ``benchmarks/bench_experiment.py --dcgan``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import InputError

__all__ = ["VERSIONS", "run_experiment", "train_gan", "image_grid", "grid_key", "run_names"]

#: the paper's three rounds: (generator version, discriminator version)
VERSIONS: tuple[tuple[int, int], ...] = ((1, 1), (2, 1), (2, 3))


def grid_key(step: int) -> str:
    """The sample-image key of the grid generated at ``step``."""
    return f"generated.step{int(step):06d}"


def run_names(name: str, versions: Sequence[tuple[int, int]] = VERSIONS) -> list[str]:
    """The run of each round: ``<name>-g<G>d<D>``."""
    return [f"{name}-g{g}d{d}" for g, d in versions]


def image_grid(images: torch.Tensor, nrow: int = 4) -> torch.Tensor:
    """Tile ``images [N, C, H, W]`` in [-1, 1] into one ``[1, C, rows*H, nrow*W]`` image in
    [0, 1] (missing tiles black)."""
    n, c, h, w = images.shape
    rows = -(-n // nrow)
    out = torch.zeros(c, rows * h, nrow * w)
    x = ((images.detach().float().cpu() + 1.0) / 2.0).clamp(0.0, 1.0)
    for i in range(n):
        r, k = divmod(i, nrow)
        out[:, r * h:(r + 1) * h, k * w:(k + 1) * w] = x[i]
    return out.unsqueeze(0)


def train_gan(gen: torch.nn.Module, disc: torch.nn.Module,
              sample_real: Callable[[torch.Generator], torch.Tensor], steps: int, *,
              batch_size: int = 64, lr_d: float = 3e-4, lr_g: float = 7e-4, seed: int = 0,
              on_step: Callable[[int, dict[str, float]], None] | None = None,
              quiet: bool = True) -> dict[str, float]:
    """Wang & Li's training: binary cross-entropy, RMSprop (lr D 3e-4, G 7e-4), one
    discriminator and one (non-saturating) generator update per step. ``sample_real(g)`` returns
    a real batch drawn with ``g``; ``on_step(step, metrics)`` is called after each step (1-based)
    with ``loss/d``, ``loss/g``, ``d/real``, ``d/fake``. Returns the last step's metrics."""
    from tqdm.auto import tqdm

    g = torch.Generator().manual_seed(int(seed))
    opt_d = torch.optim.RMSprop(disc.parameters(), lr=lr_d)
    opt_g = torch.optim.RMSprop(gen.parameters(), lr=lr_g)
    gen.train()
    disc.train()
    m: dict[str, float] = {}
    for step in tqdm(range(1, int(steps) + 1), desc="DCGAN steps", disable=quiet, leave=False):
        real = sample_real(g)
        z = torch.randn(batch_size, gen.latent_dim, generator=g)
        fake = gen(z)
        p_real, p_fake = disc(real), disc(fake.detach())
        loss_d = (F.binary_cross_entropy(p_real, torch.ones_like(p_real))
                  + F.binary_cross_entropy(p_fake, torch.zeros_like(p_fake)))
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        p = disc(fake)
        loss_g = F.binary_cross_entropy(p, torch.ones_like(p))
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
        m = {"loss/d": loss_d.item(), "loss/g": loss_g.item(),
             "d/real": p_real.mean().item(), "d/fake": p_fake.mean().item()}
        if on_step is not None:
            on_step(step, m)
    gen.eval()
    disc.eval()
    return m


def _data(data: Any, image_size: int, limit: int | None, images: int, seed: int):
    """(training set, 64 held-out real images) for ``data`` (None: procedural Faces)."""
    from ..data import CelebAFolder, Faces

    if data is None:
        return Faces(n=images, size=image_size, seed=seed), \
            Faces(n=64, size=image_size, split="val", seed=seed).batch(range(64))
    ds = CelebAFolder(data, size=image_size, limit=limit)
    if len(ds) < 2:
        raise InputError(f"{ds.root} holds {len(ds)} image: need at least 2 (training and "
                         "held-out images for the discriminator's diagnosis).")
    n_val = min(64, max(1, len(ds) // 10))
    held = ds.batch(range(len(ds) - n_val, len(ds)))
    ds.files = ds.files[: len(ds) - n_val]
    return ds, held


def _round(run: Any, gen: torch.nn.Module, disc: torch.nn.Module, train_set: Any,
           held: torch.Tensor, z_fixed: torch.Tensor, *, steps: int, batch_size: int,
           lr_d: float, lr_g: float, seed: int, sample_every: int, diagnose_images: int,
           quiet: bool) -> tuple[float, dict[str, float], Any, Any]:
    """Train one round into ``run``: scalars, grids, checkpoints, both diagnoses."""
    from ..formats.feature_maps import SAMPLES_KIND

    n_train = len(train_set)

    def sample_real(g: torch.Generator) -> torch.Tensor:
        return train_set.batch(torch.randint(0, n_train, (batch_size,), generator=g).tolist())

    def snapshot(step: int) -> None:
        was = gen.training
        gen.eval()
        with torch.no_grad():
            grid = image_grid(gen(z_fixed[:16]))
        gen.train(was)
        run.log_array(SAMPLES_KIND, grid_key(step), grid.numpy(), step=step, dtype="float16",
                      meta={"step": int(step), "grid": [4, 4]})

    def on_step(step: int, m: dict[str, float]) -> None:
        run.log_scalars(step, m)
        if step % sample_every == 0 and step != steps:
            snapshot(step)

    t = time.perf_counter()
    snapshot(0)
    last = train_gan(gen, disc, sample_real, steps, batch_size=batch_size, lr_d=lr_d,
                     lr_g=lr_g, seed=seed, on_step=on_step, quiet=quiet)
    snapshot(int(steps))
    secs = time.perf_counter() - t
    run.log_scalars(int(steps), {"seconds/train": secs, "seconds/step": secs / int(steps)})
    run.log_checkpoint(gen, "generator")
    run.log_checkpoint(disc, "discriminator")
    # the generator first: views are stored per layer name, and the discriminator's fc1 / fc2
    # (its layers 5-6, whose parameters the paper reads) then replace the generator's
    rg = run.log_diagnosis(gen, z_fixed[:diagnose_images], key="generator", views=True)
    rd = run.log_diagnosis(disc, held, key="discriminator", views=True)
    return secs, last, rg, rd


def run_experiment(logdir: str | Path = "runs", *, data: str | Path | None = None,
                   name: str = "dcgan", versions: Sequence[tuple[int, int]] = VERSIONS,
                   steps: int = 15000, batch_size: int = 64, image_size: int = 160,
                   latent_dim: int = 256, hidden: int = 2560, output: str = "relu",
                   images: int = 4096, limit: int | None = None, sample_every: int = 500,
                   lr_d: float = 3e-4, lr_g: float = 7e-4, diagnose_images: int = 64,
                   seed: int = 0, num_threads: int | None = None,
                   quiet: bool = False) -> list[Path]:
    """Train and record Wang & Li (2020)'s DCGAN rounds, each as its own run of ``logdir``.

    Args:
        logdir: where the runs go (``<name>-g1d1``, ``<name>-g2d1``, ``<name>-g2d3``).
        data: a folder holding CelebA's ``img_align_celeba/`` (or that folder); None: procedural
            :class:`~convscope.data.Faces` (no download).
        name: the runs' name prefix.
        versions: the rounds, ``(generator version, discriminator version)`` pairs.
        steps, batch_size, lr_d, lr_g: training (the paper: 15,000, 64, 3e-4, 7e-4).
        image_size: the images' side (160 in the paper; a multiple of 8).
        latent_dim, hidden, output: the generator's z size (256), its first FC width in v1
            (2560) and output activation (the paper's ``"relu"``, or ``"tanh"``).
        images: how many Faces images to draw from (procedural data only).
        limit: read only the first ``limit`` CelebA files (the last 10 %, at most 64, are held
            out for the discriminator's diagnosis).
        sample_every: store a grid of generated images every this many steps (and at the end).
        diagnose_images: latent vectors / real images each diagnosis sees (at most 64).
        seed: initialisation, data and latent vectors (each round starts from the same seed).
        num_threads: torch threads (None: unchanged).
        quiet: no progress bars or messages.

    Returns the run directories, in the order of ``versions``.
    """
    from ..run import Run
    from ..training import torch_threads
    from ..zoo import dcgan_discriminator, dcgan_generator

    if int(steps) < 1 or int(batch_size) < 2 or int(sample_every) < 1:
        raise InputError(f"steps={steps}, batch_size={batch_size}, sample_every={sample_every}: "
                         "need steps >= 1, batch_size >= 2 (batch norm), sample_every >= 1.")
    if not 1 <= int(diagnose_images) <= 64:
        raise InputError(f"diagnose_images={diagnose_images}: pass 1 .. 64.")
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    train_set, held = _data(data, image_size, limit, images, seed)
    held = held[:diagnose_images]
    z_fixed = torch.randn(max(16, diagnose_images), latent_dim,
                          generator=torch.Generator().manual_seed(seed + 123))
    paths = []
    for (gv, dv), run_name in zip(versions, run_names(name, versions), strict=True):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            gen = dcgan_generator(gv, latent_dim=latent_dim, image_size=image_size,
                                  hidden=hidden, output=output)
            disc = dcgan_discriminator(dv, image_size=image_size)
        config = {"experiment": "dcgan", "paper": "Wang & Li 2020", "generator_version": gv,
                  "discriminator_version": dv, "steps": int(steps), "batch_size": int(batch_size),
                  "lr_d": lr_d, "lr_g": lr_g, "optimizer": "RMSprop", "loss": "BCE",
                  "image_size": int(image_size), "latent_dim": int(latent_dim),
                  "hidden": int(hidden), "output": output, "seed": int(seed),
                  "data": "procedural Faces" if data is None else str(Path(data))}
        with Run(logdir, run_name, config=config, quiet=quiet) as run, \
                torch_threads(num_threads):
            say(f"convscope experiment dcgan: generator v{gv} + discriminator v{dv}, "
                f"{steps} steps at {image_size}x{image_size}; recording into {run.path}")
            secs, last, rg, rd = _round(run, gen, disc, train_set, held, z_fixed, steps=steps,
                                        batch_size=batch_size, lr_d=lr_d, lr_g=lr_g, seed=seed,
                                        sample_every=sample_every,
                                        diagnose_images=diagnose_images, quiet=quiet)
            say(f"  {steps} steps in {secs:.0f} s; last loss D {last['loss/d']:.3f} "
                f"G {last['loss/g']:.3f}")
            say(f"  generator v{gv}: {rg.headline()}")
            say(f"  discriminator v{dv}: {rd.headline()}")
            paths.append(run.path)
    return paths
