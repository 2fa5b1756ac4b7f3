"""``run.log_cka``: linear CKA between the layers of the run's model and another model (a
checkpoint of the same network, or another network) over a data set, for the Compare page
and ``convscope compare``. The analysis is :mod:`convscope.embed.cka`; the layout on disk is
:mod:`convscope.formats.cka`."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from ..errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from ..embed.cka import CKAResult
    from ..run import Run

__all__ = ["log_cka"]

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def log_cka(run: Run, model: Any, other: Any, dataset: Any, *, layers: Any = None,
            other_layers: Any = None, label: str = "this run", other_label: str = "other",
            key: str = "cka", batch_size: int = 64, quiet: bool | None = None) -> CKAResult:
    """Compute and store the CKA matrix (see :meth:`convscope.Run.log_cka`)."""
    from ..embed.cka import cka_matrix
    from ..formats import cka as fmt

    if not isinstance(key, str) or not _KEY.match(key):
        raise InputError(f"key must be 1-64 letters, digits, '_', '.' or '-' (starting with a "
                         f"letter or digit), got {key!r}.")
    quiet = run.quiet if quiet is None else bool(quiet)
    res = cka_matrix(model, other, dataset, layers, other_layers, batch_size=batch_size,
                     quiet=quiet)
    fmt.write(run, fmt.CKA(key, res.matrix.float().numpy(), res.layers_a, res.layers_b,
                           str(label), str(other_label) if other is not None else str(label),
                           res.n_images, res.batch_size, res.same_model))
    return res
