"""``cs.open_run(path)``: the read API of a run, composed of one query mixin per concern.

:class:`RunReader` is the transport reader (:class:`convscope.store.reader.StoreReader`: tables,
SQL, arrays, objects, metadata) plus each format's queries (``scalars()``, ``profile_shares()``,
``checkpoints()``, ``load_model()``, the training views, ...). ``convscope.store.open_run`` and
``convscope.store.RunReader`` re-export these two names.
"""

from __future__ import annotations

from pathlib import Path

from ..store.reader import StoreReader
from .catalog import TABLE_SOURCES
from .checkpoints import CheckpointQueries
from .scalars import ScalarQueries
from .structure import StructureQueries
from .training import TrainingQueries

__all__ = ["RunReader", "open_run"]


class RunReader(StoreReader, ScalarQueries, StructureQueries, CheckpointQueries,
                TrainingQueries):
    """Read access to one run directory.

    Args:
        path: the run directory (the one holding ``run.json``).
    """

    def _missing_hint(self) -> str:
        have = ", ".join(self.tables()) or "none"
        recorded = "; ".join(f"{t} by {c}" for t, c in TABLE_SOURCES.items())
        return f"Tables in this run: {have}. Tables are recorded as follows: {recorded}."


def open_run(path: str | Path) -> RunReader:
    """Open a run directory for reading (``cs.open_run("runs/my-run").scalars()``)."""
    return RunReader(path)
