"""Live: upload an image (or pick a stored sample) and see every channel of a layer respond
(the deep-visualization toolbox's live view). Runs the run's saved model on the server."""

from __future__ import annotations

import base64
import io
import threading

import numpy as np
from dash import Input, Output, State, ctx, dcc, html, no_update

from ...figures.features import channel_grid
from ...figures.images import png_data_uri, to_rgb
from ..components import graph, missing, no_runs_selected, notice, page_header, pick_run, run_picker
from . import Page

_models: dict[tuple[str, float], object] = {}
_lock = threading.Lock()


def _has(reader) -> bool:
    return bool(reader.checkpoints())


def _model(reader):
    """The run's saved model, loaded once per checkpoint file version."""
    path = reader.path / "checkpoints" / "model.pt"
    key = (str(path), path.stat().st_mtime)
    with _lock:
        if key not in _models:
            _models[key] = reader.load_model("model")
        return _models[key]


def layout() -> html.Div:
    return html.Div([
        page_header("Live", "Run one image through the saved model and see every channel of a "
                    "layer (each scaled on its own; bright = strong). Upload a PNG or JPEG, or "
                    "use a stored sample image."),
        html.Div([
            run_picker("live-run"),
            html.Label(["Layer", dcc.Dropdown(id="live-layer", clearable=False)],
                       className="control control-wide"),
            html.Label(["Sample image", dcc.Dropdown(id="live-sample", clearable=False)],
                       className="control"),
            dcc.Upload(id="live-upload", children=html.Div(["Drop an image here or ",
                                                            html.A("choose a file")]),
                       className="upload", accept="image/*"),
        ], className="controls"),
        html.Div(id="live-status"),
        html.Div([html.Img(id="live-input", className="live-input"),
                  html.Div(graph("live-grid"), className="live-grid")],
                 className="live-row", id="live-body", style={"display": "none"}),
        dcc.Store(id="live-image"),
    ])


def register(app, state) -> None:
    @app.callback(
        Output("live-run", "options"), Output("live-run", "value"),
        Output("live-status", "children"),
        Input("run-select", "value"), State("live-run", "value"),
    )
    def _runs(selected, current):
        if not selected:
            return [], None, no_runs_selected()
        options, value, lacking = pick_run(state, selected, current, _has)
        note = missing("saved model", "run.log_checkpoint(model)", lacking) if lacking else None
        return options, value, note

    @app.callback(
        Output("live-layer", "options"), Output("live-layer", "value"),
        Output("live-sample", "options"), Output("live-sample", "value"),
        Input("live-run", "value"), State("live-layer", "value"),
    )
    def _layers(run, current):
        if not run:
            return [], None, [], None
        reader = state.reader(run)
        layers = []
        if reader.has_object("graph", "model"):
            layers = [n["name"] for n in reader.object("graph", "model")["nodes"]
                      if n["op"] == "module" and len(n.get("output_shapes") or [[]])
                      and len((n["output_shapes"] or [[]])[0]) == 4]
        samples = reader.arrays("samples")
        n = int(samples.iloc[0]["shape"][0]) if len(samples) else 0
        value = current if current in layers else (layers[0] if layers else None)
        return layers, value, list(range(n)), (0 if n else None)

    @app.callback(
        Output("live-image", "data"),
        Input("live-upload", "contents"), Input("live-sample", "value"),
        State("live-run", "value"),
    )
    def _image(contents, sample, run):
        if ctx.triggered_id == "live-upload" and contents:
            return {"upload": contents}
        if run is None or sample is None:
            return no_update
        return {"sample": int(sample)}

    @app.callback(
        Output("live-grid", "figure"), Output("live-input", "src"), Output("live-body", "style"),
        Output("live-status", "children", allow_duplicate=True),
        Input("live-image", "data"), Input("live-layer", "value"), State("live-run", "value"),
        prevent_initial_call=True,
    )
    def _grid(image, layer, run):
        hidden = {"display": "none"}
        if not run or not layer or not image:
            return {}, None, hidden, no_update
        import torch

        from ...features import live

        reader = state.reader(run)
        samples = reader.arrays("samples")
        shape = tuple(samples.iloc[0]["shape"][1:]) if len(samples) else None
        try:
            if "upload" in image:
                x = _decode(image["upload"], shape)
            else:
                x = torch.as_tensor(reader.array("samples", samples.iloc[0]["key"])[
                    image["sample"]].astype(np.float32))
            acts = live(_model(reader), layer, x).float().cpu().numpy()
        except Exception as exc:  # a bad upload or an unloadable model: say so on the page
            return {}, None, hidden, notice(f"Cannot run the live view: {exc}", "bad")
        fig = channel_grid(acts, title=f"{layer}: {acts.shape[0]} channels")
        fig.update_layout(meta={**fig.layout.meta, "source": "upload" if "upload" in image
                                else f"sample {image['sample']}", "layer": layer})
        return fig, png_data_uri(to_rgb(x.numpy()), scale=4), {}, None


def _decode(contents: str, shape) -> object:
    """A data-URI image -> float tensor [C, H, W] in [0, 1] at the model's input size."""
    import torch
    from PIL import Image

    _, b64 = contents.split(",", 1)
    img = Image.open(io.BytesIO(base64.b64decode(b64)))
    c, h, w = shape if shape else (3, 32, 32)
    img = img.convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.as_tensor(arr)


PAGE = Page(
    path="/live",
    title="Live",
    layout=layout,
    register=register,
    description="one image through the saved model, every channel of a layer",
)
