"""Peak memory of one call, for the benchmarks (imported from the scripts' own folder)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any


def rss_bytes() -> int:
    """This process's resident set size, from /proc."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_extra_rss(fn: Callable[[], Any], every: float = 0.002) -> int:
    """Run ``fn`` while a thread samples the RSS every ``every`` seconds; the peak above the
    RSS before the call, in bytes (run it in a fresh process for a clean baseline)."""
    base = rss_bytes()
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(every)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        fn()
    finally:
        stop.set()
        th.join()
    return peak[0] - base
