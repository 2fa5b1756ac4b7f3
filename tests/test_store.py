"""The run directory: part writer, compaction, crash safety, concurrent writers, reader."""

from __future__ import annotations

import datetime as dt
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import convscope as cs
from convscope.errors import InvalidValueError, NotARunError, RunExistsError, StoreError
from convscope.store import PartWriter, compact_run, list_parts, open_run

PY = sys.executable


def _make_run(tmp_path: Path, name: str = "r") -> Path:
    with cs.Run(tmp_path, name):
        pass
    return tmp_path / name


def test_round_trip_every_column_type(tmp_path):
    run_dir = _make_run(tmp_path)
    cols = {
        "i8": pa.array([1, -2, 3], pa.int8()),
        "i16": pa.array([300, -300, 0], pa.int16()),
        "i32": pa.array([2**31 - 1, -(2**31), 5], pa.int32()),
        "i64": pa.array([2**62, -(2**62), 7], pa.int64()),
        "u8": pa.array([0, 255, 9], pa.uint8()),
        "f32": pa.array([1.5, float("nan"), -0.25], pa.float32()),
        "f64": pa.array([math.pi, float("inf"), float("-inf")], pa.float64()),
        "b": pa.array([True, False, None], pa.bool_()),
        "s": pa.array(["layer4.1.conv2", "", None], pa.string()),
        "bin": pa.array([b"\x00\x01", b"", b"\xff"], pa.binary()),
        "ts": pa.array(
            [dt.datetime(2026, 1, 1, 12, 0, 0), dt.datetime(1999, 12, 31), None],
            pa.timestamp("us"),
        ),
        "lst": pa.array([[1.0, 2.0], [], None], pa.list_(pa.float32())),
    }
    w = PartWriter(run_dir)
    # append arrow arrays column by column as Python lists, as users would
    w.append("types", {k: v.to_pylist() for k, v in cols.items()})
    w.close()
    back = open_run(run_dir).query("SELECT * FROM types")
    assert list(back.columns) == list(cols)
    expected = pa.table(cols).to_pandas()
    for k in cols:
        exp, got = expected[k].tolist(), back[k].tolist()
        for e, g in zip(exp, got, strict=True):
            if isinstance(e, float) and math.isnan(e):
                assert isinstance(g, float) and math.isnan(g), k
            elif e is None or (not isinstance(e, (list, np.ndarray)) and pd.isna(e)):
                assert g is None or pd.isna(g), (k, g)
            elif isinstance(e, (list, np.ndarray)):
                assert list(e) == list(g), k
            else:
                assert e == g, (k, e, g)
    # the stored Parquet keeps the exact arrow types the writer inferred for ints/floats/strings
    part = list_parts(run_dir / "tables" / "types").files[0]
    schema = pq.read_schema(part)
    assert schema.field("s").type == pa.string()
    assert schema.field("lst").type.value_type in (pa.float64(), pa.float32())


def test_many_small_parts_then_compaction_gives_identical_results(tmp_path):
    run_dir = _make_run(tmp_path)
    rng = np.random.default_rng(0)
    w = PartWriter(run_dir)
    for i in range(40):
        n = int(rng.integers(1, 30))
        w.append(
            "t",
            {
                "step": list(range(i * 100, i * 100 + n)),
                "layer": [f"layer{j % 4}" for j in range(n)],
                "value": rng.normal(size=n).tolist(),
            },
        )
        w.flush()  # one part per append
    w.close()
    table_dir = run_dir / "tables" / "t"
    assert len(list_parts(table_dir).files) == 40
    reader = open_run(run_dir)
    q = "SELECT layer, count(*) AS n, sum(value) AS s, max(step) AS m FROM t GROUP BY layer ORDER BY layer"
    before_all = reader.query("SELECT * FROM t ORDER BY step")
    before_agg = reader.query(q)
    assert compact_run(run_dir) == {"t": (40, 1)}
    assert len(list_parts(table_dir).files) == 1
    assert len(list(table_dir.glob("part-*.parquet"))) == 1
    pd.testing.assert_frame_equal(reader.query("SELECT * FROM t ORDER BY step"), before_all)
    pd.testing.assert_frame_equal(reader.query(q), before_agg)


