"""DeconvNet projections stored in a run (Zeiler & Fergus 2014, figure 2): ``run.log_projections``
and :mod:`convscope.formats.projections`; and the preferred-input method by name
(``method="yosinski:3"``, Yosinski et al. 2015) in ``run.log_preferred_inputs`` and
``convscope analyze --method``.

Oracles: the format round trip against the arrays written (within one uint8 level of each
window's own range) and against a hand-written area average; the stored projection of every
slot against :func:`convscope.explain.project_unit` on that one image at that position (itself
validated against captum's ``Deconvolution`` and a hand-built deconvnet in test_projection.py),
cut by hand at the receptive field; the ranking against a brute-force spatial maximum; the
preset against :func:`convscope.features.yosinski`.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import convscope as cs
from convscope.cli import main
from convscope.errors import ConvscopeError, InputError, InvalidValueError, StoreError
from convscope.explain import project_unit
from convscope.features import receptive_field
from convscope.formats import preferred_inputs as pi_format
from convscope.formats import projections as fmt
from convscope.nn.budget import BudgetWarning
from convscope.record import projections as rec
from convscope.record.features import PREFERRED_METHODS, preferred_method


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(12, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5),
    ).eval()


def level(lo_hi: np.ndarray) -> np.ndarray:
    """Half a uint8 step of each window's range, plus float16 rounding of the decoded value."""
    lo, hi = lo_hi[..., 0], lo_hi[..., 1]
    return (hi - lo) / 255.0 / 2 + 1e-3 * np.maximum(np.abs(lo), np.abs(hi)) + 1e-6


# -- the format ----------------------------------------------------------------------------
def _random(u=3, k=4, c=3, h=10, w=12, seed=0) -> fmt.Projections:
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, 50, (u, k))
    values = rng.normal(size=(u, k)).astype(np.float32)
    indices[-1, -1], values[-1, -1] = -1, np.nan  # an empty slot (fewer than k images)
    proj = rng.normal(size=(u, k, c, h, w)).astype(np.float32)
    crops = rng.uniform(size=(u, k, c, h, w)).astype(np.float32)
    proj[-1, -1] = crops[-1, -1] = 0
    return fmt.Projections(
        layer="layer1.0.conv1", units=[5, 2, 9][:u], values=values, indices=indices,
        locations=rng.integers(0, 8, (u, k, 2)), boxes=rng.integers(0, 32, (u, k, 4)),
        projections=proj, crops=crops, n_seen=50, field="ReceptiveField(size=(3, 3))",
        image_size=(32, 32), seed="activation", seconds=1.5)


def test_format_round_trip_within_one_level(tmp_path):
    res = _random()
    with cs.Run(tmp_path, "r", quiet=True) as run:
        fmt.write(run, res)
    reader = cs.open_run(tmp_path / "r")
    assert fmt.layers(reader) == ["layer1.0.conv1"] and fmt.units(reader, res.layer) == [5, 2, 9]
    got = fmt.load(reader, res.layer)
    assert got.units == [5, 2, 9] and got.n_seen == 50 and got.image_size == (32, 32)
    assert got.seed == "activation" and got.seconds == 1.5 and got.field == res.field
    np.testing.assert_array_equal(got.indices, res.indices)
    np.testing.assert_array_equal(got.locations, res.locations)
    np.testing.assert_array_equal(got.boxes, res.boxes)
    np.testing.assert_array_equal(got.values, res.values)  # NaN in the empty slot on both
    for stored, orig in ((got.projections, res.projections), (got.crops, res.crops)):
        assert stored.shape == orig.shape
        lo = orig.min(axis=(2, 3, 4))
        hi = orig.max(axis=(2, 3, 4))
        tol = level(np.stack([lo, hi], -1))[..., None, None, None]
        assert (np.abs(stored.astype(np.float32) - orig) <= tol).all()
    # one unit: only its filled slots, best first; limit= keeps the first ones
    one = fmt.unit(reader, res.layer, 9)
    assert one.unit == 9 and len(one.values) == 3
    np.testing.assert_array_equal(one.indices, res.indices[2, :3])
    np.testing.assert_array_equal(one.boxes, res.boxes[2, :3])
    np.testing.assert_allclose(one.projections, got.projections[2, :3])
    two = fmt.unit(reader, res.layer, 5, limit=2)
    np.testing.assert_array_equal(two.indices, res.indices[0, :2])
    np.testing.assert_allclose(two.crops, got.crops[0, :2])


