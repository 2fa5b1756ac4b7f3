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
                  quiet: bool | None = None, clock: Any = None, **kwargs: Any) -> Any:
    """Diagnose and store the report (with the figures' data when ``views``). Returns it.

    * ``inputs`` a tensor and no ``batch_size``: :func:`convscope.diagnose.diagnose` on that
      batch;
    * a ``Dataset``, a loader, or a tensor with ``batch_size``: the statistics of every item
      (:func:`convscope.diagnose.diagnose_dataset`; the figures show the first batch);
    * ``sharded=True`` under ``torch.distributed``: every rank must call it; the data set is
      split across ranks (:func:`convscope.distributed.diagnose_sharded`) and rank 0 stores.

    Budget: 90 s for one batch of 8 ResNet-50 images at 224² on a 2-core CPU, plus 0.5 s per
    image of a data set (:mod:`convscope.record.budget`); the progress bar counts layers (one
    batch) or images (a data set), and a call projected to take more than twice its budget
    warns once, naming the options that shorten it. ``quiet``: hide the progress bar (None: the
    run's setting). ``clock``: for tests.
    """
    import torch

    from .budget import BUDGETS, DIAGNOSIS_PER_IMAGE, open_budget

    quiet = run.quiet if quiet is None else bool(quiet)
    one_batch = isinstance(inputs, torch.Tensor) and batch_size is None and not sharded
    seconds = BUDGETS["log_diagnosis"]
    if not one_batch:
        try:
            seconds += DIAGNOSIS_PER_IMAGE * len(inputs)
        except TypeError:  # an iterable of batches: no length
            pass
    shorten = ("views=False, fewer layers (layers=[...]) or max_elements=1<<20" if one_batch
               else "views=False, fewer layers (layers=[...]) or a smaller data set")
    with open_budget("log_diagnosis", seconds, shorten, clock=clock,
                     unit="layer" if one_batch else "image") as tracker:
        if sharded:
            from ..distributed import diagnose_sharded, rank_world

            report = diagnose_sharded(model, inputs, batch_size=batch_size or 64, views=views,
                                      quiet=quiet, **kwargs)
            if rank_world()[0] == 0:
                store_report(run, report, key)
            return report
        if one_batch:
            from ..diagnose import diagnose

            tracker.budget.what = f"{int(inputs.shape[0])} images"
            report = diagnose(model, inputs, views=views, quiet=quiet, **kwargs)
        else:
            from ..diagnose import diagnose_dataset

            report = diagnose_dataset(model, inputs, batch_size=batch_size or 64, views=views,
                                      quiet=quiet, **kwargs)
        store_report(run, report, key)
    return report
