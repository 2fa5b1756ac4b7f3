"""A plain training loop for image classifiers, and the demo's configuration.

:func:`fit` trains any classifier ``model(x: [B, C, H, W]) -> logits [B, K]`` with AdamW (or SGD)
and a one-cycle learning-rate schedule, showing a tqdm bar, and reports through two callbacks::

    on_step(step, {"loss": float, "acc": float, "lr": float})          # after every optimiser step
    on_epoch(epoch, step, {"train_loss", "train_acc", "test_loss", "test_acc", "seconds"})

(``step`` counts optimiser steps from 1; ``epoch`` counts finished epochs from 1.) Anything that
records a run (``cs.Run``) plugs in through these callbacks, so this module needs no store.

:class:`DemoConfig` holds the defaults of ``convscope demo`` (the zoo ResNet on :class:`Shapes` at
32 x 32; >= 90 % test accuracy in a few CPU minutes) and :func:`train_demo` runs it end to end.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import InputError, ModelError

__all__ = [
    "fit",
    "evaluate",
    "History",
    "DemoConfig",
    "DemoResult",
    "train_demo",
    "as_tensors",
    "auto_threads",
]

StepCallback = Callable[[int, dict[str, float]], Any]
EpochCallback = Callable[[int, int, dict[str, Any]], Any]
EvalCallback = Callable[[int, dict[str, Any]], Any]


# ------------------------------------------------------------------------------------------------
# data


def as_tensors(data: Any, name: str = "data") -> tuple[torch.Tensor, torch.Tensor]:
    """Turn a data set into ``(images [N, C, H, W] float, labels [N] int64)`` in memory.

    Accepts an object with a ``tensors()`` method (``cs.data.Shapes``, ``cs.data.CIFAR10``), a
    ``TensorDataset``, a tuple/list ``(images, labels[, ...])`` of tensors, or any map-style
    ``Dataset`` whose items start with ``(image, label)`` (read once through a DataLoader).
    """
    if data is None:
        raise InputError(f"{name} is None: pass a data set such as cs.data.Shapes(n=...).")
    if hasattr(data, "tensors") and callable(data.tensors):
        out = data.tensors()
    elif isinstance(data, torch.utils.data.TensorDataset):
        out = data.tensors
    elif isinstance(data, tuple | list) and len(data) >= 2 and all(
        isinstance(t, torch.Tensor) for t in data[:2]
    ):
        out = data
    elif isinstance(data, torch.utils.data.Dataset):
        xs, ys = [], []
        loader = torch.utils.data.DataLoader(data, batch_size=256, shuffle=False)
        for batch in loader:
            xs.append(batch[0])
            ys.append(torch.as_tensor(batch[1]))
        if not xs:
            raise InputError(f"{name} is empty: it has no items to train or evaluate on.")
        out = (torch.cat(xs), torch.cat(ys))
    else:
        raise InputError(
            f"{name} of type {type(data).__name__} is not a data set: pass a torch Dataset "
            "returning (image, label[, ...]), a TensorDataset, or a tuple (images, labels)."
        )
    x, y = out[0], torch.as_tensor(out[1])
    if x.dim() != 4:
        raise InputError(f"{name}: images must be [N, C, H, W], got shape {list(x.shape)}.")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise InputError(
            f"{name}: labels must be [N] with N = {x.shape[0]} images, got shape {list(y.shape)}."
        )
    if x.shape[0] == 0:
        raise InputError(f"{name} is empty: it has no items to train or evaluate on.")
    return x.float(), y.long()


def auto_threads() -> int:
    """Torch threads worth using now: all cores on an idle machine, fewer on a busy one.

    On a loaded CPU, torch's multi-threaded kernels wait for descheduled threads at every
    operation; measured here (2 cores, other jobs running) a ResNet epoch took 10-17 s on one
    thread and 25-80 s on two. So: ``cores - round(1-minute load average)``, at least 1.
    """
    import os

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):  # pragma: no cover - not on this platform
        return cores
    return max(1, min(cores, cores - int(round(load))))


@contextmanager
def torch_threads(n: int | None):
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _device_of(model: nn.Module, device) -> torch.device:
    if device is not None:
        return torch.device(device)
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


# ------------------------------------------------------------------------------------------------
# evaluation


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Any,
    batch_size: int = 512,
    *,
    device: str | torch.device | None = None,
    return_predictions: bool = False,
    channels_last: bool = False,
) -> dict[str, Any]:
    """Accuracy and mean cross-entropy of ``model`` on ``data`` (eval mode, no gradients).

    data: anything :func:`as_tensors` accepts. Returns ``{"acc": float, "loss": float, "n": int}``
    and, with ``return_predictions=True``, ``"predictions": [N] int64`` and ``"correct": [N] bool``
    (CPU tensors). The model's train/eval mode is restored afterwards.
    """
    if not isinstance(model, nn.Module):
        raise ModelError(f"evaluate needs an nn.Module, got {type(model).__name__}.")
    x, y = as_tensors(data, "data")
    dev = _device_of(model, device)
    was_training = model.training
    model.eval()
    preds, loss_sum = [], 0.0
    try:
        for a in range(0, x.shape[0], batch_size):
            xb = x[a : a + batch_size].to(dev)
            if channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            yb = y[a : a + batch_size].to(dev)
            logits = model(xb)
            loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
            preds.append(logits.argmax(1).cpu())
    finally:
        model.train(was_training)
    pred = torch.cat(preds)
    correct = pred == y
    out: dict[str, Any] = {
        "acc": float(correct.float().mean()),
        "loss": loss_sum / x.shape[0],
        "n": int(x.shape[0]),
    }
    if return_predictions:
        out["predictions"] = pred
        out["correct"] = correct
    return out


# ------------------------------------------------------------------------------------------------
# training


@dataclass
class History:
    """What :func:`fit` went through.

    steps: one dict per optimiser step: ``step, epoch, loss, acc, lr``.
    epochs: one dict per epoch: ``epoch, step, train_loss, train_acc, seconds`` and, with test
        data, ``test_loss, test_acc``.
    evals: one dict per intermediate evaluation (``eval_every``): ``step, test_loss, test_acc``.
    seconds: wall time of the whole fit.
    num_threads: torch threads the fit ran with.
    """

    steps: list[dict[str, float]] = field(default_factory=list)
    epochs: list[dict[str, float]] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    num_threads: int = 0

    @property
    def loss(self) -> list[float]:
        """Training loss of every step."""
        return [s["loss"] for s in self.steps]

    @property
    def test_acc(self) -> float | None:
        """Test accuracy after the last epoch (None without test data)."""
        if not self.epochs or "test_acc" not in self.epochs[-1]:
            return None
        return self.epochs[-1]["test_acc"]


def fit(
    model: nn.Module,
    train_data: Any,
    test_data: Any = None,
    *,
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 3e-3,
    weight_decay: float = 5e-4,
    optimizer: str = "adamw",
    label_smoothing: float = 0.0,
    device: str | torch.device | None = None,
    on_step: StepCallback | None = None,
    on_epoch: EpochCallback | None = None,
    on_eval: EvalCallback | None = None,
    eval_every: int | None = None,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    channels_last: bool = False,
    num_threads: int | None = None,
    quiet: bool = False,
    seed: int = 0,
) -> History:
    """Train a classifier; return its :class:`History`.

    Args:
        model: ``model(x: [B, C, H, W]) -> logits [B, K]``; trained in place on ``device``
            (default: where its parameters are).
        train_data, test_data: anything :func:`as_tensors` accepts (``cs.data.Shapes``,
            ``cs.data.CIFAR10``, a TensorDataset, ``(images, labels)``). Loaded into memory once.
            ``test_data=None`` skips evaluation.
        epochs, batch_size: passes over the training data and images per step (a last batch of a
            single image is dropped, as batch norm cannot train on it).
        lr: peak learning rate of the one-cycle schedule (warm-up over the first 25 % of steps,
            cosine decay to ``lr / 1e4``).
        weight_decay: decoupled (AdamW) or L2 (SGD) weight decay.
        optimizer: ``"adamw"`` or ``"sgd"`` (momentum 0.9, Nesterov).
        label_smoothing: passed to the cross-entropy loss.
        on_step: ``on_step(step, {"loss", "acc", "lr"})`` after each optimiser step; step counts
            from 1; loss and acc are of that batch.
        on_epoch: ``on_epoch(epoch, step, metrics)`` after each epoch (epoch counts from 1);
            metrics hold ``train_loss``, ``train_acc`` (means over the epoch's batches),
            ``seconds`` and, with test data, ``test_loss`` and ``test_acc``.
        on_eval, eval_every: with both set (and test data), every ``eval_every`` steps call
            ``on_eval(step, {"test_loss", "test_acc", "predictions": [N], "correct": [N]})``
            — per-image validation results for training-dynamics views.
        augment: optional ``augment(x) -> x`` applied to each training batch.
        channels_last: run the model in channels-last memory format (often faster on CPU).
        num_threads: torch threads during the fit (restored afterwards); None keeps the setting.
        quiet: hide the progress bar.
        seed: seeds the shuffling order (the model's initialisation is the caller's).

    Returns the :class:`History`; the model is left in eval mode.
    """
    if not isinstance(model, nn.Module):
        raise ModelError(f"fit needs an nn.Module, got {type(model).__name__}.")
    if int(epochs) != epochs or epochs < 1:
        raise InputError(f"fit(epochs={epochs!r}): epochs must be an integer >= 1.")
    if int(batch_size) != batch_size or batch_size < 2:
        raise InputError(f"fit(batch_size={batch_size!r}): batch_size must be an integer >= 2.")
    if not lr > 0:
        raise InputError(f"fit(lr={lr!r}): the learning rate must be > 0.")
    if optimizer not in ("adamw", "sgd"):
        raise InputError(f"fit(optimizer={optimizer!r}): choose 'adamw' or 'sgd'.")
    if eval_every is not None and (int(eval_every) != eval_every or eval_every < 1):
        raise InputError(f"fit(eval_every={eval_every!r}): must be a positive integer or None.")

    x_train, y_train = as_tensors(train_data, "train_data")
    test = as_tensors(test_data, "test_data") if test_data is not None else None
    n = x_train.shape[0]
    if n < 2:
        raise InputError("train_data has fewer than 2 images; batch norm needs at least 2.")
    dev = _device_of(model, device)
    model.to(dev)
    if channels_last:
        model.to(memory_format=torch.channels_last)

    if optimizer == "adamw":
        opt: torch.optim.Optimizer = torch.optim.AdamW(
            model.parameters(), lr=lr, weight_decay=weight_decay
        )
    else:
        opt = torch.optim.SGD(
            model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay
        )
    per_epoch = n // batch_size + (1 if n % batch_size >= 2 else 0)
    total = per_epoch * int(epochs)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=total, pct_start=0.25, div_factor=25.0,
        final_div_factor=400.0,
    )
    gen = torch.Generator().manual_seed(int(seed))
    hist = History()

    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    step = 0
    with torch_threads(num_threads):
        hist.num_threads = torch.get_num_threads()
        bar = tqdm(total=total, desc="training", disable=quiet, unit="step", leave=False)
        try:
            for epoch in range(1, int(epochs) + 1):
                t_epoch = time.perf_counter()
                model.train()
                order = torch.randperm(n, generator=gen)
                loss_sum = acc_sum = 0.0
                for b in range(per_epoch):
                    idx = order[b * batch_size : (b + 1) * batch_size]
                    xb, yb = x_train[idx].to(dev), y_train[idx].to(dev)
                    if augment is not None:
                        xb = augment(xb)
                    if channels_last:
                        xb = xb.contiguous(memory_format=torch.channels_last)
                    logits = model(xb)
                    loss = F.cross_entropy(logits, yb, label_smoothing=label_smoothing)
                    if not torch.isfinite(loss):
                        raise ModelError(
                            f"Training diverged at step {step + 1}: the loss is {float(loss)}. "
                            f"Lower the learning rate (lr={lr}) or check the inputs."
                        )
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    lr_now = opt.param_groups[0]["lr"]
                    opt.step()
                    sched.step()
                    step += 1
                    lv = float(loss.detach())
                    av = float((logits.detach().argmax(1) == yb).float().mean())
                    loss_sum += lv
                    acc_sum += av
                    hist.steps.append(
                        {"step": step, "epoch": epoch, "loss": lv, "acc": av, "lr": lr_now}
                    )
                    if on_step is not None:
                        on_step(step, {"loss": lv, "acc": av, "lr": lr_now})
                    if on_eval is not None and eval_every and test is not None and (
                        step % eval_every == 0
                    ):
                        ev = evaluate(model, test, device=dev, return_predictions=True,
                                      channels_last=channels_last)
                        model.train()
                        hist.evals.append(
                            {"step": step, "test_loss": ev["loss"], "test_acc": ev["acc"]}
                        )
                        on_eval(step, {"test_loss": ev["loss"], "test_acc": ev["acc"],
                                       "predictions": ev["predictions"],
                                       "correct": ev["correct"]})
                    bar.update(1)
                    if step % 10 == 0 or b == per_epoch - 1:
                        bar.set_postfix(epoch=epoch, loss=f"{lv:.3f}", acc=f"{av:.2f}")
                metrics: dict[str, Any] = {
                    "train_loss": loss_sum / per_epoch,
                    "train_acc": acc_sum / per_epoch,
                }
                if test is not None:
                    ev = evaluate(model, test, device=dev, channels_last=channels_last)
                    metrics["test_loss"] = ev["loss"]
                    metrics["test_acc"] = ev["acc"]
                    bar.set_postfix(epoch=epoch, loss=f"{lv:.3f}", test_acc=f"{ev['acc']:.3f}")
                metrics["seconds"] = time.perf_counter() - t_epoch
                hist.epochs.append({"epoch": epoch, "step": step, **metrics})
                if on_epoch is not None:
                    on_epoch(epoch, step, dict(metrics))
        finally:
            bar.close()
            model.eval()
    hist.seconds = time.perf_counter() - t_start
    return hist


# ------------------------------------------------------------------------------------------------
# the demo


@dataclass
class DemoConfig:
    """Settings of the demo: the zoo ResNet trained on :class:`~convscope.data.Shapes`.

    The defaults reach >= 90 % test accuracy on 2,000 held-out images in a few minutes on a 2-core
    CPU (see ``benchmarks/bench_demo_training.py``). :meth:`small` is a seconds-long variant for
    tests. Build pieces with :meth:`make_data` and :meth:`make_model`, or run everything with
    :func:`train_demo`.
    """

    n_train: int = 12_000
    n_test: int = 2_000
    size: int = 32
    num_classes: int = 10
    data_seed: int = 0
    width: int = 16
    blocks: tuple[int, int, int, int] = (1, 1, 1, 1)
    epochs: int = 8
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 5e-4
    optimizer: str = "adamw"
    label_smoothing: float = 0.0
    channels_last: bool = True
    num_threads: int | None = None  # None: auto_threads() when the fit starts
    seed: int = 0

    @classmethod
    def small(cls, **overrides: Any) -> DemoConfig:
        """A tiny configuration (hundreds of images, one epoch, narrow model): seconds on a CPU."""
        base = cls(n_train=320, n_test=160, epochs=1, batch_size=64, width=8)
        return replace(base, **overrides)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-serialisable) of the settings, e.g. to store as run metadata."""
        d = asdict(self)
        d["blocks"] = list(self.blocks)
        return d

    def make_data(self):
        """``(train, test)`` :class:`~convscope.data.Shapes` data sets (lazy; nothing rendered)."""
        from .data import Shapes

        kw = {"size": self.size, "num_classes": self.num_classes, "seed": self.data_seed}
        return Shapes(n=self.n_train, split="train", **kw), Shapes(n=self.n_test, split="test", **kw)

    def make_model(self) -> nn.Module:
        """The zoo ResNet, initialised from ``seed`` (the global RNG state is left untouched)."""
        from .zoo import resnet

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return resnet(num_classes=self.num_classes, width=self.width, blocks=self.blocks)

    def fit_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`fit` for this configuration."""
        return {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "optimizer": self.optimizer,
            "label_smoothing": self.label_smoothing,
            "channels_last": self.channels_last,
            "num_threads": self.num_threads if self.num_threads else auto_threads(),
            "seed": self.seed,
        }


@dataclass
class DemoResult:
    """What :func:`train_demo` returns.

    model: the trained ResNet (eval mode). history: its :class:`History`.
    train, test: the :class:`Shapes` data sets. test_images ``[N, 3, S, S]``, test_labels ``[N]``,
    test_masks ``[N, S, S]``: the rendered test split (for feature maps, CAMs, pointing game).
    data_seconds: time spent rendering both splits.
    """

    model: nn.Module
    history: History
    train: Any
    test: Any
    test_images: torch.Tensor
    test_labels: torch.Tensor
    test_masks: torch.Tensor
    data_seconds: float
    config: DemoConfig


def train_demo(
    config: DemoConfig | None = None,
    *,
    on_step: StepCallback | None = None,
    on_epoch: EpochCallback | None = None,
    on_eval: EvalCallback | None = None,
    eval_every: int | None = None,
    quiet: bool = False,
    device: str | torch.device | None = None,
) -> DemoResult:
    """Render the Shapes data, build the ResNet and :func:`fit` it with ``config`` (default
    :class:`DemoConfig`). Callbacks are passed through to :func:`fit`."""
    cfg = config or DemoConfig()
    train, test = cfg.make_data()
    t0 = time.perf_counter()
    x_tr, y_tr, _ = train.tensors(quiet=quiet)
    x_te, y_te, m_te = test.tensors(quiet=quiet)
    data_seconds = time.perf_counter() - t0
    model = cfg.make_model()
    hist = fit(
        model, (x_tr, y_tr), (x_te, y_te), device=device, on_step=on_step, on_epoch=on_epoch,
        on_eval=on_eval, eval_every=eval_every, quiet=quiet, **cfg.fit_kwargs(),
    )
    if cfg.channels_last:  # hand back a model in the ordinary memory format
        model.to(memory_format=torch.contiguous_format)
    return DemoResult(model, hist, train, test, x_te, y_te, m_te, data_seconds, cfg)
