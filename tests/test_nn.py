"""convscope.nn, the torch kernel: one layer specification, one output recorder that stops with a
BaseException, one context that restores the model, batching, shards and min-max."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import convscope as cs
import convscope.distributed as distributed
from convscope.errors import InputError, LayerNotFoundError
from convscope.nn import (
    Recorder,
    StopForward,
    chunks,
    forward,
    layer_path,
    minmax,
    preserved,
    resolve_layer,
    resolve_layers,
    shard_bounds,
    upsample,
)


class Twice(nn.Module):
    """conv -> relu -> conv -> relu (the same ReLU module twice) -> head, counting head calls."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.c2 = nn.Conv2d(4, 5, 3, padding=1)
        self.bn = nn.BatchNorm2d(5)
        self.head = nn.Linear(5, 3)
        self.head_calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn(self.c2(self.relu(self.c1(x)))))
        self.head_calls += 1
        return self.head(y.mean((2, 3)))


class Swallowing(Twice):
    """A forward that catches ``Exception`` around its body (and counts what it swallowed)."""

    def __init__(self) -> None:
        super().__init__()
        self.swallowed = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        try:
            return super().forward(x)
        except Exception:
            self.swallowed += 1
            return torch.zeros(x.shape[0], 3)


def test_layer_spec_forms_name_the_same_layer() -> None:
    m = Twice()
    assert layer_path(m, "c2") == "c2"
    assert layer_path(m, "relu:2") == "relu:2"
    assert layer_path(m, m.c2) == "c2"
    assert layer_path(m, nn.BatchNorm2d) == "bn"
    assert layer_path(m, lambda n, mod: n == "head") == "head"
    assert layer_path(m, ["c1"]) == "c1"
    assert resolve_layer(m, m.bn) == ("bn", m.bn)
    assert list(resolve_layers(m, [nn.Conv2d, "head", m.relu])) == ["c1", "relu", "c2", "head"]
    with pytest.raises(LayerNotFoundError, match="names 2 modules.*'c1', 'c2'"):
        layer_path(m, nn.Conv2d)  # one layer wanted, two match
    with pytest.raises(LayerNotFoundError, match="not part of the model"):
        layer_path(m, nn.Conv2d(3, 3, 1))
    with pytest.raises(LayerNotFoundError, match="Did you mean.*'c2'"):
        layer_path(m, "c3")


def test_recorder_names_calls_and_stops_with_a_base_exception() -> None:
    m = Swallowing().eval()
    x = torch.rand(2, 3, 8, 8)
    with Recorder({"relu": m.relu}) as rec:
        rec.run(m, x)
    assert list(rec.store) == ["relu", "relu:2"]
    # the first call's output is the ReLU of conv 1 (computed here independently)
    assert torch.equal(rec.store["relu"], torch.relu(m.c1(x)).detach())
    assert issubclass(StopForward, BaseException) and not issubclass(StopForward, Exception)
    with Recorder({"relu": m.relu}, keys={"relu"}, stop=True) as rec:
        assert rec.run(m, x) is None
    assert rec.stopped and list(rec.store) == ["relu"]
    assert m.swallowed == 0 and m.head_calls == 1  # the stop passed the model's except
    assert not m.relu._forward_hooks  # hooks removed


def test_maximize_stop_is_not_swallowed_by_the_models_except() -> None:
    """features.maximize used to stop with an Exception that such a forward swallowed."""
    torch.manual_seed(0)
    m = Swallowing()
    cs.features.maximize(m, "c1", [0, 1], steps=3, size=16, quiet=True)
    assert m.swallowed == 0
    assert m.head_calls == 0  # every forward stopped after c1: the head never ran


def test_maximize_and_top_examples_take_the_module_itself() -> None:
    torch.manual_seed(0)
    m = Twice()
    a = cs.features.maximize(m, "c2", [0, 3], steps=3, size=16, seed=1, quiet=True)
    b = cs.features.maximize(m, m.c2, [0, 3], steps=3, size=16, seed=1, quiet=True)
    assert torch.equal(a, b)
    data = torch.rand(10, 3, 8, 8)
    t1 = cs.features.top_examples(m, "bn", data, k=2, batch_size=4, quiet=True)
    t2 = cs.features.top_examples(m, nn.BatchNorm2d, data, k=2, batch_size=4, quiet=True)
    assert torch.equal(t1.indices, t2.indices) and torch.equal(t1.values, t2.values)
    g1 = cs.explain.grad_cam(m, data[:2], layer="c2")
    g2 = cs.explain.grad_cam(m, data[:2], layer=lambda n, mod: n == "c2")
    assert torch.equal(g1, g2)


