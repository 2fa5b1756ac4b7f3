"""Nothing logged is lost or counted twice (issue 12, item 6), and distinct keys never share a
file (item 5): compaction killed between any two of its file operations, values rejected at
the call that logs them, orphaned temporary files, runs whose writer died, injective keys.

Crashes are real: a subprocess SIGKILLs itself right before its N-th rename or unlink."""

from __future__ import annotations

import os
import re
import shutil
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
from convscope.errors import InvalidValueError, StoreError
from convscope.formats.training_summary import top_file
from convscope.store import PartWriter, compact_run, list_parts, open_run
from convscope.store.layout import (
    ORPHAN_AGE_S,
    RUN_FILE,
    atomic_write_json,
    clean_orphans,
    find_key_file,
    legacy_safe_key,
    read_json,
    safe_key,
    temp_path,
    writer_alive,
)
from convscope.store.reader import RunInfo
from convscope.store.summary import open_summary, summary_file

PY = sys.executable
ENV = {**os.environ, "PYTHONPATH": str(Path(cs.__file__).parents[1])}

# Kill the process (SIGKILL, no cleanup) right before its N-th os.replace / os.unlink, then run
# the given code. Every file mutation of compaction is one of these two calls (temp files are
# created by open, which is harmless to interrupt: it leaves a temp file, also tested).
KILL_AT = """
import os, signal, sys
from pathlib import Path
N = int(sys.argv[1]); seen = [0]
real_replace, real_unlink = os.replace, os.unlink
def _hit():
    seen[0] += 1
    if seen[0] == N:
        os.kill(os.getpid(), signal.SIGKILL)
def _replace(*a, **k):
    _hit(); return real_replace(*a, **k)
def _unlink(*a, **k):
    _hit(); return real_unlink(*a, **k)
os.replace, os.unlink = _replace, _unlink
"""


def _py(code: str, *args: object, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-c", textwrap.dedent(code), *map(str, args)], env=ENV,
                          capture_output=True, text=True, timeout=timeout)


# -- compaction killed at every point -----------------------------------------------------------
LAYERS = {"conv1": 3, "fc": 2}


def _filter_rows(steps: range) -> dict[str, np.ndarray]:
    """watch_filters rows with values that are a function of (layer, filter, step)."""
    cols: dict[str, list] = {"rank": [], "step": [], "layer": [], "filter": [], "w_l2": [],
                             "cos_prev": []}
    for s in steps:
        for li, (layer, nf) in enumerate(LAYERS.items()):
            for f in range(nf):
                cols["rank"].append(0)
                cols["step"].append(s)
                cols["layer"].append(layer)
                cols["filter"].append(f)
                cols["w_l2"].append(s + 0.25 * f + 10 * li)
                cols["cos_prev"].append(1.0 / (1 + s + f + li))
    return {
        "rank": np.asarray(cols["rank"], np.int16), "step": np.asarray(cols["step"], np.int64),
        "layer": np.asarray(cols["layer"], object),
        "filter": np.asarray(cols["filter"], np.int32),
        "w_l2": np.asarray(cols["w_l2"], np.float32),
        "cos_prev": np.asarray(cols["cos_prev"], np.float32),
    }


def _write_parts(run_dir: Path, first: int, parts: int) -> None:
    """``parts`` parts per table, part i holding scalars step first+i and filters of 8 steps."""
    w = PartWriter(run_dir)
    for i in range(first, first + parts):
        w.append("scalars", {"step": [i, i], "tag": ["loss", "acc"],
                             "value": [1.0 / (i + 1), i / 100], "wall_time": [0.0, 0.0]})
        w.append("watch_filters", _filter_rows(range(8 * i, 8 * i + 8)))
        w.flush()
    w.close()


def _expected(parts: int) -> tuple[list, pd.DataFrame]:
    scal = sorted((i, t, v) for i in range(parts)
                  for t, v in (("loss", 1.0 / (i + 1)), ("acc", i / 100)))
    filt = pd.DataFrame(_filter_rows(range(8 * parts)))
    return scal, filt


def _read(run_dir: Path) -> tuple[list, pd.DataFrame]:
    r = open_run(run_dir)
    s = r.query("SELECT step, tag, value FROM scalars")
    scal = sorted(zip(s["step"].tolist(), s["tag"].tolist(), s["value"].tolist(), strict=True))
    f = r.query("SELECT rank, step, layer, filter, w_l2, cos_prev FROM watch_filters")
    return scal, f


