"""The one data-set pass protocol (convscope.nn.passes) and the four passes expressed with it.

For each pass: the partials of a random split of the items, merged, equal the partial of the
whole (exactness of ``merge``), and the finished result matches a brute-force oracle. A fake
world runs every share in this process (``run_split``); the real driver runs under two gloo
processes (torchrun), where a failing rank makes every rank raise instead of waiting."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Subset, TensorDataset

import convscope as cs
from convscope.diagnose.dataset import DiagnosisPass, accumulate_outputs
from convscope.errors import InputError
from convscope.explain.dataset import AttributionPass, attribute_all, unit_scale
from convscope.features.preferred import (
    PreferredInputsPass,
    input_shape,
    layer_channels,
    preferred_inputs,
)
from convscope.features.top import TopExamplesPass
from convscope.nn.passes import (
    DatasetPass,
    Pass,
    Share,
    run_pass,
    run_sharded,
    run_split,
    to_device,
)

from .test_dataset_passes import _images as _dataset_images
from .test_dataset_passes import _net
from .test_distributed import _script, _torchrun


def _images(n: int = 37, seed: int = 1) -> torch.Tensor:
    return _dataset_images(n, seed)


def _random_split(n: int, parts: int, seed: int) -> list[Share]:
    """``parts`` contiguous non-empty shares of ``range(n)`` with random bounds (not aligned to
    any batch size)."""
    g = np.random.default_rng(seed)
    cuts = sorted(g.choice(np.arange(1, n), size=parts - 1, replace=False).tolist())
    bounds = [0, *cuts, n]
    pairs = zip(bounds[:-1], bounds[1:], strict=True)
    return [Share(a, b, r, parts) for r, (a, b) in enumerate(pairs)]


# -- the protocol ---------------------------------------------------------------------------------

class _SumPass(DatasetPass):
    """Sum of every image's pixels and the count of images: a toy pass with an obvious oracle."""

    def __init__(self, data, batch_size=4):
        super().__init__(data, batch_size, "sum")
        self.seen: list[Share] = []

    def run(self, share):
        self.seen.append(share)
        piece, offset = self.piece(share)
        from convscope.nn import iter_batches

        total, count, first = 0.0, 0, None
        for idx, x, _ in iter_batches(piece, self.align, offset)[0]:
            total += float(x.double().sum())
            count += int(x.shape[0])
            first = int(idx[0]) if first is None else first
        return {"sum": total, "count": count, "first": [first]}

    def merge(self, partials):
        return {"sum": sum(p["sum"] for p in partials),
                "count": sum(p["count"] for p in partials),
                "first": [f for p in partials for f in p["first"]]}

    def finish(self, partial):
        return partial["sum"] / partial["count"], partial["first"]


def test_shares_cover_the_items_once_in_blocks_of_align():
    p = _SumPass(torch.rand(10, 1, 2, 2), batch_size=3)
    shares = p.shares(3)
    assert [(s.start, s.stop, s.rank, s.world) for s in shares] == \
        [(0, 6, 0, 3), (6, 9, 1, 3), (9, 10, 2, 3)]  # 4 blocks of 3: 2 + 1 + 1
    assert [len(s) for s in shares] == [6, 3, 1]
    assert Share().whole and not Share(0, 10).whole
    assert Share(2, 5).slice(list(range(10))) == [2, 3, 4]
    assert [len(s) for s in _SumPass(torch.rand(2, 1, 2, 2), 1).shares(3)] == [1, 1, 0]