def test_windows_larger_than_the_page_are_area_averaged_to_96_pixels(tmp_path):
    res = _random(u=1, k=2, c=3, h=200, w=150, seed=1)
    with cs.Run(tmp_path, "r", quiet=True) as run:
        fmt.write(run, res)
    got = fmt.load(cs.open_run(tmp_path / "r"), res.layer)
    # factor 3 (ceil(200 / 96)): 66 x 50, the last 2 rows of 200 dropped
    want = res.projections[..., :198, :].reshape(1, 2, 3, 66, 3, 50, 3).mean(axis=(4, 6))
    assert got.projections.shape == (1, 2, 3, 66, 50)
    tol = level(np.stack([want.min(axis=(2, 3, 4)), want.max(axis=(2, 3, 4))], -1))
    assert (np.abs(got.projections.astype(np.float32) - want) <= tol[..., None, None, None]).all()


def test_missing_layer_and_unit_say_what_records_them(tmp_path):
    with cs.Run(tmp_path, "r", quiet=True) as run:
        fmt.write(run, _random())
    reader = cs.open_run(tmp_path / "r")
    assert fmt.meta(reader, "conv1") is None and fmt.units(reader, "conv1") == []
    with pytest.raises(StoreError, match=r"run.log_projections\(model, layers, dataset\)"):
        fmt.load(reader, "conv1")
    with pytest.raises(StoreError, match=r"recorded units: 5, 2, 9.*units=\[4\]"):
        fmt.unit(reader, "layer1.0.conv1", 4)


def test_damaged_arrays_are_store_errors_that_say_record_again(tmp_path):
    res = _random()
    with cs.Run(tmp_path, "r", quiet=True) as run:
        fmt.write(run, res)
        run.log_array(fmt.PLACES_KIND, res.layer, np.zeros((3, 4, 5), np.int64))  # not [U, k, 7]
    reader = cs.open_run(tmp_path / "r")
    for read in (lambda: fmt.load(reader, res.layer), lambda: fmt.unit(reader, res.layer, 5)):
        with pytest.raises(StoreError, match="do not fit together.*record them again"):
            read()
    with cs.Run(tmp_path, "big", quiet=True) as run:  # windows no convscope writer makes
        fmt.write(run, res)
        run.log_array(fmt.KIND, res.layer, np.zeros((3, 4, 3, 300, 300), np.uint8),
                      meta=fmt.meta(reader, res.layer))
        run.log_array(fmt.CROPS_KIND, res.layer, np.zeros((3, 4, 3, 300, 300), np.uint8))
    with pytest.raises(StoreError, match="larger than"):
        fmt.unit(cs.open_run(tmp_path / "big"), res.layer, 5)


def test_write_refuses_arrays_that_do_not_fit(tmp_path):
    res = _random()
    with cs.Run(tmp_path, "r", quiet=True) as run:
        with pytest.raises(InvalidValueError, match="both be"):
            fmt.write(run, fmt.Projections(**{**res.__dict__, "crops": res.crops[:, :2]}))
        with pytest.raises(ConvscopeError, match=r"\[U, k\]"):
            fmt.write(run, fmt.Projections(**{**res.__dict__, "units": [1]}))


# -- recording ------------------------------------------------------------------------------
def window(full: torch.Tensor, field, y: int, x: int) -> torch.Tensor:
    """The receptive-field window of layer position (y, x) in ``full [C, H, W]``, cut by hand:
    ``field.size`` pixels from ``offset + position * stride`` (the whole axis when the field
    covers it), zeros outside the image."""
    _, h, w = full.shape
    sh, sw = field.size
    y0 = 0 if sh >= h else field.offset[0] + y * field.stride[0]
    x0 = 0 if sw >= w else field.offset[1] + x * field.stride[1]
    wh, ww = min(sh, h), min(sw, w)
    out = torch.zeros(full.shape[0], wh, ww)
    for i in range(wh):
        for j in range(ww):
            if 0 <= y0 + i < h and 0 <= x0 + j < w:
                out[:, i, j] = full[:, y0 + i, x0 + j]
    return out


