"""One fused pass over a layer's weight, gradient and snapshot: the watcher's CPU fast path.

``watch(every=1)`` needs, per layer and step, the weight's and the gradient's min, max, sum, sum
of squares, L1 and count of non-zeros, and per filter the norm of the change since the previous
step. With torch ops that is about fifteen passes over the parameters (one per reduction, plus
the snapshot's ``sub_`` and ``copy_``) and about 25 ms per step for resnet18 on one core, a
quarter of a training step at batch 32 x 32². This module computes all of them in **one** loop
that reads the weight, the gradient and the previous snapshot once and writes the new snapshot:
about 5 ms, bound by memory bandwidth.

The loop is a few lines of C compiled once per process with the system C compiler (``cc``, or
``$CC``), in a private temporary directory that is removed once the library is loaded, and
called through :mod:`ctypes` (which releases the GIL). Nothing is cached on disk and nothing
read from disk is executed: the source is the constant :data:`SOURCE` below. The object file is
compiled with ``-O3 -march=native -ffast-math`` (so that the compiler may vectorise the
reductions) and linked *without* it, so the library does not switch the process's floating-point
unit to flush-to-zero the way a ``-ffast-math`` shared library would. After loading, a self-test
compares it with float64 numpy on random rows, including zeros; any failure (no compiler, a
compile error, a wrong answer) leaves the fast path off and the watcher uses torch ops, with the
same results to float32 rounding. Under ``-ffast-math`` a NaN or infinity may be lost by the min
and max; the caller checks the sums (which propagate them) and falls back for that tensor.

Set ``CONVSCOPE_NATIVE=0`` to keep the fast path off.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from typing import Any

import numpy as np
import torch

__all__ = ["SOURCE", "COLUMNS", "available", "row_stats", "rows_layout_ok"]

log = logging.getLogger("convscope")

#: per row (filter) of the ``[F, K]`` weight: the 13 float64 outputs of :func:`row_stats`
COLUMNS = ("w_min", "w_max", "w_sum", "w_sq", "w_abs", "w_nonzero",
           "g_min", "g_max", "g_sum", "g_sq", "g_abs", "g_nonzero", "d_sq")

SOURCE = r"""
#include <stdint.h>

/* Row statistics of w [F, K] (and g [F, K] when given) against the snapshot s [F, K], which is
   overwritten with w. out [F, 13]: w min, max, sum, sum of squares, sum of |.|, non-zeros; the
   same six of g (untouched when g is NULL); sum of (s - w)^2. tot [4]: the float64 totals of
   the w sums, w squares, g sums, g squares. Float32 lanes within a row, float64 across rows. */