def test_fake_world_equals_one_process_and_the_oracle():
    x = torch.rand(23, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    oracle = float(x.double().sum()) / 23
    one = run_pass(_SumPass(x))
    assert one[0] == pytest.approx(oracle, rel=1e-12) and one[1] == [0]
    for world in (1, 2, 3, 5, 9):
        p = _SumPass(x)
        mean, firsts = run_split(p, world)
        assert mean == pytest.approx(oracle, rel=1e-12)
        # every non-empty share ran once, with the data set's indices (offset = its start)
        assert firsts == [s.start for s in p.seen]
        assert all(s.start % 4 == 0 for s in p.seen)
    # without torch.distributed the sharded driver is the one-process driver
    assert run_sharded(_SumPass(x)) == one


def test_dataset_pass_refuses_what_cannot_be_split_and_keeps_subset_indices():
    x = torch.rand(8, 1, 2, 2)
    loader = torch.utils.data.DataLoader(TensorDataset(x), batch_size=2)
    with pytest.raises(InputError, match="loader.dataset"):
        _SumPass(loader).size()
    with pytest.raises(InputError, match="empty"):
        _SumPass(x[:0]).size()
    assert run_pass(_SumPass(loader))[0] == pytest.approx(float(x.double().mean()) * 4)
    sub = Subset(TensorDataset(x), [5, 6, 7, 1])
    p = _SumPass(sub, batch_size=1)
    assert run_split(p, 2)[1] == [5, 7]  # a Subset reports its parent's indices

    class NoSize(Pass):
        def run(self, share):
            return 1

        def merge(self, partials):
            return sum(partials)

    assert run_pass(NoSize()) == 1
    with pytest.raises(InputError, match="no size"):
        run_split(NoSize(), 2)


def test_to_device_walks_containers_and_dataclasses():
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Box:
        t: torch.Tensor
        names: tuple[str, ...]

    obj = {"a": [torch.ones(2, dtype=torch.float64), (torch.zeros(1), 3)],
           "b": Box(torch.arange(3), ("x",))}
    out = to_device(obj, "meta")
    assert out["a"][0].device.type == "meta" and out["a"][0].dtype == torch.float64
    assert out["a"][1][0].device.type == "meta" and out["a"][1][1] == 3
    assert out["b"].t.device.type == "meta" and out["b"].names == ("x",)
    assert obj["b"].t.device.type == "cpu"  # a copy


# -- top examples ---------------------------------------------------------------------------------

def _brute_top(model, layer, x, k):
    acts = cs.model.capture(model, x, layer)[layer]
    vals = acts.flatten(2).amax(2)  # [N, C]
    idx = []
    for ch in range(vals.shape[1]):
        idx.append(sorted(range(len(x)), key=lambda i: (-float(vals[i, ch]), i))[:k])
    return torch.tensor(idx), vals


@pytest.mark.parametrize("seed", [0, 1])
def test_top_examples_random_split_merges_to_the_whole_and_the_brute_force(seed):
    net, x = _net(), _images()
    p = TopExamplesPass(net, "1", x, k=5, batch_size=4, quiet=True)
    whole = p.run(Share())
    parts = [p.run(s) for s in _random_split(len(x), 4, seed)]
    merged = p.merge(parts)
    assert torch.equal(merged.indices, whole.indices)
    torch.testing.assert_close(merged.values, whole.values, rtol=0, atol=1e-6)
    assert torch.equal(merged.locations, whole.locations)
    torch.testing.assert_close(merged.crops, whole.crops, rtol=0, atol=0)
    assert merged.n_seen == whole.n_seen == len(x)
    idx, vals = _brute_top(net, "1", x, 5)
    live = [c for c in range(6) if c != 2]  # the dead channel is a tie of zeros: index order
    assert torch.equal(merged.indices[live], idx[live])
    assert merged.indices[2].tolist() == [0, 1, 2, 3, 4]
    torch.testing.assert_close(merged.values, vals.gather(0, idx.t()).t(), rtol=0, atol=1e-6)
    # the one-process function is the pass run by the local driver
    te = cs.features.top_examples(net, "1", x, k=5, batch_size=4, quiet=True)
    assert torch.equal(te.indices, whole.indices)
    split = run_split(TopExamplesPass(net, "1", x, k=5, batch_size=4, quiet=True), 3)
    assert torch.equal(split.indices, whole.indices)


# -- attributions ---------------------------------------------------------------------------------

def test_attributions_random_split_concatenates_to_the_whole_and_the_direct_methods():
    net, x = _net(), _images(20)
    masks = torch.rand(20, 16, 16, generator=torch.Generator().manual_seed(2)) > 0.5
    target = torch.arange(20) % 4
    labels = (torch.arange(20) + 1) % 4
    p = AttributionPass(net, x, methods=["saliency", "grad_cam"], layer="2", batch_size=3,
                        masks=masks, target=target, labels=labels, quiet=True)
    whole = p.run(Share())
    merged = p.merge([p.run(s) for s in _random_split(20, 3, 5)])
    assert merged.indices.tolist() == whole.indices.tolist() == list(range(20))
    assert torch.equal(merged.target, target) and torch.equal(merged.labels, labels)
    assert torch.equal(merged.pred, whole.pred)
    for m in ("saliency", "grad_cam"):
        torch.testing.assert_close(merged.maps[m], whole.maps[m], rtol=0, atol=1e-6)
        torch.testing.assert_close(merged.drop[m], whole.drop[m], rtol=0, atol=1e-6)
        assert torch.equal(merged.pointing[m], whole.pointing[m])
    # oracle: the methods called directly on all images with the per-image targets
    sal = unit_scale(cs.explain.to_heatmap(cs.explain.saliency(net, x, target)))
    gc = unit_scale(cs.explain.grad_cam(net, x, target, layer="2"))
    torch.testing.assert_close(merged.maps["saliency"], sal, rtol=0, atol=1e-6)
    torch.testing.assert_close(merged.maps["grad_cam"], gc, rtol=0, atol=1e-6)
    hits = [bool(masks[i].flatten()[int(gc[i].flatten().argmax())]) for i in range(20)]
    assert merged.pointing["grad_cam"].tolist() == hits
    # attribute_all (public, one process) is the same pass
    again = attribute_all(net, x, methods=["saliency", "grad_cam"], layer="2", batch_size=3,
                          masks=masks, target=target, labels=labels, quiet=True)
    torch.testing.assert_close(again.maps["grad_cam"], whole.maps["grad_cam"], rtol=0, atol=0)


def test_attribution_shares_report_skipped_methods_once():
    torch.manual_seed(0)
    no_gap = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                           nn.Linear(4 * 16 * 16, 3)).eval()
    p = AttributionPass(no_gap, _images(9), methods=["cam", "saliency"], batch_size=2,
                        quiet=True)
    res = run_split(p, 3)
    assert res.methods == ["saliency"] and list(res.skipped) == ["cam"] and len(res) == 9


