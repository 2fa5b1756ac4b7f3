"""A server process's memory, read from Linux's /proc (for the bounded-memory tests)."""

from __future__ import annotations

from pathlib import Path


def mem_mb(pid: int, field: str = "VmRSS") -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) of process ``pid``, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} for {pid}")


def reset_peak(pid: int) -> float:
    """Reset the process's peak RSS (VmHWM) to its current RSS (Linux: clear_refs 5); returns
    the current RSS in MB."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return mem_mb(pid)
