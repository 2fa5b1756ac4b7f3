"""Live: play a video file or the webcam through the saved model, or upload an image (or pick a
stored sample), and see every channel of a layer respond (the deep-visualization toolbox's live
view; Yosinski et al. 2015). Runs the run's saved model on the server.

Per frame, the browser posts one model-sized image to :data:`FRAME_PATH` and gets back one small
PNG of the layer's channel grid (or an fc layer's bars), the zoomed channel and the model's top-5
classes (:func:`frame_answer`): no plotly figure per frame. Video files are decoded on the server
(:mod:`convscope.app.video`: MP4 or WebM, PyAV) into model-sized frames that the page keeps and
plays; webcam frames are taken by the browser (``getUserMedia``) and shrunk there. The page's
script is ``assets/live.js``. Clicking a channel zooms it, beside the unit's preferred input and
top-9 crops when the run has them.

Bounded work per request:

* The saved model is rebuilt from weights and an allow-listed architecture record
  (:mod:`convscope.formats.checkpoints`, :mod:`convscope.store.checkpoints`); nothing from the run directory runs. A whole-module pickle
  loads only when the server was started with ``--trust-checkpoints``; otherwise the page says so.
* Uploads: at most :data:`MAX_UPLOAD_BYTES` (checked on the data-URI string, before base64
  decoding), PNG or JPEG only, at most :data:`MAX_SIDE` pixels a side and :data:`MAX_PIXELS`
  pixels in the header. What is decoded is tied to the model's input: at most
  :data:`DECODE_FACTOR` times its pixels, never under :data:`MIN_DECODE_PIXELS` nor over
  :data:`MAX_DECODE_PIXELS` (checked on the header before any pixel is decoded; a JPEG is first
  reduced by its decoder's ``draft`` scaling, so a large photo still fits). At most
  :data:`MAX_DECODES` images are decoded at once per process; a request that waits longer than
  :data:`DECODE_WAIT_S` for its turn is refused with "busy". The image is shrunk to the model's
  input at once, and only that small copy travels back to the browser.
* The channel-grid callback takes only such a model-sized copy: an image of any other size (as a
  client could post to it directly) is refused on its header, before decoding.
* Sample images are read memory-mapped, one sample at a time, and only when the stored array's
  shape is the model's input.
* The model's input may be at most :data:`MAX_MODEL_SIDE` pixels a side.
* The channel grid shows at most :data:`MAX_GRID_CHANNELS` channels (the most active ones) and
  :data:`MAX_GRID_VALUES` values (maps shrunk by area averaging); the page says when it does.
* At most :data:`MAX_MODELS` loaded models are cached per server process (least recently used
  are dropped), keyed by run and by the checkpoint files' identity.
* A frame request (:data:`FRAME_PATH`) is at most :data:`MAX_FRAME_BODY` bytes, takes only an
  image of exactly the model's input size, a layer of the run's graph and a channel number; a
  video upload is bounded by :mod:`convscope.app.video` (size, duration, frames, decode time).

The request size itself is capped by the app (``create_app``: ``MAX_CONTENT_LENGTH``), so a
body far larger than an accepted upload is refused before it is parsed.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import threading
import time
import zlib
from collections import OrderedDict
from typing import Any

import numpy as np
from dash import ClientsideFunction, Input, Output, State, ctx, dcc, html, no_update

from ...errors import ConvscopeError, InputError, StoreError
from ...figures.features import channel_grid, unit_pane
from ...figures.images import png_data_uri, to_rgb
from ...figures.live import bars_image, grid_image, png_uri
from ...formats import checkpoints as ck_format
from ...formats import feature_maps as fm_format
from ...formats import preferred_inputs as pi_format
from ...formats import structure
from ...formats import top_examples as te_format
from .. import video as video_mod
from ..components import (
    NOTICE,
    graph,
    keep_or_first,
    missing,
    no_runs_selected,
    notice,
    pick_run,
    picker_page,
    register_run_picker,
    survive,
)
from . import Page

#: Largest upload accepted, in bytes of the file (its data URI is about 4/3 as long).
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
MAX_URI_CHARS = 4 * math.ceil(MAX_UPLOAD_BYTES / 3) + 256  # base64 plus the "data:...," header
#: Largest image side and pixel count an upload's header may declare.
MAX_SIDE = 4096
MAX_PIXELS = 4096 * 4096
#: Pixels decoded from an upload: DECODE_FACTOR x the model input's, within these bounds (a 4 MP
#: RGBA or 16-bit image is 16 MB decoded; conversion and resizing add about as much again).
DECODE_FACTOR = 16
MIN_DECODE_PIXELS = 1024 * 1024
MAX_DECODE_PIXELS = 2048 * 2048
#: Uploads decoded at once per server process, and how long a request waits for its turn.
MAX_DECODES = 2
DECODE_WAIT_S = 10.0
#: Largest model input side the live view runs (the upload is resized to the model's input).
MAX_MODEL_SIDE = 1024
#: What one channel grid may show: channels, and values over all tiles.
MAX_GRID_CHANNELS = 256
MAX_GRID_VALUES = 512 * 512
#: Loaded models kept per server process.
MAX_MODELS = 2
FORMATS = ("PNG", "JPEG")
#: Where the page's script posts each frame (see :func:`frame_answer`).
FRAME_PATH = "/_convscope/live/frame"
#: Largest frame request body: a model-sized PNG of the largest model input, and the rest.
MAX_FRAME_BODY = 4 * math.ceil((MAX_MODEL_SIDE * (4 * MAX_MODEL_SIDE + 1) * 1.01 + 4096) / 3) \
    + 8192
#: Values of an fc layer sent per frame (more are drawn as means of adjacent groups).
MAX_VECTOR = 1024
#: Top classes shown per frame.
TOP_K = 5
#: Top examples shown beside a zoomed channel.
MAX_CROPS = 9
#: Largest video upload as a data URI.
MAX_VIDEO_URI_CHARS = 4 * math.ceil(video_mod.MAX_VIDEO_BYTES / 3) + 256
#: Run facts cached per server process (input shape, layers, class names).
MAX_INFOS = 8

_models: OrderedDict[tuple, tuple[Any, threading.Lock]] = OrderedDict()
_lock = threading.Lock()
_decoding = threading.BoundedSemaphore(MAX_DECODES)
_infos: OrderedDict[tuple, dict[str, Any]] = OrderedDict()


def _trust(state) -> bool:
    return bool(getattr(state, "trust_checkpoints", False))


def _key(reader) -> str:
    """The checkpoint the page runs: the default key when there is one, else the first."""
    return ck_format.default_key(reader)


def _model(reader, key: str, trust: bool) -> tuple[Any, threading.Lock]:
    """The run's saved model with a lock for running it, loaded once per checkpoint version;
    the :data:`MAX_MODELS` most recently used stay loaded."""
    ident = (str(reader.path), key, ck_format.identity(reader, key), trust)
    with _lock:
        if ident in _models:
            _models.move_to_end(ident)
            return _models[ident]
        entry = (ck_format.load_model(reader, key, trust=trust), threading.Lock())
        _models[ident] = entry
        while len(_models) > MAX_MODELS:
            _models.popitem(last=False)
        return entry


def _layer_kinds(reader) -> dict[str, str]:
    """The graph's modules the live view shows, in graph order: ``"map"`` for 4-d outputs
    (conv layers: a channel grid), ``"vector"`` for 2-d ones (fc layers: bars). A damaged
    graph: StoreError."""
    maps = set(structure.graph_layers(reader))
    if not maps and not structure.has_graph(reader):
        return {}
    nodes = structure.graph(reader).get("nodes") or []
    out: dict[str, str] = {}
    for n in nodes:
        if not isinstance(n, dict) or not isinstance(n.get("name"), str):
            continue
        name = n["name"]
        shapes = n.get("output_shapes")
        if name in maps:
            out[name] = "map"
        elif (n.get("op") == "module" and isinstance(shapes, list) and len(shapes) == 1
              and isinstance(shapes[0], list) and len(shapes[0]) == 2):
            out[name] = "vector"
    return out


def _graph_layers(reader) -> list[str]:
    """Names of the graph's modules the live view shows: 4-d and 2-d outputs (a damaged graph:
    StoreError)."""
    return list(_layer_kinds(reader))


def _class_names(reader) -> list[str] | None:
    """The class names of run.json's config, or None."""
    try:
        names = reader.config.get("class_names")
    except Exception:
        return None
    return [str(n)[:80] for n in names[:100_000]] if isinstance(names, list) and names else None


