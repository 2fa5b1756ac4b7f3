"""Round trips of the structure-side formats: ``load(write(x)) == x`` through a real run.

Each test writes a hand-made value with ``formats.<concern>.write`` into a ``cs.Run``, closes
it, opens it with ``cs.open_run`` and compares what ``load`` returns field by field. Values are
chosen exactly representable in the stored dtype (float16 arrays hold multiples of 1/8), so the
comparison is exact. The on-disk contract (table columns and their Parquet types, array dtypes,
index meta) is checked against the values written down in docs/formats.md.
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

import convscope as cs
from convscope.errors import StoreError
from convscope.formats import checkpoints as ck
from convscope.formats import embedding as emb
from convscope.formats import feature_maps as fm
from convscope.formats import preferred_inputs as pi
from convscope.formats import scalars as sc
from convscope.formats import structure as st
from convscope.formats import top_examples as te
from convscope.formats.base import Sink
from convscope.record.features import store_preferred_inputs, store_top_examples


def _write(tmp_path, fn, name="r"):
    with cs.Run(tmp_path, name, quiet=True) as run:
        assert isinstance(run, Sink)
        fn(run)
    return cs.open_run(tmp_path / name)


def _schema(reader, table: str) -> dict[str, str]:
    parts = sorted((reader.path / "tables" / table).glob("part-*.parquet"))
    assert parts, table
    schema = pq.read_schema(parts[0])
    return {f.name: str(f.type) for f in schema}


def _eighths(rng, shape) -> np.ndarray:
    """Random multiples of 1/8 in [-4, 4): exact in float16."""
    return (rng.integers(-32, 32, size=shape) / 8).astype(np.float32)


# -- scalars --------------------------------------------------------------------------------
def test_scalars_round_trip_keeps_nan_inf_and_order(tmp_path):
    x = sc.Scalars(step=np.array([0, 0, 1, 5], dtype=np.int64),
                   tag=np.array(["loss", "acc", "loss", "loss"], dtype=object),
                   value=np.array([1.5, math.nan, math.inf, -2.0]),
                   wall_time=np.array([10.0, 11.0, 12.0, 13.0]))
    reader = _write(tmp_path, lambda run: sc.write(run, x))
    got = sc.load(reader)
    for f in ("step", "tag", "value", "wall_time"):
        np.testing.assert_array_equal(getattr(got, f), getattr(x, f), err_msg=f)
    assert got.step.dtype == np.int64 and got.value.dtype == np.float64
    assert sc.tags(reader) == ["acc", "loss"] == reader.scalar_tags()
    only = sc.load(reader, ["acc"])
    assert only.tag.tolist() == ["acc"] and math.isnan(only.value[0])
    # the contract's Parquet types
    assert _schema(reader, sc.TABLE) == {"step": "int64", "tag": "string", "value": "double",
                                         "wall_time": "double"}


def test_log_scalars_writes_the_same_table_as_write(tmp_path):
    def log(run):
        run.log_scalars(3, loss=0.25, acc=1)
    reader = _write(tmp_path, log)
    assert _schema(reader, sc.TABLE) == {"step": "int64", "tag": "string", "value": "double",
                                         "wall_time": "double"}
    got = sc.load(reader)
    assert sorted(zip(got.tag.tolist(), got.value.tolist(), strict=True)) == [
        ("acc", 1.0), ("loss", 0.25)]
    assert got.step.tolist() == [3, 3]
    wide = reader.scalars()
    assert wide["loss"].tolist() == [0.25] and wide["step"].tolist() == [3]


def test_scalar_series_buckets_by_hand(tmp_path):
    x = sc.Scalars(step=np.arange(10, dtype=np.int64), tag=np.array(["t"] * 10, dtype=object),
                   value=np.arange(10, dtype=np.float64), wall_time=np.arange(10.0))
    reader = _write(tmp_path, lambda run: sc.write(run, x))
    full = sc.series(reader, "t", max_points=100)
    assert full["value"].tolist() == list(range(10))
    two = sc.series(reader, "t", max_points=2)  # buckets floor(step * 2 / 10): 0-4 and 5-9
    assert two["value"].tolist() == [2.0, 7.0]
    assert two["vmin"].tolist() == [0.0, 5.0] and two["vmax"].tolist() == [4.0, 9.0]


# -- structure ------------------------------------------------------------------------------
def _profile() -> pd.DataFrame:
    df = pd.DataFrame({
        "name": ["", "conv", "fc"], "type": ["Net", "Conv2d", "Linear"],
        "level": ["model", "leaf", "leaf"], "params": np.array([30, 10, 20], dtype=np.int64),
        "memory_bytes": np.array([400, 100, 300], dtype=np.int64),
        "forward_s": [0.5, 0.125, 0.375], "backward_s": [1.0, 0.25, 0.75],
        "time_share": [1.0, 0.25, 0.75], "memory_share": [1.0, 0.25, 0.75],
    })
    df.attrs = {"repeat": 3, "whole_forward_s": 0.5, "memory_note": "tensor sizes"}
    return df


GRAPH = {"method": "fx", "model_type": "Net",
         "nodes": [{"name": "x", "op": "input", "output_shapes": [[2, 3, 8, 8]]},
                   {"name": "conv", "op": "module", "type": "Conv2d",
                    "output_shapes": [[2, 4, 8, 8]], "params": 10},
                   {"name": "fc", "op": "module", "type": "Linear",
                    "output_shapes": [[2, 5]], "params": 20}],
         "edges": [["x", "conv"], ["conv", "fc"]], "blocks": [{"name": "", "params": 30}]}


@pytest.mark.parametrize("key", ["model", "other net"])
def test_structure_round_trip(tmp_path, key):
    prof = _profile()
    x = st.Structure(key=key, graph=GRAPH, profile=prof, profile_attrs=dict(prof.attrs))
    reader = _write(tmp_path, lambda run: st.write(run, x))
    got = st.load(reader, key)
    assert got.key == key and got.graph == GRAPH and got.profile_attrs == prof.attrs
    pd.testing.assert_frame_equal(got.profile.reset_index(drop=True), prof, check_like=True)
    assert st.shares(reader, "time_share", key) == {"": 1.0, "conv": 0.25, "fc": 0.75}
    assert st.graph_layers(reader, key) == ["conv"]  # the only 4-d module output
    assert st.graph_input_shape(reader, key) == [3, 8, 8]
    assert st.profile_row(reader, "fc", key)["params"] == 20
    assert st.profile_row(reader, "nothing", key) is None
    assert reader.profile_shares("memory_share", model=key)["fc"] == 0.75
    with pytest.raises(cs.ConvscopeError, match="profile share"):
        st.shares(reader, "name; DROP", key)  # a column is an identifier, never SQL text


def test_structure_without_profile_and_missing_graph(tmp_path):
    reader = _write(tmp_path, lambda run: st.write(run, GRAPH))
    got = st.load(reader)
    assert got.key == st.DEFAULT_KEY and got.graph == GRAPH and got.profile is None
    assert st.shares(reader, "time_share") == {}
    with pytest.raises(StoreError, match=r"run.log_model") as err:
        st.load(reader, "absent")
    assert "absent" in str(err.value)
    with pytest.raises(StoreError, match=r"run.log_model"):
        st.profile(reader)


# -- feature maps ---------------------------------------------------------------------------
def _assert_quantized(got, want) -> None:
    """``got`` equals ``want`` up to 8-bit quantisation: stored as uint8 over each item's
    (channel's, crop's, image's) value range, so off by at most half a level of that range,
    which is at most half a level of the whole array's range (plus float16 decoding)."""
    want = np.asarray(want, dtype=np.float32)
    level = (np.nanmax(want) - np.nanmin(want)) / 255
    np.testing.assert_allclose(np.asarray(got, dtype=np.float32), want, rtol=0,
                               atol=level / 2 + 2e-3 * np.nanmax(np.abs(want)))


def test_feature_maps_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    info = {"layer": "layer1.0", "original_shape": [2, 8, 4, 4], "stored_shape": [2, 3, 4, 4],
            "channels": [0, 5, 7], "channel_mean": [0.5, 0.25, 1.0],
            "capped_channels": True, "downsampled": False}
    x = fm.FeatureMaps(images=_eighths(rng, (2, 3, 4, 4)), labels=[1, 0],
                       layers={"layer1.0": fm.LayerMaps(_eighths(rng, (2, 3, 4, 4)), info),
                               "conv 1": fm.LayerMaps(_eighths(rng, (2, 1, 2, 2)),
                                                      {**info, "layer": "conv 1"})},
                       settings={"max_channels": 3, "max_size": 4})
    reader = _write(tmp_path, lambda run: fm.write(run, x))
    got = fm.load(reader)
    np.testing.assert_array_equal(got.images, x.images)
    assert got.images.dtype == np.float16 and got.labels == [1, 0]
    assert list(got.layers) == ["layer1.0", "conv 1"]  # the index's order
    for name, lm in x.layers.items():
        _assert_quantized(got.layers[name].maps, lm.maps)
        assert got.layers[name].maps.dtype == np.float16
        assert got.layers[name].info == lm.info
    # bytes: uint8 values stored (1 byte each), counted by hand
    assert got.settings == {"layers": ["layer1.0", "conv 1"], "max_channels": 3, "max_size": 4,
                            "bytes": 2 * 3 * 4 * 4 + 2 * 1 * 2 * 2, "images": 2}
    assert fm.layer_meta(reader, "absent") is None
    assert fm.samples_meta(reader) == {"labels": [1, 0]}


def test_log_feature_maps_loads_back_through_the_format(tmp_path):
    torch.manual_seed(0)
    model = cs.zoo.resnet(width=4).eval()
    x = torch.rand(2, 3, 32, 32)
    with cs.Run(tmp_path, "r", quiet=True) as run:
        kept = run.log_feature_maps(model, x, layers=["conv1", "layer1.0.conv1"], labels=[3, 4])
    got = fm.load(cs.open_run(tmp_path / "r"))
    assert set(got.layers) == set(kept) and got.labels == [3, 4]
    for name, info in kept.items():
        assert got.layers[name].info == info
    np.testing.assert_array_equal(got.images, x.numpy().astype(np.float16))


# -- embedding ------------------------------------------------------------------------------
@pytest.mark.parametrize("images", [True, False])
def test_embedding_round_trip(tmp_path, images):
    rng = np.random.default_rng(1)
    x = emb.Embedding(name="penultimate layer", projections=_eighths(rng, (5, 3)),
                      labels=np.array([0, 1, 1, -1, 0], dtype=np.int64),
                      explained_variance_ratio=[0.5, 0.25, 0.125], dim=8,
                      class_names=["cat", "dog"], method="pca (svd)",
                      images=rng.integers(0, 256, (5, 4, 4, 3), dtype=np.uint8) if images
                      else None)
    reader = _write(tmp_path, lambda run: emb.write(run, x))
    got = emb.load(reader, x.name)
    for f in ("name", "explained_variance_ratio", "dim", "class_names", "method"):
        assert getattr(got, f) == getattr(x, f), f
    np.testing.assert_array_equal(got.projections, x.projections)
    np.testing.assert_array_equal(got.labels, x.labels)
    assert (got.images is None) == (x.images is None)
    if images:
        np.testing.assert_array_equal(got.images, x.images)
    assert emb.names(reader) == [x.name]
    assert emb.meta(reader, x.name)["n"] == 5 and emb.meta(reader, x.name)["k"] == 3
    with pytest.raises(StoreError, match=r"run.log_embedding"):
        emb.load(reader, "absent")


def test_log_embedding_loads_back_through_the_format(tmp_path):
    feats = torch.randn(12, 6, generator=torch.Generator().manual_seed(0))
    with cs.Run(tmp_path, "r", quiet=True) as run:
        res = run.log_embedding(feats, [0, 1] * 6, class_names=["a", "b"])
    got = emb.load(cs.open_run(tmp_path / "r"))
    assert got.name == emb.DEFAULT_NAME and got.dim == 6 and got.images is None
    np.testing.assert_array_equal(got.projections, res.projections.numpy().astype(np.float32))
    assert got.labels.tolist() == [0, 1] * 6 and got.class_names == ["a", "b"]


# -- preferred inputs -----------------------------------------------------------------------
def test_preferred_inputs_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    x = pi.PreferredInputs(layer="layer1.0.conv2", units=[0, 3], images=_eighths(rng, (2, 3, 4, 4)),
                           values=[1.5, -0.25], seconds=0.5, settings={"steps": "10"})
    reader = _write(tmp_path, lambda run: pi.write(run, x))
    got = pi.load(reader, x.layer)
    for f in ("layer", "units", "values", "seconds", "settings"):
        assert getattr(got, f) == getattr(x, f), f
    _assert_quantized(got.images, x.images)
    assert got.images.dtype == np.float16 and pi.layers(reader) == [x.layer]
    with pytest.raises(StoreError, match=r"run.log_preferred_inputs"):
        pi.load(reader, "absent")


def test_store_preferred_inputs_converts_tensors(tmp_path):
    images = torch.tensor(_eighths(np.random.default_rng(3), (2, 1, 2, 2)))
    reader = _write(tmp_path, lambda run: store_preferred_inputs(
        run, "l", [4, 5], images, torch.tensor([0.5, 2.0]), seconds=None, settings={"lr": 0.1}))
    got = pi.load(reader, "l")
    assert got.units == [4, 5] and got.values == [0.5, 2.0] and got.settings == {"lr": "0.1"}
    _assert_quantized(got.images, images.numpy())


# -- top examples ---------------------------------------------------------------------------
def _top(rng, crops=True) -> te.TopExamples:
    c, k = 3, 2
    values = _eighths(rng, (c, k))
    values[2, 1] = np.nan  # fewer than k images excited channel 2
    return te.TopExamples(
        layer="layer2.0", values=values, indices=rng.integers(0, 100, (c, k)).astype(np.int64),
        locations=rng.integers(0, 8, (c, k, 2)).astype(np.int64),
        boxes=rng.integers(0, 32, (c, k, 4)).astype(np.int64),
        crops=_eighths(rng, (c, k, 3, 4, 4)) if crops else None, n_seen=10 if crops else None,
        field="RF(size=7, stride=2)" if crops else None)


@pytest.mark.parametrize("crops", [True, False])
def test_top_examples_round_trip(tmp_path, crops):
    x = _top(np.random.default_rng(4), crops)
    reader = _write(tmp_path, lambda run: te.write(run, x))
    got = te.load(reader, x.layer)
    for f in ("values", "indices", "locations", "boxes"):
        np.testing.assert_array_equal(getattr(got, f), getattr(x, f), err_msg=f)
    assert (got.layer, got.n_seen, got.field) == (x.layer, x.n_seen, x.field)
    assert (got.crops is None) == (x.crops is None)
    if crops:
        _assert_quantized(got.crops, x.crops)
        assert got.crops.dtype == np.float16
    assert te.layers(reader) == [x.layer]
    assert te.channel_values(reader, x.layer, 1, 5) == x.values[1].tolist()
    assert _schema(reader, te.TABLE) == {
        "layer": "string", "channel": "int32", "rank": "int32", "index": "int64",
        "value": "float", "y": "int32", "x": "int32", "y0": "int32", "x0": "int32",
        "y1": "int32", "x1": "int32"}
    with pytest.raises(StoreError, match=r"run.log_top_examples"):
        te.load(reader, "absent")


def test_store_top_examples_converts_tensors(tmp_path):
    x = _top(np.random.default_rng(5))
    result = SimpleNamespace(  # a features.TopExamples as top_examples_sharded returns it
        layer=x.layer, values=torch.tensor(x.values), indices=torch.tensor(x.indices),
        locations=torch.tensor(x.locations), boxes=torch.tensor(x.boxes),
        crops=torch.tensor(x.crops), n_seen=x.n_seen, field=x.field)
    reader = _write(tmp_path, lambda run: store_top_examples(run, result))
    got = te.load(reader, x.layer)
    np.testing.assert_array_equal(got.values, x.values)
    _assert_quantized(got.crops, x.crops)
    assert got.field == x.field and got.n_seen == x.n_seen


# -- checkpoints ----------------------------------------------------------------------------
def test_checkpoint_round_trip_lists_the_users_key(tmp_path):
    torch.manual_seed(0)
    model = cs.zoo.resnet(width=4).eval()
    x = torch.rand(1, 3, 32, 32)
    reader = _write(tmp_path, lambda run: ck.write(run, model, "my model", example_inputs=x))
    assert ck.keys(reader) == ["my model"]
    assert ck.file_keys(reader) == reader.checkpoints() != ["my model"]
    assert ck.default_key(reader) == "my model"  # no "model": the first one
    rec = ck.load(reader, "my model")
    assert rec == ck.load(reader, ck.file_keys(reader)[0])  # both forms find the same record
    assert (rec.key, rec.form, rec.builder, rec.input_shape) == (
        "my model", "rebuild", "convscope.zoo.resnet", [3, 32, 32])
    assert rec.kwargs["width"] == 4 and rec.model_class == "convscope.zoo.resnet.ResNet"
    on_disk = json.loads(next((reader.path / ck.DIR).glob(f"*{ck.ARCH_SUFFIX}")).read_text())
    assert on_disk["key"] == "my model"
    with torch.no_grad():
        want = model(x)
        for key in ck.keys(reader) + ck.file_keys(reader):
            torch.testing.assert_close(ck.load_model(reader, key)(x), want)
    with pytest.raises(StoreError, match=r"run.log_checkpoint.*It has: my model"):
        ck.load(reader, "absent")


def test_checkpoint_keys_of_an_empty_run_and_the_default(tmp_path):
    reader = _write(tmp_path, lambda run: None)
    assert ck.keys(reader) == [] and not ck.has(reader)
    assert ck.default_key(reader) == ck.DEFAULT_KEY == "model"
    assert ck.form(reader, "model") is None