def brute_rank(model, layer: str, x: torch.Tensor, channel: int, k: int):
    acts = {}
    module = dict(model.named_modules())[layer]
    hook = module.register_forward_hook(lambda m, i, o: acts.setdefault("a", o.detach()))
    with torch.no_grad():
        model(x)
    hook.remove()
    best = acts["a"][:, channel].flatten(1).max(1).values
    order = sorted(range(len(x)), key=lambda i: (-float(best[i]), i))[:k]
    return order, best[order]


@pytest.mark.parametrize("layer", ["0", "3", "6"])
def test_each_stored_slot_is_project_unit_of_that_image_cut_at_its_field(tmp_path, layer):
    model = small_net()
    torch.manual_seed(2)
    x = torch.rand(10, 3, 16, 16)
    with cs.Run(tmp_path, "r", quiet=True) as run:
        out = run.log_projections(model, layer, x, units=[1, 4], k=3)
    got = fmt.load(cs.open_run(tmp_path / "r"), layer)
    assert got.units == [1, 4] and got.n_seen == 10 and got.image_size == (16, 16)
    field = receptive_field(model, layer, x[:1])
    for row, u in enumerate([1, 4]):
        order, best = brute_rank(model, layer, x, u, 3)
        assert got.indices[row].tolist() == order
        np.testing.assert_allclose(got.values[row], best.numpy(), rtol=1e-5, atol=1e-6)
        for r in range(3):
            i = int(got.indices[row, r])
            y, xx = (int(v) for v in got.locations[row, r])
            full = project_unit(model, x[i:i + 1], layer, u, (y, xx))[0]
            assert float(full.abs().max()) > 0  # an informative oracle
            want_p = window(full, field, y, xx).numpy()
            want_c = window(x[i], field, y, xx).numpy()
            # what log_projections returned: the windows as computed
            np.testing.assert_allclose(out[layer].projections[row, r], want_p, rtol=1e-4,
                                       atol=1e-6 * float(np.abs(want_p).max()))
            np.testing.assert_allclose(out[layer].crops[row, r], want_c, atol=1e-6)
            # what the run holds: the same within one uint8 level of the window's range
            for stored, want in ((got.projections[row, r], want_p), (got.crops[row, r],
                                                                     want_c)):
                assert stored.shape == want.shape
                tol = level(np.array([want.min(), want.max()]))
                assert np.abs(stored.astype(np.float32) - want).max() <= tol


def test_zoo_resnet_records_from_a_tensor_a_dataset_and_a_loader_alike(tmp_path):
    torch.manual_seed(0)
    model = cs.zoo.resnet(width=4).eval()
    x, y, _ = cs.data.Shapes(n=14, split="test").tensors()
    layers = ["conv1", "layer2.0.conv2"]
    sources = {"tensor": x, "dataset": TensorDataset(x, y),
               "loader": DataLoader(TensorDataset(x, y), batch_size=5)}
    stored = {}
    for name, data in sources.items():
        with cs.Run(tmp_path, name, quiet=True) as run:
            run.log_projections(model, layers, data, max_units=3, k=4, batch_size=6)
        reader = cs.open_run(tmp_path / name)
        assert fmt.layers(reader) == sorted(layers)
        stored[name] = {layer: fmt.load(reader, layer) for layer in layers}
    for layer in layers:
        a = stored["tensor"][layer]
        assert a.units == [0, 1, 2] and a.projections.shape[:2] == (3, 4)
        assert (a.indices >= 0).all() and np.isfinite(a.values).all()
        assert (np.abs(a.projections.astype(np.float32)).reshape(3, 4, -1).max(-1) > 0).all()
        for other in ("dataset", "loader"):
            b = stored[other][layer]
            np.testing.assert_array_equal(a.indices, b.indices)
            np.testing.assert_array_equal(a.projections, b.projections)
            np.testing.assert_array_equal(a.crops, b.crops)
    # layer2.0.conv2, unit 2, rank 1: the deconvnet of that image at that position
    a = stored["tensor"]["layer2.0.conv2"]
    i, (yy, xx) = int(a.indices[2, 0]), (int(v) for v in a.locations[2, 0])
    full = project_unit(model, x[i:i + 1], "layer2.0.conv2", 2, (yy, xx))[0]
    field = receptive_field(model, "layer2.0.conv2", x[:1])
    want = window(full, field, yy, xx).numpy()
    assert np.abs(a.projections[2, 0].astype(np.float32) - want).max() <= level(
        np.array([want.min(), want.max()]))


