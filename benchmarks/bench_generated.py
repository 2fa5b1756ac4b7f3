"""Benchmark: what the GAN page and the Compare page's generated-images panel cost per request
at the paper's size (Wang & Li 2020: 160 x 160 images, 4 x 4 tiles = a 640 x 640 grid; 15,000
steps sampled every 500 = 31 grids).

    .venv/bin/python benchmarks/bench_generated.py [--repeat 7] [--grids 31] [--side 640]

Writes a run of random grids to a temporary directory, then times (median of ``--repeat``):

* ``np.load`` of one stored grid (the baseline: the file read alone);
* ``generated.index`` (the arrays index: what listing the steps costs);
* ``generated.load`` + ``diversity`` + the PNG the page sends (one slider move);
* the strip: 12 grids loaded, their diversity and 128-px thumbnails (picking a run);
* ``compare_generated`` of two such runs (the Compare panel's set-up).

Each line gives the median in ms and its ratio to the baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def _median_ms(fn, repeat: int) -> float:
    fn()  # warm
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--grids", type=int, default=31)
    ap.add_argument("--side", type=int, default=640)
    args = ap.parse_args()

    import convscope as cs
    from convscope.figures.generated import grid_data_uri
    from convscope.formats import generated as gen
    from convscope.formats.compare import compare_generated

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("a", "b"):
            with cs.Run(tmp, name, quiet=True) as run:
                for i in range(args.grids):
                    gen.write(run, i * 500, rng.random((3, args.side, args.side),
                                                        dtype=np.float32))
        r = cs.open_run(Path(tmp) / "a")
        rb = cs.open_run(Path(tmp) / "b")
        infos = gen.index(r)
        last = infos[-1]
        file = Path(tmp) / "a" / "arrays" / gen.KIND / f"{last.key}.npy"
        base = _median_ms(lambda: np.load(file), args.repeat)

        def one() -> None:
            g = gen.load(r, last.step)
            gen.diversity(g.image, g.grid)
            grid_data_uri(g.image, 1024)

        def strip() -> None:
            ii = gen.index(r)
            for k in np.linspace(0, len(ii) - 1, 12).round().astype(int):
                g = gen.load(r, ii[k].step, ii)
                gen.diversity(g.image, g.grid)
                grid_data_uri(g.image, 128)

        rows = [("np.load one grid (baseline)", base),
                ("generated.index", _median_ms(lambda: gen.index(r), args.repeat)),
                ("load + diversity + PNG (slider)", _median_ms(one, args.repeat)),
                ("strip of 12 thumbnails (run picked)", _median_ms(strip, args.repeat)),
                ("compare_generated (two runs)",
                 _median_ms(lambda: compare_generated(r, rb), args.repeat))]
        print(f"{args.grids} grids of {args.side} x {args.side} x 3, median of {args.repeat}")
        for what, ms in rows:
            print(f"  {what:<38} {ms:9.1f} ms   x{ms / base:7.1f}")


if __name__ == "__main__":
    main()
