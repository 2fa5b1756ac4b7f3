"""The analysis-side formats (``convscope.formats.attribution``, ``.diagnosis``, ``.training``):
``load(write(x)) == x`` through a real run directory, the committed 0.1.0 fixture read through
them, the correlation view's reduced read against ``track.correlate`` on the whole table, and the
rule that only ``formats/`` knows these concerns' tables and kinds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import convscope as cs
from convscope.errors import StoreError
from convscope.formats import attribution as fa
from convscope.formats import diagnosis as fd
from convscope.formats import training as ft
from convscope.track import correlate

SRC = Path(__file__).resolve().parents[1] / "src" / "convscope"
FIXTURE = Path(__file__).parent / "fixtures" / "logdir-0.1.0" / "intact"


def _grid(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Values in [0, 1] on a 1/64 grid: exact in float16, so the stored copy equals them."""
    return (rng.integers(0, 65, size=shape) / 64).astype(np.float32)


# -- attribution -------------------------------------------------------------------------------
def _attributions(key: str, n: int = 5) -> fa.Attributions:
    rng = np.random.default_rng(len(key))
    methods = ["saliency", "grad_cam"]
    return fa.Attributions(
        key=key, images=_grid(rng, (n, 3, 6, 7)),
        maps={m: _grid(rng, (n, 6, 7)) for m in methods},
        labels=np.array([0, 2, -1, 1, 2][:n], dtype=np.int64),
        target=np.array([1, 2, 0, 1, 0][:n], dtype=np.int64),
        pred=np.array([1, 2, 0, 0, 0][:n], dtype=np.int64),
        prob=rng.random(n).astype(np.float32),
        drop={m: rng.random(n).astype(np.float32) for m in methods},
        increase={m: rng.random(n) > 0.5 for m in methods},
        pointing={"grad_cam": rng.random(n) > 0.5},
        skipped={"cam": "no global pooling"}, seconds={"saliency": 0.25, "grad_cam": 1.5},
        layer="layer3", class_names=["circle", "square", "star"], has_masks=True)