def test_bad_arguments_raise_input_errors(tmp_path):
    model = small_net()
    x = torch.rand(4, 3, 16, 16)
    with cs.Run(tmp_path, "r", quiet=True) as run:
        with pytest.raises(InputError, match="seed must be one of activation, ones"):
            run.log_projections(model, "0", x, seed="max")
        with pytest.raises(InputError, match="units must be channel indices"):
            run.log_projections(model, "0", x, units=[-1])
        with pytest.raises(InputError, match=r"unit 8 is out of range.*0\.\.7"):
            run.log_projections(model, "0", x, units=[8])
        with pytest.raises(ConvscopeError, match="k"):
            run.log_projections(model, "0", x, k=0)
        with pytest.raises(ConvscopeError):
            run.log_projections(model, "nope", x)
    assert fmt.layers(cs.open_run(tmp_path / "r")) == []


class Clock:
    """A fake clock: each reading adds ``tick`` seconds."""

    def __init__(self, tick: float) -> None:
        self.t, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.t += self.tick
        return self.t


def test_a_call_far_over_its_budget_warns_once_naming_max_units(tmp_path):
    model = small_net()
    x = torch.rand(4, 3, 16, 16)
    with cs.Run(tmp_path, "r", quiet=True) as run, warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        # budget (90 + 0.5 x 4) x 2 layers = 184 s; each clock reading adds 1000 s
        rec.log_projections(run, model, ["0", "3"], x, max_units=2, k=2, clock=Clock(1000.0))
    msgs = [str(m.message) for m in w if issubclass(m.category, BudgetWarning)]
    assert len(msgs) == 1
    assert msgs[0].startswith("log_projections: ~") and "max_units=4" in msgs[0]
    assert "its 3.1 min budget" in msgs[0] and "for 2 layers x 4 images" in msgs[0]


def test_run_signature_is_explicit_and_reaches_the_recording_function(tmp_path, monkeypatch):
    import inspect

    params = [p for p in inspect.signature(cs.Run.log_projections).parameters.values()
              if p.name != "self"]
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    target = inspect.signature(rec.log_projections).parameters
    doc = inspect.getdoc(cs.Run.log_projections).split("Args:")[1].split("Returns:")[0]
    for p in params:
        assert p.name in doc and p.name in target
        if p.name != "quiet":
            assert p.default == target[p.name].default, p.name
    seen = {}
    monkeypatch.setattr(rec, "log_projections", lambda run, *a, **kw: seen.update(
        args=a, kw=kw) or {})
    with cs.Run(tmp_path, "r", quiet=True) as run:
        run.log_projections("m", "l", "d", units=[3], max_units=5, k=7, batch_size=9,
                            seed="ones", quiet=False)
    assert seen["args"] == ("m", "l", "d")
    assert seen["kw"] == {"units": [3], "max_units": 5, "k": 7, "batch_size": 9, "seed": "ones",
                          "quiet": False}


# -- the preferred-input method by name ---------------------------------------------------------
def test_method_names_parse_to_the_papers_presets():
    assert preferred_method("lucid") is None
    for n in (1, 2, 3, 4):
        got = preferred_method(f"yosinski:{n}")
        want = cs.features.yosinski(n)
        assert got.name == want.name == f"yosinski({n})"
        assert dict(got).keys() == dict(want).keys()
        assert got["steps"] == want["steps"] and got["lr"] == want["lr"]
        assert [type(r) for r in got["regularizers"]] == [type(r) for r in want["regularizers"]]
    assert preferred_method(" Yosinski:3 ").name == "yosinski(3)"
    for bad in ("yosinski", "yosinski:5", "yosinski:0", "lucent", "", None, 3, ["lucid"]):
        with pytest.raises(InputError) as exc:
            preferred_method(bad)
        for name in PREFERRED_METHODS:
            assert name in str(exc.value)


