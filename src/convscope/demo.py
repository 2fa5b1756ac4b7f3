"""``convscope demo``: train the zoo ResNet on procedural Shapes and record everything.

The training itself lives in :mod:`convscope.training`; this module wires it to a :class:`Run`
and records, after training, what each part of convscope shows (each recording step is one
function in :data:`RECORDINGS`, so every capability has its place in the demo).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .run import Run
from .training import DemoConfig, DemoResult, auto_threads, fit, torch_threads

__all__ = ["run_demo", "RECORDINGS", "Recording"]

VALIDATE_EVERY = 25  # steps between per-image validation checkpoints


@dataclass(frozen=True)
class Recording:
    """One post-training recording step of the demo."""

    name: str
    record: Callable[[Run, DemoResult, bool], None]


def _record_structure(run: Run, res: DemoResult, quiet: bool) -> None:
    """Model graph + profile (batch of 32 test images), feature maps of 8 test images, and the
    PCA of the test set's penultimate features (the classifier's input)."""
    from .model import collect_features

    model = res.model.eval()
    x = res.test_images
    run.log_model(model, x[:32], repeat=10)
    pick = _one_per_class(res.test_labels, 8)
    run.log_feature_maps(model, x[pick], labels=res.test_labels[pick])
    loader = [(x[i:i + 256], res.test_labels[i:i + 256]) for i in range(0, len(x), 256)]
    feats, labels = collect_features(model, loader, quiet=quiet)
    names = getattr(res.test, "class_names", None)
    with torch.no_grad():
        run.log_embedding(feats, labels, name="penultimate (fc input)", images=x,
                          class_names=list(names) if names is not None else None)


def _one_per_class(labels, n: int) -> list[int]:
    """Indices of ``n`` images, one per class first (in class order), then the next ones."""
    seen: dict[int, int] = {}
    for i, lab in enumerate(labels.tolist()):
        seen.setdefault(int(lab), i)
    picks = [seen[k] for k in sorted(seen)][:n]
    rest = [i for i in range(len(labels)) if i not in set(picks)]
    return picks + rest[: n - len(picks)]


def _record_attribution(run: Run, res: DemoResult, quiet: bool) -> None:
    """Every attribution method on 8 test images (one per class), pointing game on their masks."""
    pick = _one_per_class(res.test_labels, 8)
    run.log_attributions(res.model.eval(), res.test_images[pick], labels=res.test_labels[pick],
                         layer="layer3",  # 4x4 maps at 32x32 input (layer4 is 2x2: too coarse)
                         masks=res.test_masks[pick],
                         class_names=list(getattr(res.test, "class_names", []) or []) or None)


FEATURE_LAYERS = ("conv1", "layer1.0.conv2", "layer2.0.conv2", "layer3.0.conv2", "layer4.0.conv2")


def _record_features(run: Run, res: DemoResult, quiet: bool) -> None:
    """Preferred inputs of 16 units and the top-9 test images of every channel, for a conv
    layer of the stem and of each stage (shallow layers prefer colour, deep ones texture)."""
    model = res.model.eval()
    small = res.config.n_train <= 1000  # the seconds-long test setting
    layers = list(FEATURE_LAYERS[::2] if small else FEATURE_LAYERS)
    run.log_preferred_inputs(model, layers, max_units=4 if small else 16,
                             steps=16 if small else 128)
    run.log_top_examples(model, layers, res.test_images, k=9)


# DeconvNet
PROJECTION_LAYERS = ("conv1", "layer1.0.conv2", "layer2.0.conv2")


def _record_projections(run: Run, res: DemoResult, quiet: bool) -> None:
    """DeconvNet projections (Zeiler & Fergus 2014) of 16 units of 3 conv layers (4 units in the
    seconds-long test setting): each unit's top-9 test images projected back to pixels."""
    small = res.config.n_train <= 1000
    run.log_projections(res.model.eval(), list(PROJECTION_LAYERS), res.test_images,
                        max_units=4 if small else 16, k=9)


def _record_cnnvis(run: Run, res: DemoResult, quiet: bool) -> None:  # CNNVis
    """CNNVis (Liu et al. 2017) of the first 5 convolutions after the stem (stages 1 to 3): 6
    channel clusters per layer over the test set's classes, bundled edges between them."""
    from torch.utils.data import TensorDataset

    run.log_cnnvis(res.model.eval(), TensorDataset(res.test_images, res.test_labels), clusters=6)


def _record_attribution_set(run: Run, res: DemoResult, quiet: bool) -> None:
    """The gradient methods and the CAMs (all but Score-CAM, the slow one) over the first 64
    test images as one paged set, the way a validation set is explained."""
    names = list(getattr(res.test, "class_names", []) or []) or None
    run.log_attributions(res.model.eval(), res.test_images[:64], labels=res.test_labels[:64],
                         masks=res.test_masks[:64], layer="layer3", key="test-64",
                         methods=["saliency", "guided_backprop", "cam", "grad_cam",
                                  "grad_cam_pp"], batch_size=32, class_names=names)


def _record_diagnosis(run: Run, res: DemoResult, quiet: bool) -> None:
    """Wang & Li's diagnosis on 64 test images, with every layer's dendrogram / grid / KDE, and
    the statistics of every test image (mergeable, the figures from its first batch)."""
    model = res.model.eval()
    run.log_diagnosis(model, res.test_images[:64])
    run.log_diagnosis(model, res.test_images, batch_size=64, key="test-set")


