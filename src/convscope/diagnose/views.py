"""The data behind Wang & Li (2020)'s figures: output views and parameter views.

* :func:`output_view` — a 4-D output as a ``batch x channel`` grid of maps with the channel tree
  (cosine distance, single linkage) and one KDE curve per channel; a 2-D output as a
  ``samples x features`` heatmap with the feature tree and per-feature KDE.
* :func:`param_grid` / :func:`param_view` — conv and transposed-conv weights as Wang & Li's grid
  (rows = output channels, columns = input channels, each ``kh x kw`` cell scaled to 0-1, the bias
  as a last column), linear weights as a ``f_out x (f_in + 1)`` heatmap with the bias appended;
  the tree and KDE run along the outputs.

PyTorch stores conv weights ``[c_out, c_in, kh, kw]``, transposed-conv weights
``[c_in, c_out, kh, kw]`` and linear weights ``[f_out, f_in]``; TensorFlow (Wang & Li's framework)
stores ``[kh, kw, c_in, c_out]`` and ``[f_in, f_out]``. The views follow Wang & Li's orientation
whatever the storage: one row per output, inputs along the row, bias at the end.

Views hold numpy arrays (ready to store or draw); everything heavy is computed in torch on the
tensor's device first. Big layers are cut to a seeded sample of rows / channels, recorded in
``notes``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..nn import minmax
from .cluster import Clustering, channel_vectors, cluster_vectors, sample_indices
from .kde import KDE, kde
from .stats import conv_layout, output_stats, param_stats
from .thresholds import Thresholds

__all__ = ["OutputView", "ParamView", "output_view", "param_view", "param_grid", "scale_cells"]

#: Values per channel fed to a KDE curve (seeded sample above this).
KDE_VALUES = 1024


def scale_cells(cells: torch.Tensor) -> torch.Tensor:
    """Min-max scale each cell ``[..., kh, kw]`` to 0-1 on its own (Wang & Li 2020: every conv unit
    scaled to 0-1). A constant cell becomes 0.5."""
    return minmax(cells, (-2, -1), fill=0.5)


def param_grid(
    weight: Any,
    bias: torch.Tensor | None = None,
    *,
    transposed: bool | None = None,
    gap: int = 0,
) -> torch.Tensor:
    """Wang & Li (2020)'s picture of a layer's parameters, as one 2-D array on the weight's device.

    Args:
        weight: an ``nn.Conv*`` / ``nn.ConvTranspose*`` / ``nn.Linear`` module (its bias is used
            when ``bias`` is None), or a weight tensor: conv ``[c_out, c_in, kh, kw]`` (1-D conv
            ``[c_out, c_in, k]``), transposed conv ``[c_in, c_out, kh, kw]`` with
            ``transposed=True``, linear ``[f_out, f_in]``.
        bias: ``[c_out]`` / ``[f_out]`` or None (no bias column).
        gap: conv only: NaN rows/columns between cells (NaN draws as blank in a heatmap).

    Returns:
        conv: ``[c_out * kh (+ gaps), c_in * kw (+ gaps) (+ 1)]``: row block ``o`` holds output
        channel ``o``; column block ``i`` input channel ``i``; each ``kh x kw`` cell min-max
        scaled to 0-1 on its own; the last column (when a bias exists) holds the biases of the
        block's output, scaled to 0-1 over all outputs. Linear: ``[f_out, f_in (+ 1)]`` raw
        weights with the raw bias as the last column (a heatmap, as in Wang & Li 2020).
    """
    if isinstance(weight, nn.Module):
        if bias is None and isinstance(getattr(weight, "bias", None), torch.Tensor):
            bias = weight.bias
        if not isinstance(getattr(weight, "weight", None), torch.Tensor):
            raise InputError(
                f"{type(weight).__name__} has no weight tensor; pass a conv, transposed conv "
                "or linear layer."
            )
    elif not isinstance(weight, torch.Tensor):
        raise InputError(f"param_grid needs a module or a weight tensor, got {type(weight).__name__}.")
    w, kind = conv_layout(weight, transposed)
    w = w.detach().float()
    b = bias.detach().float().reshape(-1) if bias is not None else None
    if b is not None and b.numel() != w.shape[0]:
        raise InputError(
            f"bias has {b.numel()} values but the weight has {w.shape[0]} outputs; pass the "
            "layer's own bias."
        )
    if w.dim() == 2:
        return torch.cat([w, b.unsqueeze(1)], 1) if b is not None else w.clone()
    if w.dim() < 3:
        raise InputError(f"cannot draw a weight of shape {list(w.shape)}.")
    o, i = int(w.shape[0]), int(w.shape[1])
    kw = int(w.shape[-1])
    kh = int(w[0, 0].numel() // kw)
    cells = scale_cells(w.reshape(o, i, kh, kw))
    g = int(gap)
    if g:
        cells = F.pad(cells, (0, g, 0, g), value=float("nan"))
    ph, pw = kh + g, kw + g
    img = cells.permute(0, 2, 1, 3).reshape(o * ph, i * pw)
    if b is not None:
        col = minmax(b, (), fill=0.5).repeat_interleave(ph).unsqueeze(1)  # [o * ph, 1]
        if g:
            mask = (torch.arange(o * ph, device=col.device) % ph) >= kh
            col = col.masked_fill(mask.unsqueeze(1), float("nan"))
            img = img[:, : i * pw - g]
            img = torch.cat([img, torch.full((o * ph, g), float("nan"), device=img.device), col], 1)
        else:
            img = torch.cat([img, col], 1)
    elif g:
        img = img[:, : i * pw - g]
    if g:
        img = img[: o * ph - g]
    return img


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


@dataclass
class OutputView:
    """Data of one layer output's figures (see :func:`output_view`).

    Attributes:
        name: layer name. kind: ``"maps"`` or ``"features"``. shape: the full output's shape.
        samples: ``[b]`` batch indices shown. channels: ``[c]`` channel (feature) indices shown.
        data: maps ``[b, c, h, w]`` (the grid: rows = samples, columns = channels; maps
            shrunk by area averaging when larger than ``max_side``) or features ``[b, c]``
            (the heatmap: rows = samples, columns = features).
        clustering: tree over the shown channels (``clustering.labels == channels``).
        kde: one density curve per shown channel.
        stats: the layer's numbers (:class:`~convscope.diagnose.stats.LayerStats` as a dict,
            measured on the whole output).
        notes: what was sampled or shrunk.
    """

    name: str
    kind: str
    shape: list[int]
    samples: np.ndarray
    channels: np.ndarray
    data: np.ndarray
    clustering: Clustering
    kde: KDE
    stats: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def leaf_order(self) -> np.ndarray:
        """Positions (into ``channels``) in dendrogram leaf order: draw grid columns in this
        order so they sit under the tree's leaves."""
        return np.asarray(self.clustering.leaves)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (numpy arrays for arrays, nested dicts for the tree and KDE)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "shape": list(self.shape),
            "samples": np.asarray(self.samples),
            "channels": np.asarray(self.channels),
            "data": np.asarray(self.data),
            "clustering": self.clustering.to_dict(),
            "kde": self.kde.to_dict(),
            "stats": dict(self.stats),
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OutputView:
        return cls(
            name=d["name"],
            kind=d["kind"],
            shape=list(d["shape"]),
            samples=np.asarray(d["samples"], dtype=np.int64),
            channels=np.asarray(d["channels"], dtype=np.int64),
            data=np.asarray(d["data"], dtype=np.float32),
            clustering=Clustering.from_dict(d["clustering"]),
            kde=KDE.from_dict(d["kde"]),
            stats=dict(d.get("stats", {})),
            notes=list(d.get("notes", [])),
        )


