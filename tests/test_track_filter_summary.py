"""The filter view's summaries (convscope.formats.training_summary): filter_matrix over a log
whose parts are partly compacted (summarised) and partly not equals a brute-force pandas
computation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import convscope as cs
from convscope.formats.training_summary import build_filter_summary
from convscope.store.layout import TABLES_DIR
from convscope.store.parts import compact_table, list_parts
from convscope.store.summary import summary_file

VALUES = ("w_l2", "g_l2", "ratio", "cos_prev")


def _brute(df: pd.DataFrame, layer: str, value: str, max_steps: int, steps=None, rank=0):
    """The documented bucketing: step >> k, k the smallest giving <= max_steps buckets over
    [lo, hi] (the layer's first / last step, clipped to ``steps``); NaN left out of means."""
    d = df[(df.layer == layer) & (df["rank"] == rank)]
    if d.empty:
        return None
    lo, hi = int(d.step.min()), int(d.step.max())
    if steps is not None:
        lo, hi = max(lo, steps[0]), min(hi, steps[1])
        d = d[(d.step >= lo) & (d.step <= hi)]
    if d.empty or lo > hi:
        return None
    k = 0
    while (hi >> k) - (lo >> k) + 1 > max_steps:
        k += 1
    d = d.assign(b=d.step.to_numpy() >> k)
    mat = d.groupby(["filter", "b"])[value].mean().unstack()
    first = d.groupby("b").step.min()
    return first.to_numpy(), mat.index.to_numpy(), mat.to_numpy()


def _log(run, rng, steps, layers, frames, nan_share=0.05):
    for s in steps:
        for rank in (0, 1):
            cols = {"step": [], "layer": [], "filter": []}
            for name, nf in layers.items():
                keep = np.flatnonzero(rng.random(nf) > 0.05)  # some filters missing now and then
                cols["step"].append(np.full(len(keep), s, dtype=np.int64))
                cols["layer"].append(np.full(len(keep), name, dtype=object))
                cols["filter"].append(keep.astype(np.int32))
            out = {k: np.concatenate(v) for k, v in cols.items()}
            n = len(out["step"])
            for v in VALUES:
                x = rng.normal(1.0, 0.3, n).astype(np.float32)
                x[rng.random(n) < nan_share] = np.nan
                out[v] = x
            out["rank"] = np.full(n, rank, dtype=np.int16)
            run.log_rows("watch_filters", out)
            frames.append(pd.DataFrame(out))


@pytest.fixture(scope="module")
def mixed_log(tmp_path_factory):
    """Irregular steps, 3 layers, 2 ranks, NaN values; 3 compacted parts (with summaries)
    followed by small uncompacted parts (a run still training)."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("summary")
    layers = {"a.conv": 5, "b.conv": 12, "fc": 3}
    steps = np.unique(np.cumsum(rng.integers(1, 9, 700)))  # irregular spacing
    frames: list[pd.DataFrame] = []
    with cs.Run(root, "m", quiet=True) as run:
        for chunk in np.array_split(steps[:600], 30):
            _log(run, rng, chunk, layers, frames)
            run.flush()  # one part per chunk
        table_dir = run.path / TABLES_DIR / "watch_filters"
        compact_table(table_dir, min_parts=2, max_rows=6_000)
        for chunk in np.array_split(steps[600:], 4):
            _log(run, rng, chunk, layers, frames)
            run.flush()
        run.close(compact=False)  # a live run: the last parts stay raw
    files = list_parts(table_dir).files
    with_summary = [f for f in files if summary_file(f).is_file()]
    assert len(with_summary) >= 3 and len(files) - len(with_summary) >= 4
    return cs.open_run(run.path), pd.concat(frames, ignore_index=True), steps


def _check(reader, df, layer, value, max_steps, steps=None, rank=0):
    got = reader.filter_matrix(layer, value, max_steps=max_steps, steps=steps, rank=rank)
    exp = _brute(df, layer, value, max_steps, steps, rank)
    if exp is None:
        assert got[2].size == 0
        return
    assert len(got[0]) <= max_steps
    np.testing.assert_array_equal(got[0], exp[0])
    np.testing.assert_array_equal(got[1], exp[1])
    np.testing.assert_allclose(got[2], exp[2], rtol=2e-6, atol=1e-6, equal_nan=True)


def test_filter_matrix_equals_brute_force_over_random_ranges(mixed_log):
    reader, df, steps = mixed_log
    rng = np.random.default_rng(1)
    for layer in ("a.conv", "b.conv", "fc"):
        for max_steps in (1, 3, 16, 37, 400, 5000):
            _check(reader, df, layer, "cos_prev", max_steps)
    lo, hi = int(steps[0]), int(steps[-1])
    for _ in range(40):
        a, b = sorted(rng.integers(lo - 50, hi + 50, 2).tolist())
        _check(reader, df, str(rng.choice(["a.conv", "b.conv", "fc"])), str(rng.choice(VALUES)),
               int(rng.choice([2, 7, 25, 60, 300])), steps=(a, b), rank=int(rng.integers(0, 2)))
    # ranges inside one summary block, outside the data, and exactly on block edges
    for a, b in ((lo + 3, lo + 4), (hi + 10, hi + 20), (0, lo - 1), (256, 511), (512, 1023)):
        _check(reader, df, "b.conv", "w_l2", 4, steps=(a, b))
    assert reader.filter_matrix("nope", "w_l2")[2].size == 0


def test_summary_rows_carry_sums_and_counts_not_means():
    """One part: every summary block's sum / count / n / first / last against pandas."""
    rng = np.random.default_rng(2)
    n = 4000
    step = np.sort(rng.integers(0, 300, n)) * 3
    df = pd.DataFrame({"step": step, "layer": np.where(rng.random(n) < 0.5, "x", "y"),
                       "filter": rng.integers(0, 4, n).astype(np.int32),
                       "rank": np.zeros(n, np.int16)})
    for v in VALUES:
        x = rng.random(n).astype(np.float32)
        x[rng.random(n) < 0.1] = np.nan
        df[v] = x
    import pyarrow as pa

    summary, (k_min, k_max) = build_filter_summary(pa.Table.from_pandas(df))
    s = summary.to_pandas()
    assert set(s.level) == {-1, *range(k_min, k_max + 1)}
    assert 2 ** k_min >= 4 * 3 and (df.step.max() >> k_max) - (df.step.min() >> k_max) <= 1
    for k in (k_min, k_max):
        d = df.assign(block=df.step.to_numpy() >> k)
        g = d.groupby(["layer", "filter", "block"])
        exp = pd.DataFrame({"n": g.size(), "first": g.step.min(), "last": g.step.max(),
                            "cos_prev_sum": g.cos_prev.sum(), "cos_prev_n": g.cos_prev.count()})
        at_k = s[s.level == k]
        got = at_k[at_k["filter"] >= 0].set_index(["layer", "filter", "block"]).sort_index()
        exp = exp.sort_index()
        np.testing.assert_array_equal(got[["n", "first", "last", "cos_prev_n"]].to_numpy(),
                                      exp[["n", "first", "last", "cos_prev_n"]].to_numpy())
        np.testing.assert_allclose(got["cos_prev_sum"], exp["cos_prev_sum"], rtol=1e-6)
        # filter -1: the whole layer per block
        gl = d.groupby(["layer", "block"])
        lay = at_k[at_k["filter"] == -1].set_index(["layer", "block"]).sort_index()
        np.testing.assert_array_equal(lay[["n", "first", "last"]].to_numpy(), pd.DataFrame(
            {"n": gl.size(), "first": gl.step.min(), "last": gl.step.max()}).to_numpy())
    bounds = s[s.level == -1].set_index("layer")
    assert bounds.loc["x", "first"] == df[df.layer == "x"].step.min()
    assert bounds.loc["y", "last"] == df[df.layer == "y"].step.max()


def test_compaction_replaces_and_removes_summaries(tmp_path):
    rng = np.random.default_rng(3)
    frames: list[pd.DataFrame] = []
    with cs.Run(tmp_path, "c", quiet=True) as run:
        for chunk in np.array_split(np.arange(10, 2000, 10), 10):
            _log(run, rng, chunk, {"l": 4}, frames, nan_share=0.0)
            run.flush()
        table_dir = run.path / TABLES_DIR / "watch_filters"
        compact_table(table_dir, min_parts=2, max_rows=400)
        first = {f.name for f in (table_dir / "_summary").glob("part-*.parquet")}
        assert first and all((table_dir / name).exists() for name in first)
        compact_table(table_dir, min_parts=2)  # merge the compacted parts again
        second = {f.name for f in (table_dir / "_summary").glob("part-*.parquet")}
        assert second and not (second & first)  # old summaries went with their parts
        assert {f.name for f in list_parts(table_dir).files} == second
        tops = {f.name for f in (table_dir / "_summary").glob("top-part-*.parquet")}
        assert tops == {"top-" + name for name in second}  # and their top-changed indexes
    df = pd.concat(frames, ignore_index=True)
    _check(cs.open_run(tmp_path / "c"), df, "l", "g_l2", 30)


def test_whole_buckets_come_from_the_summaries(mixed_log, monkeypatch):
    """A full-range query at a level the summaries hold reads raw rows only of the parts
    without a summary; the footer index points at exactly the rows of one level and layer."""
    from convscope.store.reader import RunReader
    from convscope.store.summary import open_summary

    reader, df, _ = mixed_log
    read: list[str] = []
    orig = RunReader._raw_rows

    def spy(self, files, *args, **kw):
        read.extend(f.name for f in files)
        return orig(self, files, *args, **kw)

    monkeypatch.setattr(RunReader, "_raw_rows", spy)
    _check(reader, df, "b.conv", "ratio", 20)
    table_dir = reader.path / TABLES_DIR / "watch_filters"
    summarised = {f.name for f in list_parts(table_dir).files if summary_file(f).is_file()}
    assert read and not (set(read) & summarised)
    sf = open_summary(summary_file(table_dir / sorted(summarised)[0]))
    key = next(iter(sf.ranges))
    level, rank, layer = key.split("|")
    rows = sf.rows(int(level), int(rank), layer, ["filter", "block", "level"])
    table = sf.pf.read().to_pandas()
    exp = table[(table.level == int(level)) & (table["rank"] == int(rank))
                & (table.layer == layer)]
    np.testing.assert_array_equal(rows["block"], exp.block.to_numpy())
    assert (rows["level"] == int(level)).all()


def _brute_top(df: pd.DataFrame, steps, k: int, rank: int) -> pd.DataFrame:
    d = df[(df["rank"] == rank) & df.step.isin(steps) & df.cos_prev.notna()]
    d = d.sort_values(["step", "cos_prev", "layer", "filter"], kind="stable")
    return d.groupby("step").head(k).reset_index(drop=True)


@pytest.mark.parametrize("k", [1, 5, 16, 17])
def test_top_filters_at_equals_brute_force_over_indexed_and_raw_parts(mixed_log, k):
    """Per step, the k lowest cos_prev over all layers: compacted parts answer from their
    top-changed index (k <= 16), the live parts raw, k = 17 all raw; same rows either way."""
    reader, df, steps = mixed_log
    rng = np.random.default_rng(k)
    pick = [int(s) for s in rng.choice(steps, 40, replace=False)] + [int(steps[0]) - 1]
    for rank in (0, 1):
        got = reader.top_filters_at(pick, k=k, rank=rank)
        exp = _brute_top(df, pick, k, rank)
        assert got["step"].tolist() == exp["step"].tolist()
        assert got["layer"].tolist() == exp["layer"].tolist()
        assert got["filter"].tolist() == exp["filter"].tolist()
        np.testing.assert_allclose(got["cos_prev"].to_numpy(dtype=float),
                                   exp["cos_prev"].to_numpy(dtype=float), rtol=1e-6)
        assert (got.groupby("step")["rank_in"].apply(list)
                == got.groupby("step")["rank_in"].apply(lambda r: list(range(1, len(r) + 1)))
                ).all()


def test_top_filters_at_reads_the_index_of_compacted_parts(mixed_log, monkeypatch):
    from convscope.formats.training_summary import top_file
    from convscope.store.reader import RunReader

    reader, df, steps = mixed_log
    seen: list[str] = []
    orig = RunReader._files_query

    def spy(self, sql, params, **files):
        for fs in files.values():
            seen.extend(f.name for f in fs)
        return orig(self, sql, params, **files)

    monkeypatch.setattr(RunReader, "_files_query", spy)
    reader.top_filters_at([int(s) for s in steps[:50]], k=10)
    table_dir = reader.path / TABLES_DIR / "watch_filters"
    files = list_parts(table_dir).files
    indexed = {f.name for f in files if top_file(f).is_file()}
    assert indexed and {"top-" + n for n in indexed} <= set(seen)
    assert not (indexed & set(seen))  # their raw rows were not read


def test_nan_rows_are_left_out_although_parquet_statistics_omit_nan(tmp_path):
    """Parquet min/max statistics leave NaN out; DuckDB's statistics propagation would then
    fold isnan() to false and let NaN rows (a filter's first snapshot) into the rankings."""
    n = 12
    cos = np.linspace(0.1, 0.9, n).astype(np.float32)
    cos[[2, 5, 7]] = np.nan
    with cs.Run(tmp_path, "nan", quiet=True) as run:
        run.log_rows("watch_filters", {
            "step": np.full(n, 10, dtype=np.int64), "layer": np.array(["l"] * n, dtype=object),
            "filter": np.arange(n, dtype=np.int32), "w_l2": np.ones(n, np.float32),
            "g_l2": np.ones(n, np.float32), "ratio": np.ones(n, np.float32), "cos_prev": cos,
            "rank": np.zeros(n, dtype=np.int16)})
    reader = cs.open_run(tmp_path / "nan")
    valid = [i for i in range(n) if not np.isnan(cos[i])]
    top = reader.top_filters_at([10], k=n)
    assert top["filter"].tolist() == valid and not top["cos_prev"].isna().any()
    changed = reader.top_changed_filters(10, k=n)
    assert changed["filter"].tolist() == valid
    assert reader.query("SELECT sum(isnan(cos_prev)::INT) AS c FROM watch_filters")[
        "c"].iloc[0] == 3
    assert reader.query("SELECT count(*) AS c FROM watch_filters WHERE NOT isnan(cos_prev)")[
        "c"].iloc[0] == n - 3


def test_top_changed_index_breaks_ties_by_layer_then_filter():
    """Equal ``cos_prev`` values: the per-part index keeps the k lowest by (cos_prev, layer,
    filter), the order the raw query documents, not whichever tied rows DuckDB meets first."""
    import pyarrow as pa

    from convscope.formats.training_summary import build_top_changed

    rows = [("b", 0, 0.5), ("a", 2, 0.5), ("c", 0, 0.5), ("a", 1, 0.5), ("b", 1, 0.1),
            ("a", 0, 0.5)]
    for order in (rows, rows[::-1], rows[2:] + rows[:2]):
        t = pa.table({"rank": [0] * 6, "step": [1] * 6, "layer": [r[0] for r in order],
                      "filter": [r[1] for r in order], "cos_prev": [r[2] for r in order]})
        got = [(r["layer"], r["filter"]) for r in build_top_changed(t, k=3).to_pylist()]
        assert got == [("b", 1), ("a", 0), ("a", 1)]