def _same_filters(got: pd.DataFrame, want: pd.DataFrame) -> None:
    key = ["rank", "step", "layer", "filter"]
    assert len(got) == len(want)
    g = got.sort_values(key).reset_index(drop=True)
    w = want.sort_values(key).reset_index(drop=True)
    for c in got.columns:
        if c == "layer":
            assert g[c].astype(str).tolist() == w[c].astype(str).tolist()
        else:
            np.testing.assert_array_equal(g[c].to_numpy(np.float64), w[c].to_numpy(np.float64))


def _brute_matrix(df: pd.DataFrame, layer: str, value: str, max_steps: int):
    """filter_matrix's documented bucketing, by brute force over the expected rows."""
    d = df[df.layer == layer]
    lo, hi = int(d.step.min()), int(d.step.max())
    k = 0
    while (hi >> k) - (lo >> k) + 1 > max_steps:
        k += 1
    d = d.assign(b=d.step.to_numpy() >> k)
    mat = d.groupby(["filter", "b"])[value].mean().unstack()
    return d.groupby("b").step.min().to_numpy(), mat.index.to_numpy(), mat.to_numpy()


def _no_leftovers(run_dir: Path) -> None:
    for table in ("scalars", "watch_filters"):
        tdir = run_dir / "tables" / table
        listing = list_parts(tdir)
        assert listing.replaced == [] and listing.problems == []
        assert len(listing.files) == 1  # everything merged into one part
        temps = [p for p in tdir.rglob("*") if p.name.endswith(".tmp")]
        assert temps == []
        names = {p.name for p in tdir.glob("part-*.parquet")}
        assert names == {listing.files[0].name}  # nothing else left behind
    wf = run_dir / "tables" / "watch_filters"
    part = list_parts(wf).files[0]
    summaries = {p.name for p in (wf / "_summary").glob("*.parquet")}
    assert summaries == {part.name, "top-" + part.name}  # of the visible part, complete
    sf = open_summary(summary_file(part))
    assert sf is not None and top_file(part).exists()


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A run with 4 parts in each of two tables (watch_filters gets summaries when compacted),
    and the number of renames/unlinks a compaction of it performs."""
    root = tmp_path_factory.mktemp("tpl")
    with cs.Run(root, "r", quiet=True) as run:
        run_dir = run.path
    _write_parts(run_dir, 0, 4)
    probe = root / "probe"
    shutil.copytree(run_dir, probe)
    res = _py(KILL_AT + "from convscope.store import compact_run\n"
              "compact_run(Path(sys.argv[2]), min_parts=2)\nprint('MUTATIONS', seen[0])\n",
              0, probe)
    assert res.returncode == 0, res.stderr
    mutations = int(res.stdout.split("MUTATIONS")[1])
    # 2 tables x (4 part unlinks) + merged renames + summary renames + summary unlinks
    assert mutations >= 11, mutations
    return run_dir, mutations


@pytest.mark.slow
def test_compaction_killed_at_every_point_loses_and_duplicates_nothing(template, tmp_path):
    run_dir0, mutations = template
    want_scal, want_filt = _expected(6)
    killed_states = set()
    for n in range(1, mutations + 2):  # before each mutation, and after the last one
        run_dir = tmp_path / f"k{n}"
        shutil.copytree(run_dir0, run_dir)
        res = _py(KILL_AT + "from convscope.store import compact_run\n"
                  "compact_run(Path(sys.argv[2]), min_parts=2)\n", n, run_dir)
        assert res.returncode == (-signal.SIGKILL if n <= mutations else 0), (n, res.stderr)
        killed_states.add(tuple(sorted(p.name for p in run_dir.rglob("*") if p.is_file())))
        # right after the crash: every row exactly once
        scal, filt = _read(run_dir)
        assert scal == _expected(4)[0], n
        _same_filters(filt, _expected(4)[1])
        # the training goes on, and the run is compacted again (the case that used to bring
        # back the replaced parts: 7 rows read where 4 were logged)
        _write_parts(run_dir, 4, 2)
        assert compact_run(run_dir, min_parts=2)["scalars"][1] == 1
        scal, filt = _read(run_dir)
        assert scal == want_scal, n
        _same_filters(filt, want_filt)
        _no_leftovers(run_dir)
        # the summaries the views read agree with the rows (independent brute force)
        reader = open_run(run_dir)
        for layer in LAYERS:
            steps, filters, mat = reader.filter_matrix(layer, "w_l2", max_steps=10)
            b_steps, b_filters, b_mat = _brute_matrix(want_filt, layer, "w_l2", 10)
            np.testing.assert_array_equal(steps, b_steps)
            np.testing.assert_array_equal(filters, b_filters)
            np.testing.assert_allclose(mat, b_mat, rtol=1e-6)
    assert len(killed_states) > mutations // 2  # the kills did land at different points


def test_killed_compaction_then_second_compaction_exact_case(tmp_path):
    """The reported case, step by step: merged part written, nothing deleted, new rows, second
    compaction."""
    with cs.Run(tmp_path, "r", quiet=True) as run:
        run_dir = run.path
    w = PartWriter(run_dir)
    for i in range(4):
        w.append("t", {"x": [i]})
        w.flush()
    w.close()
    # kill right before the first unlink (the merged part has been renamed into place)
    res = _py(KILL_AT + "from convscope.store import compact_run\n"
              "compact_run(Path(sys.argv[2]), min_parts=2)\n", 2, run_dir)
    assert res.returncode == -signal.SIGKILL
    tdir = run_dir / "tables" / "t"
    assert len(list(tdir.glob("part-*.parquet"))) == 5  # 4 old + merged, both present
    assert sorted(open_run(run_dir).query("SELECT x FROM t")["x"]) == [0, 1, 2, 3]
    w = PartWriter(run_dir)
    w.append("t", {"x": [4]})
    w.close()
    compact_run(run_dir, min_parts=2)
    assert sorted(open_run(run_dir).query("SELECT x FROM t")["x"]) == [0, 1, 2, 3, 4]
    assert len(list(tdir.glob("part-*.parquet"))) == 1  # leftovers cleaned
    compact_run(run_dir, min_parts=2)
    assert sorted(open_run(run_dir).query("SELECT x FROM t")["x"]) == [0, 1, 2, 3, 4]


def test_chain_left_by_an_older_version_is_deleted_leaf_first(tmp_path, monkeypatch):
    """M2 replaces M, M replaces A, all three present: deleting M before A would uncover A.
    Killing the clean-up after its first deletion must leave every row once."""
    from convscope.store import parts as parts_mod

    tdir = tmp_path / "r" / "tables" / "t"
    tdir.mkdir(parents=True)
    (tmp_path / "r" / RUN_FILE).write_text("{}")
    pq.write_table(pa.table({"x": [1]}), tdir / "part-a.parquet")
    meta = {b"convscope.replaces": b'["part-a.parquet"]'}
    pq.write_table(pa.table({"x": [1]}).replace_schema_metadata(meta), tdir / "part-m.parquet")
    meta2 = {b"convscope.replaces": b'["part-m.parquet"]'}
    pq.write_table(pa.table({"x": [1]}).replace_schema_metadata(meta2), tdir / "part-n.parquet")
    assert open_run(tmp_path / "r").query("SELECT x FROM t")["x"].tolist() == [1]
    deleted = []
    real = Path.unlink

    def unlink_once(self, missing_ok=False):
        if self.name.startswith("part-") and self.parent == tdir:
            deleted.append(self.name)
            if len(deleted) == 2:
                raise KeyboardInterrupt  # "killed" after the first deletion
        return real(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink_once)
    with pytest.raises(KeyboardInterrupt):
        parts_mod.compact_table(tdir)
    monkeypatch.setattr(Path, "unlink", real)
    assert deleted[0] == "part-a.parquet"
    assert open_run(tmp_path / "r").query("SELECT x FROM t")["x"].tolist() == [1]
    parts_mod.compact_table(tdir)
    assert [p.name for p in tdir.glob("part-*.parquet")] == ["part-n.parquet"]
    assert open_run(tmp_path / "r").query("SELECT x FROM t")["x"].tolist() == [1]


# -- invalid values rejected at the call ------------------------------------------------------
def test_bad_scalars_rejected_at_the_call_valid_rows_kept(tmp_path):
    run = cs.Run(tmp_path, "r", quiet=True)
    run.log_scalars(1, loss=1.0)
    with pytest.raises(InvalidValueError, match=r"step 1180591620717411303424 .*64-bit"):
        run.log_scalars(2**70, loss=2.0)
    run.log_scalars(2, loss=3.0)
    with pytest.raises(InvalidValueError, match=r"'big'.*too large for a 64-bit float"):
        run.log_scalars(3, big=10**400)
    with pytest.raises(InvalidValueError, match="not valid text"):
        run.log_scalars(3, {"\ud800": 1.0})
    with pytest.raises(InvalidValueError, match="step must be"):
        run.log_scalars(np.array([1, 2]), loss=1.0)
    with pytest.raises(InvalidValueError, match="'c'"):
        run.log_scalars(3, c=1 + 2j)
    run.log_scalars(3, loss=4.0, acc=np.float32(0.5))
    run.log_scalars(2**63 - 1, loss=5.0)  # the largest step that fits is fine
    run.flush()  # nothing pending: no delayed error
    run.close()
    got = sorted(open_run(run.path).scalars(long=True)[["step", "tag", "value"]].values.tolist())
    assert got == [[1, "loss", 1.0], [2, "loss", 3.0], [3, "acc", 0.5], [3, "loss", 4.0],
                   [2**63 - 1, "loss", 5.0]]


def test_bad_rows_rejected_at_the_call_valid_rows_kept(tmp_path):
    run = cs.Run(tmp_path, "r", quiet=True)
    run.log_rows("t", {"x": [1, 2], "s": ["a", "b"]})
    with pytest.raises(InvalidValueError, match=r"column 'x' of table 't'"):
        run.log_rows("t", {"x": [2**70], "s": ["c"]})
    with pytest.raises(InvalidValueError, match=r"table 't' do not match its earlier rows"):
        run.log_rows("t", {"x": ["three"], "s": ["c"]})
    with pytest.raises(InvalidValueError, match="1-d"):
        run.log_rows("t", {"x": np.zeros((2, 2)), "s": ["c", "d"]})
    run.log_rows("t", {"x": np.array([3, 4]), "s": np.array(["c", "d"], dtype=object)})
    run.log_rows("t", {"x": [5.5], "s": ["e"]})  # int -> float promotes: fine
    run.close()
    df = open_run(run.path).query("SELECT x, s FROM t ORDER BY s")
    assert df["x"].tolist() == [1, 2, 3, 4, 5.5] and df["s"].tolist() == list("abcde")


def test_log_array_bad_dtype_and_step(tmp_path):
    run = cs.Run(tmp_path, "r", quiet=True)
    with pytest.raises(InvalidValueError, match=r"dtype 'nonsense' is not a numpy dtype"):
        run.log_array("k", "a", np.ones(3), dtype="nonsense")
    with pytest.raises(InvalidValueError, match="without pickling"):
        run.log_array("k", "a", np.ones(3), dtype=object)
    with pytest.raises(InvalidValueError, match="step must be"):
        run.log_array("k", "a", np.ones(3), step="x")
    assert not (run.path / "arrays" / "k").exists()  # nothing half-stored
    run.log_array("k", "a", np.arange(3), dtype="float16", step=4)
    run.close()
    r = open_run(run.path)
    assert r.array("k", "a").dtype == np.float16
    assert r.arrays()["step"].tolist() == [4]


def test_flush_writes_valid_rows_when_one_batch_still_fails(tmp_path):
    """A batch that passes the call's checks but fails to convert (here: a caller's wrong type
    promise) is reported; the table's other rows and other tables are written."""
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    w = PartWriter(run_dir)
    w.append("a", {"x": [1]})
    w.append("a", {"x": np.array([2, 3])})
    w.append("a", {"x": ["oops"]}, types={"x": pa.int64()})
    w.append("b", {"y": [1.5]})
    with pytest.raises(StoreError, match=r"table 'a': 1 row\(s\) with columns \['x'\]"):
        w.flush()
    w.append("a", {"x": [4]})
    w.close()
    r_a = pa.concat_tables([pq.read_table(f) for f in list_parts(run_dir / "tables" / "a").files])
    assert sorted(r_a.column("x").to_pylist()) == [1, 2, 3, 4]
    assert len(list_parts(run_dir / "tables" / "b").files) == 1


