"""No request value reaches SQL text, and DuckDB cannot read or write outside the run (issue 12).

The attacks are real: an HTTP POST to a running ``convscope serve`` with a crafted "size nodes
by" value (it read /etc/passwd and a file outside the logdir, and wrote files with a stacked
``COPY ... TO`` before the fix), and the same SQL straight through ``RunReader.query``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

import convscope as cs
from convscope.errors import ConvscopeError, InvalidValueError, NotARunError, StoreError
from convscope.store.duck import check_select, connect, identifier, integer, quote_ident
from convscope.store.reader import list_runs

from .dash_http import call as dash_call

SECRET_NUMBER = 31337.25
PASSWD = Path("/etc/passwd")


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _make_model_run(logdir: Path, name: str = "net") -> Path:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3)).eval()
    with cs.Run(logdir, name, quiet=True) as run:
        run.log_model(model, torch.rand(1, 3, 8, 8), repeat=1)
    return logdir / name


# -- attacks over HTTP on a real server ------------------------------------------------------
def _elements(url: str, size_by) -> tuple[int, bytes, dict[str, float | None]]:
    status, body = dash_call(url, "model-graph", {
        "model-run.value": "net", "model-expanded.data": [], "model-size.value": size_by,
        "model-depth.value": 99, "model-selected.data": None}, "model-size.value")
    shares = {}
    if status == 200:
        els = json.loads(body)["response"]["model-graph"]["elements"]
        shares = {e["data"]["id"]: e["data"].get("share") for e in els if "share" in e["data"]}
    return status, body, shares


def _read_injection(path: Path, expr: str) -> str:
    """A "size nodes by" value that closes the quoted column and adds a scalar subquery."""
    return f'time_share" * 0 + (SELECT {expr} FROM read_text(\'{path}\')) + 0 * "time_share'


def _write_injection(target: Path) -> str:
    """A "size nodes by" value that stacks a COPY ... TO between two valid SELECTs."""
    return (f"time_share\" AS v FROM profile; COPY (SELECT 'pwned' AS x) TO '{target}'; "
            'SELECT name, "time_share')


@pytest.mark.browser
def test_model_page_size_by_injection_reads_and_writes_nothing(tmp_path, serve):
    logdir = tmp_path / "logdir"
    run_dir = _make_model_run(logdir)
    secret = tmp_path / "secret.txt"  # outside the logdir
    secret.write_text(str(SECRET_NUMBER))
    server = serve(logdir, refresh_ms=60_000)

    # the honest request works, and its shares are the profile's (read with pyarrow, no DuckDB)
    prof = pd.concat(pd.read_parquet(p) for p in sorted((run_dir / "tables/profile").glob(
        "*.parquet")))
    expected = dict(zip(prof["name"], prof["time_share"].astype(float), strict=True))
    status, _, shares = _elements(server.url, "time_share")
    assert status == 200
    got = {k: v for k, v in shares.items() if v is not None}
    assert got and all(got[k] == pytest.approx(expected[k]) for k in got)

    before = _tree(tmp_path)
    leaks = {
        "passwd length": (_read_injection(PASSWD, "length(content)"),
                          float(len(PASSWD.read_text()))),
        "file outside the logdir": (_read_injection(secret, "content::DOUBLE"), SECRET_NUMBER),
    }
    for what, (value, leaked) in leaks.items():
        status, body, shares = _elements(server.url, value)
        assert status in (200, 400, 500), what
        assert all(v is None or v != pytest.approx(leaked) for v in shares.values()), what
        assert str(SECRET_NUMBER).encode() not in body and b"root:" not in body, what
    outside, inside = tmp_path / "pwned.csv", run_dir / "pwned.csv"
    for target in (outside, inside):
        status, body, _ = _elements(server.url, _write_injection(target))
        assert not target.exists(), target
    # not a string at all: no crash that leaks, no file
    status, body, _ = _elements(server.url, {"$ne": 1})
    assert b"root:" not in body
    assert _tree(tmp_path) == before  # nothing written anywhere
    # the server still answers
    assert _elements(server.url, "memory_share")[0] == 200


# -- the same SQL straight through the reader ------------------------------------------------
@pytest.fixture
def runs(tmp_path):
    """Run ``r`` (scalars), a sibling run ``r2`` whose name starts like it, and files outside."""
    logdir = tmp_path / "logdir"
    with cs.Run(logdir, "r") as run:
        run.log_scalars(0, loss=1.5, acc=0.25)
        run.log_scalars(1, loss=0.5, acc=0.75)
    with cs.Run(logdir, "r2") as run:
        run.log_scalars(0, loss=99.0)
    outside = tmp_path / "outside"
    outside.mkdir()
    pq.write_table(pa.table({"x": [SECRET_NUMBER]}), outside / "o.parquet")
    (outside / "o.csv").write_text(f"x\n{SECRET_NUMBER}\n")
    return logdir, outside


def _part(run_dir: Path, table: str = "scalars") -> Path:
    return sorted((run_dir / "tables" / table).glob("*.parquet"))[0]


def test_normal_queries_over_the_run_still_work(runs):
    logdir, _ = runs
    reader = cs.open_run(logdir / "r")
    wide = reader.scalars()
    assert wide["loss"].tolist() == [1.5, 0.5] and wide["acc"].tolist() == [0.25, 0.75]
    df = reader.query("WITH s AS (SELECT * FROM scalars) SELECT sum(value) AS v FROM s "
                      "WHERE tag = ?", ["loss"])
    assert df["v"].iloc[0] == 2.0
    # a part inside the run, by its path, and a glob inside the run: allowed
    part = _part(logdir / "r")
    assert len(reader.query(f"SELECT * FROM read_parquet('{part}')")) == len(
        pq.read_table(part))
    assert len(reader.query(f"FROM read_parquet('{logdir / 'r'}/tables/scalars/*.parquet')")) == 4
    assert reader.table("scalars", ["step", "tag"]).shape == (4, 2)
    # one tag as a string is that tag (it used to be split into its letters: no rows)
    assert reader.scalars(tags="loss")["loss"].tolist() == [1.5, 0.5]
    assert list(reader.scalars(tags="loss").columns) == ["step", "wall_time", "loss"]


def _attacks(logdir: Path, outside: Path) -> dict[str, str]:
    run = logdir / "r"
    sibling = _part(logdir / "r2")
    return {
        "read_text /etc/passwd": "SELECT * FROM read_text('/etc/passwd')",
        "read_blob /etc/passwd": "SELECT * FROM read_blob('/etc/passwd')",
        "read_csv outside": f"SELECT * FROM read_csv('{outside / 'o.csv'}')",
        "read_parquet outside": f"SELECT * FROM read_parquet('{outside / 'o.parquet'}')",
        "bare file path": f"SELECT * FROM '{outside / 'o.parquet'}'",
        "glob /etc": "SELECT * FROM glob('/etc/*')",
        "climb out of the run": f"SELECT * FROM read_parquet('{run}/../../outside/o.parquet')",
        "sibling run sharing the prefix": f"SELECT * FROM read_parquet('{sibling}')",
        "sibling run via ..": f"SELECT * FROM read_parquet('{run}/../r2/tables/scalars/"
                              f"{sibling.name}')",
        "URL": "SELECT * FROM read_parquet('https://example.com/x.parquet')",
        "COPY outside": f"COPY (SELECT 1) TO '{outside / 'x.csv'}'",
        "COPY inside the run": f"COPY (SELECT 1) TO '{run / 'x.csv'}'",
        "COPY /tmp": f"COPY (SELECT 1) TO '/tmp/convscope-pwned-{os.getpid()}.csv'",
        "EXPORT DATABASE": f"EXPORT DATABASE '{outside / 'exp'}'",
        "ATTACH outside": f"ATTACH '{outside / 'x.duckdb'}' AS x",
        "ATTACH inside": f"ATTACH '{run / 'x.duckdb'}' AS x",
        "INSTALL httpfs": "INSTALL httpfs",
        "LOAD httpfs": "LOAD httpfs",
        "SET external access": "SET enable_external_access = true",
        "SET allowed_directories": "SET allowed_directories = ['/']",
        "RESET lock": "RESET lock_configuration",
        "PRAGMA": "PRAGMA database_list",
        "CALL": "CALL pragma_version()",
        "stacked COPY": f"SELECT 1; COPY (SELECT 1) TO '{run / 'y.csv'}'",
        "stacked COPY first": f"COPY (SELECT 1) TO '{run / 'z.csv'}'; SELECT 1",
        "COPY via query()": f"SELECT * FROM query('COPY (SELECT 1) TO ''{run / 'q.csv'}''')",
        "not SQL text": 123,
    }


def test_reader_refuses_every_escape_and_touches_nothing(runs):
    logdir, outside = runs
    reader = cs.open_run(logdir / "r")
    before = _tree(logdir.parent)
    for what, sql in _attacks(logdir, outside).items():
        for run_query in (reader.query, reader.query_numpy):
            with pytest.raises(StoreError) as err:
                run_query(sql)
            assert str(SECRET_NUMBER) not in str(err.value), what
    assert _tree(logdir.parent) == before
    assert not Path(f"/tmp/convscope-pwned-{os.getpid()}.csv").exists()
    # the reader still works afterwards, with its settings intact
    assert reader.scalars()["loss"].tolist() == [1.5, 0.5]
    assert not bool(reader.query(
        "SELECT current_setting('enable_external_access') AS e")["e"].iloc[0])


def test_duckdb_settings_hold_without_the_statement_check(runs):
    """The connection itself (no SELECT-only check in front) cannot leave the run."""
    logdir, outside = runs
    run = logdir / "r"
    con = connect(run)
    try:
        assert len(con.execute(f"SELECT * FROM read_parquet('{_part(run)}')").fetchall()) == 4
        blocked = {k: v for k, v in _attacks(logdir, outside).items()
                   if k not in ("COPY inside the run", "ATTACH inside", "PRAGMA", "CALL",
                                "stacked COPY", "stacked COPY first", "COPY via query()",
                                "not SQL text")}
        before = _tree(logdir.parent)
        for what, sql in blocked.items():
            with pytest.raises(duckdb.Error):
                con.execute(sql).fetchall()
            assert _tree(logdir.parent) == before, what
        settings = dict(con.execute(
            "SELECT name, value FROM duckdb_settings() WHERE name IN ('enable_external_access',"
            " 'lock_configuration', 'autoinstall_known_extensions', "
            "'autoload_known_extensions', 'allowed_directories', 'disabled_optimizers')"
        ).fetchall())
        assert settings["enable_external_access"] == "false"
        assert settings["lock_configuration"] == "true"
        assert settings["autoinstall_known_extensions"] == "false"
        assert settings["autoload_known_extensions"] == "false"
        assert settings["allowed_directories"] == f"[{run.resolve()}/]"
        assert settings["disabled_optimizers"] == "statistics_propagation"
        # cursors (one per reader query) inherit all of it
        cur = con.cursor()
        with pytest.raises(duckdb.Error):
            cur.execute("SELECT * FROM read_text('/etc/passwd')").fetchall()
        cur.close()
    finally:
        con.close()
    # without a root, no file at all; registered Arrow tables (compaction) still work
    con = connect()
    try:
        with pytest.raises(duckdb.Error):
            con.execute(f"SELECT * FROM read_parquet('{_part(run)}')").fetchall()
        con.register("t", pa.table({"a": [1, 2, 3]}))
        assert con.execute("SELECT sum(a) FROM t").fetchone()[0] == 6
    finally:
        con.close()


def test_the_old_model_page_sql_is_refused_by_the_reader(tmp_path):
    """Defence in depth: even the pre-fix f-string of the Model page cannot read or write."""
    logdir = tmp_path / "logdir"
    run_dir = _make_model_run(logdir)
    secret = tmp_path / "secret.txt"
    secret.write_text(str(SECRET_NUMBER))
    reader = cs.open_run(run_dir)
    ok = reader.query('SELECT name, "time_share" AS v FROM profile WHERE model = ?', ["model"])
    assert len(ok) == 4
    before = _tree(tmp_path)
    for size_by in (_read_injection(PASSWD, "length(content)"),
                    _read_injection(secret, "content::DOUBLE"),
                    _write_injection(tmp_path / "pwned.csv"),
                    _write_injection(run_dir / "pwned.csv")):
        with pytest.raises(StoreError):
            reader.query(f'SELECT name, "{size_by}" AS v FROM profile WHERE model = ?',
                         ["model"])
    assert _tree(tmp_path) == before
    # the checked way for the page: a share column from the fixed set, values from pyarrow
    prof = pd.concat(pd.read_parquet(p) for p in (run_dir / "tables/profile").glob("*.parquet"))
    expected = dict(zip(prof["name"], prof["memory_share"].astype(float), strict=True))
    assert reader.profile_shares("memory_share") == pytest.approx(expected)
    for size_by in (_read_injection(PASSWD, "length(content)"), "name", "", None, ["time_share"]):
        with pytest.raises(InvalidValueError, match="use one of 'time_share'"):
            reader.profile_shares(size_by)
    assert _tree(tmp_path) == before


def test_table_names_and_columns_are_never_sql(runs):
    logdir, _ = runs
    reader = cs.open_run(logdir / "r")
    for name in ('scalars"; COPY (SELECT 1) TO \'/tmp/x.csv', "../r2/tables/scalars", "/etc",
                 "", None, 5):
        assert reader.has_table(name) is False
        with pytest.raises(InvalidValueError):
            reader.table(name)
    # a crafted column is one quoted (unknown) name: an error, no subquery runs
    with pytest.raises(StoreError, match="not found|not exist|Referenced column"):
        reader.table("scalars", ['step", (SELECT content FROM read_text(\'/etc/passwd\')) AS "x'])


# -- identifiers in training queries ---------------------------------------------------------
INJECT = 'w_l2" AS v, (SELECT content FROM read_text(\'/etc/passwd\')) AS "x'


@pytest.fixture
def watched(tmp_path):
    rng = np.random.default_rng(0)
    with cs.Run(tmp_path, "w") as run:
        for s in range(1, 6):
            lc = {"step": np.full(2, s), "layer": np.array(["a", "b"], dtype=object),
                  "rank": np.zeros(2, np.int16)}
            for col in cs.track.columns.LAYER_COLUMNS:
                lc[col] = rng.random(2).astype(np.float32)
            run.log_rows("watch_layers", lc)
            run.log_rows("watch_filters", {
                "step": np.full(4, s), "layer": np.repeat(["a", "b"], 2),
                "filter": np.tile(np.arange(2, dtype=np.int32), 2),
                **{c: rng.random(4).astype(np.float32) for c in ("w_l2", "g_l2", "ratio",
                                                                   "cos_prev")},
                "rank": np.zeros(4, np.int16)})
    return cs.open_run(tmp_path / "w")


def test_training_identifiers_are_validated(watched):
    r = watched
    assert len(r.layer_series("w_l2")) == 10  # honest calls work
    assert r.filter_matrix("a", "cos_prev")[2].shape == (2, 5)
    assert r.recorded_filter_steps().tolist() == [1, 2, 3, 4, 5]
    bad_calls = {
        "layer_series stat": lambda: r.layer_series(INJECT),
        "layer_series stat not a str": lambda: r.layer_series(["w_l2"]),
        "layer_series layers": lambda: r.layer_series("w_l2", layers="a"),
        "layer_series layers not str": lambda: r.layer_series("w_l2", layers=[1]),
        "layer_series steps": lambda: r.layer_series("w_l2", steps=("0", "9; DROP")),
        "layer_series max_points": lambda: r.layer_series("w_l2", max_points="10) --"),
        "layer_series rank": lambda: r.layer_series("w_l2", rank="0 OR 1=1"),
        "filter_matrix value": lambda: r.filter_matrix("a", INJECT),
        "filter_matrix layer": lambda: r.filter_matrix(["a"], "w_l2"),
        "filter_matrix max_steps": lambda: r.filter_matrix("a", "w_l2", max_steps="4"),
        "filter_matrix steps": lambda: r.filter_matrix("a", "w_l2", steps="1-4"),
        "top_changed_filters step": lambda: r.top_changed_filters(step="1; DROP"),
        "top_changed_filters window": lambda: r.top_changed_filters(window=(1,)),
        "top_changed_filters k": lambda: r.top_changed_filters(step=1, k="3"),
        "top_filters_at steps": lambda: r.top_filters_at(["1) OR (1=1"]),
        "top_filters_at k": lambda: r.top_filters_at([1], k=None),
        "recorded_filter_steps rank": lambda: r.recorded_filter_steps(rank="0 OR 1=1"),
        "scalar_series max_points": lambda: r.scalar_series("loss", max_points="5"),
    }
    for what, call in bad_calls.items():
        with pytest.raises(ConvscopeError) as err:
            call()
        msg = str(err.value)
        assert "root:" not in msg, what
        assert any(w in msg for w in ("use one of", "pass e.g.", "must be")), (what, msg)


def test_sql_helpers():
    assert identifier("w_l2", ("w_l2",)) == "w_l2"
    for bad in (INJECT, 'w_l2"', "", None, 1, ["w_l2"]):
        with pytest.raises(InvalidValueError):
            identifier(bad, ("w_l2", INJECT, ""))  # even when "allowed", not an identifier
    assert quote_ident('a"b') == '"a""b"'
    assert integer(np.int64(3), "k") == 3 and integer(2.9, "k") == 2
    for bad in ("3", True, None, float("nan"), float("inf"), [1]):
        with pytest.raises(InvalidValueError):
            integer(bad, "k")
    con = duckdb.connect()
    check_select(con, "WITH a AS (SELECT 1) SELECT * FROM a")
    check_select(con, "FROM (VALUES (1))")
    for sql in ("SELECT 1; SELECT 2", "", "SET threads = 1", "SELEC 1"):
        with pytest.raises(StoreError):
            check_select(con, sql)


# -- open_run with bad arguments ---------------------------------------------------------------
@pytest.mark.parametrize("bad", [None, 123, 1.5, b"runs", ["runs"], "", "   ", "a\x00b",
                                 "x" * 5000, "~no-such-user-xyz/run"])
def test_open_run_bad_paths_give_helpful_errors(bad, tmp_path):
    with pytest.raises(ConvscopeError) as err:
        cs.open_run(bad)
    msg = str(err.value)
    assert "cs.open_run(" in msg or "pass a" in msg, msg
    if bad is None or isinstance(bad, (int, float, list)):
        assert isinstance(err.value, InvalidValueError) and "str or pathlib.Path" in msg
    if isinstance(bad, str) and not bad.strip():
        assert isinstance(err.value, NotARunError) and "empty" in msg
    with pytest.raises(ConvscopeError):
        list_runs(bad)


def test_open_run_on_a_logdir_and_missing_dir_says_what_to_open(runs):
    logdir, _ = runs
    with pytest.raises(NotARunError, match=r"open one of them, e.g. cs.open_run\("):
        cs.open_run(logdir)
    with pytest.raises(NotARunError, match="does not exist"):
        cs.open_run(logdir / "nope")
    assert [i.name for i in list_runs(str(logdir))] == ["r", "r2"]
    assert list_runs(logdir / "nope") == []


def test_symlinked_parts_and_tables_are_left_out(runs):
    """DuckDB's allowed_directories checks path text, not the real path: a link placed inside a
    run must never lead the reader to a file outside it (the link is named as a problem)."""
    logdir, outside = runs
    run_dir = logdir / "r"
    scalars = run_dir / "tables" / "scalars"
    secret_part = outside / "secret.parquet"
    pq.write_table(pa.table({"step": [7], "tag": ["loss"], "value": [float(SECRET_NUMBER)],
                             "wall_time": [0.0]}), secret_part)
    os.symlink(secret_part, scalars / "part-zz-link.parquet")
    reader = cs.open_run(run_dir)
    values = reader.query("SELECT value FROM scalars")["value"].tolist()
    assert float(SECRET_NUMBER) not in values and len(values) == 4
    assert any("part-zz-link.parquet" in p and "symbolic link" in p for p in reader.problems)
    # a whole table directory linked to a folder outside the run
    linked = outside / "tbl"
    linked.mkdir()
    pq.write_table(pa.table({"x": [SECRET_NUMBER]}), linked / "part-a.parquet")
    os.symlink(linked, run_dir / "tables" / "stolen")
    assert not reader.has_table("stolen")
    with pytest.raises(StoreError):
        reader.query("SELECT x FROM stolen")
    assert any("stolen" in p and "symbolic link" in p for p in reader.problems)
