"""Live: upload an image (or pick a stored sample) and see every channel of a layer respond
(the deep-visualization toolbox's live view; Yosinski et al. 2015). Runs the run's saved model on
the server.

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

The request size itself is capped by the app (``create_app``: ``MAX_CONTENT_LENGTH``), so a
body far larger than an accepted upload is refused before it is parsed.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import threading
from collections import OrderedDict
from typing import Any

import numpy as np
from dash import Input, Output, State, ctx, dcc, html, no_update

from ...errors import ConvscopeError, InputError, StoreError
from ...figures.features import channel_grid
from ...figures.images import png_data_uri, to_rgb
from ...formats import checkpoints as ck_format
from ...formats import feature_maps as fm_format
from ...formats import structure
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

_models: OrderedDict[tuple, tuple[Any, threading.Lock]] = OrderedDict()
_lock = threading.Lock()
_decoding = threading.BoundedSemaphore(MAX_DECODES)


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


def _graph_layers(reader) -> list[str]:
    """Names of the graph's modules with 4-d outputs (a damaged graph: StoreError)."""
    return structure.graph_layers(reader)


def _trust_note(reader, key: str, trust: bool) -> html.Div | None:
    if trust or ck_format.form(reader, key) != "pickle":
        return None
    return notice(f"The saved model {key!r} of run {reader.name!r} is a whole-module pickle, "
                  "so the live view does not load it. " + ck_format.TRUST_HINT, "warn")


def _input_shape(reader, key: str) -> tuple[int, int, int]:
    """The model's input ``(C, H, W)``: the stored samples' shape, else the graph's input, else
    the shape recorded with the checkpoint, else 3 x 32 x 32."""
    shape = None
    samples = fm_format.samples_index(reader)
    if len(samples):
        shape = list(samples.iloc[0]["shape"][1:])
    elif structure.has_graph(reader):
        shape = structure.graph_input_shape(reader)
    if shape is None:
        shape = ck_format.input_shape(reader, key) or [3, 32, 32]
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
    return picker_page(
        "live", "Live", "Run one image through the saved model and see every channel of a "
        "layer (each scaled on its own; bright = strong). Upload a PNG or JPEG, or use a stored "
        "sample image.",
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
        ],
        html.Div([html.Img(id="live-input", className="live-input"),
                  html.Div(graph("live-grid"), className="live-grid")],
                 className="live-row", id="live-body", style={"display": "none"}),
        dcc.Store(id="live-image"),
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
        Input("live-image", "data"), Input("live-layer", "value"), State("live-run", "value"),
        prevent_initial_call=True,
    )
    def _grid(image, layer, run):
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
        except ConvscopeError as exc:  # a refused upload, an untrusted pickle, a bad layer
            return {}, None, hidden, notice(str(exc), "warn")
        except Exception as exc:  # an unloadable model: say so on the page
            return {}, None, hidden, notice(f"Cannot run the live view: {exc}", "bad")
        total = int(acts.shape[0])
        acts, shown = _bound(acts)
        fig = channel_grid(acts.numpy(), title=f"{layer}: {total} channels"
                           + (f" ({shown})" if shown else ""))
        fig.update_layout(meta={**fig.layout.meta, "source": source, "layer": layer,
                                "total_channels": total})
        side = max(int(x.shape[-2]), int(x.shape[-1]))
        return (fig, png_data_uri(to_rgb(x.numpy()), scale=max(1, min(4, 512 // side))), {},
                notice(f"Showing {shown}.") if shown else None)


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
    import torch
    import torch.nn.functional as F

    c, h, w = acts.shape
    said = []
    if c > MAX_GRID_CHANNELS:
        score = torch.nan_to_num(acts.abs().flatten(1).mean(1), nan=-1.0)
        keep = torch.topk(score, MAX_GRID_CHANNELS).indices.sort().values
        acts = acts[keep]
        said.append(f"the {MAX_GRID_CHANNELS} most active of {c} channels")
    side = max(1, math.isqrt(MAX_GRID_VALUES // acts.shape[0]))
    if max(h, w) > side:
        scale = side / max(h, w)
        size = (max(1, int(h * scale)), max(1, int(w * scale)))
        acts = F.interpolate(acts[None], size=size, mode="area")[0]
        said.append(f"maps shrunk from {h} x {w} to {size[0]} x {size[1]} pixels")
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
