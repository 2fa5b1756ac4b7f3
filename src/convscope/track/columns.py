"""Column names of the watch tables (no torch needed to read them)."""

STAT_NAMES = ("min", "max", "mean", "std", "l1", "l2", "zeros")
LAYER_COLUMNS = tuple(f"w_{s}" for s in STAT_NAMES) + tuple(f"g_{s}" for s in STAT_NAMES) + (
    "update_ratio",)
FILTER_COLUMNS = ("w_l2", "g_l2", "ratio", "cos_prev")
