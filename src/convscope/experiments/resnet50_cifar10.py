"""Li et al.'s experiment: ResNet-50 on CIFAR-10, browsed in the dashboard.

The paper's split: the 60,000 images of CIFAR-10 pooled, 1,000 images of each class drawn at
random as the test set (10,000), the remaining 50,000 shuffled as the training set
(:func:`paper_split`). The network is :func:`convscope.zoo.resnet50_cifar` (bottleneck blocks
3, 4, 6, 3 for 32 x 32 inputs, its stem conv -> BN -> ReLU -> max-pool as separate modules).
It trains with SGD (momentum 0.9, Nesterov, weight decay 5e-4, one-cycle learning rate) on
random 4-pixel shifts and horizontal flips, then records what the paper shows:

* the network graph with per-layer time and memory (the Resources page's rings);
* the feature maps of the stem stages (``conv1``, ``bn1``, ``relu``, ``maxpool``) and of stage
  4's blocks and convolutions (one test image per class);
* the input preference (activation maximisation with Yosinski et al. 2015's regularisers) of
  every conv layer of stages 1 and 4;
* a 3-D PCA of the test set's penultimate features, coloured by class;
* the scalars of training, and the trained model (for the Live page and units on demand).

``convscope experiment resnet50-cifar10 --data DIR`` runs it; the small settings
(``--limit-train``, ``--limit-test``, ``--epochs 1``) run in seconds for tests.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..errors import InputError

__all__ = ["paper_split", "shift_flip", "run_experiment", "STEM_LAYERS", "conv_layers"]

#: the stem's stages, each its own module (Li et al., figure 4)
STEM_LAYERS = ("conv1", "bn1", "relu", "maxpool")


def paper_split(images: torch.Tensor, labels: torch.Tensor, *, test_per_class: int = 1000,
                seed: int = 0) -> tuple[tuple[torch.Tensor, torch.Tensor],
                                        tuple[torch.Tensor, torch.Tensor]]:
    """The paper's split of pooled images: ``test_per_class`` random images of each class as
    the test set (in class order), every other image, shuffled, as the training set. Returns
    ``((train_x, train_y), (test_x, test_y))``. A class with fewer than ``test_per_class + 1``
    images is an :class:`InputError` (its training share would be empty)."""
    if images.shape[0] != labels.shape[0]:
        raise InputError(f"{images.shape[0]} images but {labels.shape[0]} labels.")
    if int(test_per_class) < 1:
        raise InputError(f"test_per_class must be >= 1, got {test_per_class}.")
    g = torch.Generator().manual_seed(int(seed))
    test_idx = []
    for c in torch.unique(labels).tolist():
        idx = (labels == c).nonzero()[:, 0]
        if idx.numel() <= test_per_class:
            raise InputError(f"class {c} has {idx.numel()} images: fewer than test_per_class + 1 "
                             f"= {test_per_class + 1}; pass a smaller --test-per-class.")
        test_idx.append(idx[torch.randperm(idx.numel(), generator=g)[:test_per_class]])
    test = torch.cat(test_idx)
    keep = torch.ones(labels.shape[0], dtype=torch.bool)
    keep[test] = False
    train = keep.nonzero()[:, 0]
    train = train[torch.randperm(train.numel(), generator=g)]
    return (images[train], labels[train]), (images[test], labels[test])


def shift_flip(x: torch.Tensor, pad: int = 4, generator: torch.Generator | None = None
               ) -> torch.Tensor:
    """The standard CIFAR augmentation on a batch: each image shifted by up to ``pad`` pixels
    (zero padding, random crop back to size) and flipped left-right with probability 1/2."""
    b, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    flip = torch.rand(b, generator=generator) < 0.5
    out = torch.empty_like(x)
    for i in range(b):
        crop = padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
        out[i] = crop.flip(-1) if flip[i] else crop
    return out


def conv_layers(model: torch.nn.Module, stages: tuple[str, ...] = ("layer1", "layer4")
                ) -> list[str]:
    """Every ``Conv2d`` of the named stages (their shortcuts' convolutions included)."""
    return [n for n, m in model.named_modules()
            if isinstance(m, torch.nn.Conv2d) and n.split(".")[0] in stages]


def _one_per_class(labels: torch.Tensor, n: int = 10) -> list[int]:
    seen: dict[int, int] = {}
    for i, c in enumerate(labels.tolist()):
        seen.setdefault(int(c), i)
    return [seen[k] for k in sorted(seen)][:n]


def run_experiment(data: str | Path, logdir: str | Path = "runs", *, name: str | None = None,
                   epochs: int = 30, batch_size: int = 128, lr: float = 0.1,
                   limit_train: int | None = None, limit_test: int | None = None,
                   test_per_class: int = 1000, preferred_units: int = 16,
                   preferred_steps: int = 128, method: str = "yosinski:3",
                   profile_images: int = 32, profile_repeat: int = 3, seed: int = 0,
                   device: str | None = None, num_threads: int | None = None,
                   quiet: bool = False) -> Path:
    """Train ResNet-50 on CIFAR-10 (files under ``data``; see
    :class:`convscope.data.CIFAR10`) and record the paper's views into a new run of ``logdir``.

    Args:
        data: the folder holding ``cifar-10-batches-py`` (or ``-bin``), or that folder.
        epochs, batch_size, lr: training (SGD with Nesterov momentum 0.9, weight decay 5e-4,
            one-cycle schedule peaking at ``lr``).
        limit_train, limit_test: use only the first N images of each split (after the split;
            for quick runs and tests).
        test_per_class: the paper's 1,000 test images per class.
        preferred_units, preferred_steps, method: activation maximisation of each conv layer of
            stages 1 and 4 (``method``: ``"yosinski:N"``, Yosinski et al. 2015's regulariser
            preset N, or ``"lucid"``).
        profile_images, profile_repeat: the batch and the repeats that time each layer (the
            Resources page's rings).
        seed: initialisation, split and shuffling.
        device: where to train (``"cuda"``, ``"cpu"``; None: the CPU); the recordings after
            training run on the CPU.
        num_threads: torch threads while training (None: unchanged).
        quiet: no progress bars or messages.

    Returns the run directory.
    """
    from ..data import CIFAR10
    from ..model import collect_features
    from ..run import Run
    from ..training import fit, torch_threads
    from ..zoo import resnet50_cifar

    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    t_start = time.perf_counter()
    train_set, test_set = CIFAR10(data, train=True), CIFAR10(data, train=False)
    xa, ya = train_set.tensors()
    xb, yb = test_set.tensors()
    (x_tr, y_tr), (x_te, y_te) = paper_split(torch.cat([xa, xb]), torch.cat([ya, yb]),
                                             test_per_class=test_per_class, seed=seed)
    if limit_train:
        x_tr, y_tr = x_tr[:limit_train], y_tr[:limit_train]
    if limit_test:
        x_te, y_te = x_te[:limit_test], y_te[:limit_test]
    names = list(train_set.class_names)
    config = {"experiment": "resnet50-cifar10", "epochs": epochs, "batch_size": batch_size,
              "device": str(device or "cpu"),
              "lr": lr, "n_train": int(len(y_tr)), "n_test": int(len(y_te)),
              "test_per_class": test_per_class, "seed": seed, "method": method,
              "class_names": names}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = resnet50_cifar(num_classes=10)
    aug_gen = torch.Generator().manual_seed(seed + 1)
    with Run(logdir, name, config=config, quiet=quiet) as run:
        say(f"convscope experiment resnet50-cifar10: {len(y_tr):,} training and {len(y_te):,} "
            f"test images; recording into {run.path}")

        def on_step(step: int, m: dict[str, float]) -> None:
            run.log_scalars(step, {"train/loss": m["loss"], "train/acc": m["acc"],
                                   "train/lr": m["lr"]})

        def on_epoch(epoch: int, step: int, m: dict) -> None:
            run.log_scalars(step, {"epoch": epoch, "epoch/train_loss": m["train_loss"],
                                   "epoch/train_acc": m["train_acc"],
                                   "test/loss": m.get("test_loss", float("nan")),
                                   "test/acc": m.get("test_acc", float("nan")),
                                   "epoch/seconds": m["seconds"]})
            say(f"  epoch {epoch}: train acc {m['train_acc']:.1%}, test acc "
                f"{m.get('test_acc', float('nan')):.1%}, {m['seconds']:.0f} s")

        history = fit(model, (x_tr, y_tr), (x_te, y_te), epochs=epochs, batch_size=batch_size,
                      lr=lr, optimizer="sgd", weight_decay=5e-4, on_step=on_step,
                      on_epoch=on_epoch, augment=lambda x: shift_flip(x, generator=aug_gen),
                      channels_last=True, num_threads=num_threads, quiet=quiet, seed=seed,
                      device=device)
        model.to("cpu", memory_format=torch.contiguous_format).eval()
        run.log_checkpoint(model)
        t_rec = time.perf_counter()
        with torch_threads(num_threads):
            run.log_model(model, x_te[:profile_images], repeat=profile_repeat)
            pick = _one_per_class(y_te)
            stage4 = [n for n, _ in model.layer4.named_children()]
            run.log_feature_maps(model, x_te[pick], [*STEM_LAYERS, "layer4",
                                                     *(f"layer4.{n}" for n in stage4)],
                                 labels=y_te[pick])
            run.log_preferred_inputs(model, conv_layers(model), max_units=preferred_units,
                                     steps=preferred_steps, method=method)
            loader = [(x_te[i:i + 256], y_te[i:i + 256]) for i in range(0, len(x_te), 256)]
            feats, labels = collect_features(model, loader, quiet=quiet)
            run.log_embedding(feats, labels, name="penultimate (fc input)", images=x_te,
                              class_names=names)
        run.log_scalars(history.steps[-1]["step"] if history.steps else 0, {
            "experiment/train_seconds": t_rec - t_start,
            "experiment/record_seconds": time.perf_counter() - t_rec})
        acc = history.test_acc
        say(f"convscope experiment resnet50-cifar10: test accuracy "
            f"{'n/a' if acc is None else f'{acc:.1%}'} after "
            f"{epochs} epoch(s); done in {time.perf_counter() - t_start:.0f} s. View it with: "
            f"convscope serve --logdir {logdir}")
    return run.path

