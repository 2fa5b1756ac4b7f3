"""``--device`` for the benchmarks (imported from the scripts' own folder): parse it, name it,
wait for the device before a clock is read, and measure a call's peak memory on it."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch


def add_device_arg(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--device", default="cpu",
                    help="torch device to run on (cpu, cuda, cuda:1); default cpu")


def device(name: str) -> torch.device:
    """The device ``name``; exits with a message when it is a CUDA device this machine lacks."""
    try:
        d = torch.device(name)
    except RuntimeError as exc:
        raise SystemExit(f"--device {name!r}: {exc}") from None
    if d.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: torch sees no CUDA device on this machine.")
    return d


def describe(d: torch.device) -> str:
    """``"cpu"`` or ``"cuda:0 (NVIDIA H200, 139 GiB)"``."""
    if d.type != "cuda":
        return str(d)
    i = d.index if d.index is not None else torch.cuda.current_device()
    p = torch.cuda.get_device_properties(i)
    return f"cuda:{i} ({p.name}, {p.total_memory / 2**30:.0f} GiB)"


def sync(d: torch.device | str) -> None:
    """Wait for the device's queued work (a CUDA clock read before this measures nothing)."""
    d = torch.device(d)
    if d.type == "cuda":
        torch.cuda.synchronize(d)


def peak_extra(fn: Callable[[], Any], d: torch.device | str) -> tuple[int, str]:
    """``(bytes, what)``: the peak memory ``fn`` adds. On CUDA, allocated device memory above
    what was allocated before the call (``torch.cuda.max_memory_allocated``); on the CPU, the
    process's resident set (:func:`memory.peak_extra_rss`; run it in a fresh process)."""
    d = torch.device(d)
    if d.type == "cuda":
        sync(d)
        torch.cuda.reset_peak_memory_stats(d)
        base = torch.cuda.memory_allocated(d)
        fn()
        sync(d)
        return torch.cuda.max_memory_allocated(d) - base, "CUDA allocated"
    from memory import peak_extra_rss

    return peak_extra_rss(fn), "RSS"
