"""Training-dynamics benchmarks (issue 7): watch overhead and DeepTracker-scale storage/queries.

    .venv/bin/python benchmarks/bench_tracking.py --overhead [--rounds 12] [--block 10]
    .venv/bin/python benchmarks/bench_tracking.py --scale [--steps 1000] [--repeat 20]
    .venv/bin/python benchmarks/bench_tracking.py --overhead --scale --quick   # smoke run

``--overhead``: torchvision resnet18 (``weights=None``, 10 classes), batches of 32 x 3 x 32 x 32,
SGD, on ``--device`` (default the CPU, with ``--threads`` torch threads) for every
configuration. Configurations:
baseline (plain training, no logging), ``run.watch(every=10)`` and ``run.watch(every=1)`` (per-
filter stats on; default ``background`` and ``fused``, and ``background=False`` as
``watch10sync`` / ``watch1sync``; the torch-ops path as ``watch1torch`` (in the hook) and
``watch1worker`` (worker thread, the default before the fused pass)), and TensorBoard ``add_histogram`` of every parameter and every gradient every
10 steps / every step. They run in interleaved blocks of ``--block`` steps (the order rotates
each round: A B C D E, B C D E A, ...) after ``--warmup`` steps each, so machine drift hits all
alike. ``--busy 1`` keeps the other core busy with a spinning process for the whole run (the
issue's "with the other core busy"). Reported per configuration: median and mean step time, the slowdown ratios to the
baseline (of the means, of the medians, and the median over rounds of the paired per-round
ratio of block means), the close time (``run.close()``: watcher flush, writer drain, part
compaction / ``SummaryWriter.close()``) and the mean including it, and how many rows the
background writer had made durable *before* close (proof that it wrote during training).

``--scale``: a synthetic run shaped like DeepTracker's log: the 53 conv layers of torchvision
resnet50 with their real out_channels (26,560 filters), ``--steps`` recorded steps (10,000 =
DeepTracker; the default is smaller, see ``--help``) written through ``run.log_rows`` exactly as
the watcher's sink writes them, with smooth drift (weight norms random-walk, gradient norms
decay with log-normal noise, cosine similarities near 1), plus ``watch_layers``, plus
``--images`` validation images at ``--checkpoints`` checkpoints through ``run.log_validation``.
Reports write throughput, bytes on disk per value (and per column), p95 latency over
``--repeat`` repetitions of each Training-page query at screen resolution, the page's Dash
callbacks over HTTP against a ``convscope serve`` subprocess together with that process's peak
RSS (VmHWM), and the validation bitset layout against a long (step, image, correct) table.
The callbacks timed are every view of the page (issue 16: validation with cluster rows, its
hierarchy, a class's images, correlation by class + cube, alerts; then layers and filters),
each after untimed warm-up calls (its first call is reported apart: it fills the caches of one
worker process), with the ratio of each median to a trivial round trip (the run picker)
measured in the same run.
Synthetic runs live in a temporary directory under /tmp that is deleted at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import convscope as cs
from convscope.store.layout import TABLES_DIR
from convscope.store.parts import compact_run, list_parts

# ------------------------------------------------------------------------------------------------
# helpers


def _p(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs, dtype=np.float64), q))


def _header(title: str, args: argparse.Namespace) -> None:
    import torch

    cpu = "?"
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    now = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    load = getattr(args, "load_start", now[0])
    print(f"### {title}\n")
    print(f"- command: `{' '.join([Path(sys.executable).name, *sys.argv])}`")
    print(f"- machine: {platform.node()}, {cpu}, {os.cpu_count()} cores, load average "
          f"{load:.1f} at start, {now[0]:.1f} / {now[1]:.1f} / {now[2]:.1f} (1/5/15 min) at "
          f"the end; Python {platform.python_version()}, torch {torch.__version__}, "
          f"pyarrow {pa.__version__}")
    print(f"- date: {datetime.now().astimezone().isoformat(timespec='seconds')}\n")


def _ms(x: float) -> str:
    return f"{x * 1e3:,.1f}"


def _table_parquet_bytes(run_dir: Path, table: str) -> tuple[int, int, dict[str, int]]:
    """(bytes on disk, rows, compressed bytes per column) of one table's visible parts."""
    listing = list_parts(run_dir / TABLES_DIR / table)
    total = sum(f.stat().st_size for f in listing.files)
    per_col: dict[str, int] = {}
    for f in listing.files:
        md = pq.read_metadata(f)
        for rg in range(md.num_row_groups):
            g = md.row_group(rg)
            for c in range(g.num_columns):
                col = g.column(c)
                per_col[col.path_in_schema] = per_col.get(col.path_in_schema, 0) + \
                    col.total_compressed_size
    return total, listing.rows, per_col


# ------------------------------------------------------------------------------------------------
# overhead


