"""Damaged runs degrade gracefully: against a real server, every page's callbacks answer 200,
name the damaged file (relative to the run directory) and still show the undamaged data.

One small run records everything each page shows; copies of it are damaged in one way each
(truncated Parquet parts, a garbage run.json, garbage object files, 0-byte / truncated / missing
arrays, table directories that cannot be listed) and served together. Each page is driven by
POSTing its callbacks to ``/_dash-update-component`` in the order the browser would.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import convscope as cs
from convscope.errors import StoreError
from convscope.store.arrays import load_array, save_array
from convscope.store.objects import load_object, save_object

from .dash_http import DashClient

pytestmark = pytest.mark.browser  # starts a real server

FM_LAYER = "layer1.0.conv2"  # feature maps, preferred inputs and top crops
DIAG_LAYER = "layer1.0.relu1"  # a diagnosis view with maps, KDE and a parameter view
CLASSES = list(cs.data.class_names)


# -- the run ----------------------------------------------------------------------------------
def _record(logdir: Path) -> Path:
    torch.manual_seed(0)
    model = cs.zoo.resnet(width=4).eval()
    x, y, masks = cs.data.Shapes(n=4, split="test").tensors()
    with cs.Run(logdir, "intact", quiet=True, config={"class_names": CLASSES}) as run:
        for s in range(5):
            run.log_scalars(s, loss=1.0 / (s + 1))
        run.flush()  # a second scalars part, damaged below while the first stays readable
        for s in range(5):
            run.log_scalars(s, acc=s / 10)
        run.log_model(model, x, repeat=1)
        run.log_feature_maps(model, x, labels=y)
        run.log_embedding(torch.randn(30, 8), torch.arange(30) % 3, name="feats",
                          images=torch.rand(30, 3, 8, 8), class_names=["a", "b", "c"])
        run.log_preferred_inputs(model, [FM_LAYER], max_units=2, steps=2)
        run.log_top_examples(model, [FM_LAYER], x, k=2)
        run.log_attributions(model, x, labels=y, methods=["saliency", "grad_cam"],
                             class_names=CLASSES)
        run.log_attributions(model, x[:2], labels=y[:2], methods=["saliency"], key="second")
        run.log_diagnosis(model, x)
        run.log_diagnosis(model, x, key="again", views=False)
        trained = cs.zoo.resnet(width=4)
        run.watch(trained, every=1)
        opt = torch.optim.SGD(trained.parameters(), lr=0.01)
        for step in range(1, 4):
            out = trained(x)
            loss = torch.nn.functional.cross_entropy(out, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            run.log_validation(step, list(range(4)), y, out.detach())
        run.unwatch()
    return logdir / "intact"


def _parts(run: Path, table: str) -> list[Path]:
    return sorted((run / "tables" / table).glob("part-*.parquet"))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


ARRAYS = {  # the array files damaged in the array cases, relative to the run directory
    "fm": f"arrays/feature_maps/{FM_LAYER}.npy",
    "attr": "arrays/attributions/samples.saliency.npy",
    "diag": f"arrays/diag_maps/{DIAG_LAYER}.npy",
    "crops": f"arrays/top_crops/{FM_LAYER}.npy",
    "thumbs": "arrays/embedding_images/feats.npy",
}
OBJECTS = {
    "graph": "objects/graph/model.json",
    "attr": "objects/attributions/samples.json",
    "diag": "objects/diagnosis/model.json",
    "emb": "objects/embedding/feats.json",
    "profile": "objects/profile/model.json",
    "view": f"objects/diag_view/{DIAG_LAYER}.json",
}


def _damage(intact: Path, logdir: Path) -> dict[str, dict[str, str]]:
    """One copy of the run per kind of damage; returns ``{run: {what: damaged file}}``."""
    out: dict[str, dict[str, str]] = {}

    def copy(name: str) -> Path:
        dst = logdir / name
        shutil.copytree(intact, dst)
        return dst

    run = copy("parquet")
    out["parquet"] = {}
    for table in ("profile", "embedding", "validation", "attribution_metrics", "top_examples"):
        for part in _parts(run, table):  # every part: the table has no readable rows
            _truncate(part)
        out["parquet"][table] = f"tables/{table}/{part.name}"
    acc_part = _parts(run, "scalars")[-1]  # the part holding the acc rows
    _truncate(acc_part)
    out["parquet"]["scalars"] = f"tables/scalars/{acc_part.name}"

    run = copy("arrays-index")  # the arrays index: feature maps cannot be found
    for part in _parts(run, "arrays"):
        _truncate(part)
    out["arrays-index"] = {"arrays": f"tables/arrays/{part.name}"}

    run = copy("runjson")
    (run / "run.json").write_bytes(b"\x00garbage{not json")
    out["runjson"] = {"run": "run.json"}

    run = copy("objects")
    for rel in OBJECTS.values():
        (run / rel).write_bytes(b"{garbage: \xff")
    out["objects"] = dict(OBJECTS)

    for name, how in (("arrays0", "zero"), ("arrays-cut", "cut"), ("arrays-gone", "gone")):
        run = copy(name)
        for rel in ARRAYS.values():
            f = run / rel
            if how == "zero":
                f.write_bytes(b"")
            elif how == "cut":
                _truncate(f)
            else:
                f.unlink()
        out[name] = dict(ARRAYS)

    run = copy("tabledirs")  # tests run as root, where chmod 000 does not block reads
    shutil.rmtree(run / "tables" / "scalars")
    (run / "tables" / "scalars").write_text("not a directory")
    shutil.rmtree(run / "tables" / "profile")
    os.symlink(run / "tables" / "no-such-dir", run / "tables" / "profile")
    shutil.rmtree(run / "tables" / "watch_layers")
    (run / "tables" / "watch_layers").write_bytes(b"")
    out["tabledirs"] = {"scalars": "tables/scalars", "profile": "tables/profile",
                        "watch_layers": "tables/watch_layers"}
    return out


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("logdir")
    intact = _record(logdir)
    _record_big(logdir)
    return logdir, _damage(intact, logdir)


def _record_big(logdir: Path) -> None:
    """ResNet-50-sized answers: a layer of 2048 channels of 7x7 for 8 images, 50k points."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2048, 3, stride=32, padding=1),
                                torch.nn.ReLU()).eval()
    with cs.Run(logdir, "big", quiet=True) as run:
        x = torch.rand(8, 3, 224, 224)
        run.log_model(model, x, profile=False)
        run.log_feature_maps(model, x, layers=["0"], max_channels=2048)
        run.log_embedding(torch.randn(50_000, 8), torch.arange(50_000) % 10, name="feats")