def _fake_maximize(monkeypatch):
    import importlib

    mx = importlib.import_module("convscope.features.maximize")
    calls = []

    def fake(model, layer, units, **kw):
        calls.append(dict(kw, layer=layer, units=list(units)))
        n = len(units)
        return torch.zeros(n, 3, 8, 8), torch.zeros(n)

    monkeypatch.setattr(mx, "maximize", fake)
    return calls


def test_log_preferred_inputs_method_selects_the_preset_and_names_it(tmp_path, monkeypatch):
    calls = _fake_maximize(monkeypatch)
    net = nn.Sequential(nn.Conv2d(3, 4, 3)).eval()
    with cs.Run(tmp_path, "r", quiet=True) as run:
        run.log_preferred_inputs(net, "0", [1, 2], method="yosinski:3")
    # the preset goes to maximize as regularizers= (filling what the call left out): no timing
    # probe, no steps or size of convscope's own
    (call,) = calls
    assert getattr(call["regularizers"], "name", None) == "yosinski(3)"
    assert "steps" not in call and "size" not in call
    settings = pi_format.load(cs.open_run(tmp_path / "r"), "0").settings
    assert settings["method"] == "yosinski:3" and "yosinski(3)" in settings["regularizers"]


def test_log_preferred_inputs_default_method_is_lucid_and_conflicts_are_refused(tmp_path,
                                                                                  monkeypatch):
    calls = _fake_maximize(monkeypatch)
    net = nn.Sequential(nn.Conv2d(3, 4, 3)).eval()
    with cs.Run(tmp_path, "r", quiet=True) as run:
        run.log_preferred_inputs(net, "0", [1], steps=2, size=8)
        with pytest.raises(InputError, match="either method= or regularizers="):
            run.log_preferred_inputs(net, "0", [1], method="yosinski:1",
                                     regularizers=cs.features.yosinski(2))
        with pytest.raises(InputError, match="lucid, yosinski:1, yosinski:2"):
            run.log_preferred_inputs(net, "0", [1], method="yosinski")
    assert len(calls) == 1 and "regularizers" not in calls[0]
    settings = pi_format.load(cs.open_run(tmp_path / "r"), "0").settings
    assert settings["method"] == "lucid"


@pytest.fixture
def saved_run(tmp_path):
    torch.manual_seed(0)
    model = cs.zoo.resnet(width=4).eval()
    with cs.Run(tmp_path, "saved", quiet=True) as run:
        run.log_checkpoint(model)
    return tmp_path / "saved", model


def test_cli_analyze_method_and_projections(saved_run, monkeypatch, capsys):
    path, model = saved_run
    calls = _fake_maximize(monkeypatch)
    assert main(["analyze", str(path), "--what", "preferred-inputs", "--layers", "conv1",
                 "--units", "2", "--method", "yosinski:2", "--quiet"]) == 0
    assert getattr(calls[-1]["regularizers"], "name", None) == "yosinski(2)"
    reader = cs.open_run(path)
    assert pi_format.load(reader, "conv1").settings["method"] == "yosinski:2"
    # a bad name fails before anything runs, listing the valid names
    n = len(calls)
    assert main(["analyze", str(path), "--what", "preferred-inputs", "--layers", "conv1",
                 "--method", "yosinski:9"]) == 2
    err = capsys.readouterr().err
    assert all(name in err for name in PREFERRED_METHODS) and len(calls) == n
    # --what projections: the DeconvNet projections of the saved model over Shapes images
    assert main(["analyze", str(path), "--what", "projections", "--layers", "layer1.0.conv1",
                 "--units", "2", "--k", "3", "--images", "12", "--quiet"]) == 0
    got = fmt.load(cs.open_run(path), "layer1.0.conv1")
    assert got.units == [0, 1] and got.projections.shape[:2] == (2, 3) and got.n_seen == 12
    x, _, _ = cs.data.Shapes(n=12, split="test").tensors()
    loaded = cs.open_run(path).load_model()
    i, (yy, xx) = int(got.indices[1, 0]), (int(v) for v in got.locations[1, 0])
    full = project_unit(loaded, x[i:i + 1], "layer1.0.conv1", 1, (yy, xx))[0]
    want = window(full, receptive_field(loaded, "layer1.0.conv1", x[:1]), yy, xx).numpy()
    assert np.abs(got.projections[1, 0].astype(np.float32) - want).max() <= level(
        np.array([want.min(), want.max()]))
