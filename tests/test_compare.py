"""Comparing two runs (``formats.compare``, ``convscope compare``) and storing CKA
(``run.log_cka``).

Oracles: a fault injected into run B only (a convolution whose every channel is dead) must
show as a new dead-maps finding at that layer and nowhere else; the attribution metric means
against pandas on the stored tables; the stored CKA matrix against ``cka_matrix`` recomputed.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import convscope as cs
from convscope.embed import cka_matrix
from convscope.formats import attribution
from convscope.formats import cka as cka_fmt
from convscope.formats.compare import compare


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.relu2(self.conv2(self.relu1(self.conv1(x)))).mean((2, 3)))


def _record(logdir, name, model, x, y, other=None):
    with cs.Run(logdir, name, quiet=True) as run:
        run.log_diagnosis(model, x, views=False)
        run.log_attributions(model, x[:4], labels=y[:4], methods=["saliency", "grad_cam"])
        run.log_preferred_inputs(model, layers=["conv2"], max_units=2, steps=4, quiet=True)
        if other is not None:
            run.log_cka(model, other, x, batch_size=8, label="A", other_label="B")
    return cs.open_run(logdir / name)


def record_two_runs(logdir):
    """Runs "a" (with the CKA of A against B) and "b": B is A with every channel of conv2 dead
    (negative bias, zero weights). Returns (reader a, reader b, (model a, model b, images))."""
    torch.manual_seed(0)
    a = Net().eval()
    b = Net().eval()
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        b.conv2.weight.zero_()
        b.conv2.bias.fill_(-1.0)
    x = torch.rand(16, 3, 16, 16)
    y = torch.arange(16) % 4
    ra = _record(logdir, "a", a, x, y, other=b)
    rb = _record(logdir, "b", b, x, y)
    return ra, rb, (a, b, x)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("cmp")
    return (logdir, *record_two_runs(logdir))


def test_injected_fault_is_the_new_finding(two_runs):
    _, ra, rb, _ = two_runs
    c = compare(ra, rb)
    new = c.findings[c.findings["status"] == "new"]
    dead = new[new["code"] == "dead-maps"]
    assert dead["layer"].tolist() == ["relu2"] or dead["layer"].tolist() == ["conv2"], new
    # nothing about conv1 changed: its findings are all kept
    assert set(c.findings[c.findings["layer"].isin(["conv1", "relu1"])]["status"]) <= {"kept"}
    # B against itself: everything kept
    same = compare(rb, rb)
    assert set(same.findings["status"]) == {"kept"} and same.counts()["kept"] == len(
        same.findings)


def test_metric_means_are_the_tables_means(two_runs):
    _, ra, rb, _ = two_runs
    c = compare(ra, rb)
    ta, tb = attribution.metrics(ra, "samples"), attribution.metrics(rb, "samples")
    for row in c.metrics.itertuples(index=False):
        wa = ta[ta["method"] == row.method][row.metric].astype(float).mean()
        wb = tb[tb["method"] == row.method][row.metric].astype(float).mean()
        assert row.a == pytest.approx(wa) and row.b == pytest.approx(wb)
        assert row.delta == pytest.approx(wb - wa)
    assert {"saliency", "grad_cam"} <= set(c.metrics["method"])
    assert c.preferred["layer"].tolist() == ["conv2"]
    assert bool(c.preferred["in_a"].iloc[0]) and bool(c.preferred["in_b"].iloc[0])


def test_stored_cka_is_the_computed_matrix(two_runs):
    _, ra, _, (a, b, x) = two_runs
    stored = cka_fmt.load(ra, "cka")
    want = cka_matrix(a, b, x, batch_size=8, quiet=True)
    assert stored.layers_a == want.layers_a == ["conv1", "conv2", "fc"]
    np.testing.assert_allclose(stored.matrix, want.matrix.numpy(), rtol=1e-5, atol=1e-6)
    assert stored.label_a == "A" and stored.label_b == "B" and stored.n_images == 16
    # conv1 is the same module in both (B differs from conv2 on): CKA 1 on that pair
    assert stored.matrix[0, 0] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(cs.errors.InputError, match="key"):
        with cs.Run(two_runs[0], "bad", quiet=True) as run:
            run.log_cka(a, b, x, key="../x")


def test_cli_prints_the_comparison(two_runs):
    logdir, ra, rb, _ = two_runs
    out = subprocess.run([sys.executable, "-m", "convscope", "compare", str(ra.path),
                          str(rb.path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "+ [model] dead-maps @" in text
    assert "attribution metrics" in text and "[samples] grad_cam" in text
    assert "CKA 'cka' in a (A x B, 16 images)" in text
    assert "conv1                    -> conv1" in text
    bad = subprocess.run([sys.executable, "-m", "convscope", "compare", str(ra.path),
                          str(logdir / "missing")], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr


def test_cka_figure_names_every_layer_and_keeps_rows_legible():
    from convscope.figures.compare import cka_figure

    for n in (3, 13, 54):
        names = [f"layer{i}.conv" for i in range(n)]
        fig = cka_figure(np.eye(n), names, names, "trained", "init")
        assert list(fig.layout.yaxis.tickvals) == names and list(fig.layout.xaxis.tickvals) == names
        plot_h = fig.layout.height - 170  # less the title, x labels and margins
        assert plot_h / n >= 22 or n > 60, (n, fig.layout.height)
        np.testing.assert_array_equal(np.array(fig.data[0].z), np.eye(n))
    with pytest.raises(cs.errors.InputError):
        cka_figure(np.eye(2), ["a"], ["a", "b"])
