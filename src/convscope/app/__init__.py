"""The Dash dashboard: one page per concern, reading runs only through ``convscope.store`` and
drawing only through ``convscope.figures``.

``convscope serve --logdir runs`` or :func:`serve` from Python.
"""

from .server import serve
from .shell import create_app

__all__ = ["create_app", "serve"]