# (key, kind, every); the baseline is always measured and comes first
OVERHEAD_CONFIGS = [("baseline", "none", 1), ("watch10", "watch", 10), ("watch1", "watch", 1),
                    ("watch10sync", "watchsync", 10), ("watch1sync", "watchsync", 1),
                    ("watch1torch", "watchtorch", 1), ("watch1worker", "watchworker", 1),
                    ("tb10", "tb", 10), ("tb1", "tb", 1)]
_LABELS = {"none": "baseline (no logging)", "watch": "run.watch every={} (default)",
           "watchsync": "run.watch every={}, background=False",
           "watchtorch": "run.watch every={}, fused=False, background=False (torch ops)",
           "watchworker": "run.watch every={}, fused=False, background=True (the previous "
                          "default)",
           "tb": "TensorBoard add_histogram every={}"}


class _Config:
    """One training configuration with its own model copy, optimiser and logger."""

    def __init__(self, name: str, kind: str, every: int, base_model: Any, root: Path) -> None:
        import torch

        self.key, self.kind, self.every = name, kind, every
        self.name = _LABELS[kind].format(every)
        self.model = copy.deepcopy(base_model).train()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.times: list[float] = []
        self.blocks: list[tuple[int, float]] = []  # (round, block mean)
        self.step = 0
        self.run = None
        self.tb = None
        self.close_s = 0.0
        self.rows_before_close = 0
        self.rows_after_close = 0
        self.bytes_per_value = float("nan")
        if kind.startswith("watch"):
            self.run = cs.Run(root, name, quiet=True)
            opts = {"watch": {}, "watchsync": {"background": False},
                    "watchtorch": {"background": False, "fused": False},
                    "watchworker": {"background": True, "fused": False}}[kind]
            w = self.run.watch(self.model, every=every, filters=True, **opts)
            self.name += (f" [{'background worker' if w.background else 'in the hook'}, "
                          f"{'fused pass' if w.fused else 'torch ops'}]")
        elif kind == "tb":
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(root / name))

    def train_step(self, x: Any, y: Any) -> float:
        import torch.nn.functional as F
        from device import sync  # benchmarks/device.py

        sync(x.device)
        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.model(x), y)
        loss.backward()
        self.step += 1
        if self.tb is not None and self.step % self.every == 0:
            for name, p in self.model.named_parameters():
                self.tb.add_histogram(name, p, self.step)
                if p.grad is not None:
                    self.tb.add_histogram(f"{name}.grad", p.grad, self.step)
        self.opt.step()
        sync(x.device)
        return time.perf_counter() - t0

    def close(self) -> None:
        if self.run is not None:
            w = self.run._writer  # what the background writer made durable before close
            self.rows_before_close = w.rows_written
            t0 = time.perf_counter()
            self.run.close()
            self.close_s = time.perf_counter() - t0
            reader = cs.open_run(self.run.path)
            nbytes, rows, _ = _table_parquet_bytes(self.run.path, "watch_filters")
            self.rows_after_close = sum(reader.tables().get(t, 0)
                                        for t in ("watch_layers", "watch_filters"))
            self.bytes_per_value = nbytes / max(rows * 4, 1)
        elif self.tb is not None:
            t0 = time.perf_counter()
            self.tb.close()
            self.close_s = time.perf_counter() - t0


def bench_overhead(args: argparse.Namespace) -> None:
    import torch
    import torchvision

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from device import device  # benchmarks/device.py

    dev = device(args.device)
    base = torchvision.models.resnet18(weights=None, num_classes=10).to(dev)
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(32, 3, 32, 32, generator=gen).to(dev),
                torch.randint(0, 10, (32,), generator=gen).to(dev)) for _ in range(4)]
    root = Path(tempfile.mkdtemp(prefix="cs-bench-overhead-", dir="/tmp"))
    specs = [s for s in OVERHEAD_CONFIGS if s[0] in args.configs.split(",")]
    if args.quick:
        specs = [s for s in specs if s[0] != "tb1"]
    spinners = [_spinner(args.busy_limit) for _ in range(args.busy)]
    try:
        cfgs = [_Config(n, k, e, base, root) for n, k, e in specs]
        # warm-up (interleaved too): allocator, oneDNN primitives, first watched snapshot
        for c in cfgs:
            for i in range(args.warmup):
                c.train_step(*batches[i % len(batches)])
        t_start = time.perf_counter()
        for r in range(args.rounds):
            order = cfgs[r % len(cfgs):] + cfgs[:r % len(cfgs)]
            for c in order:
                ts = [c.train_step(*batches[i % len(batches)]) for i in range(args.block)]
                c.times.extend(ts)
                c.blocks.append((r, float(np.mean(ts))))
        wall = time.perf_counter() - t_start
        busy = [_cpu_seconds(p.pid) for p in spinners]
        for c in cfgs:
            c.close()
        _print_overhead(args, cfgs, wall)
        if spinners:
            print(f"Busy core: {len(spinners)} spinning process(es) (`while True: pass`) ran "
                  f"throughout; their CPU seconds during the run: "
                  f"{', '.join(f'{b:.0f}' for b in busy)} of {wall:.0f} s of measuring.\n")
    finally:
        for p in spinners:
            p.kill()
            p.wait()
        shutil.rmtree(root, ignore_errors=True)