def _info(reader, key: str, trust: bool) -> dict[str, Any]:
    """What each frame needs of the run, read once per checkpoint version: the model input
    ``shape``, the shown ``layers`` and their kinds, the class ``names``."""
    ident = (str(reader.path), key, ck_format.identity(reader, key), trust)
    with _lock:
        if ident in _infos:
            _infos.move_to_end(ident)
            return _infos[ident]
    info = {"shape": _input_shape(reader, key), "layers": _layer_kinds(reader),
            "names": _class_names(reader)}
    with _lock:
        _infos[ident] = info
        while len(_infos) > MAX_INFOS:
            _infos.popitem(last=False)
    return info


def _trust_note(reader, key: str, trust: bool) -> html.Div | None:
    if trust or ck_format.form(reader, key) != "pickle":
        return None
    return notice(f"The saved model {key!r} of run {reader.name!r} is a whole-module pickle, "
                  "so the live view does not load it. " + ck_format.TRUST_HINT, "warn")


def _input_shape(reader, key: str) -> tuple[int, int, int]:
    """The model's input ``(C, H, W)``: the stored samples' shape, else the graph's input, else
    the shape recorded with the checkpoint, else 3 x 32 x 32."""
    shape = ck_format.model_input_shape(reader, key) or [3, 32, 32]
    try:
        c, h, w = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise InputError(f"the recorded model input {shape!r} is not [C, H, W]: record samples "
                         "with run.log_feature_maps(model, images).") from None
    if c not in (1, 3) or not (1 <= h <= MAX_MODEL_SIDE and 1 <= w <= MAX_MODEL_SIDE):
        raise InputError(f"the live view runs models taking 1 or 3 channels of at most "
                         f"{MAX_MODEL_SIDE} x {MAX_MODEL_SIDE} pixels; this one takes {c} x {h} x "
                         f"{w}. Use cs.features.live in Python for it.")
    return c, h, w


