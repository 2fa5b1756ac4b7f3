"""CNNVis stored in a run and read back by the Model page: ``run.log_cnnvis``,
``convscope.formats.cnnvis`` and the page's paths (``convscope.app.pages.model_cnnvis``).

Oracles: hand-computed column pooling and a planted low-rank matrix for the storage; per-class
spatial means and filter L1 norms computed by hand (forward hooks, the conv weights) for the
recording; planted groups of channels (adjusted Rand index 1) end to end through a run;
``cluster_channels`` on the stored descriptors for the page's recluster; and a geometric count
of the crossings of the drawn chain figure (curves compared point by point) for the page's
crossing counts, with bundled < plain.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score as ari
from torch import nn
from torch.utils.data import TensorDataset

import convscope as cs
from convscope.app.pages import model_cnnvis as page
from convscope.app.state import AppState
from convscope.errors import ConvscopeError, InputError, StoreError
from convscope.formats import cnnvis as fmt
from convscope.model.cnnvis import cluster_channels
from convscope.record.cnnvis import default_cnnvis_layers
from convscope.zoo import resnet

ZOO_CHAIN = ["layer1.0.conv1", "layer1.0.conv2", "layer2.0.conv1", "layer2.0.conv2",
             "layer3.0.conv1"]


@pytest.fixture(scope="module")
def zoo_run(tmp_path_factory):
    torch.manual_seed(0)
    model = resnet(width=8).eval()
    x = torch.rand(96, 3, 32, 32)
    y = torch.arange(96) % 6
    logdir = tmp_path_factory.mktemp("cnnvis")
    with cs.Run(logdir, "zoo", quiet=True) as run:
        run.log_model(model, x[:4], profile=False)
        graph = run.log_cnnvis(model, TensorDataset(x, y), clusters=4)
    return logdir, model, x, y, graph


# ------------------------------------------------------------------------------------ storage
def test_formats_round_trip_pools_columns_and_keeps_large_influence_at_low_rank(tmp_path):
    rng = np.random.default_rng(0)
    desc = {"a": rng.normal(size=(10, 256)), "b": rng.normal(size=(600, 5))}
    # a non-negative rank-3 matrix bigger than MAX_FULL_CELLS: stored as factors, exact
    big = rng.random((600, 3)) @ rng.random((3, 500))
    small = rng.random((10, 600))
    labels_a = np.array([0, 0, 1, 1, 2, 2, 0, 1, 2, 0])
    cl = {"a": fmt.LayerClusters("a", labels_a, np.array([4, 3, 3]), np.array([0, 2, 4]),
                                 np.argsort(labels_a, kind="stable"),
                                 np.zeros(10, bool), 0.25, 3),
          "b": fmt.LayerClusters("b", np.zeros(600, np.int64), np.array([600]), np.array([7]),
                                 np.arange(600), np.eye(600, dtype=bool)[3], None, None)}
    view = fmt.CNNVisView("v1", ["a", "b"], desc, cl,
                          [fmt.Pair("a", "b", "weights", small)], by="image",
                          n_images=256, pooled_from=256, seed=3)
    with cs.Run(tmp_path, "fmt", quiet=True) as run:
        fmt.write(run, view)
        fmt.write(run, fmt.CNNVisView("v2", ["b", "c"], {"b": desc["b"],
                                                          "c": rng.normal(size=(500, 4))},
                                      {"b": cl["b"], "c": fmt.LayerClusters(
                                          "c", np.zeros(500, np.int64), np.array([500]),
                                          np.array([0]), np.arange(500), np.zeros(500, bool))},
                                      [fmt.Pair("b", "c", "gradient", big)]))
    reader = cs.open_run(tmp_path / "fmt")
    assert sorted(fmt.keys(reader)) == ["v1", "v2"]
    got = fmt.load(reader, "v1")
    # pooling: 256 columns -> 128 means of adjacent pairs (hand oracle), then float16 rounding
    want = desc["a"].reshape(10, 128, 2).mean(2)
    assert got.descriptors["a"].shape == (10, 128)
    np.testing.assert_allclose(got.descriptors["a"], want, rtol=2e-3, atol=2e-3 * np.abs(want).max())
    assert np.array_equal(got.descriptors["a"], fmt.store_descriptors(desc["a"])[0])
    assert got.pooled_from == 256 and got.seed == 3 and got.by == "image"
    assert np.array_equal(got.clusters["a"].labels, labels_a)
    assert got.clusters["a"].silhouette == 0.25 and got.clusters["a"].requested == 3
    assert got.clusters["b"].dead.nonzero()[0].tolist() == [3]
    assert got.pairs[0].encoding == "float16"
    np.testing.assert_allclose(got.pairs[0].influence, small, rtol=1e-3, atol=1e-3)
    v2 = fmt.load(reader, "v2")
    p = v2.pairs[0]
    assert p.encoding == "lowrank" and p.rank == fmt.MAX_RANK and p.error < 1e-2
    np.testing.assert_allclose(p.influence, big, rtol=0, atol=1e-2 * big.max())
    on_disk = reader.array(fmt.INFLUENCE_KIND, "v2.P0")
    assert on_disk.shape == (1100, fmt.MAX_RANK) and on_disk.dtype == np.float16
    assert fmt.view_of(reader, "c") == "v2" and fmt.view_of(reader, "zzz") is None
    with pytest.raises(StoreError, match="log_cnnvis"):
        fmt.load(reader, "nope")


def test_a_damaged_view_document_is_refused_with_what_to_do(tmp_path):
    with cs.Run(tmp_path, "bad", quiet=True) as run:
        run.log_object(fmt.KIND, "cnnvis", {"layers": ["a", "b"], "clusters": {
            "a": {"channels": 2, "labels": [0, 5], "sizes": [2], "representatives": [0],
                  "order": [0, 1], "dead": []}}, "pairs": []})
    reader = cs.open_run(tmp_path / "bad")
    with pytest.raises(StoreError, match="record it again with run.log_cnnvis"):
        fmt.meta(reader, "cnnvis")
    with pytest.raises(StoreError):  # the layer panel shows it as a damage notice
        page.cnnvis_section(reader, "a")
    with pytest.raises(StoreError):
        page.chain(AppState(tmp_path), "bad", "a", None)


# ------------------------------------------------------------------------------------ record
def test_record_on_the_zoo_resnet_stores_per_class_means_and_the_chain(zoo_run):
    logdir, model, x, y, graph = zoo_run
    assert default_cnnvis_layers(model) == ZOO_CHAIN
    reader = cs.open_run(logdir / "zoo")
    view = fmt.load(reader)
    assert view.layers == ZOO_CHAIN and view.by == "class" and view.classes == list(range(6))
    # oracle: the spatial mean of each channel, averaged per class, by forward hooks
    outs = {}
    mods = dict(model.named_modules())
    hooks = [mods[n].register_forward_hook(lambda m, i, o, n=n: outs.__setitem__(n, o))
             for n in ZOO_CHAIN]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    for name in ZOO_CHAIN:
        means = outs[name].mean((2, 3))  # [N, C]
        want = torch.stack([means[y == c].mean(0) for c in range(6)], 1).numpy()
        got = view.descriptors[name]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=2e-3 * np.abs(want).max())
        assert view.clusters[name].n_clusters == 4 and view.clusters[name].requested == 4
    assert [p.source for p in view.pairs] == ZOO_CHAIN[:-1]
    assert [p.target for p in view.pairs] == ZOO_CHAIN[1:]
    for p in view.pairs:  # every target conv reads a BN/ReLU output, not the source itself
        assert p.method == "gradient" and p.influence.shape == (
            view.descriptors[p.source].shape[0], view.descriptors[p.target].shape[0])
        assert (p.influence >= 0).all() and p.influence.max() > 0
    # the returned graph is the stored one
    for name in ZOO_CHAIN:
        assert np.array_equal(graph.clusters[name].labels, view.clusters[name].labels)


def test_weight_influence_is_stored_as_the_filters_l1_norm(tmp_path):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Conv2d(6, 5, 3), nn.ReLU(),
                          nn.Conv2d(5, 4, 1)).eval()
    with cs.Run(tmp_path, "w", quiet=True) as run:
        run.log_cnnvis(model, torch.rand(20, 3, 12, 12), ["1", "2", "4"], clusters=2)
    view = fmt.load(cs.open_run(tmp_path / "w"))
    assert [p.method for p in view.pairs] == ["weights", "gradient"]
    want = model[2].weight.detach().abs().sum((2, 3)).t().numpy()  # [C_in, C_out]
    np.testing.assert_allclose(view.pairs[0].influence, want, rtol=2e-3, atol=1e-5)
    assert view.by == "image" and view.descriptors["1"].shape == (6, 20)


def planted_model():
    """conv(3 -> 12) whose channels are 3 groups of 4 positively scaled copies of a filter."""
    torch.manual_seed(5)
    conv = nn.Conv2d(3, 12, 3, padding=1, bias=False)
    base = torch.randn(3, 3, 3, 3)
    groups = torch.tensor([0, 1, 2, 0, 1, 2, 2, 1, 0, 0, 1, 2])
    with torch.no_grad():
        conv.weight.copy_(base[groups] * torch.rand(12, 1, 1, 1).add(0.5)
                          + 1e-3 * torch.randn(12, 3, 3, 3))
    model = nn.Sequential(conv, nn.ReLU(), nn.Conv2d(12, 6, 3, padding=1), nn.ReLU()).eval()
    return model, groups.numpy()


def test_clusters_recover_planted_channel_groups_through_the_run(tmp_path):
    model, groups = planted_model()
    with cs.Run(tmp_path, "planted", quiet=True) as run:
        run.log_cnnvis(model, torch.randn(40, 3, 16, 16), ["0", "2"])  # count by silhouette
    reader = cs.open_run(tmp_path / "planted")
    stored = fmt.load(reader).clusters["0"]
    assert stored.n_clusters == 3 and stored.requested is None
    assert ari(groups, stored.labels) == 1.0
    # the page shows the same clusters, and its recluster into 3 gives them back
    state = AppState(tmp_path)
    shown = page.page_clusters(state.reader("planted"), "cnnvis", "0", 3)
    assert ari(groups, shown.labels) == 1.0


# ------------------------------------------------------------------------------------ the page
def test_recluster_from_the_page_equals_cluster_channels_on_the_stored_descriptors(zoo_run):
    logdir = zoo_run[0]
    state = AppState(logdir)
    reader = state.reader("zoo")
    view = fmt.load(reader)
    for layer in ("layer1.0.conv1", "layer2.0.conv2"):
        stored = view.descriptors[layer]
        # as recorded: the stored clustering is cluster_channels on the stored descriptors
        again = cluster_channels(stored, 4, seed=0)
        assert np.array_equal(page.page_clusters(reader, "cnnvis", layer, 0).labels,
                              again.labels)
        for k in (2, 5, 7):
            got = page.page_clusters(reader, "cnnvis", layer, k)
            want = cluster_channels(stored, k, seed=0, layer=layer)
            for f in ("labels", "sizes", "representatives", "order", "dead"):
                assert np.array_equal(getattr(got, f), getattr(want, f)), (layer, k, f)
    # through the callback: the section shows k clusters and the store holds the choice
    body, count = page.recluster(state, 5, "layer1.0.conv1", "zoo")
    assert count == {"run": "zoo", "layer": "layer1.0.conv1", "k": 5}
    cards = next(c for c in body if getattr(c, "id", None) == "cnnvis-cards")
    assert cards.figure.layout.meta["k"] == 5
    # and the chain view reclusters that layer only for that layer
    chain = page.chain(state, "zoo", "layer1.0.conv1", count)
    fig = next(c for c in chain if getattr(c, "id", None) == "cnnvis-chain-graph").figure
    assert fig.layout.meta["clusters"] == [5, 4, 4, 4, 4]
    other = page.chain(state, "zoo", "layer2.0.conv1", count)
    fig = next(c for c in other if getattr(c, "id", None) == "cnnvis-chain-graph").figure
    assert fig.layout.meta["clusters"] == [4, 4, 4, 4, 4]
    assert fig.layout.meta["selected"] == "layer2.0.conv1"


@pytest.mark.parametrize("bad", [True, 2.5, "3", None, -1, 1, 17, 9, 10**9, [3], {"k": 3}])
def test_bad_cluster_counts_are_refused(bad):
    with pytest.raises(InputError):
        page.check_count(bad, 8)  # 8 channels: 2..8 are valid, 0 means "as recorded"
    assert page.check_count(0, 8) == 0 and page.check_count(8, 8) == 8


def test_bad_callback_values_are_refused_without_work(zoo_run):
    state = AppState(zoo_run[0])
    for k in ("5; DROP TABLE", 1, 999, True, 3.0):
        with pytest.raises(InputError):
            page.recluster(state, k, "layer1.0.conv1", "zoo")
    with pytest.raises(ConvscopeError):
        page.recluster(state, 3, "layer1.0.conv1", "../../etc")
    assert page.recluster(state, 3, ["layer1"], "zoo") == (page.no_update, page.no_update)
    assert page.recluster(state, 3, "not-a-layer", "zoo") == (page.no_update, page.no_update)
    # a forged count store: a bad k is refused, another layer's count is ignored
    with pytest.raises(InputError):
        page.chain(state, "zoo", "layer1.0.conv2", {"run": "zoo", "layer": "layer1.0.conv2",
                                                    "k": 10**6})
    fig = next(c for c in page.chain(state, "zoo", "conv1", {"run": "zoo", "layer": "x",
                                                             "k": 3})
               if getattr(c, "id", None) == "cnnvis-chain-graph").figure
    assert fig.layout.meta["clusters"] == [4, 4, 4, 4, 4]
    assert page.chain(state, "zoo", None, "junk") is not None
    assert page.chain(state, None, "conv1", None) is None


def _curves(fig) -> list[tuple[str, dict]]:
    """The drawn edge curves of the chain figure (bundle segments and edges outside the
    bundles; not the 'every edge straight' comparison), each as {x: y}."""
    out = []
    for tr in fig.data:
        if tr.mode != "lines" or tr.legendgroup == "plain":
            continue
        xs, ys = list(tr.x), list(tr.y)
        cur: dict = {}
        for x, y in zip(xs + [None], ys + [None], strict=True):
            if x is None:
                if cur:
                    out.append((tr.legendgroup, cur))
                cur = {}
            else:
                cur[round(float(x), 9)] = float(y)
        # an edge outside the bundles is drawn as two halves: join them into one curve
    joined: list[dict] = []
    loose = [c for g, c in out if g == "loose"]
    for a, b in zip(loose[::2], loose[1::2], strict=True):
        joined.append({**a, **b})
    return [c for g, c in out if g == "bundled"] + joined


def _geometric_crossings(curves: list[dict]) -> int:
    """Pairs of curves that cross: the sign of their height difference changes along the x
    values they share (points where they meet, e.g. a common end, do not count)."""
    total = 0
    for a, b in itertools.combinations(curves, 2):
        xs = sorted(set(a) & set(b))
        d = [a[x] - b[x] for x in xs]
        signs = [np.sign(v) for v in d if abs(v) > 1e-9]
        total += sum(1 for s, t in zip(signs, signs[1:], strict=False) if s != t)
    return total


def test_bundling_lowers_crossings_counted_on_the_recorded_run(zoo_run):
    state = AppState(zoo_run[0])
    reader = state.reader("zoo")
    view = page.page_view(reader, "cnnvis")
    counts = page.chain_crossings(view)
    assert len(counts) == 4
    # the bundled drawing crosses less than the same edges drawn straight
    assert sum(c["bundled"] for c in counts) < sum(c["plain"] for c in counts)
    assert sum(c["bundled"] for c in counts) < sum(c["plain_index"] for c in counts)
    # the first gap is the pair's own bundling: its counts are the analysis' own
    b = view.bundling[0]
    assert counts[0]["bundled"] == b.bundled_crossings()
    assert counts[0]["plain"] == b.plain_crossings()
    # the counts are those of the figure drawn: crossings counted on its curves, gap by gap
    chain = page.chain(state, "zoo", "layer1.0.conv2", None)
    fig = next(c for c in chain if getattr(c, "id", None) == "cnnvis-chain-graph").figure
    assert fig.layout.meta["crossings"] == counts
    curves = _curves(fig)
    for g, c in enumerate(counts):
        mine = [cv for cv in curves if g <= min(cv) and max(cv) <= g + 1]
        assert _geometric_crossings(mine) == c["bundled"], (g, c)


def test_default_layers_follow_the_main_path_of_torchvision_resnets():
    import torchvision as tv
    assert default_cnnvis_layers(tv.models.resnet18(weights=None)) == [
        "layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1", "layer1.1.conv2", "layer2.0.conv1"]
    # ResNet-50: the bottleneck's 1x1 / 3x3 / 1x1, the shortcut conv skipped
    assert default_cnnvis_layers(tv.models.resnet50(weights=None)) == [
        "layer1.0.conv1", "layer1.0.conv2", "layer1.0.conv3", "layer1.1.conv1", "layer1.1.conv2"]
    with pytest.raises(InputError, match="layers="):
        default_cnnvis_layers(nn.Sequential(nn.Linear(3, 3)))


def test_run_log_cnnvis_has_an_explicit_documented_signature_matching_the_recorder():
    import inspect

    from convscope.record import cnnvis as rec

    method = inspect.signature(cs.Run.log_cnnvis).parameters
    target = inspect.signature(rec.log_cnnvis).parameters
    doc = inspect.getdoc(cs.Run.log_cnnvis).split("Args:")[1].split("Returns:")[0]
    for name, p in method.items():
        if name == "self":
            continue
        assert p.kind is not inspect.Parameter.VAR_KEYWORD
        assert f"{name}:" in doc, name
        assert name in target and target[name].default == p.default, name
