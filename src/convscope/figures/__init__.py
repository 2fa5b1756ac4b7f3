"""Figure builders: stored data in, plotly Figure out.

Figures need no model and no autograd, only data read from a run (``cs.open_run``), so the same
figure serves the dashboard, a notebook and the static HTML report.
"""

from . import theme
from .scalars import scalar_figure, smooth

__all__ = ["theme", "scalar_figure", "smooth"]