def layout() -> html.Div:
    mb = video_mod.MAX_VIDEO_BYTES // 2**20
    return picker_page(
        "live", "Live", "Play a video file or your webcam through the saved model, or run one "
        "image, and see every channel of a layer respond as the scene changes (each channel "
        "scaled on its own; bright = strong; Yosinski et al. 2015). Click a channel to zoom it; "
        "fc layers show as bars; the model's top-5 classes update with every frame.",
        [
            html.Label(["Layer", dcc.Dropdown(id="live-layer", clearable=False)],
                       className="control control-wide"),
            html.Label(["Sample image", dcc.Dropdown(id="live-sample", clearable=False)],
                       className="control"),
            dcc.Upload(id="live-upload", children=html.Div([
                "Drop an image here or ", html.A("choose a file"),
                html.Div(f"PNG or JPEG, up to {MAX_UPLOAD_BYTES // 2**20} MB and {MAX_SIDE} px "
                         "a side", className="hint")]),
                className="upload", accept="image/png,image/jpeg", max_size=MAX_UPLOAD_BYTES),
            dcc.Upload(id="live-video-upload", children=html.Div([
                "Drop a video here or ", html.A("choose a file"),
                html.Div(f"MP4 or WebM, up to {mb} MB and "
                         f"{video_mod.MAX_VIDEO_SECONDS:.0f} s", className="hint")]),
                className="upload", accept="video/mp4,video/webm,.mp4,.webm",
                max_size=video_mod.MAX_VIDEO_BYTES),
            html.Button("Start webcam", id="live-webcam", n_clicks=0, className="button",
                        title="your camera's frames, shrunk to the model's input in the "
                              "browser, run through the model continuously"),
        ],
        html.Div(id="live-panel", className="lv-panel"),
        html.Div([html.Div(id="live-zoom-note"),
                  html.Div(graph("live-unit"), id="live-unit-box", style={"display": "none"})],
                 className="lv-unit"),
        html.Div(html.Div([html.Div("Still image: every channel with its values (hover)",
                                    className="lv-cap"),
                           html.Div([html.Img(id="live-input", className="live-input"),
                                     html.Div(graph("live-grid"), className="live-grid")],
                                    className="live-row")],
                          id="live-body", style={"display": "none"}),
                 id="live-still-box"),  # hidden by live.js while a video or the webcam plays
        dcc.Store(id="live-image"), dcc.Store(id="live-video"), dcc.Store(id="live-config"),
        dcc.Store(id="live-still"), dcc.Store(id="live-zoom"), dcc.Store(id="live-js"),
    )


