"""Budgets of the long ``run.log_*`` calls (their bodies in ``convscope.record``, which take
``clock=``) (issue 14, item 2): the projection, the one warning
that names the option that shortens a call, progress bars under ``quiet``, and the defaults
that fit the model (feature-map layers by stage, preferred-input size and steps, profile
repeats).

No test times anything for real: the clock is injected (``clock=``) and advances by a fixed
amount per reading, so every projection is a hand-computed number."""

from __future__ import annotations

import warnings

import pytest
import torch
import torchvision
from torch import nn

import convscope as cs
from convscope.formats import preferred_inputs as pref_format
from convscope.nn.budget import Budget, BudgetWarning, Tracker, format_seconds, progress, track
from convscope.record import diagnosis as rec_diagnosis
from convscope.record import features as rec_features
from convscope.record import structure as rec_structure
from convscope.record.budget import (
    BUDGETS,
    auto_repeat,
    fit_preferred,
    preferred_size,
    preferred_steps,
)
from convscope.record.structure import default_map_layers


class Clock:
    """A fake monotonic clock: each reading returns the current time, then adds ``tick``."""

    def __init__(self, tick: float = 0.0, start: float = 0.0) -> None:
        self.t = start
        self.tick = tick

    def __call__(self) -> float:
        now = self.t
        self.t += self.tick
        return now