def test_compaction_interrupted_before_delete_counts_rows_once(tmp_path):
    """A merged part whose replaced parts still exist (killed compaction) hides them."""
    run_dir = _make_run(tmp_path)
    w = PartWriter(run_dir)
    for i in range(5):
        w.append("t", {"x": [i, i + 10]})
        w.flush()
    w.close()
    table_dir = run_dir / "tables" / "t"
    saved = {p.name: p.read_bytes() for p in table_dir.glob("part-*.parquet")}
    compact_run(run_dir)
    for name, data in saved.items():  # resurrect the replaced parts
        (table_dir / name).write_bytes(data)
    assert len(list(table_dir.glob("part-*.parquet"))) == 6
    got = sorted(open_run(run_dir).query("SELECT x FROM t")["x"].tolist())
    assert got == sorted([i for i in range(5)] + [i + 10 for i in range(5)])


_CRASH_WRITER = textwrap.dedent(
    """
    import sys, time
    import convscope as cs
    run = cs.Run(sys.argv[1], "crash", flush_interval=0.05)
    step = 0
    for _ in range(20):
        run.log_scalars(step, loss=step * 0.5, acc=1.0 / (step + 1))
        step += 1
    run.flush()
    print("FLUSHED", step, flush=True)
    # keep writing large parts until killed, so the kill lands mid-write
    while True:
        for _ in range(5000):
            run.log_scalars(step, loss=step * 0.5, acc=1.0 / (step + 1))
            step += 1
        time.sleep(0.001)
    """
)