def register(app, state) -> None:
    def _status(selected, current):
        """The runs with a saved model, and a note when the chosen one needs trust."""
        if isinstance(selected, str):
            selected = [selected]
        if not isinstance(current, str):
            current = None
        if not isinstance(selected, list) or not all(isinstance(n, str) for n in selected):
            return [], None, no_runs_selected()
        options, value, lacking = pick_run(state, selected, current, ck_format.has)
        note = missing("saved model", "run.log_checkpoint(model)", lacking) if lacking else None
        if value is not None:
            try:
                reader = state.reader(value)
                warn = _trust_note(reader, _key(reader), _trust(state))
            except ConvscopeError as exc:
                warn = notice(str(exc), "bad")
            if warn is not None:
                note = html.Div([n for n in (note, warn) if n is not None])
        return options, value, note

    register_run_picker(app, state, "live", status=_status)

    @app.callback(
        Output("live-layer", "options"), Output("live-layer", "value"),
        Output("live-sample", "options"), Output("live-sample", "value"),
        Output("live-status", "children", allow_duplicate=True),
        Input("live-run", "value"), State("live-layer", "value"),
        prevent_initial_call=True,
    )
    @survive([], None, [], None, NOTICE)
    def _layers(run, current):
        if not isinstance(run, str) or not run:
            return [], None, [], None, no_update
        reader = state.reader(run)
        layers = _graph_layers(reader)
        samples = fm_format.samples_index(reader)
        n = int(samples.iloc[0]["shape"][0]) if len(samples) else 0
        value = keep_or_first(current, layers)
        return layers, value, list(range(n)), (0 if n else None), no_update

    @app.callback(
        Output("live-image", "data"),
        Input("live-upload", "contents"), Input("live-sample", "value"),
        State("live-run", "value"),
    )
    def _image(contents, sample, run):
        if not isinstance(run, str):
            run = None
        if ctx.triggered_id == "live-upload" and contents:
            # check and shrink the upload here, so only the model-sized copy goes back
            try:
                reader = state.reader(run) if isinstance(run, str) else None
                shape = _input_shape(reader, _key(reader)) if reader else (3, 32, 32)
                x = _decode(contents, shape)
            except ConvscopeError as exc:
                return {"error": str(exc)}
            except Exception as exc:  # a damaged run: say so instead of failing the request
                return {"error": f"cannot prepare the image ({type(exc).__name__}: "
                                 f"{str(exc)[:300]})"}
            arr = (x.numpy() * 255).round().astype(np.uint8)
            return {"upload": png_data_uri(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0))}
        if run is None or sample is None:
            return no_update
        return {"sample": sample}

    @app.callback(
        Output("live-grid", "figure"), Output("live-input", "src"), Output("live-body", "style"),
        Output("live-status", "children", allow_duplicate=True),
        Output("live-still", "data"),
        Input("live-image", "data"), Input("live-layer", "value"), State("live-run", "value"),
        prevent_initial_call=True,
    )
    def _grid(image, layer, run):
        out = _still_grid(image, layer, run)
        return out if len(out) == 5 else (*out, no_update)

    def _still_grid(image, layer, run):
        hidden = {"display": "none"}
        if not isinstance(image, dict):
            return {}, None, hidden, no_update
        if "error" in image:  # the upload was refused: say why (text only, bounded)
            return {}, None, hidden, notice(f"Cannot use this image: {str(image['error'])[:500]}",
                                            "bad")
        if not isinstance(run, str) or not isinstance(layer, str) or len(layer) > 500:
            return {}, None, hidden, no_update
        from ...features import live

        try:
            reader = state.reader(run)
            key = _key(reader)
            shape = _input_shape(reader, key)
            if "upload" in image:  # only the model-sized copy the upload callback made
                x = _decode(image["upload"], shape, exact=True)
                source = "upload"
            else:
                x = _sample(reader, image.get("sample"), shape)
                source = f"sample {image['sample']}"
            model, lock = _model(reader, key, _trust(state))
            with lock:  # capture hooks the shared model: one forward at a time
                acts = live(model, layer, x).float().cpu()
            vector = _info(reader, key, _trust(state))["layers"].get(layer) == "vector"
        except ConvscopeError as exc:  # a refused upload, an untrusted pickle, a bad layer
            return {}, None, hidden, notice(str(exc), "warn")
        except Exception as exc:  # an unloadable model: say so on the page
            return {}, None, hidden, notice(f"Cannot run the live view: {exc}", "bad")
        # the same image, model-sized and lossless, for the live panel (assets/live.js)
        arr = (x.numpy().clip(0, 1) * 255).round().astype(np.uint8)
        still = {"id": source if source != "upload" else
                 f"upload {len(image['upload'])}:{zlib.crc32(image['upload'].encode())}",
                 "uri": png_uri(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0))}
        total = int(acts.shape[0])
        if vector:  # an fc layer: its bars are in the live panel; 1 x 1 tiles say nothing
            return {}, None, {"display": "none"}, None, still
        acts, shown = _bound(acts)
        fig = channel_grid(acts.numpy(), title=f"{layer}: {total} channels"
                           + (f" ({shown})" if shown else ""))
        fig.update_layout(meta={**fig.layout.meta, "source": source, "layer": layer,
                                "total_channels": total})
        side = max(int(x.shape[-2]), int(x.shape[-1]))
        return (fig, png_data_uri(to_rgb(x.numpy()), scale=max(1, min(4, 512 // side))), {},
                notice(f"Showing {shown}.") if shown else None, still)


    @app.callback(
        Output("live-config", "data"),
        Input("live-run", "value"), Input("live-layer", "value"),
    )
    def _config(run, layer):
        """What the page's script needs to post frames: run, layer, its kind, model input."""
        if not isinstance(run, str) or not isinstance(layer, str) or len(layer) > 500:
            return None
        try:
            reader = state.reader(run)
            key = _key(reader)
            info = _info(reader, key, _trust(state))
        except ConvscopeError as exc:
            return {"error": str(exc)[:500]}
        except Exception as exc:  # a damaged run
            return {"error": f"cannot read the run ({type(exc).__name__}: {str(exc)[:300]})"}
        kind = info["layers"].get(layer)
        if kind is None:
            return {"error": f"{layer[:200]!r} is not a layer of the run's graph: pick one in "
                             "the list."}
        return {"run": run, "layer": layer, "kind": kind, "shape": list(info["shape"]),
                "path": FRAME_PATH}

    @app.callback(
        Output("live-video", "data"),
        Output("live-status", "children", allow_duplicate=True),
        Input("live-video-upload", "contents"),
        State("live-video-upload", "filename"), State("live-run", "value"),
        prevent_initial_call=True,
    )
    @survive(None, NOTICE)
    def _video(contents, filename, run):
        if not contents:
            return no_update, no_update
        name = filename if isinstance(filename, str) else "the video"
        name = name[:120]
        try:
            reader = state.reader(run)
            shape = _info(reader, _key(reader), _trust(state))["shape"]
            raw = _video_bytes(contents)
            got = video_mod.decode(raw, shape)
        except ConvscopeError as exc:
            return None, notice(f"Cannot play {name}: {exc}", "bad")
        frames = [png_uri(f[..., 0] if f.shape[-1] == 1 else f) for f in got.frames]
        said = (f"{name}: {got.container.upper()} ({got.codec}), {got.size[0]} x {got.size[1]} "
                f"pixels, {got.duration:.1f} s; {len(frames)} frames at {got.fps:.3g} frames/s, "
                f"shrunk to the model's {shape[2]} x {shape[1]}")
        return ({"frames": frames, "fps": got.fps, "times": [round(t, 3) for t in got.times],
                 "name": name, "about": said, "shape": list(shape)},
                notice(said + (f"; {got.note}." if got.note else "."),
                       "warn" if got.note else "info"))

    app.clientside_callback(
        ClientsideFunction(namespace="convscopeLive", function_name="update"),
        Output("live-js", "data"),
        Input("live-config", "data"), Input("live-video", "data"), Input("live-still", "data"),
        Input("live-webcam", "n_clicks"),
    )

    @app.callback(
        Output("live-unit", "figure"), Output("live-unit-box", "style"),
        Output("live-zoom-note", "children"),
        Input("live-zoom", "data"), State("live-run", "value"),
        prevent_initial_call=True,
    )
    @survive({}, {"display": "none"}, NOTICE)
    def _zoom(zoom, run):
        hidden = {"display": "none"}
        if not isinstance(zoom, dict) or not isinstance(run, str):
            return {}, hidden, None
        layer, unit = zoom.get("layer"), zoom.get("channel")
        if not isinstance(layer, str) or len(layer) > 500 or not isinstance(unit, int) \
                or isinstance(unit, bool) or not 0 <= unit < 1_000_000:
            return {}, hidden, notice("pick a channel by clicking the grid.", "warn")
        fig = _unit_figure(state.reader(run), layer, unit)
        if fig is None:
            return {}, hidden, notice(
                f"Channel {unit} of {layer}: this run has no preferred input or top examples of "
                f"{layer}. Record them with run.log_preferred_inputs(model, [{layer!r}]) and "
                f"run.log_top_examples(model, [{layer!r}], images).", "info")
        fig.update_layout(title_text=f"Channel {unit} of {layer}: preferred input and top "
                                     f"{fig.layout.meta['k']} examples", margin={"t": 50})
        return fig, {}, None

    import flask

    @app.server.route(FRAME_PATH, methods=["POST"])
    def _live_frame():
        size = flask.request.content_length
        if size is None or size > MAX_FRAME_BODY:
            answer, status = {"error": f"a frame request is at most {MAX_FRAME_BODY:,} bytes: "
                                       "send one model-sized image (the Live page does)."}, 413
        else:
            body = flask.request.get_json(silent=True)
            answer = frame_answer(state, body)
            status = 200
        resp = flask.jsonify(answer)
        resp.status_code = status
        resp.headers["Cache-Control"] = "no-store"
        return resp


def _video_bytes(contents: Any) -> bytes:
    """A video upload's data URI -> its bytes (bounded before decoding base64)."""
    limit = f"MP4 or WebM of at most {video_mod.MAX_VIDEO_BYTES // 2**20} MB"
    if not isinstance(contents, str):
        raise InputError(f"the upload is not a video file: drop an {limit}.")
    if len(contents) > MAX_VIDEO_URI_CHARS:
        raise InputError(f"the file is about {len(contents) * 3 // 4 / 2**20:.1f} MB; the live "
                         f"view takes an {limit}. Cut or re-encode it first.")
    head, sep, b64 = contents.partition(",")
    if not sep or not head.startswith("data:") or not head.endswith(";base64"):
        raise InputError(f"the upload is not a base64 data URI: drop an {limit}.")
    try:
        return base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise InputError("the upload is not valid base64: drop the video file again.") from None


def _unit_figure(reader, layer: str, unit: int):
    """The unit's preferred input beside its top-9 crops, or None when the run has neither."""
    pref = pi_format.meta(reader, layer)
    preferred = None
    if pref is not None and unit in (pref.get("units") or []):
        stored = pi_format.images(reader, layer, mmap=True)
        preferred = np.asarray(stored[pref["units"].index(unit)], dtype=np.float32)
    crops, values = None, None
    if te_format.crops_meta(reader, layer) is not None:
        stored = te_format.crops(reader, layer, mmap=True)
        if 0 <= unit < stored.shape[0]:
            crops = np.asarray(stored[unit][:MAX_CROPS], dtype=np.float32)
            if te_format.has_table(reader):
                got = te_format.channel_values(reader, layer, int(unit), int(len(crops)))
                if len(got) == len(crops):
                    keep = [i for i, v in enumerate(got) if np.isfinite(v)]
                    crops, values = crops[keep], [got[i] for i in keep]
    if preferred is None and (crops is None or not len(crops)):
        return None
    return unit_pane(unit, preferred, crops, values)


def frame_answer(state, body: Any) -> dict[str, Any]:
    """One frame of the live view: ``body`` = ``{"run", "layer", "image"`` (a data URI of a PNG
    or JPEG of exactly the model's input size), ``"zoom"`` (a channel number or null),
    ``"frame"`` (any small number, echoed)``}`` -> a JSON-able answer: ``kind`` ``"map"`` with
    ``grid`` (PNG data URI of the channel grid, :func:`~convscope.figures.live.grid_image`:
    ``cols``, ``rows``, ``th``, ``tw``, ``gap``; ``shown``: the channel of each tile when not
    all are), or ``"vector"`` with ``grid`` (bars) and ``values``; ``zoom`` (the zoomed
    channel's map as PNG, its ``channel``, ``lo`` and ``hi``), ``top`` (the model's top-5
    classes: ``index``, ``name``, ``p`` = softmax of its output) or ``top_note``, ``ms`` and
    ``forward_ms``. Anything refused: ``{"error": what to do}``."""
    t0 = time.perf_counter()
    if not isinstance(body, dict):
        return {"error": "send a JSON object {run, layer, image, zoom} (the Live page does)."}
    run, layer, image = body.get("run"), body.get("layer"), body.get("image")
    zoom, tag = body.get("zoom"), body.get("frame")
    if not isinstance(layer, str) or not 0 < len(layer) <= 500:
        return {"error": "pick a layer in the list."}
    if zoom is not None and (not isinstance(zoom, int) or isinstance(zoom, bool)
                             or not 0 <= zoom < 1_000_000):
        return {"error": f"zoom {str(zoom)[:40]!r} is not a channel number: click a channel."}
    if not (tag is None or (isinstance(tag, int) and not isinstance(tag, bool)
                            and abs(tag) < 2**31)):
        tag = None
    try:
        reader = state.reader(run)
        key = _key(reader)
        trust = _trust(state)
        info = _info(reader, key, trust)
        kind = info["layers"].get(layer)
        if kind is None:
            raise InputError(f"{layer[:200]!r} is not a layer of the run's graph: pick one in "
                             "the list.")
        if ck_format.form(reader, key) == "pickle" and not trust:
            raise InputError(f"the saved model {key!r} of run {reader.name!r} is a whole-module "
                             "pickle, so the live view does not load it. " + ck_format.TRUST_HINT)
        x = _decode(image, info["shape"], exact=True)
        model, lock = _model(reader, key, trust)
        t1 = time.perf_counter()
        with lock:  # one forward at a time on the shared model
            act, out = _forward(model, layer, x)
        forward_ms = (time.perf_counter() - t1) * 1e3
    except ConvscopeError as exc:
        return {"error": str(exc)[:1000], "frame": tag}
    except Exception as exc:  # an unloadable model or a damaged run: say so
        return {"error": f"cannot run the live view ({type(exc).__name__}: {str(exc)[:300]})",
                "frame": tag}
    answer: dict[str, Any] = {"frame": tag, "layer": layer, "kind": kind}
    if act.dim() == 4 and act.shape[0] == 1:
        maps = act[0]
        total = int(maps.shape[0])
        keep = _keep(maps)
        said = []
        if keep is not None:
            maps = maps[keep]
            said.append(f"the {MAX_GRID_CHANNELS} most active of {total} channels")
        small, shrunk = _shrink(maps)
        if shrunk:
            said.append(shrunk)
        img, lay = grid_image(small.numpy())
        answer.update(kind="map", grid=png_uri(img), channels=total,
                      shown=None if keep is None else [int(k) for k in keep.tolist()],
                      note=" and ".join(said), **lay)
        if zoom is not None:
            if zoom >= total:
                answer["zoom_note"] = f"{layer} has {total} channels; channel {zoom} is not one."
            else:
                z = act[0, zoom].numpy()
                lo, hi = float(np.nanmin(z)), float(np.nanmax(z))
                zimg, _ = grid_image(z[None])
                answer["zoom"] = {"channel": int(zoom), "image": png_uri(zimg), "lo": lo,
                                  "hi": hi}
    else:
        v = act.reshape(act.shape[0], -1)[0].numpy() if act.dim() >= 2 else act.numpy()
        n = int(v.size)
        answer.update(kind="vector", grid=png_uri(bars_image(v)), channels=n,
                      values=[round(float(a), 6) for a in v[:MAX_VECTOR]],
                      lo=float(np.nanmin(v)), hi=float(np.nanmax(v)),
                      note=(f"bars of {n} values, drawn as means of groups"
                            if n > 512 else "") + (f"; the first {MAX_VECTOR} values are sent"
                                                   if n > MAX_VECTOR else ""))
    answer.update(_top(out, info["names"]))
    answer["forward_ms"] = round(forward_ms, 3)
    answer["ms"] = round((time.perf_counter() - t0) * 1e3, 3)
    return answer


def _forward(model, layer: str, x):
    """One forward pass of image ``x`` ``[C, H, W]`` in eval mode under inference mode: the
    output of ``layer`` (``path`` or ``path:k``, its k-th call) and the model's output. The
    hook is removed afterwards, errors included."""
    import torch

    from ...errors import LayerNotFoundError, ModelError

    path, _, call = layer.partition(":")
    k = int(call) if call.isdigit() else 1
    module = dict(model.named_modules()).get(path)
    if module is None:
        raise LayerNotFoundError(f"the saved model has no layer {path[:200]!r}: pick a layer "
                                 "in the list (the graph and the checkpoint disagree?).")
    got: list = []

    def hook(_m, _i, o):
        if len(got) < k:
            got.append(o.detach().clone() if isinstance(o, torch.Tensor) else o)

    handle = module.register_forward_hook(hook)
    was_training = model.training
    try:
        model.eval()
        with torch.inference_mode():
            out = model(x[None].to(next(iter(model.parameters()), x).device))
    except ConvscopeError:
        raise
    except Exception as exc:
        raise ModelError(f"the saved model failed on this frame ({type(exc).__name__}: "
                         f"{str(exc)[:300]}).") from None
    finally:
        handle.remove()
        model.train(was_training)
    if len(got) < k or not isinstance(got[k - 1], torch.Tensor):
        raise InputError(f"layer {layer!r} gave no tensor in the forward pass: pick another.")
    act = got[k - 1].float().cpu()
    if not torch.isfinite(act).all():
        raise InputError(f"the output of {layer!r} holds NaN or inf for this frame.")
    return act, out


def _top(out, names: list[str] | None) -> dict[str, Any]:
    """The top-5 classes of a ``[1, K]`` output (softmax), or a note why there are none."""
    import torch

    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 1 \
            or out.shape[1] < 2:
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        return {"top": [], "top_note": f"the model's output is {shape}, not class scores."}
    logits = out[0].float().cpu()
    if not torch.isfinite(logits).all():
        return {"top": [], "top_note": "the model's output holds NaN or inf for this frame."}
    p = torch.softmax(logits, 0)
    vals, idx = torch.topk(p, min(TOP_K, int(p.numel())))
    top = []
    for v, i in zip(vals.tolist(), idx.tolist(), strict=True):
        name = names[i] if names is not None and i < len(names) else f"class {i}"
        top.append({"index": int(i), "name": name, "p": float(v)})
    return {"top": top, "classes": int(p.numel()),
            "top_note": "" if names is not None else "the run stores no class names"}


def _keep(maps):
    """The MAX_GRID_CHANNELS most active channels, in channel order, or None for all."""
    import torch

    c = maps.shape[0]
    if c <= MAX_GRID_CHANNELS:
        return None
    score = torch.nan_to_num(maps.abs().flatten(1).mean(1), nan=-1.0)
    return torch.topk(score, MAX_GRID_CHANNELS).indices.sort().values


def _shrink(maps):
    """Maps shrunk by area averaging so all hold at most MAX_GRID_VALUES values."""
    import torch.nn.functional as F

    c, h, w = maps.shape
    side = max(1, math.isqrt(MAX_GRID_VALUES // c))
    if max(h, w) <= side:
        return maps, ""
    scale = side / max(h, w)
    size = (max(1, int(h * scale)), max(1, int(w * scale)))
    return (F.interpolate(maps[None], size=size, mode="area")[0],
            f"maps shrunk from {h} x {w} to {size[0]} x {size[1]} pixels")


def _sample(reader, index: Any, shape):
    """Stored sample ``index`` as a float tensor; the file is memory-mapped and only that sample
    is read, and only when its shape is the model's input ``shape`` (the file's own header, not
    the index, decides what would be read)."""
    import torch

    samples = fm_format.samples_index(reader)
    if not len(samples):
        raise InputError("this run stores no sample images: upload one, or record samples with "
                         "run.log_feature_maps(model, images).")
    n = int(samples.iloc[0]["shape"][0])
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < n:
        raise InputError(f"sample {index!r} does not exist: pick one of 0..{n - 1}.")
    key = samples.iloc[0]["key"]
    arr = fm_format.samples(reader, key, mmap=True)
    if arr.ndim != 4 or tuple(arr.shape[1:]) != tuple(shape) or not index < arr.shape[0]:
        raise StoreError(f"{fm_format.samples_file(key)} holds an array of shape "
                         f"{tuple(arr.shape)}, "
                         f"not {n} samples of {tuple(shape)} as the run's index says: the file "
                         "is damaged or replaced; record the samples again with "
                         "run.log_feature_maps(model, images).")
    return torch.as_tensor(np.array(arr[index], dtype=np.float32))


def _bound(acts):
    """At most MAX_GRID_CHANNELS channels (the most active, in channel order) and
    MAX_GRID_VALUES values in all; returns (acts, what was cut or "")."""
    c = acts.shape[0]
    said = []
    keep = _keep(acts)
    if keep is not None:
        acts = acts[keep]
        said.append(f"the {MAX_GRID_CHANNELS} most active of {c} channels")
    acts, shrunk = _shrink(acts)
    if shrunk:
        said.append(shrunk)
    return acts, " and ".join(said)


def decode_pixels(shape) -> int:
    """The most pixels an upload for a model taking ``shape`` = (C, H, W) may decode to."""
    _, h, w = shape
    return min(MAX_DECODE_PIXELS, max(MIN_DECODE_PIXELS, DECODE_FACTOR * h * w))


def _exact_uri_chars(shape) -> int:
    """The longest data URI of a PNG of the model's input size (4 channels, stored blocks)."""
    _, h, w = shape
    raw = h * (4 * w + 1)
    return 4 * math.ceil((raw + raw // 100 + 4096) / 3) + 256


def _decode(contents: Any, shape, *, exact: bool = False) -> Any:
    """A data-URI image -> float tensor [C, H, W] in [0, 1] at the model's input size ``shape``.

    Refuses (InputError) before decoding: a URI longer than an upload of MAX_UPLOAD_BYTES, a
    format other than PNG or JPEG, a header over MAX_SIDE a side or MAX_PIXELS pixels, an image
    that would decode to more than :func:`decode_pixels` (after JPEG draft scaling). With
    ``exact`` (the grid callback), only an image of exactly the model's input size is taken.
    At most MAX_DECODES decodes run at once; waiting over DECODE_WAIT_S is refused ("busy").
    """
    from PIL import Image, UnidentifiedImageError

    c, h, w = shape
    pixels = decode_pixels(shape)
    limit = (f"at most {MAX_UPLOAD_BYTES // 2**20} MB and {MAX_SIDE} pixels a side, decoding to "
             f"at most {pixels / 1e6:.1f} megapixels for this model")
    shrink = f"Shrink it first (the model sees {w} x {h} pixels)."
    if not isinstance(contents, str):
        raise InputError("the upload is not an image file: drop a PNG or JPEG.")
    if exact and len(contents) > _exact_uri_chars(shape):
        raise InputError(f"the image data is {len(contents):,} characters, more than a {w} x {h} "
                         "image the upload box prepares: upload the image through the page's "
                         "upload box.")
    if len(contents) > MAX_URI_CHARS:
        raise InputError(f"the file is about {len(contents) * 3 // 4 / 2**20:.1f} MB; the live "
                         f"view takes {limit}. {shrink}")
    head, sep, b64 = contents.partition(",")
    if not sep or not head.startswith("data:") or not head.endswith(";base64"):
        raise InputError("the upload is not a base64 data URI of an image: drop a PNG or JPEG.")
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise InputError("the upload is not valid base64: drop the image file again.") from None
    try:
        img = Image.open(io.BytesIO(raw), formats=FORMATS)  # reads the header only
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as exc:
        raise InputError(f"cannot read the upload as a PNG or JPEG ({str(exc)[:200]}): drop a "
                         f"PNG or JPEG of {limit}.") from None
    with img:
        w0, h0 = img.size
        if exact and (w0, h0) != (w, h):
            raise InputError(f"the image is {w0} x {h0} pixels, not the model's {w} x {h} that "
                             "the upload box prepares: upload the image through the page's "
                             "upload box.")
        if max(w0, h0) > MAX_SIDE or w0 * h0 > MAX_PIXELS:
            raise InputError(f"the image is {w0} x {h0} pixels; the live view takes {limit}. "
                             f"{shrink}")
        mode = "L" if c == 1 else "RGB"
        try:
            if img.format == "JPEG":
                img.draft(mode, (w, h))  # decode at 1/2, 1/4 or 1/8 scale where JPEG allows
        except (OSError, ValueError) as exc:
            raise InputError(f"the image is damaged ({str(exc)[:200]}): save it again as PNG or "
                             "JPEG.") from None
        dw, dh = img.size
        if dw * dh > pixels:
            raise InputError(
                f"the image is {w0} x {h0} pixels; the live view takes {limit}"
                + (" (a JPEG may be larger: it is decoded at a reduced scale)"
                   if img.format != "JPEG" else "") + f". {shrink}")
        if not _decoding.acquire(timeout=DECODE_WAIT_S):
            raise InputError(f"the server is busy decoding {MAX_DECODES} other uploads: try "
                             "again in a moment.")
        try:
            img.load()
            small = img if img.mode == mode else img.convert(mode)
            small = small.resize((w, h), Image.BILINEAR)
            arr = np.asarray(small, dtype=np.float32) / 255.0
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise InputError(f"the image is damaged ({str(exc)[:200]}): save it again as PNG or "
                             "JPEG.") from None
        finally:
            _decoding.release()
    import torch

    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.as_tensor(np.ascontiguousarray(arr))


PAGE = Page(
    path="/live",
    title="Live",
    layout=layout,
    register=register,
    description="one image through the saved model, every channel of a layer",
)