@pytest.fixture(scope="module")
def client(damaged, module_serve):
    server = module_serve(damaged[0], refresh_ms=600_000)
    return DashClient(server.url)


def _get(resp: dict, cid: str, prop: str):
    return resp.get(cid, {}).get(prop)


# -- each page, driven like the browser does -----------------------------------------------------
def drive_runs(c: DashClient, run: str) -> str:
    _, r = c.call("runs-table.children", {"run-select.value": [run]})
    rows = r["runs-table"]["children"]["props"]["children"][1]["props"]["children"]
    (row,) = [t for t in rows if t["props"].get("data-run") == run]  # that run's row only
    return json.dumps(row)


def drive_scalars(c: DashClient, run: str) -> str:
    sel = {"run-select.value": [run], "scalars-smoothing.value": 0, "scalars-x.value": "step"}
    _, tags = c.call("scalars-tags.options", sel)
    _, fig = c.call("scalars-graph.figure", sel)
    return json.dumps([tags, fig])


def drive_model(c: DashClient, run: str) -> str:
    texts = []
    _, r = c.call("model-run.options", {"run-select.value": [run]})
    texts.append(r)
    value = _get(r, "model-run", "value")
    if value is None:
        return json.dumps(texts)
    _, r = c.call("model-graph.elements", {"model-run.value": value, "model-expanded.data": [],
                                           "model-size.value": "time_share",
                                           "model-depth.value": 99})
    texts.append(r)
    _, r = c.call("model-panel.children", {"model-selected.data": FM_LAYER,
                                           "model-run.value": value})
    texts.append(r)
    st = {"model-selected.data": FM_LAYER, "model-run.value": value}
    _, r = c.call("fi-pane.figure", {**st, "fi-unit.value": 0})
    texts.append(r)
    _, r = c.call("fm-grid.figure", {**st, "fm-order.value": "mean"})
    texts.append(r)
    meta = {"h": 8, "w": 8, "n": 4, "c": 4, "order": [0, 1, 2, 3], "channels": [0, 1, 2, 3]}
    _, r = c.call("fm-zoom.figure", {**st, "fm-grid.clickData": {"points": [{"x": 1, "y": 1}]},
                                     "fm-grid.figure": {"layout": {"meta": meta}}})
    texts.append(r)
    _, r = c.call("model-panel.children", {"model-selected.data": DIAG_LAYER,
                                           "model-run.value": value})
    texts.append(r)
    return json.dumps(texts)


