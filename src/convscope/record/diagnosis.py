"""``run.log_diagnosis``: Wang & Li (2020)'s diagnosis of a model, with the data behind its figures.

The report is computed by :mod:`convscope.diagnose` and stored through
:mod:`convscope.formats.diagnosis` (which owns the layout): the whole report as an object, the
findings and per-layer numbers as tables, and per layer the figure data of the output and
parameter views (grid, density curves, dendrogram, stats, notes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..formats import diagnosis as fmt

if TYPE_CHECKING:  # pragma: no cover
    from ..run import Run

__all__ = ["log_diagnosis", "store_report"]


def store_report(run: Run, report: Any, key: str = fmt.DEFAULT_KEY) -> None:
    """Persist a :class:`~convscope.diagnose.Report` (and its views, when it has them):
    :func:`convscope.formats.diagnosis.write`."""
    fmt.write(run, report, key)


def log_diagnosis(run: Run, model: Any, inputs: Any, *, key: str = fmt.DEFAULT_KEY,
                  views: bool = True, batch_size: int | None = None, sharded: bool = False,
                  quiet: bool | None = None, **kwargs: Any) -> Any:
    """Diagnose and store the report (with the figures' data when ``views``). Returns it.

    * ``inputs`` a tensor and no ``batch_size``: :func:`convscope.diagnose.diagnose` on that
      batch;
    * a ``Dataset``, a loader, or a tensor with ``batch_size``: the statistics of every item
      (:func:`convscope.diagnose.diagnose_dataset`; the figures show the first batch);
    * ``sharded=True`` under ``torch.distributed``: every rank must call it; the data set is
      split across ranks (:func:`convscope.distributed.diagnose_sharded`) and rank 0 stores.

    ``quiet``: hide the progress bar (None: the run's setting).
    """
    import torch

    quiet = run.quiet if quiet is None else bool(quiet)
    if sharded:
        from ..distributed import diagnose_sharded, rank_world

        report = diagnose_sharded(model, inputs, batch_size=batch_size or 64, views=views,
                                  quiet=quiet, **kwargs)
        if rank_world()[0] == 0:
            store_report(run, report, key)
        return report
    if isinstance(inputs, torch.Tensor) and batch_size is None:
        from ..diagnose import diagnose

        report = diagnose(model, inputs, views=views, quiet=quiet, **kwargs)
    else:
        from ..diagnose import diagnose_dataset

        report = diagnose_dataset(model, inputs, batch_size=batch_size or 64, views=views,
                                  quiet=quiet, **kwargs)
    store_report(run, report, key)
    return report