def test_sigkill_leaves_flushed_rows_and_no_partial_file(tmp_path):
    proc = subprocess.Popen(
        [PY, "-c", _CRASH_WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    line = proc.stdout.readline()
    assert line.startswith("FLUSHED"), line
    flushed = int(line.split()[1])
    time.sleep(1.5)  # let it write more parts
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    run_dir = tmp_path / "crash"
    table_dir = run_dir / "tables" / "scalars"
    # every file under a final part name is complete and readable
    for part in table_dir.glob("part-*.parquet"):
        pq.read_table(part)
    reader = open_run(run_dir)
    assert reader.problems == []
    df = reader.scalars()
    steps = df["step"].tolist()
    assert set(range(flushed)) <= set(steps)
    # rows read back are exactly what was logged for those steps (no torn rows)
    np.testing.assert_allclose(df["loss"].to_numpy(), df["step"].to_numpy() * 0.5)
    np.testing.assert_allclose(df["acc"].to_numpy(), 1.0 / (df["step"].to_numpy() + 1))
    # steps present form a prefix written in order: parts are whole
    assert steps == list(range(len(steps)))


_CONCURRENT_WRITER = textwrap.dedent(
    """
    import sys
    import convscope as cs
    logdir, rank, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    run = cs.Run(logdir, "shared", resume=True, rank=rank, flush_interval=0.01)
    for i in range(n):
        run.log_rows("events", {"rank": [rank], "i": [i]})
        if i % 500 == 0:
            run.flush()
    run.close(compact=False)
    """
)


def test_two_processes_writing_one_run_lose_no_row(tmp_path):
    with cs.Run(tmp_path, "shared"):
        pass
    n = 4000
    procs = [
        subprocess.Popen([PY, "-c", _CONCURRENT_WRITER, str(tmp_path), str(r), str(n)])
        for r in (0, 1)
    ]
    for p in procs:
        assert p.wait(timeout=120) == 0
    df = open_run(tmp_path / "shared").query("SELECT rank, i FROM events")
    assert len(df) == 2 * n
    for r in (0, 1):
        assert sorted(df[df["rank"] == r]["i"].tolist()) == list(range(n))
    names = [p.name for p in (tmp_path / "shared" / "tables" / "events").glob("part-*")]
    assert any(n.startswith("part-r000-") for n in names)
    assert any(n.startswith("part-r001-") for n in names)


def test_nan_is_data_but_non_numeric_raises(tmp_path):
    with cs.Run(tmp_path, "bad") as run:
        run.log_scalars(0, loss=float("nan"), acc=np.float32(0.5), ok=True)
        run.log_scalars(1, {"loss": np.inf})
        with pytest.raises(InvalidValueError, match="'acc'.*not a number"):
            run.log_scalars(2, acc="high")
        with pytest.raises(InvalidValueError, match="step must be an integer"):
            run.log_scalars("x", acc=1.0)
        with pytest.raises(InvalidValueError, match="shape"):
            import torch

            run.log_scalars(3, acc=torch.ones(3))
        run.log_scalars(4, acc=__import__("torch").tensor(0.25))
    df = open_run(tmp_path / "bad").scalars()
    assert math.isnan(df.loc[df.step == 0, "loss"].item())
    assert df.loc[df.step == 1, "loss"].item() == math.inf
    assert df.loc[df.step == 0, "ok"].item() == 1.0
    assert df.loc[df.step == 4, "acc"].item() == 0.25
    assert 2 not in df["step"].tolist()


def test_open_non_run_says_so(tmp_path):
    with pytest.raises(NotARunError, match="does not exist"):
        open_run(tmp_path / "missing")
    with pytest.raises(NotARunError, match="no run.json"):
        open_run(tmp_path)
    _make_run(tmp_path, "one")
    with pytest.raises(NotARunError, match="logdir holding 1 runs"):
        open_run(tmp_path)


def test_corrupt_part_is_reported_and_rest_loads(tmp_path):
    with cs.Run(tmp_path, "c") as run:
        run.log_scalars(0, loss=1.0)
        run.log_scalars(1, loss=0.5)
    table_dir = tmp_path / "c" / "tables" / "scalars"
    (table_dir / "part-r000-p1-dead-000000.parquet").write_bytes(b"PAR1 garbage not parquet")
    reader = open_run(tmp_path / "c")
    assert len(reader.problems) == 1 and "not a readable Parquet file" in reader.problems[0]
    assert reader.scalars()["loss"].tolist() == [1.0, 0.5]
    info = cs.store.list_runs(tmp_path)[0]
    assert info.problems and info.tables == {"scalars": 2}


def test_existing_name_raises_unless_resume(tmp_path):
    with cs.Run(tmp_path, "x", config={"lr": 0.1}) as run:
        run.log_scalars(0, loss=1.0)
    with pytest.raises(RunExistsError, match="resume=True"):
        cs.Run(tmp_path, "x")
    with cs.Run(tmp_path, "x", resume=True) as run:
        run.log_scalars(1, loss=2.0)
    reader = open_run(tmp_path / "x")
    assert reader.scalars()["loss"].tolist() == [1.0, 2.0]
    meta = reader.meta
    assert meta["config"] == {"lr": 0.1}
    assert meta["schema_version"] == 1 and meta["convscope_version"] == cs.__version__
    assert "ended" in meta and len(meta["resumed"]) == 1
    with pytest.raises(InvalidValueError, match="file name"):
        cs.Run(tmp_path, "../escape")


def test_default_names_are_sortable_and_unique(tmp_path):
    names = []
    for _ in range(3):
        with cs.Run(tmp_path) as run:
            names.append(run.name)
        time.sleep(0.01)
    assert len(set(names)) == 3
    for n in names:
        assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{4}", n)
    assert [r.name for r in cs.store.list_runs(tmp_path)] == sorted(names)


def test_reader_sees_rows_while_the_run_is_open(tmp_path):
    run = cs.Run(tmp_path, "live", flush_interval=60)
    run.log_scalars(0, loss=1.0)
    reader = open_run(run.path)
    assert reader.scalars().empty  # buffered, not yet written
    run.flush()
    assert reader.scalars()["loss"].tolist() == [1.0]
    run.log_scalars(1, loss=0.5)
    run.flush()
    assert reader.scalars()["loss"].tolist() == [1.0, 0.5]
    run.close()
    with pytest.raises(StoreError, match="closed"):
        run.log_scalars(2, loss=0.1)


def test_background_flusher_writes_without_flush(tmp_path):
    run = cs.Run(tmp_path, "age", flush_interval=0.05)
    run.log_scalars(0, loss=1.0)
    reader = open_run(run.path)
    deadline = time.monotonic() + 10
    while reader.scalars().empty and time.monotonic() < deadline:
        time.sleep(0.02)
    assert reader.scalars()["loss"].tolist() == [1.0]
    run.close()


def test_downsampled_series_matches_brute_force(tmp_path):
    rng = np.random.default_rng(1)
    values = rng.normal(size=10_000)
    with cs.Run(tmp_path, "big") as run:
        run.log_rows(
            "scalars",
            {
                "step": list(range(10_000)),
                "tag": ["loss"] * 10_000,
                "value": values.tolist(),
                "wall_time": [0.0] * 10_000,
            },
        )
    series = open_run(tmp_path / "big").scalar_series("loss", max_points=100)
    assert len(series) == 100
    # brute force: bucket = floor(step * 100 / (span + 1)), span = 9999
    buckets = np.floor(np.arange(10_000) * 100 / 10_000).astype(int)
    df = pd.DataFrame({"b": buckets, "v": values})
    agg = df.groupby("b")["v"].agg(["mean", "min", "max"])
    np.testing.assert_allclose(series["value"].to_numpy(), agg["mean"].to_numpy())
    np.testing.assert_allclose(series["vmin"].to_numpy(), agg["min"].to_numpy())
    np.testing.assert_allclose(series["vmax"].to_numpy(), agg["max"].to_numpy())
    short = open_run(tmp_path / "big").scalar_series("loss", max_points=20_000)
    assert len(short) == 10_000


def test_arrays_round_trip_and_index(tmp_path):
    import torch

    x = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    with cs.Run(tmp_path, "arr") as run:
        run.log_array("feature_maps", "layer1.0.conv1", x, dtype=np.float16, meta={"n": 2})
        run.log_array("feature_maps", "layer1.0.conv1", x * 2)  # replaces
        run.log_array("kernels", "conv1", np.ones((4, 3, 3, 3)))
    reader = open_run(tmp_path / "arr")
    idx = reader.arrays()
    assert idx[["kind", "key"]].values.tolist() == [
        ["feature_maps", "layer1.0.conv1"],
        ["kernels", "conv1"],
    ]
    np.testing.assert_array_equal(reader.array("feature_maps", "layer1.0.conv1"), (x * 2).numpy())
    assert idx.set_index("key").loc["conv1", "shape"] == (4, 3, 3, 3)
    with pytest.raises(StoreError, match="no array"):
        reader.array("kernels", "nope")
    with pytest.raises(InvalidValueError):
        cs.Run(tmp_path, "arr2").log_array("k", "x", [object()])


def test_writer_failure_surfaces_on_the_caller(tmp_path):
    run_dir = _make_run(tmp_path)
    w = PartWriter(run_dir)
    # arrow cannot build one column from int and str: refused at the call, nothing buffered
    with pytest.raises(InvalidValueError, match="column 'x' of table 't'"):
        w.append("t", {"x": [1, "mixed"]})
    w.append("t", {"x": [1, 2]})
    w.close()
    assert open_run(run_dir).query("SELECT x FROM t")["x"].tolist() == [1, 2]
    with pytest.raises(StoreError, match="different lengths"):
        PartWriter(run_dir).append("t", {"a": [1], "b": [1, 2]})


def test_temp_files_are_invisible(tmp_path):
    run_dir = _make_run(tmp_path)
    table_dir = run_dir / "tables" / "t"
    table_dir.mkdir(parents=True)
    pq.write_table(pa.table({"x": [1]}), table_dir / "part-a.parquet")
    (table_dir / ".part-b.parquet.tmp").write_bytes(b"half")
    assert open_run(run_dir).query("SELECT x FROM t")["x"].tolist() == [1]
    assert os.listdir(table_dir)  # sanity


def test_compaction_in_bounded_batches_keeps_every_row(tmp_path):
    run_dir = _make_run(tmp_path)
    w = PartWriter(run_dir)
    for i in range(10):
        w.append("t", {"x": list(range(i * 100, i * 100 + 100))})
        w.flush()
    w.close()
    from convscope.store.parts import compact_table

    assert compact_table(run_dir / "tables" / "t", max_rows=250) == (10, 5)
    got = sorted(open_run(run_dir).query("SELECT x FROM t")["x"].tolist())
    assert got == list(range(1000))


def test_row_bound_applies_back_pressure_without_losing_rows(tmp_path):
    run_dir = _make_run(tmp_path)
    w = PartWriter(run_dir, max_queued_rows=50, max_rows=20)
    for i in range(40):
        w.append("t", {"x": np.arange(i * 30, i * 30 + 30)})  # each batch alone exceeds half
        assert w._queued_rows <= 50 + 30
    w.close()
    assert sorted(open_run(run_dir).query("SELECT x FROM t")["x"].tolist()) == list(range(1200))
