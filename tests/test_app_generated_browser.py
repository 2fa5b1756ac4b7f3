"""The generated image grids of a real (tiny) ``convscope experiment dcgan`` in chromium: the
Generated page's slider and thumbnails, and the Compare page's two grids at one step.

Oracle: the stored grid of each step (``arrays/samples/generated.step<N>``, float16 in [0, 1]),
read with numpy; the page's <img> PNG is decoded and must equal ``round(255 v)`` pixel for pixel
(within 1 for PNG quantisation) after undoing the page's integer upscaling. The diversity the
Compare page names is recomputed here by a brute-force loop over the tile pairs.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import convscope as cs
from convscope.experiments.dcgan import grid_key, run_experiment

from .dash_http import DashClient, dependencies, post

pytestmark = pytest.mark.browser
SHOTS = Path("/tmp/shots18/F")
STEPS, EVERY, SIZE = 20, 5, 16  # 16 x 16 images: the grids are 64 x 64


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    """Two rounds (G v1 + D v1, G v2 + D v3) of 20 steps at 16 x 16: about 5 s here."""
    root = tmp_path_factory.mktemp("gen")
    with torch.random.fork_rng(devices=[]):
        run_experiment(root, name="gan", versions=((1, 1), (2, 3)), steps=STEPS, batch_size=8,
                       image_size=SIZE, sample_every=EVERY, images=64, diagnose_images=8,
                       num_threads=1, quiet=True)
    return root


@pytest.fixture(scope="module")
def server(logdir, module_serve):
    return module_serve(logdir, refresh_ms=600_000)


def _stored(logdir: Path, run: str, step: int) -> np.ndarray:
    """The stored grid as the PNG must show it: uint8 [H, W, 3]."""
    a = cs.open_run(logdir / run).array("samples", grid_key(step)).astype(np.float32)[0]
    return (a.transpose(1, 2, 0) * 255).round().astype(np.int64)


def _shown(page, selector: str) -> np.ndarray:
    src = page.get_attribute(selector, "src")
    assert src and src.startswith("data:image/png;base64,")
    img = np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB"))
    return img.astype(np.int64)


def _same(shown: np.ndarray, stored: np.ndarray) -> None:
    s = shown.shape[0] // stored.shape[0]
    assert s >= 1 and shown.shape[:2] == (stored.shape[0] * s, stored.shape[1] * s)
    assert np.abs(shown[::s, ::s] - stored).max() <= 1


def _diversity(grid: np.ndarray, n: int = 4) -> float:
    """Brute force: mean RMS difference over the tile pairs of a [H, W, 3] grid in [0, 1]."""
    h, w = grid.shape[0] // n, grid.shape[1] // n
    t = [grid[r * h:(r + 1) * h, c * w:(c + 1) * w].astype(np.float64)
         for r in range(n) for c in range(n)]
    return float(np.mean([np.sqrt(np.mean((a - b) ** 2)) for a, b in itertools.combinations(t, 2)]))


def _caption_step(page, selector: str) -> int:
    return int(page.get_attribute(f"{selector} [data-step]", "data-step"))


def _wait_step(page, selector: str, step: int) -> None:
    page.wait_for_selector(f"{selector} [data-step='{step}']")


def test_generated_page_slider_and_thumbnails_show_the_stored_grids(logdir, server, page):
    steps = list(range(0, STEPS + 1, EVERY))
    page.goto(server.url + "/generated")
    page.wait_for_selector("#gen-caption [data-step]")
    run = page.locator("#gen-run").inner_text().strip()
    assert run in ("gan-g1d1", "gan-g2d3")
    # the last grid first
    _wait_step(page, "#gen-caption", STEPS)
    _same(_shown(page, "#gen-image"), _stored(logdir, run, STEPS))
    caption = page.locator("#gen-caption").inner_text()
    assert f"{len(steps)} of {len(steps)} grids" in caption and "4 × 4 tiles" in caption
    div = float(caption.rsplit("diversity", 1)[1].strip())
    assert div == pytest.approx(_diversity(_stored(logdir, run, STEPS) / 255.0), abs=6e-4)
    # the slider: Home is step 0, then one grid to the right
    page.locator("#gen-step [role=slider]").focus()
    page.keyboard.press("Home")
    _wait_step(page, "#gen-caption", 0)
    _same(_shown(page, "#gen-image"), _stored(logdir, run, 0))
    page.keyboard.press("ArrowRight")
    _wait_step(page, "#gen-caption", EVERY)
    _same(_shown(page, "#gen-image"), _stored(logdir, run, EVERY))
    # the strip: one thumbnail per stored grid; clicking one enlarges it
    assert page.locator(".gen-thumb").count() == len(steps)
    assert [int(s) for s in page.eval_on_selector_all(
        ".gen-thumb", "els => els.map(e => e.dataset.step)")] == steps
    page.locator(".gen-thumb[data-step='15']").click()
    _wait_step(page, "#gen-caption", 15)
    _same(_shown(page, "#gen-image"), _stored(logdir, run, 15))
    assert not np.array_equal(_stored(logdir, run, 0), _stored(logdir, run, STEPS))
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.set_viewport_size({"width": 1400, "height": 1300})
    page.wait_for_timeout(400)
    page.screenshot(path=str(SHOTS / "generated-test.png"), full_page=True)


def test_compare_page_shows_both_grids_at_one_step(logdir, server, page):
    page.goto(server.url + "/compare")
    page.wait_for_selector("#cmp-gen-cap-a [data-step]")
    page.wait_for_selector("#cmp-gen-cap-b [data-step]")
    a = page.locator("#cmp-a").inner_text().strip()
    b = page.locator("#cmp-b").inner_text().strip()
    assert {a, b} == {"gan-g1d1", "gan-g2d3"}
    for sel, run in (("#cmp-gen-a", a), ("#cmp-gen-b", b)):
        assert _caption_step(page, sel.replace("gen-", "gen-cap-")) == STEPS
        _same(_shown(page, sel), _stored(logdir, run, STEPS))
    # the verdict names the run whose last grid is more diverse (brute force here)
    da, db = (_diversity(_stored(logdir, r, STEPS) / 255.0) for r in (a, b))
    which = page.get_attribute("#cmp-gen-verdict", "data-which")
    want = "same" if abs(db - da) < 0.1 * max(da, db) else ("b" if db > da else "a")
    assert which == want
    # one slider moves both
    page.locator("#cmp-gen-step [role=slider]").focus()
    page.keyboard.press("Home")
    _wait_step(page, "#cmp-gen-cap-a", 0)
    _wait_step(page, "#cmp-gen-cap-b", 0)
    for sel, run in (("#cmp-gen-a", a), ("#cmp-gen-b", b)):
        _same(_shown(page, sel), _stored(logdir, run, 0))
    page.keyboard.press("ArrowRight")
    _wait_step(page, "#cmp-gen-cap-a", EVERY)
    _wait_step(page, "#cmp-gen-cap-b", EVERY)
    _same(_shown(page, "#cmp-gen-b"), _stored(logdir, b, EVERY))
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.set_viewport_size({"width": 1400, "height": 1000})
    page.locator("#cmp-gen-box").scroll_into_view_if_needed()
    page.wait_for_timeout(400)
    page.locator("#cmp-gen-box").screenshot(path=str(SHOTS / "compare-generated-test.png"))


BAD = ["x", -1, 10**9, True, None, 1.5, [0], {"a": 1}]
BAD_RUNS = ["../etc", "/etc/passwd", 123, None, ["gan-g1d1"], "x" * 100_000, "nope"]


def _no_image(resp: dict, *outputs: str) -> None:
    for out in outputs:
        cid, prop = out.split(".")
        assert resp.get(cid, {}).get(prop) in (None, ""), (out, resp)


def test_callbacks_refuse_bad_values(logdir, server):
    c = DashClient(server.url)
    selected = ["gan-g1d1", "gan-g2d3"]
    _, resp = c.call("gen-image.src", {"gen-step.value": 0, "gen-run.value": "gan-g1d1"})
    assert resp["gen-image"]["src"].startswith("data:image/png")
    for bad in BAD:
        _, resp = c.call("gen-image.src", {"gen-step.value": bad, "gen-run.value": "gan-g1d1"})
        _no_image(resp, "gen-image.src")
    for bad in BAD_RUNS:
        _, resp = c.call("gen-image.src", {"gen-step.value": 0, "gen-run.value": bad})
        _no_image(resp, "gen-image.src")
        _, resp = c.call("gen-step.max", {"gen-run.value": bad})
        assert not resp.get("gen-strip", {}).get("children") or "notice" in json.dumps(resp)
    good = {"cmp-gen-step.value": 0, "cmp-a.value": "gan-g1d1", "cmp-b.value": "gan-g2d3",
            "run-select.value": selected}
    _, resp = c.call("cmp-gen-a.src", good)
    assert resp["cmp-gen-a"]["src"].startswith("data:image/png")
    for bad in BAD:
        _, resp = c.call("cmp-gen-a.src", {**good, "cmp-gen-step.value": bad})
        _no_image(resp, "cmp-gen-a.src", "cmp-gen-b.src")
    for bad in BAD_RUNS:
        for which in ("cmp-a.value", "cmp-b.value"):
            _, resp = c.call("cmp-gen-a.src", {**good, which: bad})
            _no_image(resp, "cmp-gen-a.src", "cmp-gen-b.src")
        # a run that exists but is not selected is not shown either
        _, resp = c.call("cmp-gen-a.src", {**good, "run-select.value": ["gan-g1d1"]})
        _no_image(resp, "cmp-gen-a.src", "cmp-gen-b.src")
    # the thumbnail click: a pattern-matching input with a forged index
    dep = next(d for d in dependencies(server.url)
               if not d.get("clientside_function") and d["output"].startswith("gen-step.value"))
    for index in ("x", -3, 10**9, None, True):
        tid = {"type": "gen-thumb", "index": index}
        body = {"output": dep["output"], "outputs": {"id": "gen-step", "property": "value"},
                "inputs": [[{"id": tid, "property": "n_clicks", "value": 1}]],
                "state": [{"id": "gen-step", "property": "max", "value": 4}],
                "changedPropIds": [json.dumps(tid, separators=(",", ":"), sort_keys=True)
                                   + ".n_clicks"]}
        status, raw = post(server.url, body)
        assert status in (200, 204), (index, status, raw[-500:])
        if status == 200:  # no update: the slider stays
            assert "gen-step" not in json.loads(raw)["response"], (index, raw)
    body["inputs"][0][0]["id"] = tid = {"type": "gen-thumb", "index": 2}
    body["changedPropIds"] = [json.dumps(tid, separators=(",", ":"), sort_keys=True) + ".n_clicks"]
    status, raw = post(server.url, body)
    assert status == 200 and json.loads(raw)["response"]["gen-step"]["value"] == 2