def drive_attribution(c: DashClient, run: str) -> str:
    texts = []
    _, r = c.call("attr-run.options", {"run-select.value": [run]})
    texts.append(r)
    value = _get(r, "attr-run", "value")
    if value is None:
        return json.dumps(texts)
    _, r = c.call("attr-key.options", {"attr-run.value": value})
    texts.append(r)
    for key in ("samples", "second"):
        _, r = c.call("attr-methods.options", {"attr-run.value": value, "attr-key.value": key})
        texts.append(r)
        _, r = c.call("attr-gallery.figure", {
            "attr-run.value": value, "attr-key.value": key, "attr-opacity.value": 0.5,
            "attr-methods.value": ["saliency", "grad_cam"], "attr-page.value": 1})
        texts.append(r)
    return json.dumps(texts)


def drive_diagnosis(c: DashClient, run: str) -> str:
    texts = []
    _, r = c.call("diag-run.options", {"run-select.value": [run]})
    texts.append(r)
    value = _get(r, "diag-run", "value")
    if value is None:
        return json.dumps(texts)
    _, r = c.call("diag-key.options", {"diag-run.value": value})
    texts.append(r)
    for key in ("model", "again"):
        _, r = c.call("diag-findings.children", {"diag-run.value": value, "diag-key.value": key})
        texts.append(r)
    for layer in (DIAG_LAYER, "layer1.0.conv1"):  # an output view, a parameter view
        _, r = c.call("diag-view.figure", {"diag-layer.value": layer, "diag-run.value": value})
        texts.append(r)
    return json.dumps(texts)


def drive_resources(c: DashClient, run: str) -> str:
    texts = []
    _, r = c.call("res-run.options", {"run-select.value": [run]})
    texts.append(r)
    _, r = c.call("res-rings.figure", {"res-run.value": run, "res-parent.data": ""})
    texts.append(r)
    _, r = c.call("res-parent.data", {"res-run.value": run, "res-parent.data": "",
                                      "res-rings.clickData": {"points": [{"customdata":
                                                                          ["layer1"]}]}},
                  changed="res-rings.clickData")
    texts.append(r)
    return json.dumps(texts)


def drive_embedding(c: DashClient, run: str) -> str:
    texts = []
    _, r = c.call("emb-run.options", {"run-select.value": [run]})
    texts.append(r)
    _, r = c.call("emb-name.options", {"emb-run.value": run})
    texts.append(r)
    _, r = c.call("emb-graph.figure", {"emb-run.value": run, "emb-name.value": "feats"})
    texts.append(r)
    _, r = c.call("emb-tip.show", {"emb-run.value": run, "emb-name.value": "feats",
                                   "emb-graph.hoverData": {"points": [{"customdata": 3,
                                                                       "bbox": {}}]}})
    texts.append(r)
    return json.dumps(texts)


def drive_training(c: DashClient, run: str) -> str:
    texts = []
    _, r = c.call("trn-run.options", {"run-select.value": [run]})
    texts.append(r)
    _, r = c.call("trn-validation.figure", {"trn-run.value": run, "trn-k.value": 2,
                                            "trn-threshold.value": 1})
    texts.append(r)
    _, r = c.call("trn-layers.figure", {"trn-run.value": run, "trn-stat.value": "w_l2"})
    texts.append(r)
    layers = _get(r, "trn-filter-layer", "options") or []
    _, r = c.call("trn-filters.figure", {"trn-run.value": run, "trn-filter-value.value": "cos_prev",
                                         "trn-filter-layer.value": layers[0] if layers else
                                         "conv1"})
    texts.append(r)
    return json.dumps(texts)


PAGES = {"runs": drive_runs, "scalars": drive_scalars, "model": drive_model,
         "attribution": drive_attribution, "diagnosis": drive_diagnosis,
         "resources": drive_resources, "embedding": drive_embedding, "training": drive_training}

# What each page shows of an intact run (a fragment of its callbacks' answers that only
# rendered data produces).
GALLERY, GRID, PREFERRED = ('"kind": "attribution_gallery"', '"kind": "feature_map_grid"',
                            '"kind": "preferred_grid"')
