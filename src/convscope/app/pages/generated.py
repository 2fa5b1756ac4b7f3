"""Generated images: the grids a GAN run stored over training (``convscope experiment dcgan``:
16 fixed latent vectors every ``sample_every`` steps), one at a time with a step slider, and a
strip of thumbnails over training (click one to enlarge it). Each grid's *diversity* (the mean
root-mean-square difference between its tiles) says whether the samples differ or collapse
onto one image (Wang & Li 2020 tune their DCGAN until they differ).

Its own page, not a section of Scalars: Scalars overlays many runs with no run picker, while a
grid is one run's at one step; the loss curves are one click away. Two runs' grids side by side
are on the Compare page.
"""

from __future__ import annotations

from dash import ALL, Input, Output, State, ctx, dcc, html, no_update

from ...figures.generated import grid_data_uri
from ...formats import generated as gen_format
from ...formats.base import ARRAYS_TABLE
from ..components import NOTICE, Damage, notice, picker_page, register_run_picker, survive
from . import Page

#: thumbnails in the strip over training, at most (evenly spread over the stored steps)
MAX_THUMBS = 12
#: the shown grid's side, at most (larger grids are area-averaged)
MAX_SIDE = 1024
#: a thumbnail's side, at most
THUMB_SIDE = 128
#: labelled marks of the step slider, at most
MAX_MARKS = 8


def layout() -> html.Div:
    return picker_page(
        "gen", "Generated images",
        "The grids of generated images a run stored over training (the same latent vectors each "
        "time): move the slider, or click a thumbnail, to see how the samples changed. "
        "Diversity: the mean RMS difference between two tiles (0: all alike, a collapsed "
        "generator; noise scores high too, so look at the images).",
        [],
        html.Div([
            html.Label(["Step", dcc.Slider(id="gen-step", min=0, max=0, step=1, value=0,
                                           marks={}, included=False, allow_direct_input=False)],
                       className="control control-wide", id="gen-step-box"),
            html.Div(id="gen-caption", className="gen-caption"),
            html.Img(id="gen-image", className="gen-image",
                     style={"imageRendering": "pixelated", "maxWidth": "100%"}),
            html.H3("Over training", className="section-title"),
            html.Div(id="gen-strip", className="gen-strip",
                     style={"display": "flex", "flexWrap": "wrap", "gap": "8px"}),
            html.P(["The loss curves of the same steps are on ", dcc.Link("Scalars", href="/scalars"),
                    "; two runs' grids side by side on ", dcc.Link("Compare", href="/compare"),
                    "."], className="muted"),
        ], id="gen-body", className="panel", style={"display": "none"}),
    )


def _marks(steps: list[int]) -> dict[int, str]:
    n = len(steps)
    k = max(1, -(-n // MAX_MARKS))
    idx = sorted(set(range(0, n, k)) | {n - 1})
    return {i: str(steps[i]) for i in idx}


def _spread(n: int, k: int) -> list[int]:
    """At most ``k`` indices of ``range(n)`` evenly spread, the first and the last included."""
    if n <= k:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def _index(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def register(app, state) -> None:
    register_run_picker(app, state, "gen", gen_format.has, "generated image grids",
                        gen_format.SOURCE, [ARRAYS_TABLE])

    @app.callback(
        Output("gen-step", "max"), Output("gen-step", "marks"), Output("gen-step", "value"),
        Output("gen-strip", "children"), Output("gen-body", "style"),
        Input("gen-run", "value"),
    )
    @survive(0, {}, 0, NOTICE, {})
    def _steps(run):
        """A run picked: its steps on the slider, at the last grid; its thumbnails."""
        if not run:
            return 0, {}, 0, None, {"display": "none"}
        reader = state.reader(run)  # a name the logdir holds, else a notice
        infos = gen_format.index(reader)
        if not infos:
            return 0, {}, 0, None, {"display": "none"}
        steps = [g.step for g in infos]
        value = len(steps) - 1
        dmg = Damage()
        thumbs = []
        for i in _spread(len(steps), MAX_THUMBS):
            with dmg.guard(run, f"the grid of step {steps[i]}"):
                g = gen_format.load(reader, steps[i], infos)
                div = f" · div {gen_format.diversity(g.image, g.grid):.3f}" if g.grid else ""
                thumbs.append(html.Button(
                    [html.Img(src=grid_data_uri(g.image, THUMB_SIDE), className="gen-thumb-img",
                              style={"width": f"{THUMB_SIDE}px", "display": "block"}),
                     html.Span(f"step {steps[i]}{div}", className="muted")],
                    id={"type": "gen-thumb", "index": i}, className="gen-thumb",
                    title=f"step {steps[i]}: click to enlarge", n_clicks=0,
                    **{"data-step": str(steps[i])}))
        strip = [*thumbs, dmg.notice()] if dmg else thumbs
        if len(steps) > len(thumbs):
            strip.append(html.Div(f"{len(thumbs)} of {len(steps)} grids shown here; the slider "
                                  "reaches every one.", className="muted"))
        return len(steps) - 1, _marks(steps), value, strip, {}

    @app.callback(
        Output("gen-step", "value", allow_duplicate=True),
        Input({"type": "gen-thumb", "index": ALL}, "n_clicks"),
        State("gen-step", "max"),
        prevent_initial_call=True,
    )
    @survive(no_update)
    def _thumb(clicks, top):
        tid = ctx.triggered_id
        if not isinstance(tid, dict) or not isinstance(clicks, list) or not any(
                isinstance(c, int) and c > 0 for c in clicks):
            return no_update
        i = _index(tid.get("index"))
        if i is None or i < 0 or (isinstance(top, int) and i > top):
            return no_update
        return i

    @app.callback(
        Output("gen-image", "src"), Output("gen-caption", "children"),
        Input("gen-step", "value"), Input("gen-run", "value"),
    )
    @survive(None, NOTICE)
    def _grid(value, run):
        if not run:
            return None, None
        i = _index(value)
        reader = state.reader(run)
        infos = gen_format.index(reader)
        if not infos:
            return None, None
        if i is None or not 0 <= i < len(infos):
            return None, notice(f"Step index {value!r} is not one of the {len(infos)} stored "
                                "grids: move the slider.")
        g = gen_format.load(reader, infos[i].step, infos)
        h, w = g.image.shape[-2:]
        text = [html.Strong(f"step {g.step}"), f" ({i + 1} of {len(infos)} grids), {w} × {h} px"]
        if g.grid:
            rows, cols = g.grid
            text.append(f", {rows} × {cols} tiles; diversity "
                        f"{gen_format.diversity(g.image, g.grid):.4f}")
        if max(h, w) > MAX_SIDE:
            text.append(f" (shown at most {MAX_SIDE} px a side)")
        scale = max(1, min(4, 512 // max(h, w)))  # small grids drawn larger, pixels kept sharp
        return grid_data_uri(g.image, MAX_SIDE, scale=scale), html.Span(
            text, **{"data-step": str(g.step)})


PAGE = Page(
    path="/generated",
    title="GAN",  # short: the navigation stays on one line at 1400 px
    layout=layout,
    register=register,
    description="a GAN run's generated image grids over training",
)
