"""Crafted run files cannot exhaust the server's CPU or memory (issue 12, red-team findings):
architecture records asking for huge models, sparse files declaring gigabytes, oversized or deeply
nested JSON, and a Live page callback given runs that do not exist or whose graph is damaged.

Oracles: the time a load takes (31.8 s for ``"blocks": [20000, 1, 1, 1]`` before the fix), the
server process's peak RSS from /proc (``VmHWM``; a sparse file read whole adds its declared size),
hand-made files whose declared sizes are known, and the HTTP status and text of real requests.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import convscope as cs
from convscope.errors import StoreError
from convscope.store import arrays
from convscope.store.arrays import MAX_LOAD_BYTES, array_path, load_array
from convscope.store.layout import DamagedFileError, read_json
from convscope.store.objects import MAX_OBJECT_BYTES, load_object

from .dash_http import call as dash_call
from .procmem import mem_mb, reset_peak

LAYER = "layer1.0.conv1"
GiB = 2**30


def _run(logdir: Path, name: str) -> Path:
    """A run the Live and Model pages show: graph, samples, feature maps, a safe checkpoint."""
    torch.manual_seed(0)
    model = cs.zoo.resnet(width=4).eval()
    x = torch.rand(3, 3, 32, 32)
    with cs.Run(logdir, name, quiet=True) as run:
        run.log_object("graph", "model", cs.model.graph(model, x[:1]).to_dict())
        run.log_feature_maps(model, x, layers=[LAYER])
        run.log_checkpoint(model)
    return run.path


def _sparse_npy(path: Path, shape: tuple[int, ...], dtype=np.float32) -> None:
    """An .npy file whose header declares ``shape`` but whose data is a hole (a few KB on disk)."""
    header = np.lib.format.header_data_from_array_1_0(np.empty(0, dtype=dtype))
    header["shape"] = shape
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        fh.truncate(fh.tell() + int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
    assert os.stat(path).st_blocks * 512 < 2**20 < os.stat(path).st_size


def _sparse(path: Path, size: int, head: bytes = b"") -> None:
    with open(path, "wb") as fh:
        fh.write(head)
        fh.truncate(size)


def _edit_arch(run: Path, **kwargs) -> None:
    p = run / "checkpoints" / "model.arch.json"
    doc = json.loads(p.read_text())
    doc["kwargs"] = {**doc["kwargs"], **kwargs}
    p.write_text(json.dumps(doc))






def _answer(status: int, body: bytes) -> str:
    """The callback's answer as plain JSON text (Dash escapes "/" as \\u002f)."""
    assert status == 200, body[-2000:]
    return json.dumps(json.loads(body))


# -- checkpoints ---------------------------------------------------------------------------------
def test_record_asking_for_a_huge_model_is_stopped_fast(tmp_path):
    run = _run(tmp_path, "r")
    _edit_arch(run, blocks=[20000, 1, 1, 1])
    t = time.monotonic()
    with pytest.raises(StoreError, match="far larger than its weights.*re-save"):
        cs.open_run(run).load_model()
    took = time.monotonic() - t
    print(f"refused in {took:.2f} s (31.8 s and +580 MB before)")
    assert took < 5
    # `convscope diagnose` takes the same path: a message, exit status 1 or 2, no traceback
    t = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "convscope", "diagnose", str(run)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "far larger than its weights" in out.stdout + out.stderr
    assert "Traceback" not in out.stderr and time.monotonic() - t < 60
    # arguments within the budget but not fitting the weights: the shape check names the fix
    _edit_arch(run, blocks=[2, 1, 1, 1])
    with pytest.raises(StoreError, match="do not fit.*re-save"):
        cs.open_run(run).load_model()
    _edit_arch(run, blocks=[1, 1, 1, 1])  # the record as saved: loads
    assert cs.open_run(run).load_model().conv1.out_channels == 4


@pytest.mark.parametrize("kwargs", [
    {"blocks": [10**7, 1, 1, 1]},
    {"num_classes": -(2**40)},
    {"width": float("inf")},
    {"name": "x" * 10_000},
    {"blocks": [[[[[1]]]]]},
    {"blocks": list(range(60)), "more": list(range(60)), "and": list(range(60)),
     "still": list(range(60)), "over": list(range(60))},
])
def test_unbounded_builder_arguments_are_refused(tmp_path, kwargs):
    run = _run(tmp_path, "r")
    _edit_arch(run, **kwargs)
    t = time.monotonic()
    with pytest.raises(StoreError, match="not allowed.*re-save"):
        cs.open_run(run).load_model()
    assert time.monotonic() - t < 5


