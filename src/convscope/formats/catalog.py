"""Which call records each table of a run: named in messages, on the Runs page's chips and on
dashboard pages that lack data. Each format module owns its entries (``SOURCE``)."""

from __future__ import annotations

from . import embedding, scalars, structure, top_examples

__all__ = ["TABLE_SOURCES"]

#: ``{table: the call that records it}``
TABLE_SOURCES: dict[str, str] = {
    scalars.TABLE: scalars.SOURCE,
    "arrays": "run.log_array(kind, key, value)",
    structure.PROFILE_TABLE: structure.SOURCE,
    embedding.TABLE: embedding.SOURCE,
    # watch/validation, attribution and diagnosis: their format modules (formats/training.py,
    # attribution.py, diagnosis.py) take these entries over
    "watch_layers": "run.watch(model, every=10)",
    "watch_filters": "run.watch(model, every=10)",
    "validation": "run.log_validation(step, ids, labels, predictions)",
    "validation_images": "run.log_validation(step, ids, labels, predictions)",
    "attribution_metrics": "run.log_attributions(model, images)",
    "diagnosis_findings": "run.log_diagnosis(model, inputs)",
    top_examples.TABLE: top_examples.SOURCE,
    "diagnosis_layers": "run.log_diagnosis(model, inputs)",
}
