"""Linear centered kernel alignment (CKA; Kornblith et al. 2019): how alike two layers'
representations of the same images are, invariant to orthogonal transforms and isotropic
scaling of either, and not to arbitrary invertible linear maps.

* :func:`linear_cka` compares two feature matrices ``[n, p]`` and ``[n, q]`` of the same ``n``
  examples: ``||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)`` on column-centred features (the
  biased HSIC estimator), or with ``unbiased=True`` the unbiased HSIC estimator of Song et al.
  2012, computed from the Gram matrices.
* :func:`cka_matrix` compares every layer of one model with every layer of another (or of the
  same model, or two checkpoints of one) over a data set, as a layer x layer matrix. Layers of
  real networks have far too many features per image to hold the whole data set's features, so
  it accumulates, batch by batch, the unbiased HSIC of each pair of layers' ``[m, m]`` Gram
  matrices and normalises the sums at the end: the minibatch CKA of Nguyen, Raghu & Kornblith
  2021. Memory is one batch's Gram matrices (each made as its layer runs); with one batch holding the whole data set it is
  ``linear_cka(..., unbiased=True)`` of the flattened activations exactly.

Reductions run in float64.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import InputError
from ..nn import (
    Recorder,
    call_key,
    check_args,
    check_model,
    forward,
    iter_batches,
    layer_path,
    model_device,
    restore_mode,
    split_call,
    unwrap,
)
from ..nn.passes import DatasetPass, Share, run_pass

__all__ = ["CKAResult", "CKAPass", "cka_matrix", "linear_cka", "hsic_unbiased",
           "default_cka_layers", "MIN_BATCH"]

#: the unbiased HSIC estimator needs at least 4 examples per batch
MIN_BATCH = 4


def _as_features(x: Any, what: str) -> Tensor:
    t = torch.as_tensor(x)
    if t.dim() < 2:
        raise InputError(f"{what} must be [n, features...] with n examples, got shape "
                         f"{list(t.shape)}.")
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
        raise InputError(f"{what} must be numeric, got {t.dtype}.")
    return t.reshape(t.shape[0], -1).to(torch.float64)


def hsic_unbiased(k: Tensor, l: Tensor) -> Tensor:  # noqa: E741 - the papers' name
    """The unbiased HSIC estimator of Song et al. 2012 of two ``[n, n]`` Gram matrices
    (``n >= 4``): with ``K~``, ``L~`` the Grams with their diagonals set to zero,
    ``(tr(K~ L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1) / (n(n-3))``."""
    n = int(k.shape[0])
    if n < MIN_BATCH:
        raise InputError(f"the unbiased HSIC needs at least {MIN_BATCH} examples, got {n}.")
    k = k.double().clone()
    l = l.double().clone()  # noqa: E741
    k.fill_diagonal_(0.0)
    l.fill_diagonal_(0.0)
    tr = (k * l).sum()  # tr(K L) for symmetric matrices
    ks, ls = k.sum(), l.sum()
    kl = (k.sum(dim=0) * l.sum(dim=1)).sum()  # 1'K L 1
    return (tr + ks * ls / ((n - 1) * (n - 2)) - 2.0 * kl / (n - 2)) / (n * (n - 3))


def linear_cka(x: Any, y: Any, *, unbiased: bool = False) -> float:
    """Linear CKA between features ``x [n, ...]`` and ``y [n, ...]`` of the same ``n`` examples
    (trailing dimensions are flattened). ``unbiased=False``: Kornblith et al. 2019's estimator
    on column-centred features; ``True``: from the unbiased HSIC (:func:`hsic_unbiased`).
    1 for identical representations, unchanged by orthogonal transforms and isotropic scaling;
    0 when either representation is constant."""
    a, b = _as_features(x, "x"), _as_features(y, "y")
    if a.shape[0] != b.shape[0]:
        raise InputError(f"x and y must describe the same examples: {a.shape[0]} rows against "
                         f"{b.shape[0]}.")
    if unbiased:
        k, l = a @ a.T, b @ b.T  # noqa: E741
        xy, xx, yy = hsic_unbiased(k, l), hsic_unbiased(k, k), hsic_unbiased(l, l)
    else:
        a = a - a.mean(dim=0, keepdim=True)
        b = b - b.mean(dim=0, keepdim=True)
        if a.shape[1] <= a.shape[0] and b.shape[1] <= b.shape[0]:  # feature space: small
            xy = (b.T @ a).pow(2).sum()
            xx, yy = (a.T @ a).norm(), (b.T @ b).norm()
            return _ratio(xy, xx * yy, square=False)
        k, l = a @ a.T, b @ b.T  # noqa: E741 - Gram space: tr(KL) = ||Y^T X||_F^2
        xy, xx, yy = (k * l).sum(), (k * k).sum(), (l * l).sum()
    return _ratio(xy, xx * yy, square=True)


def _ratio(num: Tensor, den: Tensor, *, square: bool) -> float:
    den = den.sqrt() if square else den
    d = float(den)
    return 0.0 if not d > 0 else float(num) / d


@dataclass(frozen=True)
class CKAResult:
    """Linear CKA between every layer of model A (rows) and of model B (columns).

    Attributes:
        layers_a, layers_b: module paths, in model order.
        matrix: ``[len(layers_a), len(layers_b)]`` float64 CKA values.
        n_images: images that entered the estimate (a last batch of fewer than
            :data:`MIN_BATCH` is left out).
        batch_size: the batch size of the minibatch estimate.
        same_model: whether A and B were the same model object (a diagonal of ones).
    """

    layers_a: list[str]
    layers_b: list[str]
    matrix: Tensor
    n_images: int
    batch_size: int
    same_model: bool = False

    def best_match(self) -> list[tuple[str, str, float]]:
        """For each layer of A, the layer of B most like it: ``(a, b, cka)``."""
        best = self.matrix.argmax(dim=1).tolist()
        return [(a, self.layers_b[j], float(self.matrix[i, j]))
                for i, (a, j) in enumerate(zip(self.layers_a, best, strict=True))]


def default_cka_layers(model: nn.Module) -> list[str]:
    """Every ``Conv2d`` and ``Linear`` module of ``model`` that its forward calls, in module
    order: the output projection a ``MultiheadAttention`` holds (ViT's ``out_proj``) only keeps
    weights that the attention uses functionally, so it is left out."""
    inner = unwrap(model)
    held = {f"{n}.{c}" if n else c for n, m in inner.named_modules()
            if isinstance(m, nn.MultiheadAttention) for c, _ in m.named_children()}
    return [n for n, m in inner.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and n not in held]


@dataclass
class _Sums:
    xy: Tensor  # [La, Lb]
    xx: Tensor  # [La]
    yy: Tensor  # [Lb]
    n_images: int


def _gram(out: Any) -> Any:
    """The ``[m, m]`` Gram matrix of a layer's output flattened per image, in float64, made in
    the hook: only the Gram matrices of a batch are kept, never every layer's activations
    (ResNet-50's convolutions at 224² hold ~20 M values per image)."""
    if isinstance(out, tuple) and out:
        out = out[0]
    if not isinstance(out, Tensor):
        return None
    flat = out.detach().reshape(out.shape[0], -1).to(torch.float64)
    return flat @ flat.T


class CKAPass(DatasetPass[_Sums, CKAResult]):
    """:func:`cka_matrix` as a data-set pass: a share's partial is the sums of unbiased HSIC
    over its batches, and partials add up (shares are aligned to the batch size, so a sharded
    run sums the same batches as one process)."""

    def __init__(self, model_a: nn.Module, model_b: nn.Module | None, dataset: Any,
                 layers_a: Sequence[Any] | None = None, layers_b: Sequence[Any] | None = None,
                 *, batch_size: int = 64, quiet: bool = False) -> None:
        super().__init__(dataset, batch_size, "CKA")
        if self.align < MIN_BATCH:
            raise InputError(f"batch_size must be at least {MIN_BATCH} for the unbiased HSIC, "
                             f"got {self.align}.")
        self.a = unwrap(check_model(model_a))
        self.b = self.a if model_b is None else unwrap(check_model(model_b))
        self.same = self.b is self.a
        self.layers_a = self._layers(self.a, layers_a, "A")
        self.layers_b = self._layers(self.b, layers_b, "B")
        self.quiet = quiet

    @staticmethod
    def _layers(model: nn.Module, layers: Sequence[Any] | None, which: str) -> list[str]:
        specs = default_cka_layers(model) if layers is None else (
            [layers] if isinstance(layers, (str, nn.Module, type)) else list(layers))
        names = list(dict.fromkeys(layer_path(model, s) for s in specs))
        if not names:
            raise InputError(f"model {which} has no Conv2d or Linear layer: pass its layers "
                             "(module paths) to compare.")
        return names

    def _grams(self, model: nn.Module, layers: list[str], x: Tensor) -> list[Tensor]:
        wanted = {call_key(*split_call(n)): n for n in layers}
        named = dict(model.named_modules())
        mods = {split_call(n)[0]: named[split_call(n)[0]] for n in layers}
        with Recorder(mods, keys=set(wanted), stop=True, value=_gram) as rec:
            rec.run(forward, model, (x.to(model_device(model)),), "CKA")
        grams = []
        for key, name in wanted.items():
            v = rec.store.get(key)
            if v is None:
                raise InputError(f"layer {name!r} did not output a tensor in the forward pass: "
                                 "choose layers the forward pass runs.")
            grams.append(v)
        return grams

    def run(self, share: Share) -> _Sums:
        from tqdm.auto import tqdm

        piece, _ = self.piece(share)
        batches, total = iter_batches(piece, self.align)
        la, lb = len(self.layers_a), len(self.layers_b)
        sums = _Sums(torch.zeros(la, lb, dtype=torch.float64), torch.zeros(la, dtype=torch.float64),
                     torch.zeros(lb, dtype=torch.float64), 0)
        bar = tqdm(total=total, disable=self.quiet, desc="CKA", unit="img")
        try:
            with torch.no_grad(), restore_mode(self.a, True), restore_mode(self.b, True):
                for _, x, _ in batches:
                    bar.update(int(x.shape[0]))
                    if x.shape[0] < MIN_BATCH:
                        continue  # the unbiased HSIC needs 4 examples: a short last batch
                    if not x.is_floating_point():
                        raise InputError(f"images must be float, got {x.dtype}.")
                    check_args((x,), "images")
                    ka = [g.cpu() for g in self._grams(self.a, self.layers_a, x)]
                    kb = ka if self.same and self.layers_b == self.layers_a else [
                        g.cpu() for g in self._grams(self.b, self.layers_b, x)]
                    sa = torch.stack([hsic_unbiased(k, k) for k in ka])
                    sb = sa if kb is ka else torch.stack([hsic_unbiased(k, k) for k in kb])
                    sums.xx += sa
                    sums.yy += sb
                    for i, k in enumerate(ka):
                        for j, l in enumerate(kb):  # noqa: E741
                            sums.xy[i, j] += hsic_unbiased(k, l)
                    sums.n_images += int(x.shape[0])
        finally:
            bar.close()
        return sums

    def merge(self, partials: Sequence[_Sums]) -> _Sums:
        return _Sums(sum(p.xy for p in partials), sum(p.xx for p in partials),
                     sum(p.yy for p in partials), sum(p.n_images for p in partials))

    def finish(self, partial: _Sums) -> CKAResult:
        if partial.n_images == 0:
            raise InputError(f"CKA needs batches of at least {MIN_BATCH} images: the data set "
                             "gave none.")
        den = (partial.xx.clamp(min=0)[:, None] * partial.yy.clamp(min=0)[None, :]).sqrt()
        matrix = torch.where(den > 0, partial.xy / den.clamp(min=1e-300),
                             torch.zeros_like(partial.xy))
        return CKAResult(self.layers_a, self.layers_b, matrix, partial.n_images, self.align,
                         self.same)


def cka_matrix(model_a: nn.Module, model_b: nn.Module | None, dataset: Any,
               layers_a: Sequence[Any] | None = None, layers_b: Sequence[Any] | None = None,
               *, batch_size: int = 64, quiet: bool = False) -> CKAResult:
    """Linear CKA between every layer of ``model_a`` and every layer of ``model_b`` (``None``:
    ``model_a`` against itself) over ``dataset`` (a tensor ``[N, C, H, W]``, a map-style
    ``Dataset`` or an iterable of batches), the minibatch estimate of Nguyen et al. 2021 (see
    the module docstring). Each layer's output is flattened per image. Both models run in
    eval mode and are restored afterwards.

    Args:
        layers_a, layers_b: layer specifications (default: every Conv2d and Linear module).
        batch_size: images per minibatch (at least 4; larger batches give a less noisy
            estimate, and one batch of the whole data set gives the unbiased CKA itself).
        quiet: hide the progress bar.
    """
    return run_pass(CKAPass(model_a, model_b, dataset, layers_a, layers_b,
                            batch_size=batch_size, quiet=quiet))