def test_sparse_weights_file_is_refused_before_reading(tmp_path):
    if shutil.which("fallocate") is None:
        pytest.fail("util-linux's fallocate is needed to make a sparse file: apt-get install "
                    "util-linux")
    run = _run(tmp_path, "r")
    state = run / "checkpoints" / "model.state.pt"
    torch.save({"conv1.weight": torch.zeros(32 * 2**20)}, state)  # 128 MB of zeros ...
    subprocess.run(["fallocate", "--dig-holes", str(state)], check=True)  # ... made a hole
    if os.stat(state).st_blocks * 512 > 2**20:
        pytest.fail(f"the file system of {tmp_path} keeps zeros on disk: run the tests on ext4, "
                    "xfs or tmpfs")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(StoreError, match="sparse file.*re-save"):
        cs.open_run(run).load_model()
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 * 1024  # KB


# -- arrays, objects, run.json --------------------------------------------------------------------
def test_sparse_array_is_not_read_whole(tmp_path, monkeypatch):
    run = _run(tmp_path, "r")
    path = run / "arrays" / "samples" / "feature_maps.npy"
    _sparse_npy(path, (GiB // (3 * 32 * 32 * 4), 3, 32, 32))  # 1 GiB declared
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(StoreError, match=r"1,024 MB.*mmap=True"):
        load_array(run, "samples", "feature_maps")
    arr = load_array(run, "samples", "feature_maps", mmap=True)  # memory-mapped: fine
    assert GiB - 2**14 < arr.shape[0] * arr[0].nbytes <= GiB and float(arr[5].sum()) == 0.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 * 1024  # KB
    # the limit is on bytes: at it an array loads, one element more is refused
    assert MAX_LOAD_BYTES == 512 * 2**20
    monkeypatch.setattr(arrays, "MAX_LOAD_BYTES", 2**20)
    np.save(path, np.ones(2**18, dtype=np.float32))
    assert load_array(run, "samples", "feature_maps").sum() == 2**18
    np.save(path, np.ones(2**18 + 1, dtype=np.float32))
    with pytest.raises(StoreError, match="more than the 1 MB"):
        load_array(run, "samples", "feature_maps")
    # a header whose element count overflows int64 is damage, not a negative size
    with open(path, "wb") as fh:
        header = np.lib.format.header_data_from_array_1_0(np.empty(0, dtype=np.uint8))
        header["shape"] = (2**40, 2**40)
        np.lib.format.write_array_header_1_0(fh, header)
        fh.write(b"\0" * 64)
    with pytest.raises(StoreError, match="truncated"):
        load_array(run, "samples", "feature_maps", mmap=True)


def test_object_and_run_file_size_and_nesting(tmp_path):
    run = _run(tmp_path, "r")
    graph = run / "objects" / "graph" / "model.json"
    _sparse(graph, 512 * 2**20, b"[")
    t = time.monotonic()
    with pytest.raises(StoreError, match=r"512\.0 MB, more than the 8 MB.*delete the file"):
        load_object(run, "graph", "model")
    assert time.monotonic() - t < 1
    graph.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(StoreError, match="nested too deeply"):
        load_object(run, "graph", "model")
    graph.write_text(json.dumps({"a": "x" * (MAX_OBJECT_BYTES - 20)}))  # just under: read
    assert len(load_object(run, "graph", "model")["a"]) == MAX_OBJECT_BYTES - 20

    meta = run / "run.json"
    good = read_json(meta)
    assert good["name"] == "r"
    meta.write_text('{"config": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(DamagedFileError, match="nested too deeply"):
        read_json(meta)
    _sparse(meta, 64 * 2**20, b"{")
    with pytest.raises(ValueError, match="more than the"):  # callers treat it as damage
        read_json(meta)
    with pytest.raises(StoreError, match="unreadable"):
        print(cs.open_run(run).meta)


# -- over HTTP ------------------------------------------------------------------------------------
@pytest.mark.browser  # starts a real server
def test_crafted_runs_over_http_are_bounded(tmp_path, serve):
    logdir = tmp_path / "runs"
    base = _run(logdir, "good")
    for name in ("blocks", "sparse", "bigshape", "graphbomb", "deep", "zoombomb"):
        shutil.copytree(base, logdir / name)
    _edit_arch(logdir / "blocks", blocks=[20000, 1, 1, 1])
    _sparse_npy(logdir / "sparse" / "arrays" / "samples" / "feature_maps.npy",
                (GiB // (3 * 32 * 32 * 4), 3, 32, 32))
    _sparse_npy(logdir / "bigshape" / "arrays" / "samples" / "feature_maps.npy",
                (1, 3, 16384, 16384))
    _sparse(logdir / "graphbomb" / "objects" / "graph" / "model.json", 512 * 2**20, b"[")
    (logdir / "deep" / "objects" / "graph" / "model.json").write_text(
        "[" * 200_000 + "]" * 200_000)
    _sparse_npy(array_path(logdir / "zoombomb", "feature_maps", LAYER), (3, 4, 8192, 8192))
    srv = serve(logdir)
    pid = srv.worker_pids()[0]

    def grid(run: str, sample: int = 0) -> str:
        return _answer(*dash_call(srv.url, "live-grid", {
            "live-image.data": {"sample": sample}, "live-layer.value": LAYER,
            "live-run.value": run}, "live-image.data"))

    assert "channel_grid" in grid("good")  # model loaded, torch warm
    before = reset_peak(pid)

    t = time.monotonic()
    text = grid("blocks")
    assert "far larger than its weights" in text and "re-save" in text
    assert time.monotonic() - t < 10

    for _ in range(3):  # each used to add the declared 1 GiB
        assert "channel_grid" in grid("sparse", 1)  # one sample read from the map
    text = grid("bigshape")
    assert "not 3 samples of (3, 32, 32)" in text and "record the samples again" in text

    for run in ("graphbomb", "deep"):
        # the Model page reads the graph ...
        text = _answer(*dash_call(srv.url, "model-graph", {
            "model-run.value": run, "model-expanded.data": [], "model-size.value": "",
            "model-depth.value": 1, "model-selected.data": None}, "model-run.value"))
        assert "objects/graph/model.json" in text, text[-1500:]
        # ... and so does the Live page's layer list (no 500: run name checked, damage named)
        text = _answer(*dash_call(srv.url, "live-layer", {
            "live-run.value": run, "live-layer.value": None}, "live-run.value"))
        assert "objects/graph/model.json" in text, text[-1500:]
    assert ("more than the 8 MB" in _answer(*dash_call(srv.url, "live-layer", {
        "live-run.value": "graphbomb", "live-layer.value": None}, "live-run.value")))
    # the Model page's zoom on maps declaring 3 x 4 x 8192 x 8192 (800 MB): a strided view
    fig = {"layout": {"meta": {"h": 32, "w": 32, "n": 3, "c": 4, "order": [0, 1, 2, 3],
                               "channels": [0, 1, 2, 3]}}}
    status, body = dash_call(srv.url, "fm-zoom", {
        "fm-grid.clickData": {"points": [{"x": 40, "y": 1}]}, "fm-grid.figure": fig,
        "model-selected.data": LAYER, "model-run.value": "zoombomb"}, "fm-grid.clickData")
    zoom = json.loads(_answer(status, body))["response"]["fm-zoom"]["figure"]
    assert zoom["layout"]["meta"] == {"kind": "channel_zoom", "channel": 1}
    z = zoom["data"][0]["z"]
    rows = int(str(z["shape"]).split(",")[0]) if isinstance(z, dict) else len(z)
    assert rows == -(-8192 // 29)  # every 29th row: stride ceil(sqrt(3 * 8192**2 / 250e3))
    for bad in ({"h": 32, "w": 32, "n": 3, "c": 4, "order": ["0"], "channels": [0]},
                {"h": 32, "w": 32, "n": 3, "c": 4, "order": [99], "channels": [0] * 100}):
        status, body = dash_call(srv.url, "fm-zoom", {
            "fm-grid.clickData": {"points": [{"x": 1, "y": 1}]},
            "fm-grid.figure": {"layout": {"meta": bad}}, "model-selected.data": LAYER,
            "model-run.value": "zoombomb"}, "fm-grid.clickData")
        assert status in (200, 204) and b"Traceback" not in body
    peak = mem_mb(pid, "VmHWM")
    print(f"server RSS {before:.0f} MB before, peak {peak:.0f} MB over the crafted runs")
    assert peak - before < 200

    for bad in ("no-such-run", ["good"], {"a": 1}, 7, "../good"):
        text = _answer(*dash_call(srv.url, "live-layer", {
            "live-run.value": bad, "live-layer.value": None}, "live-run.value"))
        assert "Traceback" not in text
    text = _answer(*dash_call(srv.url, "live-layer", {
        "live-run.value": "good", "live-layer.value": ["x"]}, "live-run.value"))
    assert LAYER in text  # a well-formed answer for a real run
    text = _answer(*dash_call(srv.url, "live-run", {
        "run-select.value": {"x": 1}, "live-run.value": ["y"]}, "run-select.value"))
    assert "live-status" in text