PARAMS = "KDE of each output's weights"
INTACT = {
    "runs": "scalars (10 rows)",
    "scalars": '"tag": "loss"',
    "model": GRID,
    "attribution": GALLERY,
    "diagnosis": "diag-summary",
    "resources": '"kind": "resource_rings"',
    "embedding": '"type": "scatter3d"',
    "training": '"kind": "layers"',
}


def test_intact_run_shows_everything_and_no_damage(client):
    for page, drive in PAGES.items():
        text = drive(client, "intact")
        assert INTACT[page] in text, page
        assert "damage-notice" not in text and "Damaged files" not in text, page
        assert "could not show" not in text and "is damaged" not in text, page


# Which damaged files each page must name, and what it must still show, per damaged run.
EXPECT = {
    "parquet": {
        "runs": (["scalars", "profile", "embedding", "validation"], ["scalars (5 rows)"]),
        "scalars": (["scalars"], ['"tag": "loss"']),
        "model": (["profile", "top_examples"], ["Conv2d", GRID, PREFERRED]),
        "attribution": (["attribution_metrics"], [GALLERY]),
        "resources": (["profile"], []),
        "embedding": (["embedding"], []),
        "training": (["validation"], ['"kind": "layers"']),
        "diagnosis": ([], ["diag-summary", PARAMS]),
    },
    "arrays-index": {
        "model": (["arrays"], ["Conv2d"]),
    },
    "runjson": {page: (["run"], [INTACT[page]]) for page in PAGES},
    "objects": {
        "model": (["graph"], []),
        "attribution": (["attr"], [GALLERY]),  # the second set still renders
        "diagnosis": (["diag", "view"], ["diag-summary", PARAMS]),
        "embedding": (["emb"], ["item 3", '"type": "scatter3d"']),
        "resources": (["profile"], ['"kind": "resource_rings"']),
    },
    "tabledirs": {
        "runs": (["scalars", "profile", "watch_layers"], []),
        "scalars": (["scalars"], []),
        "resources": (["profile"], []),
        "model": (["profile"], ["Conv2d", GRID]),
        "training": (["watch_layers"], ['"kind": "validation"']),
    },
}
for _name in ("arrays0", "arrays-cut", "arrays-gone"):
    EXPECT[_name] = {
        "model": (["fm", "crops"], ["Conv2d", PREFERRED]),
        "attribution": (["attr"], [GALLERY, "Grad-CAM"]),
        "diagnosis": (["diag"], ["diag-summary", PARAMS]),
        "embedding": (["thumbs"], ["item 3", '"type": "scatter3d"']),
    }

CASES = [(run, page) for run, pages in EXPECT.items() for page in pages]


@pytest.mark.parametrize(("run", "page"), CASES, ids=[f"{r}-{p}" for r, p in CASES])
def test_damaged_run_page_names_the_file_and_shows_the_rest(damaged, client, run, page):
    _, files = damaged
    names, shown = EXPECT[run][page]
    text = PAGES[page](client, run)  # asserts every callback answered 200 (or 204)
    for what in names:
        assert files[run][what] in text, (run, page, files[run][what], text[:3000])
    for fragment in shown:
        assert fragment in text, (run, page, fragment)
    if names:
        assert "no scalars recorded yet" not in text and "no profile recorded yet" not in text


@pytest.mark.parametrize("run", sorted(EXPECT))
def test_every_page_answers_on_every_damaged_run(client, run):
    for drive in PAGES.values():
        drive(client, run)  # a 500 fails inside DashClient.call


