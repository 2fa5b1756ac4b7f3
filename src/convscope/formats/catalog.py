"""Which call records each table of a run: named in messages, on the Runs page's chips and on
dashboard pages that lack data. Each format module owns its entries (``SOURCE``)."""

from __future__ import annotations

from ..store.layout import ARRAYS_TABLE
from . import attribution, diagnosis, embedding, scalars, structure, top_examples, training

__all__ = ["TABLE_SOURCES"]

#: ``{table: the call that records it}``
TABLE_SOURCES: dict[str, str] = {
    scalars.TABLE: scalars.SOURCE,
    ARRAYS_TABLE: "run.log_array(kind, key, value)",
    structure.PROFILE_TABLE: structure.SOURCE,
    embedding.TABLE: embedding.SOURCE,
    **dict.fromkeys(training.WATCH_TABLES, training.WATCH_SOURCE),
    **dict.fromkeys(training.VALIDATION_TABLES, training.VALIDATION_SOURCE),
    **dict.fromkeys(attribution.TABLES, attribution.SOURCE),
    top_examples.TABLE: top_examples.SOURCE,
    **dict.fromkeys(diagnosis.TABLES, diagnosis.SOURCE),
}
