"""``run.watch`` and ``run.log_validation``: training dynamics into the run directory.

Tables written:

* ``watch_layers`` — one row per (step, layer): weight and gradient min/max/mean/std/L1/L2/zero
  share and the update ratio (see :mod:`convscope.track.stats`), plus ``rank``.
* ``watch_filters`` — one row per (step, layer, filter): w_l2, g_l2, ratio, cos_prev, ``rank``.
  Parts are sorted by (layer, filter, step), so a query for one layer reads only its row groups.
* ``validation_images`` — one row per validation image the first time it is seen: position,
  id, label.
* ``validation`` — one row per logged checkpoint (per call): step, rank, n, the positions it
  covers (``pos0`` when they are consecutive, else ``positions`` as int32 bytes), ``correct``
  as a little-endian bitset and ``pred`` as int32 bytes. 10,000 images cost 1.25 KB of bits a
  checkpoint before compression.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from ..run import Run

__all__ = ["start_watch", "ValidationLog"]


def start_watch(run: Run, model: Any, *, every: int = 10, layers: Any = None,
                filters: bool = True, ranks: int | str = 0, background: bool | None = None
                ) -> Any:
    """Attach a :class:`~convscope.track.watch.Watcher` whose sink writes to ``run``.

    ``ranks``: the rank that records (default 0) or ``"all"``; other ranks attach nothing.
    ``background``: see :class:`~convscope.track.watch.Watcher`.
    """
    from ..track.watch import Watcher

    if ranks != "all" and int(ranks) != run.rank:
        return None
    rank = np.int16(run.rank)

    def sink(step: int, layer_cols: dict[str, Any], filter_cols: dict[str, Any]) -> None:
        layer_cols["rank"] = np.full(len(layer_cols["step"]), rank)
        run.log_rows("watch_layers", layer_cols)
        if filter_cols:
            filter_cols["rank"] = np.full(len(filter_cols["step"]), rank)
            run.log_rows("watch_filters", filter_cols)

    return Watcher(model, sink, every=every, layers=layers, filters=filters,
                   background=background)


def _as_int_array(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        raise InputError(f"{name} must be a 1-D sequence of integers, got "
                         f"{arr.dtype} of shape {arr.shape}.")
    return arr.astype(np.int64)


class ValidationLog:
    """Per-image validation results of one run: a registry of image ids -> positions, and one
    bitset row per checkpoint."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self._pos: dict[int, int] = {}
        self._labels: dict[int, int] = {}
        if run.reader().has_table("validation_images"):  # resumed run
            df = run.reader().table("validation_images")
            self._pos = dict(zip(df["id"].tolist(), df["pos"].tolist(), strict=True))
            self._labels = dict(zip(df["id"].tolist(), df["label"].tolist(), strict=True))

    @staticmethod
    def arrays(ids: Any, labels: Any, predictions: Any) -> tuple[np.ndarray, np.ndarray,
                                                                  np.ndarray]:
        """``(ids, labels, predicted classes)`` as checked int64 arrays of one length
        (``[N, K]`` scores become their argmax)."""
        ids_a = _as_int_array(ids, "ids")
        labels_a = _as_int_array(labels, "labels")
        if hasattr(predictions, "detach"):
            predictions = predictions.detach().cpu().numpy()
        pred = np.asarray(predictions)
        if pred.ndim == 2:  # logits or probabilities
            pred = pred.argmax(axis=1)
        pred = _as_int_array(pred, "predictions")
        n = len(ids_a)
        if not (len(labels_a) == len(pred) == n):
            raise InputError(f"ids, labels and predictions must have one entry per image: got "
                             f"{n}, {len(labels_a)} and {len(pred)}.")
        return ids_a, labels_a, pred

    @staticmethod
    def gather(ids: Any, labels: Any, predictions: Any) -> tuple[np.ndarray, np.ndarray,
                                                                  np.ndarray]:
        """The results of every rank together (``all_gather_object``; all ranks get them),
        sorted by id, each id once (a ``DistributedSampler`` pads the last share with repeats:
        the first copy is kept). Without ``torch.distributed`` (or with one process) the checked
        arrays as given. Every rank must call it."""
        from ..nn.dist import gather_objects

        ids_a, labels_a, pred = ValidationLog.arrays(ids, labels, predictions)
        parts = gather_objects((ids_a, labels_a, pred))
        if len(parts) == 1:
            return ids_a, labels_a, pred
        ids_a = np.concatenate([p[0] for p in parts])
        labels_a = np.concatenate([p[1] for p in parts])
        pred = np.concatenate([p[2] for p in parts])
        _, first = np.unique(ids_a, return_index=True)  # sorted ids, first occurrence
        return ids_a[first], labels_a[first], pred[first]

    def log(self, step: int, ids: Any, labels: Any, predictions: Any) -> None:
        ids_a, labels_a, pred = self.arrays(ids, labels, predictions)
        n = len(ids_a)
        if n == 0:
            return
        if len(np.unique(ids_a)) != n:
            raise InputError("ids must be unique within one log_validation call.")
        new = [(int(i), int(lab)) for i, lab in zip(ids_a, labels_a, strict=True)
               if int(i) not in self._pos]
        if new:
            start = len(self._pos)
            for k, (i, lab) in enumerate(new):
                self._pos[i] = start + k
                self._labels[i] = lab
            self.run.log_rows("validation_images", {
                "pos": np.arange(start, start + len(new), dtype=np.int64),
                "id": np.array([i for i, _ in new], dtype=np.int64),
                "label": np.array([lab for _, lab in new], dtype=np.int64),
            })
        pos = np.fromiter((self._pos[int(i)] for i in ids_a), dtype=np.int64, count=n)
        correct = pred == labels_a
        consecutive = bool(np.all(np.diff(pos) == 1))
        self.run.log_rows("validation", {
            "step": np.array([int(step)], dtype=np.int64),
            "rank": np.array([self.run.rank], dtype=np.int16),
            "n": np.array([n], dtype=np.int32),
            "pos0": np.array([int(pos[0]) if consecutive else -1], dtype=np.int64),
            "positions": [None if consecutive else pos.astype("<i4").tobytes()],
            "correct": [np.packbits(correct, bitorder="little").tobytes()],
            "pred": [pred.astype("<i4").tobytes()],
        })
