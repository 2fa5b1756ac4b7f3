"""Runs recorded by convscope 0.1.0 (before the formats moved into ``convscope.formats``) still
open: every dashboard page shows the committed fixture run, and ``open_run`` reads every concern.

The fixture (``tests/fixtures/logdir-0.1.0/intact``) was recorded once by
``tests/fixtures/record_fixture.py`` and is never re-recorded here.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import convscope as cs

from .dash_http import DashClient
from .test_app_damaged import INTACT, PAGES

FIXTURE = Path(__file__).parent / "fixtures" / "logdir-0.1.0"
RUN = "intact"


@pytest.fixture(scope="module")
def logdir(tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("fixture") / "logdir"
    shutil.copytree(FIXTURE, dst)  # the committed files stay untouched
    return dst


@pytest.fixture(scope="module")
def reader(logdir):
    return cs.open_run(logdir / RUN)


@pytest.mark.browser  # starts a real server
@pytest.mark.parametrize("page", sorted(PAGES))
def test_every_page_shows_the_old_run(logdir, module_serve, page):
    client = DashClient(module_serve(logdir, refresh_ms=600_000).url)
    text = PAGES[page](client, RUN)
    assert INTACT[page] in text, page
    assert "damage-notice" not in text and "Damaged files" not in text, page
    assert "could not show" not in text and "is damaged" not in text, page


def test_open_run_reads_meta_and_scalars(reader):
    assert reader.meta["convscope_version"] == "0.1.0"
    assert reader.meta["status"] == "ended"
    assert not reader.problems
    assert set(reader.scalar_tags()) == {"loss", "acc"}
    s = reader.scalars()
    np.testing.assert_allclose(s["loss"].to_numpy(), [1.0 / (k + 1) for k in range(5)])


def test_open_run_reads_every_concern(reader):
    assert reader.has_object("graph", "model")
    graph = reader.object("graph", "model")
    assert any(n.get("type") == "Conv2d" for n in graph["nodes"])
    assert reader.profile_shares("time_share")
    fm = reader.array("feature_maps", "layer1.0.conv2")
    assert fm.ndim == 4 and fm.shape[0] == 4
    assert set(reader.objects("attributions")) == {"samples", "second"}
    assert reader.array("attributions", "samples.saliency").shape[0] == 4
    assert set(reader.objects("diagnosis")) == {"model", "again"}
    assert reader.has_table("top_examples") and reader.has_table("embedding")
    assert reader.array("preferred_inputs", "layer1.0.conv2").shape[0] == 2
    vm = reader.validation_matrix()
    assert vm.correct.shape == (3, 4)
    assert reader.watched_layers()


@pytest.mark.parametrize("key", ["model", "my model"])
def test_open_run_loads_both_checkpoints(reader, key):
    assert "model" in reader.checkpoints()
    model = reader.load_model(key)
    torch.manual_seed(0)
    ref = cs.zoo.resnet(width=4).eval()
    for (n, a), (_, b) in zip(model.state_dict().items(), ref.state_dict().items(), strict=True):
        assert torch.equal(a, b), n