def _spinner(limit: float) -> subprocess.Popen:
    """A process that keeps one core busy (pure Python, no memory traffic) and stops by itself
    after ``limit`` seconds."""
    code = f"import time\nend = time.time() + {float(limit)}\nwhile time.time() < end: pass\n"
    return subprocess.Popen([sys.executable, "-c", code])


def _cpu_seconds(pid: int) -> float:
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def _print_overhead(args: argparse.Namespace, cfgs: list[_Config], wall: float) -> None:
    _header("Training overhead: run.watch vs TensorBoard histograms", args)
    base = cfgs[0]
    b_med, b_mean = statistics.median(base.times), statistics.mean(base.times)
    b_block = dict(base.blocks)
    n = len(base.times)
    from device import describe, device  # benchmarks/device.py

    print(f"torchvision resnet18 (weights=None, 10 classes), batch 32 x 3 x 32 x 32, SGD, "
          f"{describe(device(args.device))}, "
          f"torch threads = {args.threads}. {args.rounds} interleaved rounds x {args.block} "
          f"steps = {n} measured steps per configuration after {args.warmup} warm-up steps; "
          f"{wall:.0f} s of measuring in all. Step times in ms.\n")
    print("| configuration | median step | mean step | p90 step | median / baseline | "
          "mean / baseline | paired ratio (median over rounds) | close s | "
          "mean incl. close / baseline |")
    print("|---|---|---|---|---|---|---|---|---|")
    for c in cfgs:
        med, mean = statistics.median(c.times), statistics.mean(c.times)
        paired = statistics.median(m / b_block[r] for r, m in c.blocks)
        incl = (sum(c.times) + c.close_s) / len(c.times)
        print(f"| {c.name} | {_ms(med)} | {_ms(mean)} | {_ms(_p(c.times, 90))} | "
              f"{med / b_med:.3f} | {mean / b_mean:.3f} | {paired:.3f} | {c.close_s:.2f} | "
              f"{incl / b_mean:.3f} |")
    print()
    print("| watch configuration | rows durable before close | rows after close | "
          "watch_filters bytes per value |")
    print("|---|---|---|---|")
    for c in cfgs:
        if c.kind.startswith("watch"):
            print(f"| {c.name} | {c.rows_before_close:,} | {c.rows_after_close:,} | "
                  f"{c.bytes_per_value:.2f} |")
    print()


# ------------------------------------------------------------------------------------------------
# scale: synthetic DeepTracker-shaped log


def resnet50_conv_layers() -> list[tuple[str, int]]:
    import torch
    import torchvision

    m = torchvision.models.resnet50(weights=None)
    return [(n, mod.out_channels) for n, mod in m.named_modules()
            if isinstance(mod, torch.nn.Conv2d)]


class _SynthWatch:
    """Per recorded step, the watcher sink's columns for every filter of every layer, drifting
    smoothly like real training statistics (so compression is realistic)."""

    def __init__(self, layers: list[tuple[str, int]], seed: int = 0) -> None:
        from convscope.track.columns import LAYER_COLUMNS

        self.rng = np.random.default_rng(seed)
        self.layers = layers
        names = np.array([n for n, _ in layers], dtype=object)
        counts = np.array([c for _, c in layers])
        self.n = int(counts.sum())
        self.layer_col = np.repeat(names, counts)
        self.filter_col = np.concatenate([np.arange(c, dtype=np.int32) for c in counts])
        self.rank_col = np.zeros(self.n, dtype=np.int16)
        self.layer_names = names
        self.layer_of = np.repeat(np.arange(len(layers)), counts)
        self.counts = counts
        self.w = self.rng.uniform(0.3, 2.0, self.n)          # filter weight norms
        self.g0 = self.rng.lognormal(-4.0, 0.7, self.n)      # gradient-norm scale per filter
        self.layer_cols = LAYER_COLUMNS
        self.k = 0

    def step(self, step: int) -> tuple[dict[str, Any], dict[str, Any]]:
        rng = self.rng
        decay = 0.3 + 0.7 * math.exp(-self.k / 3000.0)
        self.w *= np.exp(rng.normal(-2e-5, 1e-3, self.n))
        g = self.g0 * decay * rng.lognormal(0.0, 0.25, self.n)
        if self.k == 0:
            cos = np.full(self.n, np.nan)
        else:
            cos = 1.0 - 1e-4 * decay * rng.lognormal(0.0, 0.5, self.n)
        self.k += 1
        filt = {
            "step": np.full(self.n, step, dtype=np.int64),
            "layer": self.layer_col,
            "filter": self.filter_col,
            "w_l2": self.w.astype(np.float32),
            "g_l2": g.astype(np.float32),
            "ratio": (g / self.w).astype(np.float32),
            "cos_prev": cos.astype(np.float32),
            "rank": self.rank_col,
        }
        nl = len(self.layers)
        w2 = np.bincount(self.layer_of, self.w ** 2, minlength=nl)
        g2 = np.bincount(self.layer_of, g ** 2, minlength=nl)
        base = np.sqrt(np.stack([w2, g2])) / np.sqrt(self.counts)
        lay: dict[str, Any] = {"step": np.full(nl, step, dtype=np.int64),
                               "layer": self.layer_names}
        for j, col in enumerate(self.layer_cols):
            src = base[0] if col.startswith("w_") else base[1]
            lay[col] = (src * (1 + 0.1 * j) * rng.lognormal(0, 0.05, nl)).astype(np.float32)
        lay["rank"] = np.zeros(nl, dtype=np.int16)
        return lay, filt