def test_one_table_failing_to_write_keeps_the_others(tmp_path):
    run_dir = tmp_path / "r"
    (run_dir / "tables").mkdir(parents=True)
    (run_dir / "tables" / "bad").write_text("a file where a table directory should be")
    w = PartWriter(run_dir)
    w.append("good", {"x": [1, 2]})
    w.append("bad", {"x": [3]})
    w.append("good2", {"x": [4]})
    with pytest.raises(StoreError, match="writing the run directory failed"):
        w.flush()
    w.close()
    assert list_parts(run_dir / "tables" / "good").rows == 2
    assert list_parts(run_dir / "tables" / "good2").rows == 1


# -- orphaned temporary files and dead writers ------------------------------------------------
def test_writer_killed_mid_part_leaves_temp_that_resume_removes(tmp_path):
    # the writer is SIGKILLed right before it renames a fully written part into place
    res = _py(KILL_AT + """
import convscope as cs
run = cs.Run(sys.argv[2], "r", quiet=True, flush_interval=600)
run.log_scalars(0, loss=1.0)
run.flush()
""", 2, tmp_path)  # 1st replace: run.json; 2nd: the part
    assert res.returncode == -signal.SIGKILL, res.stderr
    run_dir = tmp_path / "r"
    temps = list((run_dir / "tables" / "scalars").glob(".*.tmp"))
    assert len(temps) == 1 and temps[0].stat().st_size > 0
    info = RunInfo.of(run_dir)
    assert info.status == "died" and read_json(run_dir / RUN_FILE)["status"] == "running"
    assert open_run(run_dir).scalars().empty  # the partial part is invisible
    with cs.Run(tmp_path, "r", resume=True, quiet=True) as run:
        assert not temps[0].exists()
        assert RunInfo.of(run_dir).status == "running"
        run.log_scalars(1, loss=2.0)
    assert RunInfo.of(run_dir).status == "ended"
    assert open_run(run_dir).scalars(long=True)["step"].tolist() == [1]