# -- the loaders ---------------------------------------------------------------------------------
def test_load_array_names_the_file_and_the_problem(tmp_path):
    path, _ = save_array(tmp_path, "maps", "a.b", np.arange(600, dtype=np.float32).reshape(6, 100))
    raw = path.read_bytes()
    assert load_array(tmp_path, "maps", "a.b").sum() == sum(range(600))
    cases = {b"": "empty (0 bytes)", raw[: len(raw) // 2]: "truncated (1,264 of 2,528 bytes)",
             raw[:20]: "header", b"just some text": "not an .npy file"}
    for data, why in cases.items():
        path.write_bytes(data)
        for mmap in (False, True):
            with pytest.raises(StoreError, match="arrays/maps/a.b.npy") as err:
                load_array(tmp_path, "maps", "a.b", mmap=mmap)
            assert why in str(err.value) and "record it again" in str(err.value)
    path.unlink()
    with pytest.raises(StoreError, match=r"arrays/maps/a.b.npy is missing"):
        load_array(tmp_path, "maps", "a.b")


def test_load_array_never_unpickles(tmp_path):
    path, _ = save_array(tmp_path, "maps", "x", np.zeros(3))
    marker = tmp_path / "pwned"
    import io

    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    buf = io.BytesIO()
    np.save(buf, np.array([Boom()], dtype=object), allow_pickle=True)
    path.write_bytes(buf.getvalue())
    with pytest.raises(StoreError, match="never unpickles"):
        load_array(tmp_path, "maps", "x")
    with pytest.raises(StoreError, match="never unpickles"):
        load_array(tmp_path, "maps", "x", mmap=True)
    import pickle

    path.write_bytes(pickle.dumps(Boom()))  # a bare pickle: np.load would unpickle it
    with pytest.raises(StoreError, match="not an .npy file"):
        load_array(tmp_path, "maps", "x")
    assert not marker.exists()


def test_load_object_names_the_file_and_the_problem(tmp_path):
    path = save_object(tmp_path, "graph", "model", {"nodes": [1]})
    assert load_object(tmp_path, "graph", "model") == {"nodes": [1]}
    for data, why in {b"": "empty (0 bytes)", b'{"nodes": [1': "not valid JSON",
                      b"\xff\xfe": "not UTF-8", b" \n": "blank"}.items():
        path.write_bytes(data)
        with pytest.raises(StoreError, match="objects/graph/model.json is damaged") as err:
            load_object(tmp_path, "graph", "model")
        assert why in str(err.value)
    path.unlink()
    with pytest.raises(StoreError, match="objects/graph/model.json is missing"):
        load_object(tmp_path, "graph", "model")


# -- bounded answers -------------------------------------------------------------------------------
def test_answers_for_a_large_run_are_bounded_and_say_what_they_leave_out(client):
    from convscope.app.pages import embedding, model

    st, r = client.call("model-panel.children", {"model-selected.data": "0",
                                                 "model-run.value": "big"})
    text = json.dumps(r)
    assert len(text) < 2_000_000
    assert f"showing {model.MAX_GRID_CHANNELS} of 2048 stored channels" in text
    grid = _find(r, "fm-grid")["props"]["figure"]
    assert grid["layout"]["meta"]["c"] == model.MAX_GRID_CHANNELS
    assert len(grid["layout"]["meta"]["channels"]) == 2048  # clicks map to stored columns
    # a click on the last shown column zooms that stored channel (mean order reorders them)
    st, r = client.call("fm-grid.figure", {"model-selected.data": "0", "model-run.value": "big",
                                           "fm-order.value": "mean"})
    meta = r["fm-grid"]["figure"]["layout"]["meta"]
    last = meta["order"][-1]
    st, z = client.call("fm-zoom.figure", {
        "model-selected.data": "0", "model-run.value": "big",
        "fm-grid.clickData": {"points": [{"x": (meta["c"] - 1) * (meta["w"] + 1), "y": 0}]},
        "fm-grid.figure": {"layout": {"meta": meta}}})
    assert z["fm-zoom"]["figure"]["layout"]["meta"]["channel"] == meta["channels"][last]

    st, r = client.call("emb-graph.figure", {"emb-run.value": "big", "emb-name.value": "feats"})
    text = json.dumps(r)
    assert len(text) < 1_000_000
    step = -(-50_000 // embedding.MAX_POINTS)  # every step-th item is drawn
    shown = len(range(0, 50_000, step))
    assert shown <= embedding.MAX_POINTS
    assert f"Showing {shown:,} of 50,000 points (one item in {step})" in text
    n = sum(len(t["customdata"]) if isinstance(t["customdata"], list) else
            len(__import__("base64").b64decode(t["customdata"]["bdata"])) //
            np.dtype(t["customdata"]["dtype"]).itemsize
            for t in r["emb-graph"]["figure"]["data"])
    assert n == shown


def _find(tree, cid):
    if isinstance(tree, dict):
        if tree.get("props", {}).get("id") == cid:
            return tree
        for v in tree.values():
            if (hit := _find(v, cid)) is not None:
                return hit
    elif isinstance(tree, list):
        for v in tree:
            if (hit := _find(v, cid)) is not None:
                return hit
    return None
