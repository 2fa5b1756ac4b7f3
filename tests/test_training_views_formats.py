"""The formats behind the Training page's new views: validation thumbnails (bounded, block
means), a class's image strips and the cached alerts, checked against hand computations."""

from __future__ import annotations

import numpy as np
import pytest

import convscope as cs
from convscope.errors import ConvscopeError
from convscope.formats import training as fmt
from convscope.track import training_alerts


def test_thumbnails_are_bounded_block_means(tmp_path):
    n = 12
    labels = np.arange(n) % 3
    img = np.arange(n * 8 * 8 * 3, dtype=np.uint8).reshape(n, 8, 8, 3) % 251
    img = img.astype(np.uint8)
    with cs.Run(tmp_path, "t") as run:
        kept = fmt.write_validation_thumbnails(run, np.arange(100, 100 + n), img, labels,
                                               side=4, max_images=6)
    assert kept == 6  # 2 per class
    r = cs.open_run(tmp_path / "t")
    assert fmt.has_validation_thumbnails(r)
    got = fmt.load_validation_thumbnails(r, np.arange(100, 100 + n))
    # the first two images of each class: positions 0, 1, 2, 3, 4, 5
    assert sorted(got) == [100, 101, 102, 103, 104, 105]
    for i, t in got.items():
        k = i - 100
        want = img[k].astype(float).reshape(4, 2, 4, 2, 3).mean(axis=(1, 3))
        np.testing.assert_array_equal(t, np.round(want).astype(np.uint8))
    with pytest.raises(ConvscopeError):
        fmt.write_validation_thumbnails(run, [1, 2], np.zeros((3, 3, 8, 8)))


def test_float_thumbnails_scale_each_image_and_nchw(tmp_path):
    x = np.zeros((2, 1, 6, 6), dtype=np.float32)
    x[0, 0, :3] = 5.0  # top half bright
    x[1] = -1.0  # constant image
    with cs.Run(tmp_path, "f") as run:
        fmt.write_validation_thumbnails(run, [7, 8], x, side=6)
    t = fmt.load_validation_thumbnails(cs.open_run(tmp_path / "f"), [7, 8])
    assert t[7].shape == (6, 6, 1)
    assert (t[7][:3] == 255).all() and (t[7][3:] == 0).all()
    assert (t[8] == 0).all()


def test_class_image_strips(tmp_path):
    labels = np.array([0, 1, 0, 1, 0])
    steps = [10, 20, 30, 40, 50]
    # image 0 flips 4 times, image 2 once, image 4 never
    states = {0: [1, 0, 1, 0, 1], 2: [0, 0, 0, 1, 1], 4: [1, 1, 1, 1, 1]}
    with cs.Run(tmp_path, "s") as run:
        for t, s in enumerate(steps):
            correct = np.array([states.get(i, [1] * 5)[t] for i in range(5)], dtype=bool)
            run.log_validation(s, np.arange(5), labels, np.where(correct, labels, 1 - labels))
    r = cs.open_run(tmp_path / "s")
    st = fmt.class_image_strips(r, 0)
    assert st.ids.tolist() == [0, 2, 4] and st.flips.tolist() == [4, 1, 0]
    np.testing.assert_array_equal(st.state, [states[0], states[2], states[4]])
    st = fmt.class_image_strips(r, 0, steps=(30, 50), max_images=2)
    assert st.steps.tolist() == [30, 40, 50] and st.ids.tolist() == [0, 2]
    assert st.flips.tolist() == [2, 1] and st.total == 3
    st = fmt.class_image_strips(r, 0, max_steps=3)
    assert st.steps.tolist() == [10, 30, 50] and st.total_steps == 5
    assert fmt.class_image_strips(r, 9).ids.size == 0


def test_reader_alerts_equal_the_track_function_on_the_stored_rows(tmp_path):
    rng = np.random.default_rng(0)
    with cs.Run(tmp_path, "a") as run:
        for step in range(1, 30):
            cols = {c: rng.random(2).astype(np.float32) for c in fmt.LAYER_COLUMNS}
            cols["update_ratio"] = np.array([1e-3, 0.5 if step > 20 else 1e-3], np.float32)
            run.log_rows("watch_layers", {"step": np.full(2, step),
                                          "layer": np.array(["x", "y"], dtype=object),
                                          "rank": np.zeros(2, np.int16), **cols})
    r = cs.open_run(tmp_path / "a")
    got = fmt.training_alerts(r)
    want = training_alerts(fmt.load_watch(r).layers)
    assert got.reset_index(drop=True).equals(want)
    assert r.alerts().reset_index(drop=True).equals(want)  # the reader's method
    hi = got[got["kind"] == "update_ratio_high"]
    assert hi[["layer", "first_step", "last_step"]].values.tolist() == [["y", 21, 29]]


def test_run_method_stores_tensors_with_running_ids(tmp_path):
    """``run.log_validation_images`` takes tensors and numbers them 0..N-1 as ``run.validate``
    does: the thumbnails equal the format's own on the same numpy images."""
    import torch

    x = torch.rand(6, 3, 8, 8)
    y = torch.tensor([0, 1, 0, 1, 0, 1])
    with cs.Run(tmp_path, "m") as run:
        assert run.log_validation_images(x, y) == 6
    with cs.Run(tmp_path, "f") as run:
        fmt.write_validation_thumbnails(run, np.arange(6), x.numpy(), y.numpy())
    got = fmt.load_validation_thumbnails(cs.open_run(tmp_path / "m"), range(6))
    want = fmt.load_validation_thumbnails(cs.open_run(tmp_path / "f"), range(6))
    assert sorted(got) == list(range(6))
    for i in range(6):
        np.testing.assert_array_equal(got[i], want[i])