def test_clean_orphans_spares_live_and_recent_foreign_temps(tmp_path):
    dead = subprocess.Popen([PY, "-c", "pass"])
    dead.wait()
    final = tmp_path / "part-x.parquet"
    mine = temp_path(final)  # this (live) process
    theirs = mine.with_name(mine.name.replace(f"-{os.getpid()}.tmp", f"-{dead.pid}.tmp"))
    host = mine.name.rsplit(".", 2)[-2].split("-")[0]
    foreign = tmp_path / f".part-y.parquet.{'0' * 6 if host != '0' * 6 else '1' * 6}-1.tmp"
    foreign_old = tmp_path / f".part-z.parquet.{'0' * 6 if host != '0' * 6 else '1' * 6}-1.tmp"
    legacy_old = tmp_path / ".part-r000-p1-abcd-000001.parquet.tmp"
    legacy_live = tmp_path / f".part-r000-p{os.getpid()}-abcd-000001.parquet.tmp"
    keep = tmp_path / "part-w.parquet"
    for p in (mine, theirs, foreign, foreign_old, legacy_old, legacy_live, keep):
        p.write_bytes(b"x")
    old = time.time() - ORPHAN_AGE_S - 10
    for p in (foreign_old, legacy_old, legacy_live):
        os.utime(p, (old, old))
    removed = {p.name for p in clean_orphans(tmp_path)}
    assert removed == {theirs.name, foreign_old.name, legacy_old.name, legacy_live.name}
    assert mine.exists() and foreign.exists() and keep.exists()