def _assert_same_attributions(got: fa.Attributions, want: fa.Attributions) -> None:
    assert got.key == want.key and got.methods == want.methods
    assert got.images.dtype == np.float16
    np.testing.assert_array_equal(got.images.astype(np.float32), want.images)
    for m in want.methods:
        assert got.maps[m].dtype == np.float16
        np.testing.assert_array_equal(got.maps[m].astype(np.float32), want.maps[m])
        np.testing.assert_array_equal(got.drop[m], want.drop[m])
        np.testing.assert_array_equal(got.increase[m], want.increase[m])
    for name in ("labels", "target", "pred", "prob"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
    assert set(got.pointing) == set(want.pointing)
    for m, hits in want.pointing.items():
        np.testing.assert_array_equal(got.pointing[m].astype(bool), hits)
    assert (got.skipped, got.seconds, got.layer, got.class_names, got.has_masks) == \
        (want.skipped, want.seconds, want.layer, want.class_names, want.has_masks)


@pytest.mark.parametrize("key", ["samples", "my set/1"])
def test_attribution_round_trip(tmp_path, key):
    want = _attributions(key)
    with cs.Run(tmp_path, "r", quiet=True) as run:
        fa.write(run, want)
        fa.write(run, _attributions("other", n=3))  # a second set: rows kept apart by key
    reader = cs.open_run(tmp_path / "r")
    _assert_same_attributions(fa.load(reader, key), want)
    assert sorted(m.key for m in fa.infos(reader)) == sorted([key, "other"])
    # the contract: one metrics row per (method, image), the maps under <key>.<method>
    rows = fa.metrics(reader, key)
    assert len(rows) == 2 * 5 and set(rows["key"]) == {key}
    assert rows[rows["method"] == "saliency"]["pointing_hit"].isna().all()
    assert fa.maps(reader, key, "grad_cam").shape == (5, 6, 7)
    info = fa.find(reader, key)
    assert info.cam_layer == fa.CAM_LAYER and info.n == 5 and info.labels == [0, 2, -1, 1, 2]


def test_attribution_of_a_computed_set_reads_back_as_computed(tmp_path):
    from convscope.explain.dataset import attribute_all
    from convscope.record.attribution import store_attributions

    torch.manual_seed(0)
    model = cs.zoo.resnet(width=4).eval()
    x, y = torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    result = attribute_all(model, x, labels=y, methods=["saliency", "grad_cam"],
                           keep_images=True, quiet=True)
    with cs.Run(tmp_path, "r", quiet=True) as run:
        store_attributions(run, result, key="k", class_names=list("abcdefghij"))
    got = fa.load(cs.open_run(tmp_path / "r"), "k")
    np.testing.assert_array_equal(got.images, result.images.numpy().astype(np.float16))
    for m in ("saliency", "grad_cam"):
        np.testing.assert_array_equal(got.maps[m], result.maps[m].numpy().astype(np.float16))
        np.testing.assert_array_equal(got.drop[m], result.drop[m].float().numpy())
    np.testing.assert_array_equal(got.pred, result.pred.numpy())
    np.testing.assert_array_equal(got.prob, result.prob.float().numpy())
    assert got.layer == result.layer and got.class_names == list("abcdefghij")


def test_attribution_damaged_description_names_the_file(tmp_path):
    with cs.Run(tmp_path, "r", quiet=True) as run:
        fa.write(run, _attributions("samples"))
        run.log_object(fa.SET_KIND, "samples", {"methods": ["saliency"]})  # no key
    reader = cs.open_run(tmp_path / "r")
    with pytest.raises(StoreError, match=r"objects/attributions/samples\.json is damaged"):
        fa.info(reader, "samples")
    with pytest.raises(StoreError, match="record the attributions again"):
        fa.load(reader, "samples")


def test_log_attributions_passes_quiet_through(tmp_path, monkeypatch):
    import convscope.record.attribution as rec

    seen = []

    def fake(model, images, *, quiet, **kwargs):
        seen.append(quiet)
        raise StoreError("stop here")

    monkeypatch.setattr(rec, "attribute_all", fake)
    with cs.Run(tmp_path, "r", quiet=True) as run:
        for quiet in (None, False, True):
            with pytest.raises(StoreError, match="stop here"):
                run.log_attributions(torch.nn.Identity(), torch.rand(1, 3, 4, 4), quiet=quiet)
    assert seen == [True, False, True]  # None: the run's setting (quiet=True)


# -- diagnosis ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def diagnosed(tmp_path_factory):
    torch.manual_seed(0)
    model = cs.zoo.resnet(width=4).eval()
    report = cs.diagnose(model, torch.rand(4, 3, 16, 16), views=True, quiet=True)
    root = tmp_path_factory.mktemp("diag")
    with cs.Run(root, "r", quiet=True) as run:
        fd.write(run, report, "model")
    return report, cs.open_run(root / "r")


def test_diagnosis_round_trip(diagnosed):
    report, reader = diagnosed
    got = fd.load(reader, "model")
    assert got.report == json.loads(json.dumps(report.to_dict()))
    assert cs.diagnose.Report.from_dict(got.report).to_text() == report.to_text()
    want = report.to_frame()
    assert got.findings["code"].tolist() == want["code"].tolist()
    assert got.findings["order"].tolist() == list(range(len(want)))
    assert [json.loads(e) for e in got.findings["evidence"]] == \
        [json.loads(e) for e in want["evidence"]]
    assert got.layers["name"].tolist() == report.layers_frame()["name"].tolist()
    assert set(got.views) == set(report.output_views) and got.views
    for name, view in report.output_views.items():
        d = view.to_dict()
        np.testing.assert_array_equal(got.views[name].data, d["data"].astype(np.float16))
        np.testing.assert_array_equal(got.views[name].density,
                                      np.asarray(d["kde"]["density"], dtype=np.float32))
        assert got.views[name].meta["channels"] == d["channels"].tolist()
        assert "condensed" not in got.views[name].meta["clustering"]
        assert got.views[name].meta["key"] == "model"
    assert set(got.param_views) == set(report.param_views) and got.param_views
    for name, view in report.param_views.items():
        d = view.to_dict()
        np.testing.assert_array_equal(got.param_views[name].data,
                                      np.asarray(d["grid"], dtype=np.float32))
        assert got.param_views[name].meta["rows"] == d["rows"].tolist()


def test_diagnosis_views_of_a_layer_and_its_parameters(diagnosed):
    report, reader = diagnosed
    relu = next(n for n in report.output_views if n.endswith("relu1"))
    block = relu.rsplit(".", 1)[0]
    assert relu in fd.view_layers(reader)
    assert fd.has_output_view(reader, relu) and not fd.has_param_view(reader, relu)
    # a block's activation has no parameters: the view of its parent module is not one either
    assert fd.param_view_for(reader, relu) == (block if block in report.param_views else None)
    conv = next(iter(report.param_views))
    assert fd.param_view_for(reader, conv) == conv
    assert fd.param_view(reader, conv).name == conv


def test_diagnosis_report_that_is_not_a_dict_is_named(tmp_path):
    with cs.Run(tmp_path, "r", quiet=True) as run:
        run.log_object(fd.REPORT_KIND, "model", [1, 2])
    reader = cs.open_run(tmp_path / "r")
    assert fd.keys(reader) == ["model"]
    with pytest.raises(fd.NotAReportError, match=r"objects/diagnosis/model\.json is damaged"):
        fd.report_dict(reader, "model")


def test_sample_inputs_are_the_feature_maps_samples(tmp_path):
    x = torch.rand(3, 3, 16, 16)
    with cs.Run(tmp_path, "r", quiet=True) as run:
        assert fd.sample_inputs(run.reader()) is None
        run.log_feature_maps(cs.zoo.resnet(width=4).eval(), x)
    got = fd.sample_inputs(cs.open_run(tmp_path / "r"))
    np.testing.assert_array_equal(got, x.numpy().astype(np.float16).astype(np.float32))


# -- training ----------------------------------------------------------------------------------
def test_validation_round_trip_against_a_hand_built_matrix(tmp_path):
    # step 10: ids 7, 3, 5 (registered at positions 0, 1, 2); step 20: ids 5, 8 (8 -> 3), not
    # consecutive positions (2, 3 are, so: 3, 2 in that order are not); step 30: all four
    calls = [(10, [7, 3, 5], [1, 0, 2], [1, 1, 2]),
             (20, [8, 5], [0, 2], [0, 0]),
             (30, [3, 7, 5, 8], [0, 1, 2, 0], [0, 1, 2, 1])]
    with cs.Run(tmp_path, "r", quiet=True) as run:
        writer = ft.ValidationWriter(run)
        for step, ids, labels, pred in calls[:2]:
            writer.write(step, 0, np.array(ids), np.array(labels), np.array(pred))
    with cs.Run(tmp_path, "r", quiet=True, resume=True) as run:  # positions read back
        step, ids, labels, pred = calls[2]
        ft.ValidationWriter(run, run.reader()).write(step, 0, np.array(ids), np.array(labels),
                                                     np.array(pred))
    vm = ft.load_validation(cs.open_run(tmp_path / "r"))
    np.testing.assert_array_equal(vm.steps, [10, 20, 30])
    np.testing.assert_array_equal(vm.ids, [7, 3, 5, 8])
    np.testing.assert_array_equal(vm.labels, [1, 0, 2, 0])
    known = [[1, 1, 1, 0], [0, 0, 1, 1], [1, 1, 1, 1]]
    pred = [[1, 1, 2, -1], [-1, -1, 0, 0], [1, 0, 2, 1]]
    np.testing.assert_array_equal(vm.known, np.array(known, dtype=bool))
    np.testing.assert_array_equal(vm.pred, pred)
    np.testing.assert_array_equal(vm.correct, (np.array(pred) == vm.labels) & vm.known)
    rows = cs.open_run(tmp_path / "r").table(ft.VALIDATION_TABLE).sort_values("step")
    assert rows["pos0"].tolist() == [0, -1, -1]  # only the first call is consecutive


def test_validation_writer_refuses_repeated_ids(tmp_path):
    with cs.Run(tmp_path, "r", quiet=True) as run:
        with pytest.raises(cs.ConvscopeError, match="unique"):
            ft.ValidationWriter(run).write(1, 0, np.array([1, 1]), np.array([0, 0]),
                                           np.array([0, 0]))


def test_watch_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    layers = ["conv1", "fc"]
    written_l, written_f = [], []
    with cs.Run(tmp_path, "r", quiet=True) as run:
        for step in (1, 2, 3):
            lc = {"step": np.full(2, step, dtype=np.int64),
                  "layer": np.array(layers, dtype=object)}
            for c in ft.LAYER_COLUMNS:
                lc[c] = rng.random(2).astype(np.float32)
            fc = {"step": np.full(6, step, dtype=np.int64),
                  "layer": np.repeat(layers, 3).astype(object),
                  "filter": np.tile(np.arange(3, dtype=np.int32), 2)}
            for c in ft.FILTER_COLUMNS:
                fc[c] = rng.random(6).astype(np.float32)
            ft.write_watch(run, lc, fc, rank=2)
            written_l.append(pd.DataFrame(lc))
            written_f.append(pd.DataFrame(fc))
    got = ft.load_watch(cs.open_run(tmp_path / "r"))
    want_l = pd.concat(written_l, ignore_index=True)
    want_f = pd.concat(written_f, ignore_index=True)
    assert (got.layers["rank"] == 2).all() and (got.filters["rank"] == 2).all()
    for g, w in ((got.layers, want_l), (got.filters, want_f)):
        for c in w.columns:
            np.testing.assert_array_equal(g[c].to_numpy(), w[c].to_numpy(), err_msg=c)


@pytest.mark.parametrize("k", [1, 3, 10])
def test_correlation_from_the_reduced_read_equals_correlate_on_the_whole_table(tmp_path, k):
    rng = np.random.default_rng(k)
    layers = ["a.conv", "b.conv", "c.fc"]  # written in name order: ties agree on both sides
    steps = np.arange(5, 105, 5)  # recorded filter steps 5, 10, ..., 100
    frames = []
    with cs.Run(tmp_path, "r", quiet=True) as run:
        for s in steps:
            cos = np.round(rng.random(12), 1).astype(np.float32)  # many ties
            if s == 5:
                cos[:] = np.nan  # the first snapshot has no previous one
            fc = {"step": np.full(12, s, dtype=np.int64),
                  "layer": np.repeat(layers, 4).astype(object),
                  "filter": np.tile(np.arange(4, dtype=np.int32), 3),
                  "w_l2": np.ones(12, np.float32), "g_l2": np.ones(12, np.float32),
                  "ratio": np.ones(12, np.float32), "cos_prev": cos}
            lc = {"step": np.full(3, s, dtype=np.int64), "layer": np.array(layers, dtype=object)}
            lc.update({c: np.ones(3, np.float32) for c in ft.LAYER_COLUMNS})
            ft.write_watch(run, lc, fc, rank=0)
            frames.append(pd.DataFrame(fc))
    reader = cs.open_run(tmp_path / "r")
    whole = pd.concat(frames, ignore_index=True)
    # before the first snapshot, on a recorded step, between two, and after the last
    anomalies = pd.DataFrame({"step": [3, 10, 10, 12, 47, 100, 130],
                              "class": [0, 1, 2, 1, 0, 2, 1]})
    near = ft.filter_changes_near(reader, anomalies, k=k)
    assert len(near.dropna()) <= k * 5  # at most k rows at each of the 5 covering steps
    with pytest.warns(UserWarning, match="after the last recorded"):
        want = correlate(anomalies, whole, top=k, scope="overall")
    with pytest.warns(UserWarning, match="after the last recorded"):
        got = correlate(anomalies, near, top=k, scope="overall")
    assert len(want) and set(want["step"]) == {10, 12, 47, 100}
    pd.testing.assert_frame_equal(got, want, check_dtype=False)


def test_correlation_read_without_anomalies_or_filters(tmp_path):
    with cs.Run(tmp_path, "r", quiet=True):
        pass
    reader = cs.open_run(tmp_path / "r")
    near = ft.filter_changes_near(reader, [10, 20])
    assert list(near.columns) == ["step", "layer", "filter", "cos_prev"] and near.empty
    assert correlate([10, 20], near, top=10, scope="overall").empty


def test_most_changed_rows_stays_importable_from_the_store():
    from convscope.store.training import TrainingQueries, ValidationMatrix, most_changed_rows

    assert most_changed_rows is ft.most_changed_rows
    assert ValidationMatrix is ft.ValidationMatrix
    assert issubclass(cs.store.RunReader, TrainingQueries)


# -- the committed fixture of convscope 0.1.0 --------------------------------------------------
def test_the_fixture_run_reads_through_the_formats():
    reader = cs.open_run(FIXTURE)
    s = fa.load(reader, "samples")
    assert s.methods == ["saliency", "grad_cam"] and s.images.shape[0] == 4 == len(s)
    assert s.drop["saliency"].shape == (4,) and s.labels.tolist() == [0, 1, 2, 3]
    assert sorted(m.key for m in fa.infos(reader)) == ["samples", "second"]
    d = fd.load(reader, "model")
    assert d.report["findings"] is not None and len(d.findings) == len(d.report["findings"])
    assert d.views and d.param_views
    assert fd.load(reader, "again").views == {}  # recorded with views=False
    assert ft.load_validation(reader).correct.shape == (3, 4)
    w = ft.load_watch(reader)
    assert len(w.layers) and set(w.layers["layer"]) == set(reader.watched_layers())
