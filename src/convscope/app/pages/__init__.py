"""Dashboard pages: one module per concern, each exposing ``PAGE``.

A page is a path, a title, a layout function and a function that registers its callbacks. The
shell builds the navigation from :data:`PAGES` in order; adding a page is adding a module here.
A page about one run's data frames its layout with :func:`~convscope.app.components.picker_page`
and registers its run picker with :func:`~convscope.app.components.register_run_picker` (same
prefix), so every page answers "no run selected", "no X recorded yet" and damaged files alike.
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
        compare,
        diagnosis,
        embedding,
        generated,  # F: the Generated images page
        live,
        model,
        resources,
        runs,
        scalars,
        training,
    )

    return [runs.PAGE, scalars.PAGE, generated.PAGE,  # F: generated.PAGE
            model.PAGE, attribution.PAGE, diagnosis.PAGE, live.PAGE,
            resources.PAGE, embedding.PAGE, training.PAGE, compare.PAGE]