@dataclass
class ParamView:
    """Data of one layer's parameter figures (see :func:`param_view`).

    Attributes:
        name, kind (``"conv"``, ``"deconv"``, ``"linear"``), shape (PyTorch weight shape).
        rows: ``[r]`` output channels (features) shown, top to bottom.
        cols: ``[c]`` input channels (features) shown, left to right.
        grid: :func:`param_grid` of the shown rows and columns (bias column last when present).
        cell: ``[kh, kw]`` cell size (``[1, 1]`` for linear).
        has_bias: whether the last grid column is the bias.
        clustering: tree over the shown rows (vectors: each output's full weights).
        kde: one curve per shown row (that output's weights).
        stats: :class:`~convscope.diagnose.stats.ParamStats` as a dict (whole weight).
        notes: what was sampled.
    """

    name: str
    kind: str
    shape: list[int]
    rows: np.ndarray
    cols: np.ndarray
    grid: np.ndarray
    cell: list[int]
    has_bias: bool
    clustering: Clustering
    kde: KDE
    stats: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "shape": list(self.shape),
            "rows": np.asarray(self.rows),
            "cols": np.asarray(self.cols),
            "grid": np.asarray(self.grid),
            "cell": list(self.cell),
            "has_bias": bool(self.has_bias),
            "clustering": self.clustering.to_dict(),
            "kde": self.kde.to_dict(),
            "stats": dict(self.stats),
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ParamView:
        return cls(
            name=d["name"],
            kind=d["kind"],
            shape=list(d["shape"]),
            rows=np.asarray(d["rows"], dtype=np.int64),
            cols=np.asarray(d["cols"], dtype=np.int64),
            grid=np.asarray(d["grid"], dtype=np.float32),
            cell=list(d["cell"]),
            has_bias=bool(d["has_bias"]),
            clustering=Clustering.from_dict(d["clustering"]),
            kde=KDE.from_dict(d["kde"]),
            stats=dict(d.get("stats", {})),
            notes=list(d.get("notes", [])),
        )


