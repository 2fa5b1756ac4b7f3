"""Benchmark: calibrated anomalies (the default) against DeepTracker's raw count rule.

    .venv/bin/python benchmarks/bench_anomaly.py [--seeds 5] [--first-seed 0] [--no-digits]
                                                 [--no-shapes] [--workdir DIR [--no-train]]

For each seed it trains, through the demo's own loop (:func:`convscope.training.fit`) and the
demo's own validation path (``Run.validate`` every few steps, read back with ``open_run(path)
.anomalies(...)``, the call the Training page makes):

* **shapes, healthy**: the demo's zoo ResNet (width 16) on procedural Shapes in *smaller settings
  than the demo*: 8,000 training images, 5 epochs of batch 64 = 625 steps, one thread, 1,000
  validation images (as the demo) validated every 12 steps = 53 checkpoints (the demo: 12,000
  images, 8 epochs of batch 128, every 25 steps); about 90 % validation accuracy at the end;
* **shapes, corrupted**: the same training where, after step ``0.6 * 625 = 375``, every training
  label of one class (``(3 * seed + 1) % 10``) is replaced by the next class;
* **digits, healthy / corrupted** (real data: scikit-learn's 8 x 8 handwritten digits, 1,297
  training and 500 validation images, a small CNN, 25 epochs of batch 64 = 525 steps validated
  every 10 steps = 53 checkpoints), corrupted the same way after step 315 (60 %).

Scores, per seed and over the seeds, for ``method="calibrated"`` (the default: confirmed
forgetting, ``fdr=0.05``, ``threshold=5``), the same test on both directions of unconfirmed flips
(the calibrated default before the recall fix) and ``method="count"`` (DeepTracker's rule,
``threshold=5, min_flags=2``):

* ``late``: anomalies of a healthy run after the first 10 % of training (goal <= 2);
* ``found``: the corrupted class is flagged at one of the first 2 checkpoints after the
  corruption step (goal: every seed);
* a flagged cell of a corrupted run is a **true positive** when it is the corrupted class at one
  of those 2 checkpoints; **precision** = true positives / cells flagged after the first 10 % of
  training (the learning burst at the start is left to the healthy-run figure), summed over the
  seeds; **recall** = seeds whose corrupted class is found / seeds.

Training dominates the run time (one thread: about 1-2 min per Shapes run and 10 s per digits
run on an idle core, several times that on a loaded one). With ``--workdir`` the runs are kept
and a later call reuses the finished ones (only the analysis then runs); ``--no-train`` only
reads them (a missing run is an error, nothing is written). Seeds ``--first-seed ..
--first-seed + --seeds - 1``: a rule settled while looking at seeds 0-4 is checked on fresh
seeds 5-9 (``--first-seed 5``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from convscope import Run
from convscope.formats.reader import open_run
from convscope.training import DemoConfig, fit

CORRUPT_FRACTION = 0.6
DONE = "bench-anomaly-done"
WINDOW = 2  # checkpoints after the corruption step within which the class must be flagged
METHODS = {
    "calibrated (default)": {},
    # the calibrated default before issue 16's recall fix: both directions, unconfirmed flips
    "calibrated, both directions, unconfirmed": {"direction": "both", "confirm": 0},
    "count (DeepTracker)": {"method": "count"},
}


def _load() -> str:
    try:
        return "/".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover
        return "n/a"


# ------------------------------------------------------------------------------------------------
# training runs


def _corrupter(y_train: torch.Tensor, cls: int, n_cls: int, at: int):
    """An on_step callback that relabels every training image of ``cls`` as ``cls + 1`` once
    ``at`` steps are done (fit indexes the same label tensor every step)."""

    def on_step(step: int) -> None:
        if step == at:
            y_train[y_train == cls] = (cls + 1) % n_cls

    return on_step


def _train(path: Path, model: nn.Module, train, val, *, steps_per_val: int, fit_kw: dict,
           corrupt: tuple[int, int] | None, n_cls: int) -> None:
    x_tr, y_tr = train
    y_tr = y_tr.clone()
    hook = _corrupter(y_tr, corrupt[0], n_cls, corrupt[1]) if corrupt else None
    batches = [(val[0][i:i + 250], val[1][i:i + 250]) for i in range(0, len(val[1]), 250)]
    with Run(path.parent, path.name, quiet=True) as run:
        run.validate(0, model, batches)

        def on_step(step: int, m: dict) -> None:
            if hook is not None:
                hook(step)
            if step % steps_per_val == 0:
                run.validate(step, model, batches)

        fit(model, (x_tr, y_tr), None, on_step=on_step, quiet=True, **fit_kw)
    (path / DONE).write_text("complete\n")  # a later --workdir call reuses only finished runs


def _need_training(path: Path, train: bool) -> bool:
    if (path / DONE).exists():
        return False
    if not train:
        raise SystemExit(f"{path} is not a finished run and --no-train was given; drop "
                         "--no-train to train it, or point --workdir at the recorded runs.")
    return True


def shapes_run(path: Path, seed: int, corrupt_cls: int | None, train: bool = True) -> dict:
    cfg = DemoConfig(n_train=8000, n_test=1000, epochs=5, batch_size=64, seed=seed,
                     data_seed=seed, num_threads=1)
    total = cfg.epochs * (cfg.n_train // cfg.batch_size + (cfg.n_train % cfg.batch_size >= 2))
    at = int(CORRUPT_FRACTION * total)
    if _need_training(path, train):
        shutil.rmtree(path, ignore_errors=True)  # an unfinished run from an interrupted call
        train, test = cfg.make_data()
        x_tr, y_tr, _ = train.tensors(quiet=True)
        x_te, y_te, _ = test.tensors(quiet=True)
        kw = cfg.fit_kwargs()
        _train(path, cfg.make_model(), (x_tr, y_tr), (x_te, y_te), steps_per_val=12, fit_kw=kw,
               corrupt=(corrupt_cls, at) if corrupt_cls is not None else None, n_cls=10)
    return {"path": path, "total": total, "at": at, "cls": corrupt_cls, "seed": seed}


def _digits_model(seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 16, 10),
        )


def digits_run(path: Path, seed: int, corrupt_cls: int | None, train: bool = True) -> dict:
    epochs, bs, n_val = 25, 64, 500
    n_train = 1797 - n_val
    total = epochs * (n_train // bs + (n_train % bs >= 2))
    at = int(CORRUPT_FRACTION * total)
    if _need_training(path, train):
        from sklearn.datasets import load_digits

        shutil.rmtree(path, ignore_errors=True)
        d = load_digits()
        x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
        y = torch.tensor(d.target, dtype=torch.long)
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
        x, y = x[perm], y[perm]
        kw = {"epochs": epochs, "batch_size": bs, "lr": 3e-3, "num_threads": 1, "seed": seed}
        _train(path, _digits_model(seed), (x[n_val:], y[n_val:]), (x[:n_val], y[:n_val]),
               steps_per_val=10, fit_kw=kw,
               corrupt=(corrupt_cls, at) if corrupt_cls is not None else None, n_cls=10)
    return {"path": path, "total": total, "at": at, "cls": corrupt_cls, "seed": seed}


# ------------------------------------------------------------------------------------------------
# scoring


def _late(res, info) -> np.ndarray:
    return res.frame["step"].to_numpy() > 0.1 * info["total"]


def score_healthy(info: dict, kw: dict) -> int:
    """Anomalies after the first 10 % of training."""
    res = open_run(info["path"]).anomalies(**kw)
    return int(_late(res, info).sum())


def score_corrupted(info: dict, kw: dict) -> tuple[bool, int, int, int | None, int]:
    """(found within the window, true positives, cells flagged after the first 10 %, the
    checkpoint after the corruption at which the class is first flagged, other classes flagged
    within the window)."""
    res = open_run(info["path"]).anomalies(**kw)
    after = res.steps[res.steps > info["at"]]
    frame = res.frame
    in_window = frame["step"].isin(after[:WINDOW])
    tp = frame["class"].eq(info["cls"]) & in_window
    hits = frame.loc[frame["class"].eq(info["cls"]) & frame["step"].isin(after), "step"]
    first = int(np.searchsorted(after, hits.min())) + 1 if len(hits) else None
    return (bool(tp.any()), int(tp.sum()), int(_late(res, info).sum()), first,
            int((in_window & ~tp).sum()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5, help="how many seeds")
    ap.add_argument("--first-seed", type=int, default=0,
                    help="the first seed (seeds FIRST .. FIRST + SEEDS - 1): fresh seeds check "
                         "that a rule settled on others generalises")
    ap.add_argument("--no-train", action="store_true",
                    help="only read the finished runs in --workdir (read-only); never train")
    ap.add_argument("--no-digits", action="store_true", help="skip the scikit-learn digits runs")
    ap.add_argument("--no-shapes", action="store_true", help="skip the Shapes runs")
    ap.add_argument("--workdir", default=None, help="keep (and reuse) the recorded runs here")
    args = ap.parse_args(argv)

    tmp = None
    if args.workdir:
        work = Path(args.workdir)
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="bench-anomaly-")
        work = Path(tmp.name)
    load_before = _load()
    t0 = time.perf_counter()
    suites = []
    if not args.no_shapes:
        suites.append(("shapes (demo ResNet, small)", shapes_run))
    if not args.no_digits:
        suites.append(("digits (scikit-learn, real)", digits_run))
    runs: dict[str, list[tuple[dict, dict]]] = {}
    for name, make in suites:
        tag = name.split()[0]
        runs[name] = []
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            cls = (3 * seed + 1) % 10
            ts = time.perf_counter()
            h = make(work / f"{tag}-healthy-{seed}", seed, None, not args.no_train)
            c = make(work / f"{tag}-corrupt-{seed}", seed, cls, not args.no_train)
            runs[name].append((h, c))
            print(f"{tag} seed {seed}: trained/loaded in {time.perf_counter() - ts:.0f} s",
                  file=sys.stderr)
    train_s = time.perf_counter() - t0

    cmd = "python benchmarks/bench_anomaly.py " + " ".join(argv or sys.argv[1:])
    print(f"# bench_anomaly  ({_dt.datetime.now(_dt.UTC):%Y-%m-%d %H:%M} UTC)\n")
    print(f"command: `{cmd}`  ")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"load {load_before} -> {_load()}, training/loading {train_s:.0f} s\n")
    for name, pairs in runs.items():
        info = pairs[0][1]
        print(f"## {name}: {info['total']} steps, one class's labels corrupted after step "
              f"{info['at']}\n")
        print("| method | seed | corrupted class | late anomalies, healthy run | found within "
              f"{WINDOW} (checkpoint) | true positives / flagged after 10 %, corrupted run | "
              "of which other classes within the window |")
        print("|---|---|---|---|---|---|---|")
        summary = []
        for mname, kw in METHODS.items():
            lates, founds, tps, flags, sides = [], [], 0, 0, 0
            for h, c in pairs:
                seed = c["seed"]
                late = score_healthy(h, kw)
                found, tp, n, first, side = score_corrupted(c, kw)
                lates.append(late)
                founds.append(found)
                tps += tp
                flags += n
                sides += side
                where = f"yes ({first})" if found else (f"NO ({first})" if first else "NO")
                print(f"| {mname} | {seed} | {c['cls']} | {late} | {where} | {tp} / {n} | "
                      f"{side} |")
            prec = tps / flags if flags else float("nan")
            rec = sum(founds) / len(founds)
            summary.append((mname, statistics.median(lates), max(lates), prec, tps, flags, rec,
                            sides))
        print("\n| method | late anomalies, healthy: median (max) | precision | recall | "
              "other classes within the window |")
        print("|---|---|---|---|---|")
        for mname, med, mx, prec, tps, flags, rec, sides in summary:
            print(f"| {mname} | {med:g} ({mx}) | {prec:.2f} ({tps}/{flags}) | {rec:.2f} | "
                  f"{sides} |")
        print()
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
