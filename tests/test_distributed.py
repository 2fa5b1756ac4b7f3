"""Several processes (torchrun, CPU, gloo): gathered validation, per-rank watch rows, sharded
analyses equal to one process, and a rank that dies leaves the others' data readable."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import convscope as cs
from convscope.distributed import (
    maximize_sharded,
    rank_world,
    shard,
    shard_bounds,
    top_examples_sharded,
)
from convscope.errors import InputError
from convscope.formats import preferred_inputs as pi_format
from convscope.formats import top_examples as te_format
from convscope.zoo import resnet

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args: list[str], cwd: Path, nproc: int = 2, timeout: int = 120
              ) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC, "TQDM_DISABLE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _script(tmp_path: Path, body: str) -> str:
    path = tmp_path / "job.py"
    path.write_text(textwrap.dedent(body))
    return str(path)


# -- helpers, one process ---------------------------------------------------------------------

@pytest.mark.parametrize("n,world,align", [(10, 3, 1), (7, 4, 1), (2, 3, 1), (150, 2, 64),
                                           (0, 2, 1), (129, 3, 64)])
def test_shard_bounds_cover_range_once_in_order(n, world, align):
    bounds = [shard_bounds(n, r, world, align) for r in range(world)]
    # contiguous, in rank order, covering range(n) exactly once
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(bounds[r][1] == bounds[r + 1][0] for r in range(world - 1))
    # starts at block boundaries; block counts differ by at most one
    assert all(a % align == 0 for a, b in bounds if b > a)
    blocks = [-(-(b - a) // align) for a, b in bounds]
    assert max(blocks) - min(blocks) <= 1
    if align == 1:  # numpy's split deals the remainder to the first ranks alike
        expect = [len(p) for p in np.array_split(np.arange(n), world)]
        assert [b - a for a, b in bounds] == expect


def test_shard_slices_sequences_and_tensors():
    assert shard(range(10), 1, 3) == range(4, 7)
    assert shard(list("abcdefg"), 3, 4) == ["g"]
    t = torch.arange(20).reshape(10, 2)
    assert torch.equal(torch.cat([shard(t, r, 3) for r in range(3)]), t)
    with pytest.raises(InputError):
        shard_bounds(5, 3, 3)


def test_without_distributed_world_is_one_and_results_match_plain_functions():
    assert rank_world() == (0, 1)
    torch.manual_seed(0)
    model = resnet(width=4).eval()
    images = torch.rand(20, 3, 32, 32)
    a = top_examples_sharded(model, "layer1", images, k=3, quiet=True)
    b = cs.features.top_examples(model, "layer1", images, k=3, quiet=True)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.values, b.values)
    x = maximize_sharded(model, "layer1", [1, 2], steps=3, seed=5, quiet=True)
    y = cs.features.maximize(model, "layer1", [1, 2], steps=3, seed=5, quiet=True)
    assert torch.equal(x, y)
    with pytest.raises(InputError):
        top_examples_sharded(model, "layer1", [images], k=3)


# -- two processes ----------------------------------------------------------------------------

TRAIN = """
    import sys
    import numpy as np
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    from torch.utils.data import DataLoader, TensorDataset
    from torch.utils.data.distributed import DistributedSampler
    import convscope as cs
    from convscope.zoo import resnet

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = DDP(resnet(width=4))
    run = cs.Run(sys.argv[1], quiet=True)  # name broadcast from rank 0
    if rank == 0:
        open(sys.argv[2], "w").write(run.name)
    run.watch(model, every=1, ranks="all")
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(rank)
    for _ in range(3):
        x = torch.rand(8, 3, 32, 32, generator=g)
        y = torch.randint(0, 10, (8,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    # 51 validation images: a DistributedSampler pads rank 1's share with a repeat of id 0
    n = 51
    ids = torch.arange(1000, 1000 + n)
    val = TensorDataset(torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(9)),
                        torch.arange(n) % 10, ids)
    loader = DataLoader(val, batch_size=10, sampler=DistributedSampler(val, shuffle=True))
    acc = run.validate(3, model.module, loader)
    # explicit per-rank shares, with scores [N, K]
    share = np.array_split(np.arange(n), 2)[rank]
    scores = torch.zeros(len(share), 10)
    scores[torch.arange(len(share)), torch.as_tensor(share % 7)] = 1.0
    acc2 = run.log_validation(4, ids[share], torch.as_tensor(share % 10), scores)
    np.save(f"{sys.argv[2]}.{rank}.npy", np.array([acc, acc2]))
    run.close()
    dist.destroy_process_group()
"""


@pytest.mark.slow
def test_ddp_training_watch_all_ranks_and_gathered_validation(tmp_path):
    res = _torchrun([_script(tmp_path, TRAIN), str(tmp_path / "runs"), str(tmp_path / "name")],
                    tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    name = (tmp_path / "name").read_text()
    reader = cs.open_run(tmp_path / "runs" / name)
    assert reader.meta["world_size"] == 2 and reader.problems == []

    layers = reader.table("watch_layers")
    assert sorted(layers["rank"].unique().tolist()) == [0, 1]
    assert not layers["layer"].str.startswith("module.").any()
    assert not layers.duplicated(["rank", "step", "layer"]).any()
    per_rank = layers.groupby("rank").size()
    assert per_rank[0] == per_rank[1] == 3 * layers["layer"].nunique()
    filters = reader.table("watch_filters")
    assert sorted(filters["rank"].unique().tolist()) == [0, 1]
    assert not filters.duplicated(["rank", "step", "layer", "filter"]).any()

    images = reader.table("validation_images")
    assert sorted(images["id"].tolist()) == list(range(1000, 1051))  # each image once
    assert sorted(images["pos"].tolist()) == list(range(51))
    label_of = dict(zip(images["id"], images["label"], strict=True))
    assert all(label_of[i] == (i - 1000) % 10 for i in label_of)
    val = reader.table("validation").sort_values("step")
    assert val["step"].tolist() == [3, 4] and val["rank"].tolist() == [0, 0]
    assert val["n"].tolist() == [51, 51]
    # step 4: predictions (id - 1000) % 7 against labels (id - 1000) % 10, decoded by position
    row = val.iloc[1]
    pos = (np.arange(row["pos0"], row["pos0"] + 51) if row["pos0"] >= 0
           else np.frombuffer(row["positions"], "<i4"))
    correct = np.unpackbits(np.frombuffer(row["correct"], np.uint8), bitorder="little")[:51]
    pred = np.frombuffer(row["pred"], "<i4")
    id_at = dict(zip(images["pos"], images["id"], strict=True))
    k = np.array([id_at[p] - 1000 for p in pos])
    assert np.array_equal(pred, k % 7)
    assert np.array_equal(correct.astype(bool), k % 7 == k % 10)
    # every rank got the accuracy of the whole set
    accs = [np.load(tmp_path / f"name.{r}.npy") for r in (0, 1)]
    expect = np.mean(np.arange(51) % 7 == np.arange(51) % 10)
    assert accs[0][1] == accs[1][1] == pytest.approx(expect)
    assert accs[0][0] == accs[1][0]


@pytest.mark.slow
def test_cli_analyze_two_processes_equals_one(tmp_path):
    torch.manual_seed(1)
    model = resnet(width=4).eval()
    with cs.Run(tmp_path / "runs", "m", quiet=True) as run:
        run.log_checkpoint(model)
    images = torch.rand(150, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    np.save(tmp_path / "data.npy", images.numpy())
    res = _torchrun(["-m", "convscope", "analyze", str(tmp_path / "runs" / "m"),
                     "--what", "top-examples,preferred-inputs", "--layers", "layer1,layer2",
                     "--k", "4", "--units", "3", "--dataset-npy", str(tmp_path / "data.npy"),
                     "--steps", "6", "--seed", "7", "--quiet"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "2 processes" in res.stdout
    reader = cs.open_run(tmp_path / "runs" / "m")
    top = reader.table("top_examples")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun worker (OMP_NUM_THREADS=1)
    try:
        for layer in ("layer1", "layer2"):
            ref = cs.features.top_examples(model, layer, images, k=4, quiet=True)
            rows = top[top["layer"] == layer].sort_values(["channel", "rank"])
            assert rows["index"].to_numpy().tolist() == ref.indices.reshape(-1).tolist()
            np.testing.assert_allclose(rows["value"].to_numpy(), ref.values.reshape(-1).numpy(),
                                       rtol=1e-5, atol=1e-6)
            assert rows["y0"].tolist() == ref.boxes[..., 0].reshape(-1).tolist()
            # crops as the page reads them: uint8 over each crop's range, so within half a
            # level of that range of the single-process crops
            crops = te_format.load(reader, layer).crops.astype(np.float32)
            want = ref.crops.numpy()
            span = want.max(axis=(2, 3, 4), keepdims=True) - want.min(axis=(2, 3, 4),
                                                                     keepdims=True)
            assert crops.shape == want.shape
            assert np.all(np.abs(crops - want) <= span / 510 + 2e-3 * np.abs(want).max())
            units = reader.arrays("preferred_inputs")
            meta_units = units[units["key"] == layer]
            assert len(meta_units) == 1
            ref_img, ref_val = cs.features.maximize(model, layer, list(range(3)), steps=6, seed=7,
                                                    return_values=True, quiet=True)
            got = pi_format.images(reader, layer).astype(np.float32)  # uint8 per image
            want = ref_img.numpy()
            span = want.max(axis=(1, 2, 3), keepdims=True) - want.min(axis=(1, 2, 3),
                                                                     keepdims=True)
            assert got.shape == want.shape
            assert np.all(np.abs(got - want) <= span / 510 + 2e-3)
    finally:
        torch.set_num_threads(threads)


SCRIPT_SHARDED = """
    import sys
    import numpy as np
    import torch
    import torch.distributed as dist
    from torch.utils.data import TensorDataset
    import convscope as cs
    from convscope.distributed import attributions_sharded, diagnose_sharded
    from convscope.zoo import resnet

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(1)
    model = resnet(width=4).eval()
    g = torch.Generator().manual_seed(3)
    images = torch.rand(70, 3, 32, 32, generator=g)
    images[:, :, :5] = 0  # some all-zero rows: near-zero shares and dead maps to count
    labels = torch.arange(70) % 10
    masks = torch.rand(70, 32, 32, generator=g) > 0.5
    data = TensorDataset(images, labels)  # a Dataset: labels come from its items
    att = attributions_sharded(model, data, batch_size=16, masks=masks,
                               methods=["saliency", "grad_cam", "score_cam"],
                               score_cam_batch_size=8, quiet=True)
    rep = diagnose_sharded(model, images, batch_size=16, quiet=True)
    strict = diagnose_sharded(model, images, batch_size=16, quiet=True,
                              thresholds={"dead_atol": 1e3}, layers=["layer1.0.relu2"])
    if rank == 0:
        torch.save({"att": att.to("cpu"), "rep": rep.to_dict(), "strict": strict.to_dict()},
                   sys.argv[1])
    dist.barrier()
    dist.destroy_process_group()
"""


@pytest.mark.slow
def test_sharded_attributions_and_diagnosis_equal_one_process(tmp_path):
    from torch.utils.data import TensorDataset

    from convscope.diagnose import diagnose_dataset
    from convscope.explain import attribute_all

    res = _torchrun([_script(tmp_path, SCRIPT_SHARDED), str(tmp_path / "out.pt")], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    got = torch.load(tmp_path / "out.pt", weights_only=False)
    torch.manual_seed(1)
    model = resnet(width=4).eval()
    g = torch.Generator().manual_seed(3)
    images = torch.rand(70, 3, 32, 32, generator=g)
    images[:, :, :5] = 0
    labels = torch.arange(70) % 10
    masks = torch.rand(70, 32, 32, generator=g) > 0.5
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun worker (OMP_NUM_THREADS=1)
    try:
        ref = attribute_all(model, TensorDataset(images, labels), batch_size=16, masks=masks,
                            methods=["saliency", "grad_cam", "score_cam"],
                            score_cam_batch_size=8, quiet=True)
        rep = diagnose_dataset(model, images, batch_size=16, quiet=True)
        strict = diagnose_dataset(model, images, batch_size=16, quiet=True,
                                  thresholds={"dead_atol": 1e3}, layers=["layer1.0.relu2"])
    finally:
        torch.set_num_threads(threads)
    att = got["att"]
    # every image once, in order, with the labels of the data set's items
    assert att.indices.tolist() == list(range(70))
    assert torch.equal(att.labels, labels)
    assert att.methods == ref.methods == ["saliency", "grad_cam", "score_cam"]
    assert torch.equal(att.pred, ref.pred) and torch.equal(att.target, ref.target)
    for m in ref.methods:
        torch.testing.assert_close(att.maps[m], ref.maps[m], rtol=0, atol=1e-5)
        torch.testing.assert_close(att.drop[m], ref.drop[m], rtol=0, atol=1e-5)
        assert torch.equal(att.increase[m], ref.increase[m])
        assert torch.equal(att.pointing[m], ref.pointing[m])
    # diagnosis: counts exact, sums to float64 rounding, the same findings
    d, r = got["rep"], rep.to_dict()
    assert [f["code"] for f in d["findings"]] == [f["code"] for f in r["findings"]]
    assert [x["layer"] for x in d["findings"]] == [x["layer"] for x in r["findings"]]
    assert [x["name"] for x in d["layers"]] == [x["name"] for x in r["layers"]]
    for a, b in zip(d["layers"], r["layers"], strict=True):
        assert a["shape"][0] == b["shape"][0] == 70
        for key in ("dead_fraction", "dead_map_fraction", "near_zero_share", "saturation",
                    "clustered", "values"):
            assert a[key] == b[key], (a["name"], key)
        for key in ("mean", "std", "rms", "absmax", "merge_median", "merge_iqr",
                    "input_similarity"):
            if b[key] is None:
                assert a[key] is None
            else:
                assert a[key] == pytest.approx(b[key], rel=1e-9, abs=1e-12), (a["name"], key)
    # settings reach every rank's measurement: a high dead_atol counts more channels dead
    (got_s,), (ref_s,) = got["strict"]["layers"], strict.to_dict()["layers"]
    assert got_s["dead_fraction"] == ref_s["dead_fraction"]
    assert got_s["dead_fraction"] > [x for x in r["layers"]
                                     if x["name"] == "layer1.0.relu2"][0]["dead_fraction"]


@pytest.mark.slow
def test_cli_analyze_attributions_and_diagnosis_under_torchrun(tmp_path):
    torch.manual_seed(1)
    model = resnet(width=4).eval()
    with cs.Run(tmp_path / "runs", "m", quiet=True) as run:
        run.log_checkpoint(model)
    res = _torchrun(["-m", "convscope", "analyze", str(tmp_path / "runs" / "m"),
                     "--what", "attributions,diagnosis", "--images", "90",
                     "--attribution-images", "20", "--batch-size", "16", "--quiet"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "2 processes" in res.stdout
    reader = cs.open_run(tmp_path / "runs" / "m")
    meta = reader.object("attributions", "dataset")
    assert meta["n"] == 20 and meta["has_masks"] and len(meta["methods"]) == 7
    assert reader.array("attributions", "dataset.grad_cam").shape == (20, 32, 32)
    metrics = reader.table("attribution_metrics")
    assert len(metrics) == 20 * 7 and "pointing_hit" in metrics
    assert sorted(metrics["image"].unique().tolist()) == list(range(20))
    rep = reader.object("diagnosis", "dataset")
    assert rep["meta"]["items"] == 90 and rep["meta"]["processes"] == 2
    assert all(layer["shape"][0] == 90 for layer in rep["layers"])
    assert reader.objects("diag_view")  # the page's figures (first batch)


DIE = """
    import os, sys, time
    import torch.distributed as dist
    import convscope as cs

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    run = cs.Run(sys.argv[1], "dies", flush_interval=600, quiet=True)
    for step in range(10):
        run.log_scalars(step, **{f"r{rank}": float(step)})
    run.flush()
    dist.barrier()
    for step in range(10, 20):  # never flushed
        run.log_scalars(step, **{f"r{rank}": float(step)})
    if rank == 1:
        os._exit(3)
    time.sleep(60)  # torchrun stops rank 0 once rank 1 has failed
"""


@pytest.mark.slow
def test_rank_dying_mid_run_leaves_flushed_data_readable(tmp_path):
    res = _torchrun([_script(tmp_path, DIE), str(tmp_path / "runs")], tmp_path)
    assert res.returncode != 0
    reader = cs.open_run(tmp_path / "runs" / "dies")
    assert reader.problems == []
    assert reader.meta["status"] == "running"  # never closed
    df = reader.scalars(long=True)
    for tag in ("r0", "r1"):
        steps = sorted(df[df["tag"] == tag]["step"].tolist())
        assert steps[:10] == list(range(10))  # the flushed rows, once each
        assert len(steps) == len(set(steps))
    assert sorted(df[df["tag"] == "r1"]["step"].tolist()) == list(range(10))
