"""Generated image grids (convscope.formats.generated) on hand-made runs: grids with known
pixel values read back exactly, the step checks, the diversity against a hand computation and a
brute-force loop, and the comparison of two runs' grids (formats.compare)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import convscope as cs
from convscope.errors import InvalidValueError, StoreError
from convscope.figures.generated import grid_rgb
from convscope.formats import feature_maps
from convscope.formats import generated as gen
from convscope.formats.compare import compare, compare_generated, steps_text


def _tiled(values, rows=2, cols=2, side=4, channels=3) -> np.ndarray:
    """A ``[C, rows*side, cols*side]`` grid whose tile k is the constant ``values[k]``."""
    out = np.zeros((channels, rows * side, cols * side), dtype=np.float32)
    for k, v in enumerate(values):
        r, c = divmod(k, cols)
        out[:, r * side:(r + 1) * side, c * side:(c + 1) * side] = v
    return out


def _exact(step: int) -> np.ndarray:
    """A 1 x 3 x 8 x 8 grid of float16-exact values (multiples of 1/64) that depend on the
    step, the channel and the pixel."""
    c, y, x = np.meshgrid(np.arange(3), np.arange(8), np.arange(8), indexing="ij")
    return (((c * 64 + y * 8 + x + 3 * step) % 65) / 64.0).astype(np.float32)[None]


@pytest.fixture
def run_path(tmp_path):
    with cs.Run(tmp_path, "gan", quiet=True) as run:
        for step in (12, 0, 5):  # out of order on purpose
            gen.write(run, step, _exact(step), grid=(2, 2))
        # the feature-map samples share the kind and are not grids
        feature_maps.write_samples(run, np.zeros((2, 3, 8, 8), np.float32), None)
        # a key that only looks like a grid's is not listed
        run.log_array(feature_maps.SAMPLES_KIND, "generated.stepXYZ", np.zeros((1, 3, 8, 8)))
    return tmp_path / "gan"


def test_grids_read_back_exactly_by_step(run_path):
    r = cs.open_run(run_path)
    assert gen.key(5) == "generated.step000005" and gen.key(1234567) == "generated.step1234567"
    assert gen.steps(r) == [0, 5, 12] and gen.has(r)
    for step in (0, 5, 12):
        g = gen.load(r, step)
        assert (g.step, g.key, g.grid) == (step, gen.key(step), (2, 2))
        assert g.image.dtype == np.float32 and g.image.shape == (3, 8, 8)
        np.testing.assert_array_equal(g.image, _exact(step)[0])
    assert gen.load(r, np.int64(5)).step == 5
    # the arrays index says the same as the files
    info = {g.step: g for g in gen.index(r)}
    assert info[12].shape == (1, 3, 8, 8) and info[12].key == "generated.step000012"


def test_a_run_without_grids(tmp_path):
    with cs.Run(tmp_path, "plain", quiet=True) as run:
        run.log_scalars(0, {"loss": 1.0})
    r = cs.open_run(tmp_path / "plain")
    assert gen.steps(r) == [] and not gen.has(r)
    assert gen.final_diversity(r) is None
    with pytest.raises(InvalidValueError, match="no grids"):
        gen.load(r, 0)


@pytest.mark.parametrize("bad", [3, -1, "5", 5.0, True, None, [5], {"step": 5}])
def test_a_step_not_stored_or_not_an_int_is_refused(run_path, bad):
    r = cs.open_run(run_path)
    with pytest.raises(InvalidValueError, match="step"):
        gen.load(r, bad)


def test_malformed_and_oversized_grids_are_refused(tmp_path, monkeypatch):
    with cs.Run(tmp_path, "bad", quiet=True) as run:
        run.log_array(gen.KIND, gen.key(1), np.zeros((2, 3, 8, 8)), meta={"step": 1,
                                                                           "grid": [2, 2]})
        run.log_array(gen.KIND, gen.key(2), np.zeros((1, 3, 8, 8)), meta={"grid": [3, 3]})
        gen.write(run, 3, np.zeros((1, 3, 64, 32)))
    r = cs.open_run(tmp_path / "bad")
    with pytest.raises(StoreError, match=r"\[2, 3, 8, 8\]"):
        gen.load(r, 1)
    assert gen.load(r, 2).grid is None  # 3 x 3 tiles do not divide 8 x 8
    monkeypatch.setattr(gen, "MAX_SIDE", 48)
    with pytest.raises(StoreError, match="at most 48 pixels"):
        gen.load(r, 3)
    with pytest.raises(InvalidValueError):
        gen.write(run, 4, np.zeros((2, 3, 8, 8)))


def test_tiles_are_cut_row_by_row():
    img = _tiled([0.0, 0.25, 0.5, 1.0], rows=2, cols=2, side=3, channels=1)
    t = gen.tiles(img, (2, 2))
    assert t.shape == (4, 1, 3, 3)
    np.testing.assert_array_equal(t[:, 0, 0, 0], [0.0, 0.25, 0.5, 1.0])
    with pytest.raises(InvalidValueError):
        gen.tiles(img, (4, 4))


def test_diversity_by_hand():
    # constant tiles 0, 0.25, 0.5, 1: the RMS difference of two tiles is |a - b|;
    # the six pairs: .25, .5, 1, .25, .75, .5 -> 3.25 / 6
    img = _tiled([0.0, 0.25, 0.5, 1.0])
    assert gen.diversity(img, (2, 2)) == pytest.approx(3.25 / 6, abs=1e-12)
    # sixteen copies of one image (a collapsed generator): 0
    rng = np.random.default_rng(0)
    one = rng.random((3, 5, 5))
    assert gen.diversity(np.tile(one, (1, 4, 4)), (4, 4)) == pytest.approx(0.0, abs=1e-7)
    # random tiles against a brute-force loop over the pairs
    img = rng.random((3, 20, 20)).astype(np.float32)
    t = [img[:, r * 5:(r + 1) * 5, c * 5:(c + 1) * 5].astype(np.float64)
         for r in range(4) for c in range(4)]
    brute = np.mean([np.sqrt(np.mean((a - b) ** 2)) for a, b in itertools.combinations(t, 2)])
    assert gen.diversity(img, (4, 4)) == pytest.approx(brute, rel=1e-9)


def test_nearest_takes_the_earlier_on_a_tie():
    assert gen.nearest([0, 50, 100], 74) == 50
    assert gen.nearest([0, 50, 100], 75) == 50
    assert gen.nearest([0, 50, 100], 76) == 100
    assert gen.nearest([0, 50, 100], 10**9) == 100
    with pytest.raises(InvalidValueError):
        gen.nearest([], 3)


def test_grid_pixels_are_mapped_without_stretch():
    img = np.array([[[0.0, 0.5], [0.25, 1.0]]], dtype=np.float32)  # one channel, 2 x 2
    rgb = grid_rgb(img)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[..., 0], [[0, 128], [64, 255]])  # round(255 v)
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])
    dark = grid_rgb(np.full((3, 2, 2), 0.1, np.float32))
    assert (dark == 26).all()  # a dark grid stays dark (no min-max stretch)
    # max_side 2 on a 4 x 4 image: 2 x 2 blocks averaged
    x = np.arange(16, dtype=np.float32).reshape(1, 4, 4) / 16.0
    small = grid_rgb(x, max_side=2)
    want = np.array([[(0 + 1 + 4 + 5) / 4, (2 + 3 + 6 + 7) / 4],
                     [(8 + 9 + 12 + 13) / 4, (10 + 11 + 14 + 15) / 4]]) / 16.0
    np.testing.assert_array_equal(small[..., 1], np.round(want * 255).astype(np.uint8))


def test_compare_names_the_steps_and_the_more_diverse_run(tmp_path):
    with cs.Run(tmp_path, "collapsed", quiet=True) as run:
        for step in (0, 10, 20):
            gen.write(run, step, _tiled([0.5] * 4), grid=(2, 2))
    with cs.Run(tmp_path, "varied", quiet=True) as run:
        for step in (0, 15):
            gen.write(run, step, _tiled([0.0, 0.25, 0.5, 1.0]), grid=(2, 2))
    with cs.Run(tmp_path, "none", quiet=True) as run:
        run.log_scalars(0, {"x": 1.0})
    ra, rb, rn = (cs.open_run(tmp_path / n) for n in ("collapsed", "varied", "none"))
    g = compare_generated(ra, rb)
    assert (g.steps_a, g.steps_b, g.steps()) == ([0, 10, 20], [0, 15], [0, 10, 15, 20])
    assert g.diversity_a == (20, 0.0)
    assert g.diversity_b[0] == 15 and g.diversity_b[1] == pytest.approx(3.25 / 6)
    assert g.more_diverse() == "b" and compare_generated(rb, ra).more_diverse() == "a"
    assert g.at(10) == (10, 15) and g.at(5) == (0, 0) and g.at(20) == (20, 15)
    c = compare(ra, rb)
    line = c.generated_line()
    assert line.startswith("generated grids: A 3 at steps 0, 10, 20; B 2 at steps 0, 15; "
                           "last grids: B's samples are more diverse (diversity A 0.0000 at "
                           "step 20, B 0.5417 at step 15")
    assert compare(rn, rn).generated_line() is None
    one = compare(ra, rn).generated
    assert not one.both() and one.more_diverse() is None
    assert compare(ra, rn).generated_line() == "generated grids: A 3 at steps 0, 10, 20; B none"
    # within 10 % of each other: about as diverse
    with cs.Run(tmp_path, "twin", quiet=True) as run:
        gen.write(run, 0, _tiled([0.0, 0.25, 0.5, 1.0]) * 0.95, grid=(2, 2))
    assert compare_generated(rb, cs.open_run(tmp_path / "twin")).more_diverse() == "same"


def test_steps_text():
    assert steps_text([]) == "none"
    assert steps_text([7]) == "1 at step 7"
    assert steps_text(list(range(0, 15001, 500))) == "31 at steps 0, 500, 1000, ..., 15000"