def synth_validation(n_img: int, n_ckpt: int, n_cls: int, seed: int = 1
                     ) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """``(labels [N], correct [T, N] bool, injected anomalies [(checkpoint, class)])``.

    Each image is learned at a random checkpoint (earlier for easy images) and then stays
    correct except for occasional flicker (hard images flicker more); a few (checkpoint, class)
    events make many stable images of one class flip to wrong for a few checkpoints.
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_cls, n_img)
    hard = rng.beta(1.2, 6.0, n_img)                       # per-image difficulty in [0, 1]
    learned = (rng.beta(1.0, 12.0, n_img) * n_ckpt * (0.2 + 2 * hard)).astype(int)
    t = np.arange(n_ckpt)[:, None]
    correct = t >= learned[None, :]
    # flicker after being learned: rare for easy images, frequent for hard ones
    flick = rng.random((n_ckpt, n_img)) < (5e-5 + 0.05 * hard ** 2)[None, :]
    correct &= ~flick
    events = []
    for e in range(5):
        c = int(n_ckpt * (0.5 + 0.08 * e))
        k = int(rng.integers(0, n_cls))
        members = np.flatnonzero((labels == k) & correct[c - 1] & (learned < c - max(2, n_ckpt // 20)))
        hit = rng.choice(members, size=min(len(members), 40), replace=False)
        correct[c:c + 3, hit] = False
        events.append((c, k))
    return labels, correct, events


def write_synthetic(root: Path, args: argparse.Namespace) -> tuple[Path, dict[str, float]]:
    layers = resnet50_conv_layers()
    synth = _SynthWatch(layers)
    run = cs.Run(root, "deeptracker", quiet=True, config={"synthetic": True})
    out: dict[str, float] = {"filters": synth.n, "layers": len(layers)}
    gen_s = 0.0
    t0 = time.perf_counter()
    for k in range(args.steps):
        g0 = time.perf_counter()
        lay, filt = synth.step((k + 1) * 10)
        gen_s += time.perf_counter() - g0
        run.log_rows("watch_layers", lay)
        run.log_rows("watch_filters", filt)
        # no throttling here: the writer's queue is bounded in rows (max_queued_rows), so
        # log_rows itself waits when the writer falls behind
    t_queued = time.perf_counter()
    run.flush()
    t_watch = time.perf_counter()
    out["rss_after_watch_mb"] = _maxrss_mb()
    out["parts_before_compaction"] = len(list_parts(run.path / TABLES_DIR / "watch_filters").files)

    labels, correct, events = synth_validation(args.images, args.checkpoints, args.classes)
    rng = np.random.default_rng(2)
    ids = np.arange(args.images) * 7 + 1000          # arbitrary dataset ids
    wrong_pred = (labels + rng.integers(1, args.classes, (args.checkpoints, args.images))) \
        % args.classes
    v0 = time.perf_counter()
    for i in range(args.checkpoints):
        pred = np.where(correct[i], labels, wrong_pred[i])
        run.log_validation((i + 1) * 10 * args.steps // args.checkpoints, ids, labels, pred)
    run.flush()
    t_val = time.perf_counter()
    run.close(compact=False)
    # compaction as Run.close() does it (min_parts=8), timed on its own
    c0 = time.perf_counter()
    if not args.no_compact:
        compact_run(run.path, min_parts=8)
    t_compact = time.perf_counter() - c0
    out["parts_after_compaction"] = len(list_parts(run.path / TABLES_DIR / "watch_filters").files)
    out["rss_after_compact_mb"] = _maxrss_mb()

    rows_f = args.steps * synth.n
    out.update(
        rows_filters=rows_f, rows_layers=args.steps * len(layers), gen_s=gen_s,
        queue_s=t_queued - t0, watch_s=t_watch - t0, val_s=t_val - v0, compact_s=t_compact,
        val_cells=args.images * args.checkpoints,
    )
    out["events"] = events  # type: ignore[assignment]
    np.save(root / "correct.npy", correct)
    np.save(root / "labels.npy", labels)
    return run.path, out


def _maxrss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(fn: Any, repeat: int) -> tuple[list[float], Any]:
    ts, res = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        res = fn()
        ts.append(time.perf_counter() - t0)
    return ts, res


def bench_queries(path: Path, args: argparse.Namespace, widest: str) -> list[tuple[str, list[float],
                                                                                  str]]:
    from convscope.store.reader import RunReader

    rows: list[tuple[str, list[float], str]] = []
    reader = RunReader(path)
    rep = args.repeat

    ts, df = _timed(lambda: reader.layer_series("update_ratio", max_points=600), rep)
    rows.append(("layer_series('update_ratio', all 53 layers, max_points=600)", ts,
                 f"{len(df):,} points"))
    from convscope.store import summary as summary_mod

    def cold_filter_matrix() -> Any:
        summary_mod._open_cache.clear()  # forget the opened summaries: first call in a process
        return RunReader(path).filter_matrix(widest, "cos_prev", max_steps=600)

    ts, res = _timed(cold_filter_matrix, max(3, rep // 4))
    rows.append((f"filter_matrix('{widest}', max_steps=600), cold (new process state: opens "
                 "every summary file)", ts, ""))
    ts, res = _timed(lambda: reader.filter_matrix(widest, "cos_prev", max_steps=600), rep)
    rows.append((f"filter_matrix('{widest}', 2048 filters, max_steps=600)", ts,
                 f"{res[2].shape[0]} x {res[2].shape[1]} cells"))
    recorded_all = reader.recorded_filter_steps()
    a = int(recorded_all[len(recorded_all) // 3])
    b = int(recorded_all[2 * len(recorded_all) // 3]) + 7
    ts, res = _timed(lambda: reader.filter_matrix(widest, "g_l2", max_steps=300, steps=(a, b)),
                     rep)
    rows.append((f"filter_matrix('{widest}', max_steps=300, steps=({a}, {b})) (a range "
                 "selection: cut edge buckets read raw)", ts,
                 f"{res[2].shape[0]} x {res[2].shape[1]} cells"))
    ts, _ = _timed(lambda: RunReader(path).class_error(), max(3, rep // 4))
    rows.append(("class_error(), cold (new reader: decode all bitsets)", ts, ""))
    reader.class_error()
    ts, err = _timed(reader.class_error, rep)
    rows.append(("class_error(), warm (decoded matrix cached)", ts,
                 f"{err.shape[1]} classes x {err.shape[0]} checkpoints"))
    ts, an = _timed(reader.anomalies, rep)
    rows.append((f"anomalies() (default d={an.d}, threshold=5), warm", ts,
                 f"{len(an.frame)} anomalies"))
    ts, cl = _timed(lambda: reader.class_clusters(k=4), rep)
    rows.append(("class_clusters(k=4), warm", ts, ""))
    recorded = np.sort(reader.query("SELECT DISTINCT step FROM watch_layers")["step"].to_numpy())
    mid = int(recorded[len(recorded) // 2])
    ts, top = _timed(lambda: reader.top_changed_filters(mid, k=10), rep)
    rows.append(("top_changed_filters(step, k=10)", ts, f"{len(top)} rows"))
    ts, rec = _timed(reader.recorded_filter_steps, rep)
    rows.append(("recorded_filter_steps() (page correlation: SELECT DISTINCT step)", ts,
                 f"{len(rec):,} steps"))
    # what the page's correlation view asks for: the recorded step at or after each anomaly
    idx = rec.searchsorted(np.unique(an.frame["step"].to_numpy()))
    wanted = sorted({int(rec[i]) for i in idx if i < len(rec)})
    ts, top = _timed(lambda: reader.top_filters_at(wanted, k=10), max(3, rep // 4))
    rows.append((f"top_filters_at({len(wanted)} anomaly steps, k=10) (page correlation)", ts,
                 f"{len(top):,} rows"))
    return rows


# -- dashboard over HTTP -----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, payload: dict[str, Any], timeout: float = 300) -> tuple[int, int]:
    req = urllib.request.Request(url, data=json.dumps(payload).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        body = resp.read()
        return resp.status, len(body)


def _split_outputs(output: str) -> list[dict[str, str]]:
    parts = output[2:-2].split("...") if output.startswith("..") else [output]
    out = []
    for p in parts:
        cid, prop = p.rsplit(".", 1)
        out.append({"id": cid, "property": prop})
    return out


def _vmhwm_kb(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return -1


def bench_dashboard(logdir: Path, run_name: str, widest: str, repeat: int
                    ) -> tuple[list[tuple[str, list[float], str]], dict[str, float]]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "convscope", "serve", "--logdir", str(logdir),
                             "--port", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    mem: dict[str, float] = {}
    rows: list[tuple[str, list[float], str]] = []
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(base + "/training", timeout=5).read()
                break
            except OSError as exc:
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError("convscope serve did not come up: "
                                       + (proc.stderr.read().decode() if proc.poll() else "")
                                       ) from exc
                time.sleep(0.5)
        mem["idle_mb"] = _vmhwm_kb(proc.pid) / 1024
        deps = json.loads(urllib.request.urlopen(base + "/_dash-dependencies").read())
        values = {
            "trn-run.value": run_name, "trn-k.value": 4, "trn-threshold.value": 5,
            "trn-range.data": None, "refresh.n_intervals": 1, "trn-stat.value": "update_ratio",
            "trn-filter-layer.value": widest, "trn-filter-value.value": "cos_prev",
            "run-select.value": [run_name],
            # the DeepTracker views of issue 16: every cluster open, class 0's images, the
            # cube sliced by the widest layer and class 0
            "trn-open.value": [0, 1, 2, 3], "trn-class.value": 0,
            "trn-cube-layer.value": widest, "trn-cube-class.value": 0,
        }
        wanted = {"trn-run": "run picker (baseline: a trivial round trip)",
                  "trn-validation": "validation view (cluster rows, classes, triangles)",
                  "trn-open": "validation hierarchy (clusters, class choices)",
                  "trn-images": "images view (class 0: strips + thumbnails)",
                  "trn-correlation": "correlation by class + cube",
                  "trn-alerts": "alerts (update ratio, gradient norm)",
                  "trn-layers": "layer view (small multiples)",
                  "trn-filters": f"filter view ({widest})"}
        for dep in deps:
            outs = _split_outputs(dep["output"])
            key = next((o["id"] for o in outs if o["id"] in wanted), None)
            if key is None or outs[0]["id"] != key:
                continue
            payload = {
                "output": dep["output"],
                "outputs": outs if dep["output"].startswith("..") else outs[0],
                "inputs": [{**i, "value": values.get(f"{i['id']}.{i['property']}")}
                           for i in dep["inputs"]],
                "state": [{**s, "value": values.get(f"{s['id']}.{s['property']}")}
                          for s in dep.get("state", [])],
                "changedPropIds": [f"{dep['inputs'][0]['id']}.{dep['inputs'][0]['property']}"],
            }
            # the first call fills the caches: reported apart; `convscope serve` runs one
            # process per core, each with its own caches, so warm them all first
            t0 = time.perf_counter()
            _post(base + "/_dash-update-component", payload)
            cold = time.perf_counter() - t0
            for _ in range(2 * (os.cpu_count() or 1)):
                _post(base + "/_dash-update-component", payload)
            ts, sizes = [], []
            for _ in range(repeat):
                t0 = time.perf_counter()
                status, size = _post(base + "/_dash-update-component", payload)
                ts.append(time.perf_counter() - t0)
                sizes.append(size)
                if status != 200:
                    raise RuntimeError(f"callback {key} answered HTTP {status}")
            rows.append((f"HTTP callback: {wanted[key]}", ts,
                         f"{statistics.median(sizes) / 1e3:,.0f} kB JSON; first call "
                         f"{_ms(cold)} ms"))
        mem["peak_mb"] = _vmhwm_kb(proc.pid) / 1024
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    return rows, mem


def bench_bitset_vs_long(root: Path, run_dir: Path) -> list[tuple[str, int, str]]:
    correct = np.load(root / "correct.npy")
    t, n = correct.shape
    total, _, cols = _table_parquet_bytes(run_dir, "validation")
    img_total, _, _ = _table_parquet_bytes(run_dir, "validation_images")
    out = [("validation table (bitset `correct` + int32 `pred` bytes per checkpoint)", total,
            "as written by run.log_validation"),
           ("  of which the `correct` bitset column", cols.get("correct", 0), ""),
           ("  of which the `pred` column", cols.get("pred", 0), ""),
           ("validation_images (id, label, pos once per image)", img_total, "")]
    step = np.repeat(np.arange(t, dtype=np.int64) * 10, n)
    image = np.tile(np.arange(n, dtype=np.int64), t)
    tab = pa.table({"step": step, "image": image, "correct": correct.reshape(-1)})
    f = root / "long.parquet"
    pq.write_table(tab, f, compression="zstd", row_group_size=131_072)
    out.append(("long table (step int64, image int64, correct bool), zstd", f.stat().st_size,
                "sorted by step, image"))
    rng = np.random.default_rng(3)
    labels = np.load(root / "labels.npy")
    # the same predictions as written (wrong predictions are another class)
    pred = np.where(correct, labels[None, :], (labels[None, :] + rng.integers(1, 10, (t, n)))
                    % 10).astype(np.int32)
    tab = tab.append_column("pred", pa.array(pred.reshape(-1)))
    pq.write_table(tab, f, compression="zstd", row_group_size=131_072)
    out.append(("long table + pred int32, zstd", f.stat().st_size, ""))
    f.unlink()
    return out


def bench_scale(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="cs-bench-scale-", dir="/tmp"))
    try:
        run_dir, w = write_synthetic(root, args)
        layers = resnet50_conv_layers()
        widest = next(n for n, c in layers if c == max(c for _, c in layers))
        f_bytes, f_rows, f_cols = _table_parquet_bytes(run_dir, "watch_filters")
        summary_dir = run_dir / TABLES_DIR / "watch_filters" / "_summary"
        w["summary_bytes"] = sum(f.stat().st_size for f in summary_dir.glob("*.parquet"))
        w["top_bytes"] = sum(f.stat().st_size for f in summary_dir.glob("top-*.parquet"))
        l_bytes, l_rows, _ = _table_parquet_bytes(run_dir, "watch_layers")
        v_bytes, _, _ = _table_parquet_bytes(run_dir, "validation")
        q_rows = bench_queries(run_dir, args, widest)
        h_rows, mem = ([], {}) if args.no_serve else bench_dashboard(
            root, run_dir.name, widest, max(5, args.repeat // 4))
        bitset = bench_bitset_vs_long(root, run_dir)
        _print_scale(args, w, widest, (f_bytes, f_rows, f_cols), (l_bytes, l_rows), v_bytes,
                     q_rows, h_rows, mem, bitset)
    finally:
        if args.keep:
            print(f"(kept the synthetic log: {root})")
        else:
            shutil.rmtree(root, ignore_errors=True)


def _print_scale(args, w, widest, fil, lay, v_bytes, q_rows, h_rows, mem, bitset) -> None:
    _header("DeepTracker-scale synthetic log: write, size, query latency, dashboard memory", args)
    f_bytes, f_rows, f_cols = fil
    l_bytes, l_rows = lay
    f_vals, l_vals = f_rows * 4, l_rows * 15
    print(f"Synthetic log: {int(w['layers'])} conv layers of torchvision resnet50 "
          f"({int(w['filters']):,} filters), {args.steps:,} recorded steps "
          f"(DeepTracker: 10,000) -> {f_rows:,} watch_filters rows x 4 float32 values and "
          f"{l_rows:,} watch_layers rows x 15; {args.images:,} validation images x "
          f"{args.checkpoints:,} checkpoints ({args.classes} classes). Compaction: "
          f"{'skipped (--no-compact)' if args.no_compact else 'compact_run(min_parts=8), as Run.close() does'}.\n")
    print("| write | seconds | rows/s | values/s |")
    print("|---|---|---|---|")
    rows_all = w["rows_filters"] + w["rows_layers"]
    vals_all = f_vals + l_vals
    print(f"| watch tables: log_rows per recorded step until flushed (generation "
          f"{w['gen_s']:.1f} s included) | {w['watch_s']:.1f} | {rows_all / w['watch_s']:,.0f} | "
          f"{vals_all / w['watch_s']:,.0f} |")
    print(f"| same, excluding the synthetic data generation | {w['watch_s'] - w['gen_s']:.1f} | "
          f"{rows_all / (w['watch_s'] - w['gen_s']):,.0f} | "
          f"{vals_all / (w['watch_s'] - w['gen_s']):,.0f} |")
    print(f"| log_validation, {args.checkpoints:,} calls x {args.images:,} images | "
          f"{w['val_s']:.1f} | {args.checkpoints / w['val_s']:,.0f} checkpoints/s | "
          f"{w['val_cells'] / w['val_s']:,.0f} cells/s |")
    print(f"| compaction of {int(w['parts_before_compaction'])} watch_filters parts (and the "
          f"other tables) | {w['compact_s']:.1f} | {rows_all / max(w['compact_s'], 1e-9):,.0f} | |")
    print()
    print(f"Peak RSS of the writing process: {w['rss_after_watch_mb']:,.0f} MB after the watch "
          f"tables, {w['rss_after_compact_mb']:,.0f} MB after compaction (batches of <= 4 M "
          f"rows: {int(w['parts_before_compaction'])} watch_filters parts -> "
          f"{int(w['parts_after_compaction'])}).\n")
    print("| storage | bytes on disk | values | bytes per value |")
    print("|---|---|---|---|")
    print(f"| watch_filters (step, layer, filter, w_l2, g_l2, ratio, cos_prev, rank) | "
          f"{f_bytes:,} | {f_vals:,} | {f_bytes / f_vals:.2f} |")
    for col in ("w_l2", "g_l2", "ratio", "cos_prev", "step", "layer", "filter", "rank"):
        if col in f_cols:
            print(f"|   column `{col}` | {f_cols[col]:,} | {f_rows:,} rows | "
                  f"{f_cols[col] / f_rows:.2f} per row |")
    sb = w.get("summary_bytes", 0)
    tb = w.get("top_bytes", 0)
    print(f"| watch_filters summaries and top-changed indexes (`_summary/`, written at "
          f"compaction) | {sb:,} | {f_vals:,} | {sb / f_vals:.2f} |")
    print(f"|   of which the top-changed indexes (`top-*`) | {tb:,} | | {tb / f_vals:.3f} |")
    print(f"| **watch_filters including its summaries** | {f_bytes + sb:,} | {f_vals:,} | "
          f"**{(f_bytes + sb) / f_vals:.2f}** |")
    print(f"| watch_layers (15 stats per row) | {l_bytes:,} | {l_vals:,} | "
          f"{l_bytes / l_vals:.2f} |")
    print(f"| validation (per image x checkpoint cell) | {v_bytes:,} | {w['val_cells']:,} "
          f"cells | {v_bytes / w['val_cells']:.3f} |")
    print()
    goals = {"layer_series": 50, "filter_matrix": 150, "class_error": 150}
    print(f"Query latency in ms over {args.repeat} repetitions (cold class_error: "
          f"{max(3, args.repeat // 4)}), in this process, after the writes:\n")
    print("| query | median | p95 | max | goal (p95) | result |")
    print("|---|---|---|---|---|---|")
    for name, ts, note in q_rows + h_rows:
        goal = next((f"<= {g} ms" for k, g in goals.items()
                     if name.startswith(k) and "cold" not in name and "range" not in name), "")
        if name.startswith("HTTP callback") and "baseline" not in name:
            goal = "<= 150 ms"  # issue 16: p95 per view at the 10,000-step scale
        print(f"| {name} | {_ms(statistics.median(ts))} | {_ms(_p(ts, 95))} | "
              f"{_ms(max(ts))} | {goal} | {note} |")
    print()
    base = next((statistics.median(ts) for name, ts, _ in h_rows if "baseline" in name), None)
    if base:
        print("| HTTP callback (issue 16 views) | median / baseline round trip | p95 ms | "
              "goal p95 <= 150 ms |")
        print("|---|---|---|---|")
        for name, ts, _ in h_rows:
            if "baseline" not in name:
                p95 = _p(ts, 95)
                print(f"| {name[len('HTTP callback: '):]} | {statistics.median(ts) / base:.1f} "
                      f"| {_ms(p95)} | {'met' if p95 * 1e3 <= 150 else 'missed'} |")
        print()
    if mem:
        print(f"Dashboard process (`python -m convscope serve --logdir <tmp>`), peak RSS "
              f"(VmHWM): {mem['idle_mb']:,.0f} MB after loading /training, "
              f"**{mem['peak_mb']:,.0f} MB** after the Training page's callbacks above "
              "(goal <= 1,024 MB).\n")
    print("| validation layout (same data) | bytes | bytes per cell | note |")
    print("|---|---|---|---|")
    cells = args.images * args.checkpoints
    for name, b, note in bitset:
        print(f"| {name} | {b:,} | {b / cells:.3f} | {note} |")
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--overhead", action="store_true", help="training step overhead")
    ap.add_argument("--scale", action="store_true", help="DeepTracker-scale synthetic log")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: tiny settings for both parts (numbers not meaningful)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (all configs)")
    ap.add_argument("--busy", type=int, default=0,
                    help="overhead: keep this many other cores busy with spinning processes "
                         "(1 = 'the other core busy' on a 2-core machine)")
    ap.add_argument("--busy-limit", type=float, default=3600,
                    help="overhead: the spinners stop by themselves after this many seconds")
    ap.add_argument("--rounds", type=int, default=12, help="overhead: interleaved rounds")
    ap.add_argument("--block", type=int, default=10,
                    help="overhead: steps per block (a multiple of 10)")
    ap.add_argument("--configs", default="baseline,watch10,watch1,tb10,tb1",
                    help="overhead: comma list of " + ", ".join(c[0] for c in OVERHEAD_CONFIGS))
    ap.add_argument("--warmup", type=int, default=10, help="overhead: warm-up steps per config")
    ap.add_argument("--steps", type=int, default=1000,
                    help="scale: recorded steps (DeepTracker: 10,000; 1,000-2,000 keep the whole "
                    "benchmark within a few minutes on a 2-core machine; the queries and the "
                    "page's callbacks grow with the steps)")
    ap.add_argument("--images", type=int, default=10_000, help="scale: validation images")
    ap.add_argument("--checkpoints", type=int, default=1_000, help="scale: checkpoints")
    ap.add_argument("--classes", type=int, default=10, help="scale: classes")
    ap.add_argument("--repeat", type=int, default=20, help="scale: repetitions per query")
    ap.add_argument("--no-compact", action="store_true",
                    help="scale: leave the parts as written (a live, unclosed run)")
    ap.add_argument("--no-serve", action="store_true", help="scale: skip the dashboard part")
    ap.add_argument("--keep", action="store_true",
                    help="scale: keep the synthetic log (its path is printed) instead of deleting")
    from device import add_device_arg  # benchmarks/device.py

    add_device_arg(ap)  # the overhead part's model and batches (the scale part is storage)
    args = ap.parse_args()
    if not (args.overhead or args.scale):
        ap.error("pass --overhead and/or --scale")
    if "baseline" not in args.configs.split(","):
        args.configs = "baseline," + args.configs
    if args.quick:
        args.rounds, args.block, args.warmup = 2, 10, 2
        args.steps, args.images, args.checkpoints, args.repeat = 20, 2000, 100, 5
    if args.overhead:
        args.load_start = os.getloadavg()[0]
        bench_overhead(args)
    if args.scale:
        args.load_start = os.getloadavg()[0]
        bench_scale(args)


if __name__ == "__main__":
    main()
