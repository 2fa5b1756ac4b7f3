"""Bodies of the ``Run.log_*`` methods that record analysis results (one module per concern).

They sit between the analysis packages (which they call) and the store (which they write
through the :class:`~convscope.Run`), so analysis code never needs a run directory.
"""