class Manual:
    """A fake clock moved by hand."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


# -- the projection --------------------------------------------------------------------------
def test_projection_is_elapsed_plus_rate_times_units_left():
    clock = Manual()
    tr = Tracker(Budget("log_x", 100.0, "n=1", clock=clock), total=10, unit="step")
    clock.t = 3.0
    assert tr.advance(1) == pytest.approx(3.0 + 3.0 * 9)  # 3 s/step, 9 steps left: 30 s
    clock.t = 5.0
    assert tr.advance(1) == pytest.approx(5.0 + 2.5 * 8)  # 2.5 s/step over 2 steps: 25 s
    # a new segment (a deeper layer) is measured afresh: 7 s for its first step
    clock.t = 6.0
    tr.segment()
    clock.t = 13.0
    assert tr.advance(1) == pytest.approx(13.0 + 7.0 * 7)  # 62 s
    assert not tr.warned  # 62 s <= 2 x 100 s


def test_projection_waits_for_a_total_and_a_bar_supplies_one():
    clock = Manual()
    tr = Tracker(Budget("log_x", 10.0, "n=1", clock=clock))
    clock.t = 1.0
    assert tr.advance(1) is None  # no total: nothing to project
    with track(Budget("log_y", 10.0, "n=1", clock=clock)) as t2:
        bar = progress(4, quiet=True, desc="y")
        clock.t = 3.0
        bar.update(1)
        bar.close()
    assert t2.total == 4
    assert t2.projected == pytest.approx(2.0 + 2.0 * 3)  # segment opened at t=1


def test_one_warning_names_the_option_and_the_projection():
    clock = Manual()
    tr = Tracker(Budget("log_preferred_inputs", 60.0, "steps=64 or max_units=8",
                        "16 units x 1 layer at 128x128", clock=clock), total=100, unit="step")
    clock.t = 3.0
    with pytest.warns(BudgetWarning) as rec:
        tr.advance(1)  # 3 + 3 x 99 = 300 s > 120 s
        clock.t = 100.0
        tr.advance(1)  # still over the limit: no second warning
    assert len(rec) == 1
    msg = str(rec[0].message)
    assert msg == ("log_preferred_inputs: ~5.0 min projected for 16 units x 1 layer at "
                   "128x128 (3.00 s/step), more than 2x its 60 s budget; pass steps=64 or "
                   "max_units=8 to shorten it.")
    assert rec[0].filename == __file__  # points at the caller outside convscope


def test_format_seconds():
    assert [format_seconds(s) for s in (42, 89.4, 300, 5399, 7200)] == [
        "42 s", "89 s", "5.0 min", "90.0 min", "2.0 h"]


# -- a model that records what it runs, and the warnings in the same log --------------------
class Logged(nn.Module):
    """A small CNN (stride-2 stem, so its input size is taken as 224) that appends "forward" to
    ``log`` on every call."""

    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.log = log
        self.conv1 = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        self.log.append("forward")
        return self.fc(self.pool(self.conv2(self.relu(self.conv1(x)))).flatten(1))


@pytest.fixture
def logged_warnings():
    """Every warning shown is appended as ``"WARN <category>"`` to the returned log."""
    log: list[str] = []
    messages: list[str] = []

    def show(message, category, *args, **kwargs):
        log.append(f"WARN {category.__name__}")
        messages.append(str(message))

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show
        yield log, messages


def test_preferred_inputs_warn_once_after_the_first_step_before_the_rest(tmp_path,
                                                                        logged_warnings):
    log, messages = logged_warnings
    torch.manual_seed(0)
    model = Logged(log).eval()
    steps = 6
    with cs.Run(tmp_path, "p", quiet=True) as run:
        # every clock reading is 100 s later: the first step projects 100 s x 6 > 120 s
        rec_features.log_preferred_inputs(run, model, "conv2", max_units=2, steps=steps,
                                          size=16, clock=Clock(100.0))
    assert log.count("WARN BudgetWarning") == 1
    at = log.index("WARN BudgetWarning")
    # before the warning: the channel probe, maximize's shape probe and the first step only
    assert log[:at] == ["forward"] * 3
    # after it: the 5 remaining steps and the final objective values
    assert log[at + 1:] == ["forward"] * (steps - 1 + 1)
    assert messages[0].startswith("log_preferred_inputs: ~")
    assert "2 units x 1 layer at 16x16, 6 steps" in messages[0]
    assert "pass steps=64, size=96 or max_units=8 to shorten it" in messages[0]


def test_a_call_within_budget_does_not_warn(tmp_path, logged_warnings):
    log, _ = logged_warnings
    model = Logged(log).eval()
    with cs.Run(tmp_path, "p", quiet=True) as run:
        rec_features.log_preferred_inputs(run, model, "conv2", max_units=2, steps=4, size=16,
                                          clock=Clock(1.0))  # ~1-3 s a step: far below 120 s
    assert "WARN BudgetWarning" not in log


def test_log_model_warns_before_profiling_and_fits_the_repeats(tmp_path, logged_warnings):
    log, messages = logged_warnings
    model = Logged(log).eval()
    x = torch.rand(2, 3, 16, 16)
    with cs.Run(tmp_path, "m", quiet=True) as run:
        # the timed pass reads the clock twice: 100 s a pass, so the repeats fall to 3 and
        # the profile (info pass, warm-up, 3 x 3.5 passes) is projected far above 120 s
        _, df = rec_structure.log_model(run, model, x, clock=Clock(100.0))
    assert df.attrs["repeat"] == 3 == auto_repeat(100.0)
    assert log.count("WARN BudgetWarning") == 1
    at = log.index("WARN BudgetWarning")
    before = log[:at].count("forward")
    after = log[at + 1:].count("forward")
    # before it: the graph's trace and the one timed pass; after it: the whole profile
    # (info pass + 1 warm-up + 3 repeats of 3 forwards)
    assert after == 1 + 1 + 3 * 3
    assert before >= 1 and "forward" == log[at - 1]
    assert "repeat=3, backward=False or profile=False" in messages[0]
    assert "3 profile repeats of 2x3x16x16 with backward" in messages[0]


def test_log_model_default_repeat_is_ten_for_a_fast_pass(tmp_path):
    with cs.Run(tmp_path, "m", quiet=True) as run:
        _, df = rec_structure.log_model(run, Logged([]).eval(), torch.rand(2, 3, 16, 16),
                                        clock=Clock(0.01))
    assert df.attrs["repeat"] == 10


def test_auto_repeat_by_hand():
    # 0.6 x 60 s of repetitions at 3.5 passes each
    assert auto_repeat(0.5) == 10  # 36 / 1.75 = 20 -> capped at 10
    assert auto_repeat(2.0) == 5  # 36 / 7 = 5.14
    assert auto_repeat(4.0) == 3  # 36 / 14 = 2.57 -> at least 3
    assert auto_repeat(float("nan")) == 10


def test_diagnosis_and_feature_maps_warn_through_their_bars(tmp_path, logged_warnings):
    log, messages = logged_warnings
    model = Logged(log).eval()
    x = torch.rand(4, 3, 16, 16)
    with cs.Run(tmp_path, "d", quiet=True) as run:
        rec_diagnosis.log_diagnosis(run, model, x, clock=Clock(100.0))
        rec_structure.log_feature_maps(run, model, x, clock=Clock(100.0))
    assert log.count("WARN BudgetWarning") == 2
    assert messages[0].startswith("log_diagnosis: ~") and "views=False" in messages[0]
    assert messages[1].startswith("log_feature_maps: ~") and "layers=[...]" in messages[1]
    # feature maps: 4 layers (conv1, relu, conv2, pool); the first layer's 200 s projects
    # 4 x 200 s plus what elapsed before
    assert "for 4 layers of 4 images" in messages[1]


def test_top_examples_project_from_the_first_layer(tmp_path, logged_warnings):
    log, messages = logged_warnings
    model = Logged(log).eval()
    x = torch.rand(6, 3, 16, 16)
    with cs.Run(tmp_path, "t", quiet=True) as run:
        # budget (20 + 0.5 x 6) x 2 layers = 46 s; a layer takes 200 s of fake time
        rec_features.log_top_examples(run, model, ["conv1", "conv2"], x, k=2,
                                      clock=Clock(100.0))
    assert log.count("WARN BudgetWarning") == 1
    at = log.index("WARN BudgetWarning")
    assert 0 < log[:at].count("forward") and log[at + 1:].count("forward") > 0
    assert "for 2 layers x 6 images" in messages[0]
    assert "46 s budget" in messages[0]


# -- quiet ---------------------------------------------------------------------------------
def test_quiet_hides_the_bars_but_not_the_warning(tmp_path, capsys):
    model = Logged([]).eval()
    with cs.Run(tmp_path, "q") as run:
        with pytest.warns(BudgetWarning):
            rec_features.log_preferred_inputs(run, model, "conv2", max_units=2, steps=3,
                                              size=16, quiet=True, clock=Clock(100.0))
        assert "maximize" not in capsys.readouterr().err
        with pytest.warns(BudgetWarning):
            rec_features.log_preferred_inputs(run, model, "conv1", max_units=2, steps=3,
                                              size=16, quiet=False, clock=Clock(100.0))
        err = capsys.readouterr().err
    assert "maximize conv1 (2 units)" in err and "3/3" in err


# -- defaults that fit the model ---------------------------------------------------------------
def _depth(name: str) -> int:
    return name.count(".") + 1


def test_feature_maps_of_resnet50_by_stage_and_bottleneck():
    model = torchvision.models.resnet50(weights=None).eval()
    chosen = default_map_layers(model, torch.rand(1, 3, 64, 64))
    # every module down to depth 2 (stem, stages, 3 + 4 + 6 + 3 bottlenecks, avgpool), fc
    # aside (its output is [B, 1000])
    expect = {n for n, _ in model.named_modules() if n and _depth(n) <= 2} - {"fc"}
    assert set(chosen) == expect and len(chosen) == 4 + 4 + 16 + 1 == 25
    assert chosen.index("layer1.0") < chosen.index("layer2.0") < chosen.index("layer4.2")


def test_feature_maps_of_convnext_tiny_by_stage_and_block():
    model = torchvision.models.convnext_tiny(weights=None).eval()
    chosen = default_map_layers(model, torch.rand(1, 3, 64, 64))
    # depth <= 3: the stem's conv and norm, the 3 + 3 + 9 + 3 CNBlocks, the 3 downsamplers'
    # norm and conv; the classifier's flatten and linear give [B, C]
    expect = ({n for n, _ in model.named_modules() if n and _depth(n) <= 3}
              - {"classifier", "classifier.1", "classifier.2"})
    assert set(chosen) == expect and len(chosen) == 37
    blocks = [n for n in chosen if n.count(".") == 2 and n.startswith("features.")
              and n.split(".")[1] in "1357"]
    assert len(blocks) == 18
    assert len(default_map_layers(model, torch.rand(1, 3, 64, 64), max_layers=12)) == 11


def test_small_networks_keep_every_leaf():
    model = cs.zoo.resnet(width=4).eval()
    chosen = default_map_layers(model, torch.rand(1, 3, 32, 32))
    assert "layer1.0.conv1" in chosen and "layer4.0.relu2" in chosen and len(chosen) <= 48


def test_preferred_input_size_and_steps_by_hand():
    assert preferred_size((224, 224)) == (128, 128)
    assert preferred_size((448, 224)) == (128, 64)
    assert preferred_size((32, 32)) == (32, 32)
    assert preferred_size((128, 100)) == (128, 100)
    assert [preferred_steps(s) for s in ((32, 32), (64, 64), (65, 65), (128, 128))] == [
        256, 256, 128, 128]


def test_preferred_inputs_default_to_128_pixels_and_128_steps(tmp_path, monkeypatch):
    import convscope.features.preferred as preferred

    seen: list[dict] = []

    def stub(model, layer, units, *, seed=0, sharded=False, **options):
        """What maximize would be asked to do (structure only: nothing is optimised)."""
        seen.append(options)
        side = options.get("size", (224, 224))
        h, w = (side, side) if isinstance(side, int) else side
        return torch.zeros(len(units), 3, h, w), torch.zeros(len(units))

    monkeypatch.setattr(preferred, "preferred_inputs", stub)
    # the stub's steps take no time: the timing probe (2 steps) fits and changes nothing
    monkeypatch.setattr(rec_features, "_probe_step", lambda *a: 0.01)
    model = Logged([]).eval()  # stride-2 stem: maximize alone would render at 224²
    with cs.Run(tmp_path, "s", quiet=True) as run:
        out = rec_features.log_preferred_inputs(run, model, ["conv1", "conv2"])
    assert [o["size"] for o in seen] == [(128, 128)] * 2
    assert [o["steps"] for o in seen] == [128] * 2
    assert tuple(out["conv1"].shape) == (4, 3, 128, 128)  # conv1 has 4 channels (< 16)
    assert tuple(out["conv2"].shape) == (6, 3, 128, 128)
    stored = pref_format.load(cs.open_run(tmp_path / "s"), "conv1")
    assert stored.settings["steps"] == "128" and stored.settings["size"] == "(128, 128)"
    # a model declaring a small input keeps it, with the render default of 256 steps
    model.input_size = 48
    seen.clear()
    with cs.Run(tmp_path, "small", quiet=True) as run:
        rec_features.log_preferred_inputs(run, model, "conv1")
    assert seen[0]["size"] == (48, 48) and seen[0]["steps"] == 256
    # a preset keeps its own steps and size (yosinski(1): 500 steps)
    seen.clear()
    preset = cs.features.yosinski(1)
    with cs.Run(tmp_path, "y", quiet=True) as run:
        rec_features.log_preferred_inputs(run, model, "conv1", max_units=1,
                                          regularizers=preset)
    assert "steps" not in seen[0] and "size" not in seen[0]


def test_fit_preferred_by_hand():
    # a step of 16 units at 3.7 s (ViT-B at 224², 2 cores): 128 steps would take 474 s.
    # Steps first: 120 / 3.7 = 32 is below the floor of 64; then units: 64 steps x 0.23 s
    # per unit-step = 14.8 s a unit, 120 / 14.8 = 8.1 -> 8 units (118 s).
    assert fit_preferred(3.7, 16, 128, budget=120.0) == (64, 8)
    assert fit_preferred(0.5, 16, 128, budget=120.0) == (128, 16)  # 64 s: fits as it is
    assert fit_preferred(1.5, 16, 128, budget=120.0) == (80, 16)  # 80 x 1.5 = 120 s
    # steps given by the user stay; only the units come down: 120 / (128 x 0.23) = 4.05
    assert fit_preferred(3.7, 16, 128, budget=120.0, fit_steps=False) == (128, 4)
    # units given by the user stay: the steps stop at the floor
    assert fit_preferred(3.7, 16, 128, budget=120.0, fit_units=False) == (64, 16)
    # never below the floors (the budget warning takes over), never above the request
    assert fit_preferred(100.0, 16, 128, budget=120.0) == (64, 4)
    assert fit_preferred(100.0, 2, 32, budget=120.0) == (32, 2)
    assert fit_preferred(float("nan"), 16, 128, budget=120.0) == (128, 16)


def test_preferred_inputs_defaults_shrink_to_fit_a_slow_step(tmp_path, monkeypatch, capsys):
    import convscope.features.preferred as preferred

    seen: list[dict] = []

    def stub(model, layer, units, *, seed=0, sharded=False, **options):
        seen.append({"units": list(units), **options})
        return torch.zeros(len(units), 3, 8, 8), torch.zeros(len(units))

    probes: list[tuple] = []

    def probe(model, layer, chosen, seed, options, fn):
        probes.append((layer, len(chosen), options["steps"]))
        return 3.7  # ViT-B's step for 16 units at 224² on 2 cores

    monkeypatch.setattr(preferred, "preferred_inputs", stub)
    monkeypatch.setattr(rec_features, "_probe_step", probe)
    model = cs.zoo.resnet(width=16).eval()  # 16 channels in layer1.0.conv1
    with cs.Run(tmp_path, "fit") as run:
        rec_features.log_preferred_inputs(run, model, "layer1.0.conv1", size=64)
    assert probes == [("layer1.0.conv1", 16, 256)]
    assert [(len(o["units"]), o["steps"]) for o in seen] == [(8, 64)]  # 64 x 3.7/16 x 8 = 118 s
    stored = pref_format.load(cs.open_run(tmp_path / "fit"), "layer1.0.conv1")
    assert stored.units == list(range(8)) and stored.settings["steps"] == "64"
    assert "256->64 steps, 16->8 units" in stored.settings["fitted"]
    assert "to fit the 120 s budget" in capsys.readouterr().err
    # what the user set stays: max_units -> only the steps shrink; steps -> only the units
    seen.clear()
    with cs.Run(tmp_path, "units", quiet=True) as run:
        rec_features.log_preferred_inputs(run, model, "layer1.0.conv1", size=64, max_units=16)
    assert [(len(o["units"]), o["steps"]) for o in seen] == [(16, 64)]
    fitted = pref_format.load(cs.open_run(tmp_path / "units"), "layer1.0.conv1").settings["fitted"]
    assert fitted == "256->64 steps (a step of 16 units took 3.70 s)"  # only what changed
    seen.clear()
    with cs.Run(tmp_path, "steps", quiet=True) as run:
        rec_features.log_preferred_inputs(run, model, "layer1.0.conv1", size=64, steps=32)
    assert [(len(o["units"]), o["steps"]) for o in seen] == [(16, 32)]  # 32 x 3.7 = 118 s
    # explicit units or a preset: no probe at all
    probes.clear()
    seen.clear()
    with cs.Run(tmp_path, "explicit", quiet=True) as run:
        rec_features.log_preferred_inputs(run, model, "layer1.0.conv1", [3, 5], size=64,
                                          steps=256)
    assert probes == [] and [o["units"] for o in seen] == [[3, 5]]


def test_preferred_inputs_probe_times_two_real_steps():
    model = cs.zoo.resnet(width=4).eval()
    from convscope.features.preferred import preferred_inputs

    calls: list[dict] = []

    def counting(*args, **kwargs):
        calls.append(kwargs)
        return preferred_inputs(*args, **kwargs)

    s = rec_features._probe_step(model, "layer1.0.conv1", [0, 1], 0,
                                 {"steps": 256, "size": 32}, counting)
    assert s > 0 and calls[0]["steps"] == rec_features.PROBE_STEPS == 2
    assert calls[0]["quiet"] is True and calls[0]["size"] == 32


def test_budgets_are_stated():
    assert BUDGETS == {"log_model": 60.0, "log_feature_maps": 30.0, "log_diagnosis": 90.0,
                       "log_preferred_inputs": 120.0, "log_top_examples": 20.0,
                       "log_projections": 90.0}