def _kde_rows(rows: torch.Tensor, labels: np.ndarray, seed: int, points: int) -> KDE:
    note = ""
    if rows.shape[1] > KDE_VALUES:
        pos = sample_indices(int(rows.shape[1]), KDE_VALUES, seed + 2, device=rows.device)
        note = f"KDE of {KDE_VALUES} of {rows.shape[1]} values per channel (seeded sample)"
        rows = rows.index_select(1, pos)
    out = kde(rows, labels=labels, points=points)
    out.note = note
    return out


def output_view(
    x: torch.Tensor,
    *,
    name: str = "",
    module_type: str = "",
    reference: torch.Tensor | None = None,
    thresholds: Thresholds | dict | None = None,
    max_samples: int | None = None,
    max_channels: int | None = None,
    max_side: int = 64,
    kde_points: int = 128,
    seed: int = 0,
    stats: dict[str, Any] | None = None,
) -> OutputView:
    """Data for Wang & Li (2020)'s figures of one layer output.

    Args:
        x: ``[B, C, H, W]`` (maps; other ranks >= 3 are flattened to ``[B, C, 1, L]``) or
            ``[B, F]`` (features).
        name, module_type: the layer (type decides saturation bounds in ``stats``).
        reference: ``[B, R, H0, W0]`` image for the input-similarity number.
        max_samples: rows shown (default 8 for maps, 64 for features; first samples).
        max_channels: channels shown and clustered (default 64 for maps, 512 for features;
            seeded sample beyond).
        max_side: maps larger than this are shrunk (area averaging) for the grid only.
        kde_points: grid size of the density curves.
        stats: the layer's numbers when already measured (else measured here).

    Returns:
        :class:`OutputView`; the clustering and KDE use every sample of the shown channels.
    """
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise InputError(
            f"output_view expects a tensor [B, C, H, W] or [B, F], got "
            f"{getattr(x, 'shape', type(x).__name__)}."
        )
    th = Thresholds.coerce(thresholds)
    x = x.detach()
    if not x.is_floating_point():
        x = x.float()
    maps = x.dim() >= 3
    if x.dim() == 3:
        x = x.unsqueeze(2)
    elif x.dim() > 4:
        x = x.flatten(2).unsqueeze(2)
    b, c = int(x.shape[0]), int(x.shape[1])
    ms = max_samples or (8 if maps else 64)
    mc = max_channels or (64 if maps else 512)
    notes: list[str] = []
    if stats is None:
        st, _ = output_stats(x, name=name, module_type=module_type, reference=reference,
                             thresholds=th, seed=seed, clustering=False)
        stats = st.to_dict()
    ch = sample_indices(c, mc, seed, device=x.device)
    if len(ch) < c:
        notes.append(f"showing {len(ch)} of {c} channels (seeded sample, seed={seed})")
    xs = torch.nan_to_num(x.index_select(1, ch).float(), nan=0.0, posinf=0.0, neginf=0.0)
    vec = channel_vectors(xs)
    if not maps and b < 2:
        cl = cluster_vectors(vec[:0], labels=[], n_total=c)
        cl.labels = _np(ch).astype(np.int64)
        cl.leaves = np.arange(len(ch), dtype=np.int64)
        cl.note = ("no clustering: a 2-D output of one sample gives each feature a single value; "
                   "pass a batch of at least two inputs.")
    else:
        cl = cluster_vectors(vec, labels=_np(ch), n_total=c, dendrogram=True)
    if cl.note:
        notes.append(cl.note)
    kd = _kde_rows(vec, _np(ch), seed, kde_points)
    if kd.note:
        notes.append(kd.note)
    if vec.shape[1] < 2:
        notes.append("one value per channel: the density curves are only markers.")
    shown = xs[:ms]
    if b > ms:
        notes.append(f"showing the first {ms} of {b} samples")
    if maps and max(shown.shape[2], shown.shape[3]) > max_side:
        h, w = int(shown.shape[2]), int(shown.shape[3])
        f = max(h, w) / max_side
        size = (max(1, round(h / f)), max(1, round(w / f)))
        shown = F.adaptive_avg_pool2d(shown, size)
        notes.append(f"maps shrunk from {h}x{w} to {size[0]}x{size[1]} for the grid")
    return OutputView(
        name=name,
        kind="maps" if maps else "features",
        shape=[int(s) for s in x.shape] if stats.get("shape") is None else list(stats["shape"]),
        samples=np.arange(min(b, ms), dtype=np.int64),
        channels=_np(ch).astype(np.int64),
        data=_np(shown).astype(np.float32),
        clustering=cl,
        kde=kd,
        stats=dict(stats),
        notes=notes,
    )