# -- diagnosis statistics -------------------------------------------------------------------------

def test_diagnosis_random_split_merges_to_the_whole_and_counts_match_by_hand():
    net, x = _net(), _images(41)
    p = DiagnosisPass(net, x, batch_size=5, quiet=True)
    whole = p.run(Share())
    merged = p.merge([p.run(s) for s in _random_split(41, 4, 3)])
    assert list(merged) == list(whole) == ["1", "3", "6"]
    for name, m in whole.items():
        g = merged[name]
        assert (g.values, g.finite, g.near_zero, g.dead_maps, g.maps, g.saturated) == \
            (m.values, m.finite, m.near_zero, m.dead_maps, m.maps, m.saturated)
        assert g.shape == m.shape and g.shape[0] == 41
        assert torch.equal(g.alive, m.alive)
        # other batches (the split ignores batch_size) round float32 activations differently
        assert g.absmax == pytest.approx(m.absmax, rel=1e-6)
        assert g.s1 == pytest.approx(m.s1, rel=1e-6) and g.s2 == pytest.approx(m.s2, rel=1e-6)
        torch.testing.assert_close(g.gram, m.gram, rtol=1e-6, atol=1e-6)
    # shares in blocks of batch_size run the batches of one process: sums to float64 rounding
    aligned = p.merge([p.run(s) for s in p.shares(3) if len(s)])
    for name, m in whole.items():
        g = aligned[name]
        assert (g.values, g.near_zero, g.dead_maps, g.absmax) == \
            (m.values, m.near_zero, m.dead_maps, m.absmax)
        assert g.s1 == pytest.approx(m.s1, rel=1e-12) and g.s2 == pytest.approx(m.s2, rel=1e-12)
        torch.testing.assert_close(g.gram, m.gram, rtol=1e-12, atol=1e-9)
    # oracle: the ReLU output of all 41 images in one forward pass
    relu = cs.model.capture(net, x, "1")["1"].double()
    m = merged["1"]
    assert m.values == relu.numel()
    assert m.alive.tolist() == (relu.amax((0, 2, 3)) > 0).tolist()
    assert m.s1 == pytest.approx(float(relu.sum()), rel=1e-9)
    assert m.s2 == pytest.approx(float((relu ** 2).sum()), rel=1e-9)
    assert m.dead_maps == int((relu.flatten(2).amax(2) <= 0).sum())
    gram = relu.transpose(0, 1).reshape(6, -1)
    torch.testing.assert_close(m.gram, gram @ gram.T, rtol=1e-5, atol=1e-4)  # float32 products
    # finished: the same report as diagnose_dataset
    rep = p.finish(merged)
    ref = cs.diagnose.diagnose_dataset(net, x, batch_size=5, quiet=True)
    assert [(f.code, f.layer) for f in rep.findings] == [(f.code, f.layer) for f in ref.findings]
    assert rep.layers[0].dead_fraction == pytest.approx(1 / 6) and rep.meta["items"] == 41
    # statistics of the old API agree with the pass's whole share
    acc = accumulate_outputs(net, x, batch_size=5, quiet=True)
    assert acc["1"].values == whole["1"].values and torch.equal(acc["1"].gram, whole["1"].gram)


# -- preferred inputs -----------------------------------------------------------------------------