def _record_cka(run: Run, res: DemoResult, quiet: bool) -> None:  # compare runs
    """Linear CKA between every conv / linear layer of the trained model and of the same
    network at its initial weights (rebuilt from the seed), over 256 test images: how far
    training moved each layer's representation (Compare page)."""
    run.log_cka(res.model.eval(), res.config.make_model().eval(), res.test_images[:256],
                label="trained", other_label="initial weights", key="trained-vs-init")


# Each capability appends its recording here (model graph, feature maps, attribution, ...).
RECORDINGS: list[Recording] = [
    Recording("model graph, profile, feature maps and PCA embedding", _record_structure),
    Recording("attribution maps of 8 test images", _record_attribution),
    Recording("attribution maps of 64 test images (a paged set)", _record_attribution_set),
    Recording("diagnosis of 64 test images and of the whole test set", _record_diagnosis),
    Recording("preferred inputs and top-9 examples of 5 conv layers", _record_features),
    Recording("DeconvNet projections of 3 conv layers", _record_projections),  # DeconvNet
    Recording("CNNVis clusters and bundled edges of 5 conv layers", _record_cnnvis),  # CNNVis
    Recording("CKA of the trained layers against their initial weights", _record_cka),  # compare
]


def run_demo(
    logdir: str | Path = "runs",
    *,
    name: str | None = None,
    epochs: int | None = None,
    small: bool = False,
    quiet: bool = False,
    seed: int = 0,
    config: DemoConfig | None = None,
) -> Path:
    """Train and record the demo run; returns the run directory.

    Args:
        logdir: where the run is written.
        name: run name (default: timestamp + suffix).
        epochs: override the tuned number of epochs.
        small: a seconds-long configuration (tiny data and model) for tests.
        quiet: no progress bars or messages.
        seed: model initialisation and shuffling seed.
        config: a full :class:`DemoConfig` (overrides ``small``).
    """
    cfg = config or (DemoConfig.small(seed=seed) if small else DemoConfig(seed=seed))
    if epochs is not None:
        cfg.epochs = int(epochs)
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    t_start = time.perf_counter()
    train, test = cfg.make_data()
    config_doc = {"demo": cfg.to_dict(), "class_names": list(test.class_names)}
    with Run(logdir, name, config=config_doc, quiet=quiet) as run:
        say(f"convscope demo: recording into {run.path}")
        t0 = time.perf_counter()
        x_tr, y_tr, _ = train.tensors(quiet=quiet)
        x_te, y_te, m_te = test.tensors(quiet=quiet)
        data_seconds = time.perf_counter() - t0
        model = cfg.make_model()
        # training dynamics: layer/filter statistics every 10 steps, per-image validation
        # results on a fixed subset every VALIDATE_EVERY steps
        run.watch(model, every=10)
        val = [(x_te[i:i + 500], y_te[i:i + 500]) for i in range(0, min(len(x_te), 1000), 500)]
        # thumbnails of the validation images (Training page: a class's images), ids as
        # run.validate numbers them (the running index)
        n_val = min(len(x_te), 1000)
        run.log_validation_images(x_te[:n_val], y_te[:n_val])

        def on_step(step: int, m: dict[str, float]) -> None:
            run.log_scalars(step, {"train/loss": m["loss"], "train/acc": m["acc"],
                                   "train/lr": m["lr"]})
            if step % VALIDATE_EVERY == 0:
                acc = run.validate(step, model, val)
                run.log_scalars(step, {"val/acc": acc})

        def on_epoch(epoch: int, step: int, m: dict) -> None:
            run.log_scalars(step, {
                "epoch": epoch,
                "epoch/train_loss": m["train_loss"], "epoch/train_acc": m["train_acc"],
                "test/loss": m.get("test_loss", float("nan")),
                "test/acc": m.get("test_acc", float("nan")),
                "epoch/seconds": m["seconds"],
            })

        history = fit(model, (x_tr, y_tr), (x_te, y_te), on_step=on_step, on_epoch=on_epoch,
                      quiet=quiet, **cfg.fit_kwargs())
        run.unwatch(model)
        if cfg.channels_last:
            model.to(memory_format=torch.contiguous_format)
        run.log_checkpoint(model)
        result = DemoResult(model, history, train, test, x_te, y_te, m_te, data_seconds, cfg)
        train_seconds = time.perf_counter() - t_start
        test_acc = history.test_acc
        last_step = history.steps[-1]["step"] if history.steps else 0
        run.log_scalars(last_step, {"demo/train_seconds": train_seconds,
                                    "demo/data_seconds": data_seconds})
        say(f"convscope demo: test accuracy {test_acc:.1%} after {cfg.epochs} epochs, "
            f"{train_seconds:.0f} s (data {data_seconds:.1f} s)")
        with torch_threads(cfg.num_threads or auto_threads()):  # one thread when the CPU is busy
            for rec in RECORDINGS:
                t0 = time.perf_counter()
                rec.record(run, result, quiet)
                say(f"convscope demo: recorded {rec.name} ({time.perf_counter() - t0:.1f} s)")
    say(f"convscope demo: done in {time.perf_counter() - t_start:.0f} s")
    return run.path
