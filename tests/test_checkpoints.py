"""Checkpoints load without running code from the run (issue 12, items 2 and 6).

Oracles: the original model's outputs and hooked activations (a rebuilt model must reproduce them
exactly), a marker file that a crafted pickle's ``__reduce__`` would create (it must never appear
unless trust was given), and the files on disk.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import convscope as cs
from convscope.diagnose import diagnose_checkpoint
from convscope.errors import ConvscopeError, InputError, StoreError
from convscope.store import checkpoints as ck


class Exploit:
    """Unpickling this runs ``exec``: it writes the marker file (what an attacker would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


class Net(nn.Module):
    """A user's own class: no builder knows it."""

    def __init__(self, width: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3)

    def forward(self, x):
        return self.conv(x).relu()


def _old_run(logdir: Path, name: str, payload) -> Path:
    """A run as older versions wrote it: checkpoints/model.pt is a whole-module pickle."""
    with cs.Run(logdir, name, quiet=True) as run:
        run.log_scalars(0, loss=1.0)
    (run.path / "checkpoints").mkdir()
    torch.save(payload, run.path / "checkpoints" / "model.pt")
    return run.path


def _hooked(model: nn.Module, layer: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    seen = {}
    h = model.get_submodule(layer).register_forward_hook(lambda m, i, o: seen.update(a=o))
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        h.remove()
    return out, seen["a"]


def _round_trip(tmp_path: Path, model: nn.Module, x: torch.Tensor, layer: str,
                key: str = "model") -> nn.Module:
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a rebuildable model must not fall back to a pickle
        with cs.Run(tmp_path, "r", quiet=True) as run:
            record = run.log_checkpoint(model, key)
    files = sorted(p.name for p in (tmp_path / "r" / "checkpoints").iterdir())
    assert not any(f.endswith(".pt") and not f.endswith(".state.pt") for f in files), files
    assert json.loads(record.read_text())["builder"]
    loaded = cs.open_run(tmp_path / "r").load_model(key)
    assert type(loaded) is type(model) and not loaded.training
    want, want_act = _hooked(model, layer, x)
    got, got_act = _hooked(loaded, layer, x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(got_act, want_act, atol=1e-5, rtol=0)
    return loaded


def test_zoo_resnet_round_trips_with_hooks(tmp_path):
    torch.manual_seed(0)
    model = cs.zoo.resnet(num_classes=5, width=4, blocks=(1, 2, 1, 1))
    with torch.no_grad():  # non-default batch-norm statistics must come back too
        model.bn1.running_mean.uniform_(-1, 1)
    _round_trip(tmp_path, model, torch.rand(3, 3, 32, 32), "layer2.1.conv1")
    rec = json.loads((tmp_path / "r" / "checkpoints" / "model.arch.json").read_text())
    assert rec["builder"] == "convscope.zoo.resnet"
    assert rec["kwargs"] == {"num_classes": 5, "in_channels": 3, "width": 4,
                             "blocks": [1, 2, 1, 1]}


def test_zoo_dcgan_round_trips(tmp_path):
    torch.manual_seed(0)
    disc = cs.zoo.DCGANDiscriminator(version=3, image_size=32, hidden=20, channels=1,
                                     negative_slope=0.1)
    _round_trip(tmp_path, disc, torch.rand(2, 1, 32, 32), "lrelu4")
    gen = cs.zoo.DCGANGenerator(version=1, latent_dim=8, image_size=16, hidden=12, channels=1)
    with cs.Run(tmp_path, "r", resume=True, quiet=True) as run:
        run.log_checkpoint(gen.eval(), "gen")
    with torch.no_grad():
        z = torch.rand(2, 8)
        torch.testing.assert_close(cs.open_run(tmp_path / "r").load_model("gen")(z), gen(z))


def test_torchvision_resnet18_round_trips(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=7)
    _round_trip(tmp_path, model, torch.rand(2, 3, 64, 64), "layer1.0.conv1")
    rec = json.loads((tmp_path / "r" / "checkpoints" / "model.arch.json").read_text())
    assert (rec["builder"], rec["kwargs"]) == ("torchvision.resnet18", {"num_classes": 7})


def test_torchvision_resnet50_round_trips(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None)
    _round_trip(tmp_path, model, torch.rand(1, 3, 64, 64), "layer3.2.conv2")


def test_torchvision_vit_b_16_is_recognised():
    torchvision = pytest.importorskip("torchvision")
    with torch.device("meta"):  # the architecture check needs no memory
        vit = torchvision.models.vit_b_16(weights=None)
        small = torchvision.models.vit_b_16(weights=None, image_size=32, num_classes=3)
        other = torchvision.models.vit_b_32(weights=None)
    assert ck._architecture(vit, None) == ("torchvision.vit_b_16", {})
    assert ck._architecture(small, None) == ("torchvision.vit_b_16",
                                             {"num_classes": 3, "image_size": 32})
    assert ck._architecture(other, None) == ("torchvision.vit_b_32", {})


@pytest.mark.slow
def test_torchvision_vit_b_16_round_trips(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.vit_b_16(weights=None, image_size=32, num_classes=3)
    _round_trip(tmp_path, model, torch.rand(1, 3, 32, 32), "encoder.layers.encoder_layer_1.mlp")


def test_key_with_a_space_round_trips(tmp_path):
    torch.manual_seed(0)
    model = cs.zoo.resnet(width=4).eval()
    _round_trip(tmp_path, model, torch.rand(2, 3, 32, 32), "layer1", key="my model")
    reader = cs.open_run(tmp_path / "r")
    (listed,) = reader.checkpoints()
    assert listed != "my model"  # the file-name form ...
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():  # ... loads the same model as the key itself
        torch.testing.assert_close(reader.load_model(listed)(x), model(x))
    rec = json.loads(next((tmp_path / "r" / "checkpoints").glob("*.arch.json")).read_text())
    assert rec["key"] == "my model"


def test_old_run_pickle_needs_trust_and_never_runs_without_it(tmp_path):
    marker = tmp_path / "marker"
    run = _old_run(tmp_path, "old", Exploit(marker))
    reader = cs.open_run(run)
    assert reader.checkpoints() == ["model"]
    assert ck.checkpoint_form(run, "model") == "pickle"
    with pytest.raises(StoreError) as err:
        reader.load_model()
    msg = str(err.value)
    assert "trust=True" in msg and "--trust-checkpoints" in msg and "pickle" in msg
    assert not marker.exists()
    # the other pages' data still opens
    assert reader.scalars()["loss"].tolist() == [1.0]
    # diagnose_checkpoint reads weights only: refused with what to do, nothing runs
    with pytest.raises(InputError, match="state_dict"):
        diagnose_checkpoint(run / "checkpoints" / "model.pt", cs.zoo.resnet,
                            torch.rand(2, 3, 32, 32))
    assert not marker.exists()
    # the opt-in really unpickles (which is why it is an opt-in)
    with pytest.raises(StoreError):  # an Exploit is no model, but exec has run by then
        reader.load_model(trust=True)
    assert marker.read_text() == "pwned"


def test_old_run_harmless_pickle_loads_with_trust(tmp_path):
    torch.manual_seed(0)
    model = cs.zoo.resnet(width=4).eval()
    run = _old_run(tmp_path, "old", model)
    reader = cs.open_run(run)
    with pytest.raises(StoreError, match="--trust-checkpoints"):
        reader.load_model()
    loaded = reader.load_model(trust=True)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=1e-5, rtol=0)


def test_crafted_weights_of_a_rebuildable_checkpoint_do_not_run(tmp_path):
    marker = tmp_path / "marker"
    with cs.Run(tmp_path, "r", quiet=True) as run:
        run.log_checkpoint(cs.zoo.resnet(width=4))
    torch.save({"conv1.weight": Exploit(marker)}, run.path / "checkpoints" / "model.state.pt")
    with pytest.raises(StoreError, match="re-save"):
        cs.open_run(run.path).load_model(trust=True)  # trust is for pickles, not weights
    assert not marker.exists()


@pytest.mark.parametrize("record, match", [
    ({"builder": "os.system", "kwargs": {"command": "touch x"}}, "not one convscope rebuilds"),
    ({"builder": "builtins.exec", "kwargs": {}}, "not one convscope rebuilds"),
    ({"builder": "torchvision.resnet18", "kwargs": {"weights": "IMAGENET1K_V1"}}, "not allowed"),
    ({"builder": "convscope.zoo.resnet", "kwargs": {"width": {"a": 1}}}, "not allowed"),
    ({"builder": "convscope.zoo.resnet", "kwargs": {"width": 8}}, "do not fit"),
    ({"builder": "convscope.zoo.resnet", "kwargs": {"blocks": [0]}}, "fails"),
    ({"builder": ["x"], "kwargs": {}}, "damaged"),
])
def test_crafted_architecture_records_are_refused(tmp_path, record, match):
    with cs.Run(tmp_path, "r", quiet=True) as run:
        run.log_checkpoint(cs.zoo.resnet(width=4))
    path = run.path / "checkpoints" / "model.arch.json"
    path.write_text(json.dumps({"format": 1, "key": "model", **record}))
    with pytest.raises(StoreError, match=match):
        cs.open_run(run.path).load_model()
    assert not (tmp_path / "x").exists()


def test_garbage_record_and_missing_checkpoint_name_the_fix(tmp_path):
    with cs.Run(tmp_path, "r", quiet=True) as run:
        run.log_checkpoint(cs.zoo.resnet(width=4))
    reader = cs.open_run(run.path)
    with pytest.raises(StoreError, match="has no checkpoint 'nope'.*It has: model"):
        reader.load_model("nope")
    (run.path / "checkpoints" / "model.arch.json").write_bytes(b"\x00{not json")
    with pytest.raises(StoreError, match="damaged.*re-save"):
        reader.load_model()
    (run.path / "checkpoints" / "model.arch.json").unlink()
    with pytest.raises(StoreError, match="weights only.*load_state_dict"):
        reader.load_model()


def test_unknown_model_is_pickled_with_a_warning_and_needs_trust(tmp_path):
    torch.manual_seed(0)
    model = Net().eval()
    with cs.Run(tmp_path, "r", quiet=True) as run:
        with pytest.warns(UserWarning, match="register_builder"):
            run.log_checkpoint(model)
    reader = cs.open_run(run.path)
    assert ck.checkpoint_form(run.path, "model") == "pickle"
    with pytest.raises(StoreError, match="trust=True"):
        reader.load_model()
    x = torch.rand(1, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(reader.load_model(trust=True)(x), model(x))
    # a builder registered in this process makes it rebuildable; the stale pickle goes away
    ck.register_builder("tests.Net", Net, model_class=Net,
                        infer=lambda m: {"width": m.conv.out_channels})
    try:
        with cs.Run(tmp_path, "r", resume=True, quiet=True) as run:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                run.log_checkpoint(model)
        assert not (run.path / "checkpoints" / "model.pt").exists()
        assert ck.checkpoint_form(run.path, "model") == "rebuild"
        with torch.no_grad():
            torch.testing.assert_close(reader.load_model()(x), model(x))
    finally:
        ck._REGISTERED.pop("tests.Net", None)
    with pytest.raises(StoreError, match="register_builder"):  # not registered: refused
        reader.load_model()


def test_unpicklable_unknown_model_keeps_its_weights(tmp_path):
    class Local(nn.Module):  # a local class cannot be pickled
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 2)

    model = Local()
    with cs.Run(tmp_path, "r", quiet=True) as run:
        with pytest.warns(UserWarning, match="weights only"):
            run.log_checkpoint(model)
    assert ck.checkpoint_form(run.path, "model") == "state"
    with pytest.raises(StoreError, match="load_state_dict"):
        cs.open_run(run.path).load_model(trust=True)
    state = torch.load(run.path / "checkpoints" / "model.state.pt", weights_only=True)
    torch.testing.assert_close(state["fc.weight"], model.fc.weight.detach())


def test_explicit_arch_is_checked(tmp_path):
    model = cs.zoo.resnet(width=4)
    with cs.Run(tmp_path, "r", quiet=True) as run:
        with pytest.raises(InputError, match="does not rebuild"):
            run.log_checkpoint(model, arch=("convscope.zoo.resnet", {"width": 8}))
        with pytest.raises(InputError, match="not one convscope rebuilds"):
            run.log_checkpoint(model, arch="os.system")
        run.log_checkpoint(model, arch=("convscope.zoo.resnet", {"width": 4}),
                           example_inputs=torch.rand(2, 3, 32, 32))
    assert ck.input_shape(run.path) == [3, 32, 32]
    with pytest.raises(InputError, match="pick another key"):
        ck.save_checkpoint(run.path, model, "x.state")


def test_register_builder_refuses_reserved_names():
    with pytest.raises(InputError):
        ck.register_builder("torchvision.evil", print)
    with pytest.raises(InputError):
        ck.register_builder("mine", 3)
    assert all(isinstance(n, str) for n in ck.builder_names())


def test_diagnose_checkpoint_errors_say_what_to_do(tmp_path):
    with pytest.raises(InputError, match="torch.save"):
        diagnose_checkpoint(tmp_path / "missing.pt", cs.zoo.resnet, torch.rand(2, 3, 32, 32))
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(InputError, match="not a state dict"):
        diagnose_checkpoint(tmp_path / "list.pt", cs.zoo.resnet, torch.rand(2, 3, 32, 32))
    torch.save(cs.zoo.resnet(width=8).state_dict(), tmp_path / "w8.pt")
    with pytest.raises(ConvscopeError, match="same architecture"):
        diagnose_checkpoint(tmp_path / "w8.pt", lambda: cs.zoo.resnet(width=4),
                            torch.rand(2, 3, 32, 32))
    with pytest.raises(ConvscopeError, match="model_fn"):
        diagnose_checkpoint(tmp_path / "w8.pt", lambda: 1 / 0, torch.rand(2, 3, 32, 32))


def test_build_budget_counts_registrations_exactly_and_cleans_up():
    """k Linear layers in a Sequential register k modules and 2k parameters: a budget of 3k
    builds, 3k - 1 stops; torch's global registration hooks are gone afterwards, also after the
    stop, and a build in another thread is not counted."""
    import threading

    from torch.nn.modules import module as tm

    hooks = (tm._global_module_registration_hooks, tm._global_parameter_registration_hooks,
             tm._global_buffer_registration_hooks)
    before = [len(h) for h in hooks]

    def build(k):
        return nn.Sequential(*[nn.Linear(2, 2) for _ in range(k)])

    assert len(ck._on_meta(build, {"k": 5}, budget=15)) == 5
    with pytest.raises(ck._OverBudget):
        ck._on_meta(build, {"k": 5}, budget=14)
    assert [len(h) for h in hooks] == before
    # another thread builds 50 layers while this one holds a budget of 15
    go, done = threading.Event(), []

    def other():
        go.wait()
        done.append(len(build(50)))

    t = threading.Thread(target=other)
    t.start()

    def slow(k):
        go.set()
        t.join()
        return build(k)

    assert len(ck._on_meta(slow, {"k": 5}, budget=15)) == 5 and done == [50]
    assert [len(h) for h in hooks] == before


@pytest.mark.parametrize("name", ["resnet50", "vit_b_16", "densenet121", "maxvit_t", "alexnet"])
def test_torchvision_models_build_within_the_budget(name):
    fn = ck._resolve(f"torchvision.{name}")
    probe = ck._on_meta(fn, {})
    n = len(probe.state_dict())
    ck._on_meta(fn, {}, budget=ck.BUILD_PER_ENTRY * n + ck.BUILD_SLACK)  # no _OverBudget
    # and the budget is real: these models register over 1.4 per state-dict entry
    with pytest.raises(ck._OverBudget):
        ck._on_meta(fn, {}, budget=int(1.4 * n))


# -- one copy of the weights (issue 14, item 4) --------------------------------------------------
def _listing(run_path: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in (run_path / "checkpoints").iterdir()}


def _state_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


@pytest.mark.parametrize("name", ["zoo", "resnet18", "regnet_y_400mf"])
def test_zoo_and_torchvision_models_store_their_weights_once(tmp_path, name):
    """The checkpoint directory holds the state dict and a record of a few hundred bytes,
    nothing else; RegNet builders (which compute their widths with tensors, so they cannot be
    built on the meta device) included: before, they fell back to a second, pickled copy."""
    torch.manual_seed(0)
    if name == "zoo":
        model = cs.zoo.resnet(num_classes=5, width=8)
        x, layer = torch.rand(2, 3, 32, 32), "layer2.0.conv1"
    else:
        tv = pytest.importorskip("torchvision")
        model = tv.models.get_model(name, weights=None)
        x, layer = torch.rand(2, 3, 64, 64), ("layer1.0.conv1" if name == "resnet18"
                                              else "trunk_output.block2")
    _round_trip(tmp_path, model, x, layer)
    files = _listing(tmp_path / "r")
    assert sorted(files) == ["model.arch.json", "model.state.pt"]
    assert files["model.arch.json"] < 1024
    weights = _state_bytes(model)
    assert weights <= files["model.state.pt"] < weights * 1.05 + 100_000


def test_regnet_builds_on_the_meta_device_without_memory():
    tv = pytest.importorskip("torchvision")
    with pytest.raises(NotImplementedError):  # why the fallback exists
        with torch.device("meta"):
            tv.models.regnet_y_400mf(weights=None)
    from torch.nn.modules import module as tm

    hooks = (tm._global_module_registration_hooks, tm._global_parameter_registration_hooks,
             tm._global_buffer_registration_hooks)
    before = [len(h) for h in hooks]
    probe = ck._on_meta(ck._resolve("torchvision.regnet_y_400mf"), {}, budget=10_000)
    tensors = list(probe.state_dict().values())
    assert tensors and all(t.is_meta for t in tensors)
    assert ck._architecture(probe, None) == ("torchvision.regnet_y_400mf", {})
    assert [len(h) for h in hooks] == before  # the fallback's hooks are gone
    with pytest.raises(ck._OverBudget):  # and the budget holds in the fallback too
        ck._on_meta(ck._resolve("torchvision.regnet_y_400mf"), {}, budget=100)


def test_backbone_builders_never_download(monkeypatch):
    """torchvision's detection builders default to ImageNet backbone weights even with
    weights=None: the resolved builder passes weights_backbone=None, and a record may not ask
    for a backbone."""
    pytest.importorskip("torchvision")
    import torch.hub

    calls = []
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url",
                        lambda *a, **k: calls.append(a) or 1 / 0)
    fn = ck._resolve("torchvision.fasterrcnn_mobilenet_v3_large_320_fpn")
    probe = ck._on_meta(fn, {"num_classes": 3})
    assert calls == [] and probe.roi_heads.box_predictor.cls_score.out_features == 3
    with pytest.raises(StoreError, match="weights_backbone"):
        ck._check_kwargs({"weights_backbone": "DEFAULT"})


class Wide(nn.Module):
    """A user's model with a non-persistent buffer and a frozen layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 64, 3)
        self.fc = nn.Linear(64, 100)
        self.register_buffer("offset", torch.arange(100.0), persistent=False)
        self.conv.weight.requires_grad_(False)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3))) + self.offset


def test_unknown_model_stores_its_weights_once_and_loads_with_trust(tmp_path):
    torch.manual_seed(0)
    model = Wide().eval()
    with torch.no_grad():
        model.offset.mul_(3)  # a buffer that is not in the state dict, changed after init
    with cs.Run(tmp_path, "r", quiet=True) as run:
        with pytest.warns(UserWarning, match="without its weights"):
            run.log_checkpoint(model)
    files = _listing(run.path)
    assert sorted(files) == ["model.arch.json", "model.pt", "model.state.pt"]
    weights = _state_bytes(model)
    assert weights <= files["model.state.pt"] < weights * 1.05 + 100_000
    assert files["model.pt"] < 20_000  # the module without its weights (kilobytes)
    assert model.conv.weight.device.type == "cpu"  # the model itself is untouched
    rec = json.loads((run.path / "checkpoints" / "model.arch.json").read_text())
    assert rec["pickle_weights"] == "state" and rec["builder"] is None
    with pytest.raises(StoreError, match="trust=True"):
        cs.open_run(run.path).load_model()
    loaded = cs.open_run(run.path).load_model(trust=True)
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)
    assert not loaded.conv.weight.requires_grad and loaded.fc.weight.requires_grad
    torch.testing.assert_close(loaded.offset, model.offset)
    assert isinstance(loaded.conv.weight, nn.Parameter)
    # the weights file is the only copy: without it the pickle does not load
    (run.path / "checkpoints" / "model.state.pt").unlink()
    with pytest.raises(StoreError, match="missing"):
        cs.open_run(run.path).load_model(trust=True)


def test_previous_versions_two_copy_checkpoints_still_load(tmp_path):
    """The layout the version before this one wrote for an unknown model: the state dict, a
    whole-module pickle with its weights and a record without "pickle_weights"."""
    torch.manual_seed(0)
    model = Wide().eval()
    with cs.Run(tmp_path, "r", quiet=True) as run:
        run.log_scalars(0, loss=1.0)
    root = run.path / "checkpoints"
    root.mkdir()
    torch.save(model.state_dict(), root / "model.state.pt")
    torch.save(model, root / "model.pt")
    (root / "model.arch.json").write_text(json.dumps({
        "format": 1, "key": "model", "class": "tests.test_checkpoints.Wide", "builder": None,
        "kwargs": {}, "input_shape": None, "state": "model.state.pt", "pickle": "model.pt"}))
    assert ck.checkpoint_form(run.path) == "pickle"
    loaded = cs.open_run(run.path).load_model(trust=True)
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)


class Tied(nn.Module):
    """A user's model whose decoder reuses the encoder's weight (tied weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(6, 4, bias=False)
        self.dec = nn.Linear(4, 6, bias=False)
        self.dec.weight = self.enc.weight  # [4, 6] used transposed below

    def forward(self, x):
        return self.enc(x) @ self.dec.weight


def test_unknown_model_with_tied_weights_keeps_them_tied(tmp_path):
    torch.manual_seed(0)
    model = Tied().eval()
    with cs.Run(tmp_path, "r", quiet=True) as run:
        with pytest.warns(UserWarning, match="without its weights"):
            run.log_checkpoint(model)
    loaded = cs.open_run(run.path).load_model(trust=True)
    assert loaded.dec.weight is loaded.enc.weight
    x = torch.rand(3, 6)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)


def test_dcgan_generator_recorded_before_the_papers_output_rebuilds_with_tanh(tmp_path):
    """Records written before the generator's default output became the paper's ReLU have no
    "output": they rebuild with the tanh they were trained with (outputs equal)."""
    torch.manual_seed(0)
    gen = cs.zoo.DCGANGenerator(version=2, latent_dim=8, image_size=16, channels=1,
                                output="tanh").eval()
    with cs.Run(tmp_path, "old", quiet=True) as run:
        run.log_checkpoint(gen, "gen")
    arch = tmp_path / "old" / "checkpoints" / "gen.arch.json"
    rec = json.loads(arch.read_text())
    assert rec["kwargs"].pop("output") == "tanh"
    arch.write_text(json.dumps(rec))  # as an older version wrote it
    z = torch.randn(3, 8)
    with torch.no_grad():
        got = cs.open_run(tmp_path / "old").load_model("gen")(z)
        torch.testing.assert_close(got, gen(z))
    assert float(got.min()) < 0  # tanh, not the ReLU default
