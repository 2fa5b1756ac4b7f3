"""The Model page's DeconvNet section (Zeiler & Fergus 2014, figure 2): for the unit picked in a
layer's panel (the "Unit" dropdown ``fi-unit`` of "What its units prefer"), its top data-set
activations projected back to pixels, each beside the image's receptive-field crop.

Recorded by ``run.log_projections(model, layers, dataset)``; read through
:mod:`convscope.formats.projections` and drawn by :mod:`convscope.figures.projections`.
"""

from __future__ import annotations

import numbers
from typing import Any

from dash import Input, Output, State, dcc, html, no_update

from ...errors import StoreError
from ...figures.projections import projection_pairs
from ...formats import preferred_inputs as pi_format
from ...formats import projections as pj_format
from ...formats import top_examples as te_format
from ..components import FIGURE, RequestReader, error_figure, graph, missing, shrink, survive

__all__ = ["projections_section", "register_projections", "MAX_PAIRS", "TITLE"]

MAX_PAIRS = 16  #: projection / crop pairs drawn for one unit (Zeiler & Fergus show 9)
MAX_THUMB = 96  #: pixels a side of the images sent (stored windows are at most this large)
MAX_LAYER_CHARS = 1000  #: a longer layer name in a request is refused
MAX_UNIT = 2**31 - 1  #: a larger unit in a request is refused
TITLE = "DeconvNet projections (Zeiler & Fergus 2014)"


def _first_unit(reader: Any, layer: str, units: list[int]) -> tuple[int, bool]:
    """The unit the panel opens on, and whether this section brings its own picker: the
    preferred-input / top-example section's "Unit" dropdown starts on its first unit (the first
    preferred-input unit, else channel 0); without that section, this one shows a picker of
    the projected units."""
    pref = pi_format.meta(reader, layer)
    if pref is not None and pref.get("units"):
        return int(pref["units"][0]), False
    if te_format.crops_meta(reader, layer) is not None:
        return 0, False
    return units[0], True


def unit_figure(reader: Any, layer: str, unit: int):
    """The figure of ``unit`` of ``layer``: its pairs, or a note naming the recorded units and
    the call that records this one."""
    try:
        got = pj_format.unit(reader, layer, unit, limit=MAX_PAIRS)
    except StoreError as exc:
        if unit in pj_format.units(reader, layer):
            raise  # damaged files: survive / the panel's guard name them
        return error_figure(str(exc), height=120)
    return projection_pairs(unit, shrink(got.projections, MAX_THUMB),
                            shrink(got.crops, MAX_THUMB), got.values.tolist(),
                            got.indices.tolist(), layer=layer)


def projections_section(reader: Any, layer: str):
    """DeconvNet projections (each of the unit's top images projected back to pixels)"""
    reader = reader if isinstance(reader, RequestReader) else RequestReader(reader)
    m = pj_format.meta(reader, layer)
    if m is None:
        recorded = pj_format.layers(reader)
        shown_elsewhere = pi_format.meta(reader, layer) is not None or \
            te_format.crops_meta(reader, layer) is not None
        if not recorded and not shown_elsewhere:
            return None  # nothing of the kind in this run: the panel stays short
        children: list[Any] = [html.H3(TITLE), missing(
            "DeconvNet projections for this layer",
            f"run.log_projections(model, [{layer!r}], dataset)", [reader.name])]
        if recorded:
            more = f" and {len(recorded) - 8} more" if len(recorded) > 8 else ""
            children.append(html.Div(f"Projections are recorded for: "
                                     f"{', '.join(recorded[:8])}{more}.", className="muted"))
        return html.Div(children, id="projections-section")
    units = pj_format.units(reader, layer)
    if not units:
        raise StoreError(f"the projections of {layer} list no units: record them again with "
                         f"{pj_format.SOURCE}.")
    first, own_picker = _first_unit(reader, layer, units)
    k = m.get("k")
    seen = m.get("n_seen")
    listed = ", ".join(str(u) for u in units[:16]) + (", ..." if len(units) > 16 else "")
    children = [
        html.H3(TITLE),
        html.Div(
            f"The unit's top {k} data-set activations"
            + (f" (of {seen} images)" if isinstance(seen, int) else "")
            + ", each projected back to pixels by a deconvnet (switch unpooling, rectification, "
            "transposed filters; left, contrast-stretched: zero is grey) beside the image's "
            "receptive-field crop (right). "
            + ("Pick a unit here" if own_picker else "Pick a unit under 'Unit' above")
            + f"; projected units: {listed}.", className="muted"),
    ]
    if own_picker:
        children.append(html.Label(["Unit ", dcc.Dropdown(
            id="fi-unit", options=units, value=first, clearable=False,
            style={"width": "120px"})], className="control"))
    children.append(graph("pj-pane", figure=unit_figure(reader, layer, first),
                          config={"staticPlot": True}))
    return html.Div(children, id="projections-section")


def _valid(unit: Any, layer: Any, run: Any) -> bool:
    """A request's values as the page sends them: a unit index, a layer name, a run name."""
    return (isinstance(unit, numbers.Integral) and not isinstance(unit, bool)
            and 0 <= unit <= MAX_UNIT and isinstance(layer, str)
            and 0 < len(layer) <= MAX_LAYER_CHARS and isinstance(run, str) and bool(run))


def register_projections(app: Any, state: Any) -> None:
    """The callback that redraws the section for the unit picked in the open layer's panel."""

    @app.callback(
        Output("pj-pane", "figure"),
        Input("fi-unit", "value"), State("model-selected", "data"),
        State("model-run", "value"),
        prevent_initial_call=True,
    )
    @survive(FIGURE)
    def _projections(unit, layer, run):
        if not _valid(unit, layer, run):
            return no_update
        reader = RequestReader(state.reader(run))
        if pj_format.meta(reader, layer) is None:
            return no_update
        return unit_figure(reader, layer, int(unit))
