"""The ``progress=`` hook of the recording calls (``record.features.ProgressHook``) and of
``features.top_examples``: what each reports, per step, per image batch and per unit, counted by
hand (the oracle: the number of steps, batches and units the call is asked for); an exception
raised by the hook stops the call between units of work, leaves the model as it was, and stores
nothing of the unfinished layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import convscope as cs
from convscope.errors import InputError
from convscope.features.top import top_examples
from convscope.formats import preferred_inputs as pi_format
from convscope.formats import projections as pj_format
from convscope.formats import top_examples as te_format
from convscope.record.features import log_preferred_inputs, log_top_examples
from convscope.record.projections import log_projections


class Stop(Exception):
    pass


def _model():
    torch.manual_seed(0)
    return cs.zoo.resnet(width=4).eval()


@pytest.fixture
def images():
    return torch.rand(10, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_top_examples_reports_every_batch_and_the_result_does_not_change(images):
    model = _model()
    seen = []
    got = top_examples(model, "layer1.0.conv1", images, k=3, batch_size=4, quiet=True,
                       progress=lambda done, total: seen.append((done, total)))
    assert seen == [(0, 10), (4, 10), (8, 10), (10, 10)]  # 10 images in batches of 4
    plain = top_examples(model, "layer1.0.conv1", images, k=3, batch_size=4, quiet=True)
    assert torch.equal(got.indices, plain.indices) and torch.equal(got.values, plain.values)
    # an iterable of batches has no length: the total is unknown
    seen.clear()
    loader = DataLoader(TensorDataset(images), batch_size=6)
    top_examples(model, "layer1.0.conv1", (b[0] for b in loader), k=3, quiet=True,
                 progress=lambda done, total: seen.append((done, total)))
    assert seen == [(0, None), (6, None), (10, None)]


def test_a_hook_that_raises_stops_the_pass_and_restores_the_model(images):
    model = _model().train()
    hooks_before = sum(len(m._forward_hooks) for m in model.modules())

    def stop(done, total):
        if done >= 4:
            raise Stop

    with pytest.raises(Stop):
        top_examples(model, "layer1.0.conv1", images, k=3, batch_size=4, quiet=True,
                     progress=stop)
    assert model.training
    assert sum(len(m._forward_hooks) for m in model.modules()) == hooks_before
    with pytest.raises(InputError, match="progress must be a callable"):
        top_examples(model, "layer1.0.conv1", images, progress="loud")


def test_log_preferred_inputs_reports_every_step(tmp_path):
    model = _model()
    seen = []
    with cs.Run(tmp_path, "r", quiet=True) as run:
        # 2 layers x 3 units in batches of 2: 2 chunks of 5 steps per layer = 20 steps
        log_preferred_inputs(run, model, ["conv1", "layer1.0.conv1"], units=[0, 1, 2], steps=5,
                             batch_size=2, progress=lambda *a: seen.append(a))
    assert seen == [("preferred inputs", d, 20) for d in range(21)]
    with cs.Run(tmp_path, "bad", quiet=True) as run, pytest.raises(InputError, match="callable"):
        log_preferred_inputs(run, model, ["conv1"], steps=2, progress=3)


def test_log_top_examples_counts_images_over_the_layers(tmp_path, images):
    model = _model()
    seen = []
    with cs.Run(tmp_path, "r", quiet=True) as run:
        run.log_top_examples(model, ["conv1", "layer1.0.conv1"], images, k=2, batch_size=8,
                             progress=lambda *a: seen.append(a))
    assert seen == [("top examples", d, 20) for d in (0, 8, 10, 10, 18, 20)]


def test_log_projections_reports_the_ranking_then_each_unit(tmp_path, images):
    model = _model()
    seen = []
    with cs.Run(tmp_path, "r", quiet=True) as run:
        log_projections(run, model, ["conv1", "layer1.0.conv1"], images, units=[0, 2], k=2,
                        batch_size=5, quiet=True, progress=lambda *a: seen.append(a))
    ranking = [s for s in seen if s[0] == "ranking"]
    units = [s for s in seen if s[0] == "projections"]
    assert ranking == [("ranking", d, 20) for d in (0, 5, 10, 10, 15, 20)]
    assert units == [("projections", d, 4) for d in range(5)]  # 2 units x 2 layers
    assert seen == ranking + units  # the ranking passes come first


@pytest.mark.parametrize("call", ["preferred", "top", "projections"])
def test_a_stop_between_units_stores_the_finished_layers_whole_and_nothing_else(tmp_path,
                                                                                  images, call):
    model = _model()
    layers = ["conv1", "layer1.0.conv1"]
    phase_of = {"preferred": "preferred inputs", "top": "top examples",
                "projections": "projections"}
    at = {"preferred": 7, "top": 14, "projections": 3}[call]  # inside the second layer

    def stop(phase, done, total):
        if phase == phase_of[call] and done >= at:
            raise Stop

    run = cs.Run(tmp_path, "r", quiet=True)
    with pytest.raises(Stop):
        if call == "preferred":  # 2 layers x 5 steps
            run.log_preferred_inputs(model, layers, units=[0, 1], steps=5, progress=stop)
        elif call == "top":
            run.log_top_examples(model, layers, images, k=2, batch_size=2, progress=stop)
        else:
            run.log_projections(model, layers, images, units=[0, 1], k=2, progress=stop)
    run.close()
    reader = cs.open_run(run.path)
    fmt = {"preferred": pi_format, "top": te_format, "projections": pj_format}[call]
    meta = fmt.crops_meta if call == "top" else fmt.meta
    assert meta(reader, "conv1") is not None and meta(reader, "layer1.0.conv1") is None
    loaded = fmt.load(reader, "conv1")  # the finished layer reads whole
    assert np.isfinite(np.asarray(loaded.values, dtype=np.float32)[..., :1]).all()


def test_log_projections_on_a_given_ranking_equals_its_own_and_skips_the_pass(tmp_path, images):
    model = _model()
    layers = ["conv1", "layer1.0.conv1"]
    seen = []
    with cs.Run(tmp_path, "own", quiet=True) as run:
        own = log_projections(run, model, layers, images, units=[0, 3], k=4, quiet=True)
    with cs.Run(tmp_path, "given", quiet=True) as run:
        ranked = log_top_examples(run, model, layers[1:], images, k=4, quiet=True)
        given = log_projections(run, model, layers, images, units=[0, 3], k=4, quiet=True,
                                ranked=ranked, progress=lambda *a: seen.append(a))
        # only the layer without a ranking is ranked
        assert [s for s in seen if s[0] == "ranking"] == [("ranking", d, 20) for d in (0, 10)]
        for layer in layers:
            for field in ("indices", "locations", "boxes", "values", "projections", "crops"):
                np.testing.assert_array_equal(getattr(given[layer], field),
                                              getattr(own[layer], field), err_msg=field)
        with pytest.raises(InputError, match="not k=3"):
            log_projections(run, model, layers[1:], images, k=3, ranked=ranked)
        with pytest.raises(InputError, match="ranked must map"):
            log_projections(run, model, ["conv1"], images, ranked={"conv1": ranked[layers[1]]})