def test_preserved_restores_everything_after_an_error() -> None:
    m = Twice().train()
    m.c1.weight.requires_grad_(False)
    bn_mean = m.bn.running_mean.clone()
    bn_count = int(m.bn.num_batches_tracked)
    with pytest.raises(RuntimeError, match="boom"), preserved(m, eval_mode=False, freeze=True):
        assert not m.c2.weight.requires_grad
        m.relu.register_forward_hook(lambda *a: None)
        m(torch.rand(4, 3, 8, 8) * 5)  # train mode: updates the running statistics
        assert not torch.equal(m.bn.running_mean, bn_mean)
        m.eval()
        raise RuntimeError("boom")
    assert m.training and m.bn.training
    assert not m.c1.weight.requires_grad and m.c2.weight.requires_grad
    assert torch.equal(m.bn.running_mean, bn_mean) and int(m.bn.num_batches_tracked) == bn_count
    assert not m.relu._forward_hooks


def test_forward_names_the_failing_layer() -> None:
    m = Twice()
    with pytest.raises(InputError, match=r"in layer 'c1' \(Conv2d\).*\[B, 3, H, W\]"):
        forward(m, (torch.rand(1, 4, 8, 8),))


def test_minmax_and_upsample_against_hand_computed_values() -> None:
    x = torch.tensor([[[1.0, 3.0], [5.0, 9.0]], [[2.0, 2.0], [2.0, 2.0]]])
    out = minmax(x)
    assert torch.equal(out[0], torch.tensor([[0.0, 0.25], [0.5, 1.0]]))
    assert torch.equal(out[1], torch.zeros(2, 2))  # constant map -> fill
    rows = minmax(x, -1, fill=0.5)  # per row
    assert torch.equal(rows, torch.tensor([[[0.0, 1.0], [0.0, 1.0]], [[0.5, 0.5], [0.5, 0.5]]]))
    whole = minmax(x, ())
    assert float(whole.min()) == 0.0 and float(whole.max()) == 1.0
    assert float(whole[0, 0, 1]) == pytest.approx((3 - 1) / 8)
    half = minmax(x.half())
    assert half.dtype == torch.float16 and torch.equal(half.float(), out)
    up = upsample(torch.tensor([[[0.0, 1.0]]]), (1, 4), align_corners=True)
    assert torch.allclose(up, torch.tensor([[[0.0, 1 / 3, 2 / 3, 1.0]]]))


@pytest.mark.parametrize("n,size", [(0, 3), (1, 5), (10, 3), (12, 4), (7, 100)])
def test_chunks_cover_the_range_once_in_order(n: int, size: int) -> None:
    got = [i for sl in chunks(n, size) for i in range(sl.start, sl.stop)]
    assert got == list(range(n))
    assert all(sl.stop - sl.start <= size for sl in chunks(n, size))


def test_distributed_reexports_the_kernel() -> None:
    assert distributed.shard_bounds is shard_bounds
    assert distributed.rank_world() == (0, 1)
    assert [shard_bounds(10, r, 3) for r in range(3)] == [(0, 4), (4, 7), (7, 10)]


def test_no_submodule_shadows_an_exported_name_and_dist_needs_no_torch() -> None:
    """``convscope.nn`` loads its parts on first use: a submodule called like one of the names it
    exports would replace that name once loaded; ``nn.dist`` must load without torch (the run
    writers use it)."""
    import pkgutil
    import subprocess
    import sys

    import convscope.nn as knl

    subs = {m.name for m in pkgutil.iter_modules(knl.__path__)}
    assert not subs & set(knl.__all__)
    code = ("import sys, convscope.nn.dist as d; print(d.rank_world(), d.env_rank_world(), "
            "'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"RANK": "2", "WORLD_SIZE": "4", "PATH": ""})
    assert out.stdout.split() == ["(0,", "1)", "(2,", "4)", "False"]
