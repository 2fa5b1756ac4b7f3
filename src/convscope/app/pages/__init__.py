"""Dashboard pages: one module per concern, each exposing ``PAGE``.

A page is a path, a title, a layout function and a function that registers its callbacks. The
shell builds the navigation from :data:`PAGES` in order; adding a page is adding a module here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Page", "all_pages"]


@dataclass(frozen=True)
class Page:
    path: str
    title: str
    layout: Callable[[], Any]
    register: Callable[[Any, Any], None]
    description: str = ""


def all_pages() -> list[Page]:
    from . import (
        attribution,
        diagnosis,
        embedding,
        live,
        model,
        resources,
        runs,
        scalars,
        training,
    )

    return [runs.PAGE, scalars.PAGE, model.PAGE, attribution.PAGE, diagnosis.PAGE, live.PAGE,
            resources.PAGE, embedding.PAGE, training.PAGE]