void cs_row_stats(const float *restrict w, const float *restrict g, float *restrict s,
                  int64_t F, int64_t K, double *restrict out, double *restrict tot) {
  double tws = 0, twq = 0, tgs = 0, tgq = 0;
  for (int64_t r = 0; r < F; r++) {
    const float *x = w + r * K;
    float *p = s + r * K;
    double *o = out + r * 13;
    float wmin = x[0], wmax = x[0], ws = 0, wq = 0, wa = 0, wz = 0, dq = 0;
    if (g) {
      const float *y = g + r * K;
      float gmin = y[0], gmax = y[0], gs = 0, gq = 0, ga = 0, gz = 0;
      for (int64_t i = 0; i < K; i++) {
        float a = x[i], b = y[i], d = p[i] - a;
        p[i] = a;
        wmin = a < wmin ? a : wmin; wmax = a > wmax ? a : wmax;
        ws += a; wq += a * a; wa += a < 0 ? -a : a; wz += a != 0.0f ? 1.0f : 0.0f;
        gmin = b < gmin ? b : gmin; gmax = b > gmax ? b : gmax;
        gs += b; gq += b * b; ga += b < 0 ? -b : b; gz += b != 0.0f ? 1.0f : 0.0f;
        dq += d * d;
      }
      o[6] = gmin; o[7] = gmax; o[8] = gs; o[9] = gq; o[10] = ga; o[11] = gz;
      tgs += gs; tgq += gq;
    } else {
      for (int64_t i = 0; i < K; i++) {
        float a = x[i], d = p[i] - a;
        p[i] = a;
        wmin = a < wmin ? a : wmin; wmax = a > wmax ? a : wmax;
        ws += a; wq += a * a; wa += a < 0 ? -a : a; wz += a != 0.0f ? 1.0f : 0.0f;
        dq += d * d;
      }
    }
    o[0] = wmin; o[1] = wmax; o[2] = ws; o[3] = wq; o[4] = wa; o[5] = wz; o[12] = dq;
    tws += ws; twq += wq;
  }
  tot[0] = tws; tot[1] = twq; tot[2] = tgs; tot[3] = tgq;
}
"""

# A float32 lane adds 0/1 exactly while its count stays below 2**24; rows are at most this long.
_MAX_ROW = 1 << 24

_lock = threading.Lock()
_state: dict[str, Any] = {}


def _compile() -> Any:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise OSError("no C compiler (cc) on PATH")
    with tempfile.TemporaryDirectory(prefix="convscope-native-") as tmp:
        src, obj, lib = (os.path.join(tmp, n) for n in ("rows.c", "rows.o", "rows.so"))
        with open(src, "w") as f:
            f.write(SOURCE)
        flags = ["-O3", "-march=native", "-ffast-math", "-fPIC"]
        for cmd in ([cc, *flags, "-c", src, "-o", obj], [cc, "-shared", obj, "-o", lib]):
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            if res.returncode != 0:
                raise OSError(f"{' '.join(cmd[:2])} failed: {res.stderr.strip()[:300]}")
        dll = ctypes.CDLL(lib)  # mapped: the file may go with the directory
    fn = dll.cs_row_stats
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                   ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p]
    return fn


def _reference(w: np.ndarray, g: np.ndarray | None, s: np.ndarray) -> np.ndarray:
    """The 13 columns in float64 numpy (the self-test's oracle)."""
    x = w.astype(np.float64)
    cols = [x.min(1), x.max(1), x.sum(1), (x * x).sum(1), np.abs(x).sum(1), (x != 0).sum(1)]
    if g is not None:
        y = g.astype(np.float64)
        cols += [y.min(1), y.max(1), y.sum(1), (y * y).sum(1), np.abs(y).sum(1), (y != 0).sum(1)]
    else:
        cols += [np.zeros(len(x))] * 6
    cols.append(((s.astype(np.float64) - x) ** 2).sum(1))
    return np.stack(cols, axis=1)


def _self_test(fn: Any) -> None:
    rng = np.random.default_rng(0)
    for f, k, with_g in ((5, 37, True), (3, 1, True), (4, 300, False)):
        w = rng.standard_normal((f, k)).astype(np.float32)
        w[0, : k // 2] = 0.0  # zeros to count
        g = rng.standard_normal((f, k)).astype(np.float32) * 1e-3 if with_g else None
        s = (w + rng.standard_normal((f, k)).astype(np.float32) * 1e-2).astype(np.float32)
        want = _reference(w, g, s)
        out, tot = np.zeros((f, 13)), np.zeros(4)
        fn(w.ctypes.data, g.ctypes.data if g is not None else None, s.ctypes.data, f, k,
           out.ctypes.data, tot.ctypes.data)
        if not with_g:
            out[:, 6:12] = 0.0
        if not (np.allclose(out, want, rtol=1e-4, atol=1e-5) and np.array_equal(s, w)
                and np.isclose(tot[1], want[:, 3].sum(), rtol=1e-5)):
            raise OSError("self-test: results differ from float64 numpy")


def _load() -> Any:
    with _lock:
        if "fn" not in _state:
            fn = None
            if os.environ.get("CONVSCOPE_NATIVE", "1").strip() not in ("0", "false", "no", "off"):
                try:
                    fn = _compile()
                    _self_test(fn)
                except (OSError, subprocess.SubprocessError, AttributeError) as e:
                    log.info("convscope: fused watch statistics off (%s); using torch ops", e)
                    fn = None
            _state["fn"] = fn
        return _state["fn"]


def available() -> bool:
    """Whether the fused pass is compiled and passed its self-test (compiles on first call)."""
    if "fn" in _state:  # loaded (or refused) once: no lock
        return _state["fn"] is not None
    return _load() is not None


def rows_layout_ok(t: torch.Tensor) -> bool:
    """``t`` is a dense CPU float32 tensor whose filter ``f`` (dim 0) occupies the ``f``-th
    block of ``numel / F`` values in memory (contiguous, or channels-last 4-D), rows shorter
    than 2**24 values."""
    if t.dtype is not torch.float32 or t.is_cuda or t.device.type != "cpu":
        return False
    shape = t.shape
    if not shape or 0 in shape or t.numel() // shape[0] >= _MAX_ROW:
        return False
    return t.is_contiguous() or (len(shape) == 4 and t.is_contiguous(
        memory_format=torch.channels_last))


def row_stats(w: torch.Tensor, g: torch.Tensor | None, snap: torch.Tensor,
              out: np.ndarray, tot: np.ndarray) -> None:
    """Fill ``out [F, 13]`` (:data:`COLUMNS`) and ``tot [4]`` (float64, C-contiguous) from ``w``
    and ``g`` against ``snap``, then copy ``w`` into ``snap`` (all three laid out alike, see
    :func:`rows_layout_ok`). Call only when :func:`available`."""
    f = w.shape[0]
    _state["fn"](w.data_ptr(), g.data_ptr() if g is not None else None, snap.data_ptr(), f,
                 w.numel() // f, out.__array_interface__["data"][0],
                 tot.__array_interface__["data"][0])
