"""``run.log_diagnosis``: Wang & Li (2020)'s diagnosis of a model, with the data behind its figures.

Stored:

* ``objects/diagnosis/<key>`` — the whole :class:`~convscope.diagnose.Report` (``to_dict``);
* table ``diagnosis_findings`` — one row per finding (key, order, stage, severity, code, layer,
  message, advice, evidence JSON);
* table ``diagnosis_layers`` — the per-layer numbers (key + ``Report.layers_frame()``);
* per output layer: ``arrays/diag_maps/<layer>`` (the grid, float16), ``arrays/diag_kde/<layer>``
  (density curves) and ``objects/diag_view/<layer>`` (dendrogram, KDE grid, stats, notes);
* per parameter layer: ``arrays/diag_param/<layer>``, ``arrays/diag_param_kde/<layer>`` and
  ``objects/diag_param_view/<layer>``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from ..run import Run

__all__ = ["log_diagnosis", "store_report"]


def _tree(clustering: dict[str, Any]) -> dict[str, Any]:
    """The drawable part of a clustering dict (the condensed distances are not needed)."""
    return {k: v for k, v in clustering.items() if k != "condensed"}


def store_report(run: Run, report: Any, key: str = "model") -> None:
    """Persist a :class:`~convscope.diagnose.Report` (and its views, when it has them)."""
    run.log_object("diagnosis", key, report.to_dict())
    frame = report.to_frame()
    if len(frame):
        run.log_rows("diagnosis_findings", frame.assign(key=key))
    layers = report.layers_frame()
    if len(layers):
        run.log_rows("diagnosis_layers", _jsonable(layers).assign(key=key))
    for name, view in (report.output_views or {}).items():
        d = view.to_dict()
        run.log_array("diag_maps", name, d["data"], dtype=np.float16)
        run.log_array("diag_kde", name, np.asarray(d["kde"]["density"], dtype=np.float32))
        run.log_object("diag_view", name, {
            "name": name, "kind": d["kind"], "shape": d["shape"],
            "samples": d["samples"], "channels": d["channels"],
            "clustering": _tree(d["clustering"]),
            "kde": {k: v for k, v in d["kde"].items() if k != "density"},
            "stats": d["stats"], "notes": d["notes"], "key": key,
        })
    for name, view in (report.param_views or {}).items():
        d = view.to_dict()
        run.log_array("diag_param", name, np.asarray(d["grid"], dtype=np.float32))
        run.log_array("diag_param_kde", name, np.asarray(d["kde"]["density"], dtype=np.float32))
        rest = {k: v for k, v in d.items() if k not in ("grid", "kde", "clustering")}
        rest["clustering"] = _tree(d["clustering"])
        rest["kde"] = {k: v for k, v in d["kde"].items() if k != "density"}
        rest["key"] = key
        run.log_object("diag_param_view", name, rest)


def _jsonable(df: Any) -> Any:
    """Object columns holding lists/dicts become JSON strings (Parquet needs one type)."""
    import json

    out = df.copy()
    for c in out.columns:
        if out[c].dtype == object and out[c].map(lambda v: isinstance(v, (list, dict))).any():
            out[c] = out[c].map(lambda v: json.dumps(v, default=str))
    return out


def log_diagnosis(run: Run, model: Any, inputs: Any, *, key: str = "model",
                  views: bool = True, batch_size: int | None = None, sharded: bool = False,
                  **kwargs: Any) -> Any:
    """Diagnose and store the report (with the figures' data when ``views``). Returns it.

    * ``inputs`` a tensor and no ``batch_size``: :func:`convscope.diagnose.diagnose` on that
      batch;
    * a ``Dataset``, a loader, or a tensor with ``batch_size``: the statistics of every item
      (:func:`convscope.diagnose.diagnose_dataset`; the figures show the first batch);
    * ``sharded=True`` under ``torch.distributed``: every rank must call it; the data set is
      split across ranks (:func:`convscope.distributed.diagnose_sharded`) and rank 0 stores.
    """
    import torch

    if sharded:
        from ..distributed import diagnose_sharded, rank_world

        report = diagnose_sharded(model, inputs, batch_size=batch_size or 64, views=views,
                                  quiet=run.quiet, **kwargs)
        if rank_world()[0] == 0:
            store_report(run, report, key)
        return report
    if isinstance(inputs, torch.Tensor) and batch_size is None:
        from ..diagnose import diagnose

        report = diagnose(model, inputs, views=views, quiet=run.quiet, **kwargs)
    else:
        from ..diagnose import diagnose_dataset

        report = diagnose_dataset(model, inputs, batch_size=batch_size or 64, views=views,
                                  quiet=run.quiet, **kwargs)
    store_report(run, report, key)
    return report
