"""``Run.log_*`` have explicit signatures (IDEs show them): no ``**kwargs`` except the one
documented escape hatch, every keyword documented, the same defaults as the recording function
behind it, and every argument really reaches that function."""

from __future__ import annotations

import inspect

import pytest

import convscope as cs
from convscope.record import attribution, cnnvis, diagnosis, features, projections, structure

METHODS = {  # Run method -> (module, function) of the recording code behind it
    "log_model": (structure, "log_model"),
    "log_feature_maps": (structure, "log_feature_maps"),
    "log_embedding": (structure, "log_embedding"),
    "log_preferred_inputs": (features, "log_preferred_inputs"),
    "log_top_examples": (features, "log_top_examples"),
    "log_diagnosis": (diagnosis, "log_diagnosis"),
    "log_attributions": (attribution, "log_attributions"),
    "log_projections": (projections, "log_projections"),
    "log_cnnvis": (cnnvis, "log_cnnvis"),
}
#: the one **kwargs left: maximize's options beyond the common ones (its render configuration
#: belongs to convscope.features)
ESCAPE_HATCH = {"log_preferred_inputs": "maximize_options"}
#: parameters whose None default means "the recording function's default"
NONE_MEANS_DEFAULT = {("log_attributions", "methods")}
#: where a recording function forwards **kwargs: the analysis functions that accept them
FORWARDED = {"log_diagnosis": ("convscope.diagnose", ("diagnose", "diagnose_dataset"))}


def _params(fn):
    return [p for p in inspect.signature(fn).parameters.values() if p.name != "self"]


@pytest.mark.parametrize("name", list(METHODS))
def test_no_var_keyword_and_every_parameter_documented(name):
    method = getattr(cs.Run, name)
    var_kw = [p.name for p in _params(method) if p.kind is inspect.Parameter.VAR_KEYWORD]
    assert var_kw == ([ESCAPE_HATCH[name]] if name in ESCAPE_HATCH else [])
    doc = inspect.getdoc(method)
    assert "Args:" in doc and "Returns:" in doc
    args = doc.split("Args:")[1].split("Returns:")[0]
    for p in _params(method):
        assert p.name in args, f"Run.{name} does not document {p.name!r}"


@pytest.mark.parametrize("name", list(METHODS))
def test_the_recording_function_accepts_every_parameter_with_the_same_default(name):
    import importlib

    module, fn_name = METHODS[name]
    target = inspect.signature(getattr(module, fn_name)).parameters
    takes_more = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in target.values())
    forwarded: set[str] = set()
    if name in FORWARDED:
        mod = importlib.import_module(FORWARDED[name][0])
        for f in FORWARDED[name][1]:
            forwarded |= set(inspect.signature(getattr(mod, f)).parameters)
    for p in _params(getattr(cs.Run, name)):
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            assert takes_more
            continue
        if p.name in target:
            if target[p.name].default is not inspect.Parameter.empty and (name, p.name) not in \
                    NONE_MEANS_DEFAULT and p.name != "quiet":
                assert p.default == target[p.name].default, (name, p.name)
        elif p.name == "quiet":  # Run applies it itself (the run's quiet while it runs)
            assert name in ("log_model", "log_diagnosis")
        else:
            assert p.name in forwarded, f"{fn_name} does not accept {p.name!r}"
            f = [getattr(importlib.import_module(FORWARDED[name][0]), g)
                 for g in FORWARDED[name][1]]
            defaults = {inspect.signature(g).parameters[p.name].default for g in f
                        if p.name in inspect.signature(g).parameters}
            assert defaults == {p.default}, (name, p.name, defaults)


def test_preferred_inputs_common_options_are_maximize_keywords():
    from convscope.features import maximize

    accepted = set(inspect.signature(maximize).parameters)
    run_params = {p.name for p in _params(cs.Run.log_preferred_inputs)}
    own = {"model", "layers", "units", "max_units", "sharded", "quiet", "maximize_options",
           "method", "progress"}  # progress: issue 15 (helper A)
    assert run_params - own <= accepted


class _Spy:
    def __init__(self):
        self.calls: list[tuple[tuple, dict]] = []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return {}


def _call_with_every_argument(run, name):
    """Call ``run.<name>`` with a distinct non-default value for every keyword; returns the
    values given."""
    given = {}
    for i, p in enumerate(_params(getattr(cs.Run, name))):
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            given["decorrelate"] = False
        elif p.name == "quiet":
            given[p.name] = not run.quiet
        elif p.name == "reference":
            given[p.name] = None
        elif p.name == "max_elements":
            given[p.name] = 1000
        else:
            given[p.name] = f"value-{i}"
    getattr(run, name)(**given)
    return given


@pytest.mark.parametrize("name", [n for n in METHODS if n != "log_preferred_inputs"])
def test_every_argument_reaches_the_recording_function(tmp_path, monkeypatch, name):
    module, fn_name = METHODS[name]
    spy = _Spy()
    monkeypatch.setattr(module, fn_name, spy)
    with cs.Run(tmp_path, "r", quiet=True) as run:
        given = _call_with_every_argument(run, name)
        ((args, kwargs),) = spy.calls
        assert args[0] is run
        positional = [p.name for p in inspect.signature(getattr(cs.Run, name)).parameters
                      .values() if p.name != "self"][:len(args) - 1]
        passed = {**dict(zip(positional, args[1:], strict=True)), **kwargs}
        for key, value in given.items():
            if key == "quiet" and name in ("log_model", "log_diagnosis"):
                continue  # applied as the run's quiet during the call
            assert passed[key] == value, (name, key)


def test_preferred_inputs_arguments_reach_maximize(tmp_path, monkeypatch):
    import importlib

    import torch

    mx = importlib.import_module("convscope.features.maximize")  # the module, not the function

    seen = {}

    def fake(model, layer, units, **kw):
        seen.update(kw, layer=layer, units=list(units))
        n = len(units)
        return torch.zeros(n, 3, 8, 8), torch.zeros(n)

    monkeypatch.setattr(mx, "maximize", fake)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))
    with cs.Run(tmp_path, "r", quiet=False) as run:
        run.log_preferred_inputs(net, "0", [1, 2], seed=4, steps=3, lr=0.2, size=(8, 8),
                                 param="pixel", batch_size=1, quiet=True, optimizer="sgd")
    assert seen["layer"] == "0" and seen["units"] == [1, 2]
    assert (seen["seed"], seen["steps"], seen["lr"], seen["size"], seen["param"],
            seen["batch_size"], seen["quiet"], seen["optimizer"]) == \
        (4, 3, 0.2, (8, 8), "pixel", 1, True, "sgd")
    assert "mean" not in seen and "transforms" not in seen  # None: maximize's own default
    meta = cs.open_run(tmp_path / "r").arrays("preferred_inputs")
    assert len(meta) == 1


def test_quiet_none_follows_the_run_and_is_restored(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(structure, "log_model",
                        lambda run, *a, quiet=None, **k: seen.append(
                            run.quiet if quiet is None else quiet) or (None, None))
    monkeypatch.setattr(attribution, "log_attributions",
                        lambda run, *a, quiet=None, **k: seen.append(quiet) or {})
    with cs.Run(tmp_path, "r", quiet=True) as run:
        run.log_model(None, None)
        run.log_model(None, None, quiet=False)
        run.log_attributions(None, None)
        run.log_attributions(None, None, quiet=False)
        assert run.quiet is True
    assert seen == [True, False, True, False]
