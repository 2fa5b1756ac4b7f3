"""``run.watch`` and ``run.log_validation``: training dynamics into the run directory.

The tables (``watch_layers``, ``watch_filters``, ``validation_images``, ``validation``) and
their encoding belong to :mod:`convscope.formats.training`; this module turns the training
loop's tensors into its rows: the watcher's snapshots, and checked (and, under
``torch.distributed``, gathered) validation results. 10,000 images cost 1.25 KB of bits a
checkpoint before compression.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InputError
from ..formats.training import ValidationWriter, write_watch

if TYPE_CHECKING:  # pragma: no cover
    from ..run import Run

__all__ = ["start_watch", "ValidationLog"]


def start_watch(run: Run, model: Any, *, every: int = 10, layers: Any = None,
                filters: bool = True, ranks: int | str = 0, background: bool | None = None,
                fused: bool | None = None) -> Any:
    """Attach a :class:`~convscope.track.watch.Watcher` whose sink writes to ``run``.

    ``ranks``: the rank that records (default 0) or ``"all"``; other ranks attach nothing.
    ``background``, ``fused``: see :class:`~convscope.track.watch.Watcher`.
    """
    from ..track.watch import Watcher

    if ranks != "all" and int(ranks) != run.rank:
        return None
    rank = run.rank

    def sink(step: int, layer_cols: dict[str, Any], filter_cols: dict[str, Any]) -> None:
        write_watch(run, layer_cols, filter_cols, rank)

    return Watcher(model, sink, every=every, layers=layers, filters=filters,
                   background=background, fused=fused)


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
        self._writer = ValidationWriter(run, run.reader())  # a resumed run's images read back

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
        """Store one checkpoint's results (:class:`~convscope.formats.training.ValidationWriter`)."""
        ids_a, labels_a, pred = self.arrays(ids, labels, predictions)
        self._writer.write(step, self.run.rank, ids_a, labels_a, pred)