def test_dead_and_live_writers_are_told_apart(tmp_path):
    code = """
import os, signal, sys, time
import convscope as cs
run = cs.Run(sys.argv[1], sys.argv[2], quiet=True)
run.log_scalars(0, loss=1.0)
run.flush()
print("ready", flush=True)
if sys.argv[3] == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
elif sys.argv[3] == "wait":
    sys.stdin.readline()
# "exit": leave without run.close(): the finalizer ends the run
"""
    live = subprocess.Popen([PY, "-c", textwrap.dedent(code), str(tmp_path), "live", "wait"],
                            env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert live.stdout.readline().strip() == "ready"
        assert RunInfo.of(tmp_path / "live").status == "running"
        assert writer_alive(tmp_path / "live", read_json(tmp_path / "live" / RUN_FILE))
    finally:
        live.stdin.close()
        live.wait(60)
    assert RunInfo.of(tmp_path / "live").status == "ended"  # exited without close()
    res = _py(code, tmp_path, "killed", "kill")
    assert res.returncode == -signal.SIGKILL
    info = RunInfo.of(tmp_path / "killed")
    assert info.status == "died" and info.tables == {"scalars": 1}
    # a run written on another machine cannot be judged from here: left as recorded
    meta = read_json(tmp_path / "killed" / RUN_FILE)
    atomic_write_json(tmp_path / "killed" / RUN_FILE, {**meta, "host": "elsewhere"})
    assert writer_alive(tmp_path / "killed", {**meta, "host": "elsewhere"}) is None
    assert RunInfo.of(tmp_path / "killed").status == "running"
    # an ended run stays "ended" although nobody holds its lock
    with cs.Run(tmp_path, "closed", quiet=True):
        pass
    assert RunInfo.of(tmp_path / "closed").status == "ended"


# -- injective keys ---------------------------------------------------------------------------
def _file_name(n: str) -> bool:
    """One path component without dots-only or hidden names: safe to join to a directory."""
    return bool(re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._=+-]{0,199}", n)) and ".." not in n


def test_keys_that_sanitise_alike_get_distinct_files(tmp_path):
    keys = ["a/b", "a_b", "a:b", "a b", "a\\b", "", "_", ".", "..", "x" * 250, "x" * 251,
            "layer4.1.conv2", "layer1.relu:2", "layer1.relu_2", "é", "e"]
    names = [safe_key(k) for k in keys]
    assert len(set(names)) == len(keys)
    for k, n in zip(keys, names, strict=True):
        assert _file_name(n) and safe_key(n) == n  # a plain file name, and a fixed point
        if legacy_safe_key(k) == k:  # already-safe keys keep the name runs use today
            assert n == k
    run = cs.Run(tmp_path, "r", quiet=True)
    for i, k in enumerate(keys):
        run.log_array("k", k, np.full(2, i))
        run.log_object("o", k, {"i": i})
    run.close()
    r = open_run(run.path)
    for i, k in enumerate(keys):
        assert r.array("k", k).tolist() == [i, i]
        assert r.object("o", k) == {"i": i}
    assert len(list((run.path / "arrays" / "k").glob("*.npy"))) == len(keys)
    idx = r.arrays("k")
    assert sorted(idx["key"]) == sorted(keys)
    assert len(set(idx["file"])) == len(keys)


def test_random_keys_map_injectively(tmp_path):
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.text(max_size=30), min_size=2, max_size=20, unique=True))
    def check(keys):
        names = [safe_key(k) for k in keys]
        assert len(set(names)) == len(keys)
        for n in names:
            assert _file_name(n) and safe_key(n) == n

    check()


def test_old_runs_find_their_files_under_the_old_names(tmp_path):
    run_dir = tmp_path / "old"
    kdir = run_dir / "arrays" / "k"
    kdir.mkdir(parents=True)
    atomic_write_json(run_dir / RUN_FILE, {"name": "old"})  # no key_scheme: recorded before
    (kdir / "layer1.relu_2.npy").write_bytes(b"old")
    assert find_key_file(run_dir, kdir, "layer1.relu:2", ".npy").name == "layer1.relu_2.npy"
    assert find_key_file(run_dir, kdir, "layer1.relu_2", ".npy").name == "layer1.relu_2.npy"
    # in a run recorded with injective keys the old name belongs to another key
    new_dir = tmp_path / "new"
    with cs.Run(tmp_path, "new", quiet=True):
        pass
    assert read_json(new_dir / RUN_FILE)["key_scheme"] == 2
    ndir = new_dir / "arrays" / "k"
    ndir.mkdir(parents=True)
    (ndir / "layer1.relu_2.npy").write_bytes(b"other key")
    assert find_key_file(new_dir, ndir, "layer1.relu:2", ".npy").name == safe_key(
        "layer1.relu:2") + ".npy"