def test_preferred_inputs_split_across_units_equal_one_call_and_each_unit_alone():
    net = _net()
    units = [0, 1, 3, 4, 5]
    p = PreferredInputsPass(net, "1", units, seed=3, steps=4, size=16, quiet=True)
    whole_img, whole_val = p.run(Share())
    img, val = p.merge([p.run(s) for s in _random_split(5, 3, 0)])
    assert img.shape == (5, 3, 16, 16)
    torch.testing.assert_close(img, whole_img, rtol=0, atol=1e-5)
    torch.testing.assert_close(val, whole_val, rtol=0, atol=1e-4)
    # oracle: every unit optimised on its own, seeded by unit_seed(seed, u)
    for i, u in enumerate(units):
        alone = cs.features.maximize(net, "1", [u], seed=3, steps=4, size=16, quiet=True)
        torch.testing.assert_close(img[i:i + 1], alone, rtol=0, atol=1e-5)
    one_img, one_val = preferred_inputs(net, "1", units, seed=3, steps=4, size=16, quiet=True)
    assert torch.equal(one_img, whole_img) and torch.equal(one_val, whole_val)


@pytest.mark.parametrize("hint,expect", [(None, (3, 32, 32)), (20, (3, 20, 20)),
                                         ((24, 24), (3, 24, 24)), ((3, 28, 28), (3, 28, 28)),
                                         ([12], (3, 12, 12))])
def test_input_shape_is_the_shape_maximize_optimises(hint, expect):
    net = _net()  # first convolution: stride 1 -> 32 by default
    if hint is not None:
        net.input_size = hint
    assert input_shape(net) == expect
    img = cs.features.maximize(net, "1", [0], steps=1, quiet=True)  # the oracle
    assert tuple(img.shape[1:]) == expect
    assert input_shape(net, size=(10, 14), channels=3) == (3, 10, 14)
    assert layer_channels(net, "2") == 8 and layer_channels(net, "1") == 6
    stem2 = nn.Sequential(nn.Conv2d(1, 2, 3, stride=2))
    assert input_shape(stem2) == (1, 224, 224)
    with pytest.raises(InputError):
        input_shape(nn.Sequential(nn.Linear(3, 3)))


def test_log_preferred_inputs_takes_a_tuple_input_size(tmp_path):
    """``maximize`` accepts ``model.input_size = (C, H, W)``; the recording call used to unpack
    it as (H, W) and fail."""
    net = _net()
    net.input_size = (3, 20, 20)
    with cs.Run(tmp_path, "r", quiet=True) as run:
        out = run.log_preferred_inputs(net, ["1"], max_units=3, steps=2)
    assert out["1"].shape == (3, 3, 20, 20)
    reader = cs.open_run(tmp_path / "r")
    assert reader.array("preferred_inputs", "1").shape == (3, 3, 20, 20)


# -- the real driver, two processes ---------------------------------------------------------------

SHARDED = """
    import sys
    import torch
    import torch.distributed as dist
    from convscope.errors import ConvscopeError
    from convscope.nn.passes import DatasetPass, run_sharded

    class Sum(DatasetPass):
        def __init__(self, data, fail_on=None):
            super().__init__(data, 4, "sum")
            self.fail_on = fail_on

        def run(self, share):
            if share.rank == self.fail_on:
                raise ValueError("bad share")
            piece, offset = self.piece(share)
            return {"sum": piece.double().sum(), "starts": [offset], "rank": [share.rank]}

        def merge(self, parts):
            return {"sum": sum(p["sum"] for p in parts),
                    "starts": [s for p in parts for s in p["starts"]],
                    "rank": [r for p in parts for r in p["rank"]]}

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    x = torch.arange(30.0).reshape(10, 1, 3, 1)
    out = run_sharded(Sum(x))
    try:
        run_sharded(Sum(x, fail_on=1))
        failed = "no error"
    except ValueError as exc:
        failed = f"own: {exc}"
    except ConvscopeError as exc:
        failed = f"other: {exc}"
    torch.save({"out": out, "failed": failed}, f"{sys.argv[1]}.{rank}")
    dist.barrier()
    dist.destroy_process_group()
"""


@pytest.mark.slow
def test_run_sharded_under_two_processes_equals_one_and_a_failing_rank_stops_all(tmp_path):
    res = _torchrun([_script(tmp_path, SHARDED), str(tmp_path / "out")], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    got = [torch.load(tmp_path / f"out.{r}", weights_only=False) for r in (0, 1)]
    for g in got:
        assert float(g["out"]["sum"]) == float(torch.arange(30.0).sum())
        assert g["out"]["starts"] == [0, 8] and g["out"]["rank"] == [0, 1]  # 3 blocks: 2 + 1
    assert got[1]["failed"] == "own: bad share"
    assert got[0]["failed"].startswith("other: sum failed on rank 1 (ValueError: bad share)")