def param_view(
    module: nn.Module | torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    name: str = "",
    transposed: bool | None = None,
    thresholds: Thresholds | dict | None = None,
    max_outputs: int | None = None,
    max_inputs: int | None = None,
    gap: int = 0,
    kde_points: int = 128,
    seed: int = 0,
    stats: dict[str, Any] | None = None,
) -> ParamView:
    """Data for Wang & Li (2020)'s parameter figures of a conv / transposed-conv / linear layer.

    Args:
        module: the layer, or its weight tensor (``transposed=True`` for a transposed conv's
            ``[c_in, c_out, kh, kw]``).
        bias: overrides the module's bias.
        max_outputs: rows shown and clustered (default 128 conv, 256 linear; seeded sample).
        max_inputs: input columns shown (default 128 conv, 1024 linear; seeded sample). The tree
            and the curves use all of a row's weights.
        gap: NaN spacing between conv cells in the grid.

    Returns:
        :class:`ParamView`.
    """
    th = Thresholds.coerce(thresholds)
    if isinstance(module, nn.Module):
        if not isinstance(getattr(module, "weight", None), torch.Tensor):
            raise InputError(
                f"{type(module).__name__} has no weight; param_view draws conv, transposed conv "
                "and linear layers."
            )
        if bias is None and isinstance(getattr(module, "bias", None), torch.Tensor):
            bias = module.bias
        raw_shape = list(module.weight.shape)
    elif isinstance(module, torch.Tensor):
        raw_shape = list(module.shape)
    else:
        raise InputError(f"param_view needs a module or weight tensor, got {type(module).__name__}.")
    w, kind = conv_layout(module, transposed)
    w = w.detach()
    if stats is None:
        st, _ = param_stats(module, bias, name=name, transposed=transposed, thresholds=th,
                            seed=seed, clustering=False)
        stats = st.to_dict()
    o, i = int(w.shape[0]), int(w.shape[1])
    lin = w.dim() == 2
    mo = max_outputs or (256 if lin else 128)
    mi = max_inputs or (1024 if lin else 128)
    notes: list[str] = []
    rows = sample_indices(o, mo, seed, device=w.device)
    cols = sample_indices(i, mi, seed + 3, device=w.device)
    if len(rows) < o:
        notes.append(f"showing {len(rows)} of {o} outputs (seeded sample, seed={seed})")
    if len(cols) < i:
        notes.append(f"showing {len(cols)} of {i} inputs (seeded sample)")
    ws = w.index_select(0, rows)
    b = bias.detach().reshape(-1).index_select(0, rows) if bias is not None else None
    grid = param_grid(ws.index_select(1, cols), b, gap=gap)
    vec = torch.nan_to_num(ws.float().reshape(len(rows), -1))
    cl = cluster_vectors(vec, labels=_np(rows), n_total=o, dendrogram=True)
    if cl.note:
        notes.append(cl.note)
    kd = _kde_rows(vec, _np(rows), seed, kde_points)
    if kd.note:
        notes.append(kd.note)
    kw = int(w.shape[-1]) if not lin else 1
    kh = int(w[0, 0].numel() // kw) if not lin else 1
    return ParamView(
        name=name,
        kind=kind,
        shape=[int(s) for s in raw_shape],
        rows=_np(rows).astype(np.int64),
        cols=_np(cols).astype(np.int64),
        grid=_np(grid).astype(np.float32),
        cell=[kh, kw],
        has_bias=b is not None,
        clustering=cl,
        kde=kd,
        stats=dict(stats),
        notes=notes,
    )
