"""Units on demand: the Model page's layer panel computes, for a layer without them, its units'
preferred inputs (activation maximisation), top examples and DeconvNet projections (Zeiler &
Fergus 2014), in the background, and stores them in the run.

A layer panel whose layer has 4-d outputs in the run's graph and lacks preferred inputs, top
examples or projections offers "Compute for this layer" when the run has a saved model
(``run.log_checkpoint``) and the server allows it (``convscope serve --compute``; on by default
on a loopback address only: see :func:`convscope.app.serve`). The user chooses the method:

* ``lucid``: lucid-style rendering, the library's default (FFT image with decorrelated colour,
  jitter/scale/rotate transforms, Adam; lucent's settings);
* ``yosinski:1`` ... ``yosinski:4``: Yosinski et al. 2015's plain gradient ascent on the pixels
  with the paper's regularisers (L2 decay, Gaussian blur, clipping of pixels with a small norm
  or a small contribution) in its four hyper-parameter settings
  (:func:`convscope.features.yosinski`).

and the effort: ``quick`` (:data:`QUICK_UNITS` units, :data:`QUICK_STEPS` steps: a first look in
seconds) or ``standard`` (what ``run.log_preferred_inputs`` does by default: 16 units at the
model's input size cut to 128 px a side, the steps fitted to its 120 s budget per layer; for
the Yosinski settings the paper's 500-1000 steps when they fit the budget, fewer otherwise, not
below 64: two timed steps decide).

The job (:mod:`convscope.app.jobs`: one at a time per server; a second request for the same
layer joins it; at most :data:`~convscope.app.jobs.MAX_JOB_S` seconds) loads the model
through :func:`convscope.formats.checkpoints.load_model` (rebuilt from weights and an
allow-listed architecture record; a whole-module pickle only with ``--trust-checkpoints``),
opens the run for appending (``cs.Run(..., resume=True)``, only a run that has ended or
failed: never one still being written) and calls the same recording functions as Python
(:func:`convscope.record.features.log_preferred_inputs`, then
:func:`~convscope.record.features.log_top_examples` and
:func:`~convscope.record.projections.log_projections` over the run's stored sample images, at
most :data:`MAX_SAMPLES`; the projections of the units that have preferred inputs), so the
arrays land where ``run.log_*`` puts them, inside the run directory. The recording calls tell
the job their progress through their ``progress=`` hook; the page polls the job's status ("step
k of n" of the preferred inputs, "image k of n" of the top examples and of the projections'
ranking pass, "unit k of n" of the projections, and the time left) and re-renders the panel when
it is done.

"Cancel" (beside the progress) asks the job to stop at its next step, image batch or unit
(:meth:`convscope.app.jobs.JobRunner.stop`, heard by whichever worker runs it). Results are
written whole between those points, so a cancelled job leaves the run as consistent as a
finished one: what it had stored stays (the status names it), the rest is simply missing, and
the run is closed as it was.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from dash import Input, Output, State, dcc, html, no_update

from ...errors import ConvscopeError, InputError
from ...formats import checkpoints as ck_format
from ...formats import feature_maps as fm_format
from ...formats import preferred_inputs as pi_format
from ...formats import projections as pj_format
from ...formats import structure
from ...formats import top_examples as te_format
from ..components import NOTICE, notice, survive
from ..jobs import JobCancelled, JobStatus, progress_text

__all__ = ["compute_section", "register_units", "start_units", "compute_units",
           "preferred_options", "units_key", "METHODS", "EFFORTS", "QUICK_STEPS", "QUICK_UNITS",
           "MAX_SAMPLES", "TOP_K", "COMPUTE_OFF", "TOP_BATCH", "PHASES", "cancel_units"]

#: The methods offered (value -> label).
METHODS = {
    "lucid": "lucid-style (FFT image, decorrelated colour, jitter/scale/rotate; Adam)",
    "yosinski:1": "Yosinski et al. 2015, setting 1 (blur, norm clip 50 %)",
    "yosinski:2": "Yosinski et al. 2015, setting 2 (L2 decay 0.3, norm clip 20 %)",
    "yosinski:3": "Yosinski et al. 2015, setting 3 (L2 decay, blur)",
    "yosinski:4": "Yosinski et al. 2015, setting 4 (blur, contribution clip 90 %)",
}
#: Steps and units of the "quick" effort: the fewest the budget fitting goes down to
#: (record/budget.py: PREFERRED_MIN_STEPS, PREFERRED_MIN_UNITS).
QUICK_STEPS = 64
QUICK_UNITS = 4
EFFORTS = {
    "quick": f"quick ({QUICK_UNITS} units, {QUICK_STEPS} steps)",
    "standard": "standard (16 units, full steps within the 120 s budget)",
}
#: Sample images the top-example pass reads (the first ones stored).
MAX_SAMPLES = 256
#: Images per forward pass of the top-example and ranking passes: their progress (and a
#: cancel) reaches the page after every batch.
TOP_BATCH = 16
#: The recording calls' progress phases (record.features.ProgressHook) -> the page's words,
#: followed by "k of n" (``{method}``: the chosen method).
PHASES = {
    "preferred inputs": "preferred inputs ({method}): step",
    "top examples": "top examples: image",
    "ranking": "DeconvNet projections, ranking: image",
    "projections": "DeconvNet projections: unit",
}
#: Images kept per channel (fewer when the run stores fewer samples).
TOP_K = 9
#: Longest layer name accepted from a request (the layer must also be in the stored graph).
MAX_LAYER_CHARS = 500
#: How often the page asks for the job's progress (milliseconds).
POLL_MS = 500
#: Timed steps that fit a Yosinski setting's steps to the budget.
PROBE_STEPS = 2

COMPUTE_OFF = ("Computing on demand is off on this server (the default when it serves other "
               "machines): start it with convscope serve --compute to compute here, or "
               "record them in Python with run.log_preferred_inputs(model, layers), "
               "run.log_top_examples(model, layers, images) and "
               "run.log_projections(model, layers, images).")


def units_key(run_path: Any, layer: str) -> str:
    """The job key of ``layer`` of the run at ``run_path`` (one job per run and layer)."""
    return f"units\0{Path(run_path)}\0{layer}"


def _todo(reader: Any, layer: str) -> tuple[bool, bool, bool, bool]:
    """(preferred inputs missing, top examples missing, projections missing, sample images
    stored)."""
    want_pref = pi_format.meta(reader, layer) is None
    want_top = te_format.crops_meta(reader, layer) is None
    want_proj = pj_format.meta(reader, layer) is None
    has_samples = bool(len(fm_format.samples_index(reader)))
    return want_pref, want_top, want_proj, has_samples


def _missing_words(want_pref: bool, want_top: bool, want_proj: bool = False) -> str:
    words = [w for w, on in (("preferred inputs", want_pref), ("top examples", want_top),
                             ("DeconvNet projections", want_proj)) if on]
    return ", ".join(words[:-1]) + " and " + words[-1] if len(words) > 1 else "".join(words)


def _anything(want_pref: bool, want_top: bool, want_proj: bool, has_samples: bool) -> bool:
    """Whether a job has something to compute (top examples and projections need samples)."""
    return want_pref or (has_samples and (want_top or want_proj))


# -- the panel section ---------------------------------------------------------------------------
def compute_section(reader: Any, layer: str):
    """Compute on demand (preferred inputs, top examples and projections of a layer)"""
    want_pref, want_top, want_proj, has_samples = _todo(reader, layer)
    if not _anything(want_pref, want_top, want_proj, has_samples):
        return None
    if layer not in structure.graph_layers(reader):  # blocks, vectors: nothing to compute
        return None
    what = _missing_words(want_pref, want_top, want_proj)
    head = [html.H3("Compute on demand")]
    if not ck_format.has(reader):
        return html.Div(head + [html.Div([
            f"This layer has no {what} yet. To compute them here the run needs its saved "
            "model: record it with ", html.Code(ck_format.SOURCE), "."], className="muted")],
            id="units-section")
    note = f"This layer has no {what} yet: compute them from the run's saved model, in the " \
        "background; they are stored in the run."
    if (want_top or want_proj) and not has_samples:
        note += " (Top examples and projections need the run's sample images, which it " \
            f"lacks: {fm_format.SOURCE}.)"
    return html.Div(head + [
        html.Div(note, className="muted"),
        dcc.Store(id="units-key", data={"layer": layer}),
        html.Div(id="units-body"),
        html.Div([html.Div(id="units-status", style={"flex": "1"}),
                  html.Button("Cancel", id="units-cancel", className="button", hidden=True,
                              title="stop the job at its next step; what it stored stays")],
                 id="units-row", style={"display": "flex", "alignItems": "center",
                                        "gap": "10px"}),
        dcc.Interval(id="units-poll", interval=POLL_MS, disabled=True),
    ], id="units-section", **{"data-layer": layer})


def _controls(running: bool) -> list:
    return [
        html.Label(["Method", dcc.Dropdown(
            id="units-method", options=[{"label": v, "value": k} for k, v in METHODS.items()],
            value="lucid", clearable=False)], className="control control-wide"),
        html.Label(["Effort", dcc.RadioItems(
            id="units-effort", options=[{"label": v, "value": k} for k, v in EFFORTS.items()],
            value="standard", inline=False)], className="control"),
        html.Button("Compute for this layer", id="units-compute", className="button",
                    disabled=running),
    ]


def status_view(st: JobStatus | None):
    """The job's status for the page: a progress bar while it runs, then its result."""
    if st is None:
        return None
    kids: list[Any] = []
    if st.active:
        bar = {"value": st.done, "max": st.total} if st.total else {}
        kids.append(html.Progress(id="units-progress", **bar, style={
            "width": "40%", "marginRight": "10px", "verticalAlign": "middle"}))
    kids.append(html.Span(progress_text(st), className="units-text"))
    kind = {"running": "info", "done": "info", "failed": "bad", "cancelled": "warn"}[st.state]
    return html.Div(kids, id="units-state", className=f"notice notice-{kind}",
                    **{"data-state": st.state})


def _layer_of(data: Any) -> str | None:
    layer = data.get("layer") if isinstance(data, dict) else None
    return layer if isinstance(layer, str) and 0 < len(layer) <= MAX_LAYER_CHARS else None


def register_units(app: Any, state: Any) -> None:
    """The section's callbacks: its controls (or why computing is off), starting a job, and
    polling it until the panel is re-rendered with the results."""

    @app.callback(
        Output("units-body", "children"), Output("units-poll", "disabled"),
        Output("units-status", "children"), Output("units-cancel", "hidden"),
        Input("units-key", "data"), State("model-run", "value"),
    )
    @survive([], True, NOTICE, True)
    def _body(data, run):
        layer = _layer_of(data)
        if layer is None or not isinstance(run, str):
            return [], True, None, True
        if not getattr(state, "compute", False):
            return notice(COMPUTE_OFF, "warn"), True, None, True
        reader = state.reader(run)
        key = ck_format.default_key(reader)
        if ck_format.form(reader, key) == "pickle" and not getattr(state, "trust_checkpoints",
                                                                   False):
            return notice(f"The saved model {key!r} is a whole-module pickle, which this server "
                          "does not load. " + ck_format.TRUST_HINT, "warn"), True, None, True
        st = state.jobs.status(units_key(reader.path, layer))
        running = st is not None and st.active
        controls = _controls(running)
        return controls, not running, status_view(st), not running

    @app.callback(
        Output("units-status", "children", allow_duplicate=True),
        Output("units-poll", "disabled", allow_duplicate=True),
        Output("units-cancel", "hidden", allow_duplicate=True),
        Input("units-compute", "n_clicks"), State("units-method", "value"),
        State("units-effort", "value"), State("units-key", "data"), State("model-run", "value"),
        prevent_initial_call=True,
    )
    @survive(NOTICE, True, True)
    def _start(clicks, method, effort, data, run):
        if not clicks:
            return no_update, no_update, no_update
        try:
            st = start_units(state, run, _layer_of(data), method, effort)
        except ConvscopeError as exc:
            return notice(str(exc), "warn"), True, True
        return status_view(st), False, not st.active

    @app.callback(
        Output("units-status", "children", allow_duplicate=True),
        Output("units-poll", "disabled", allow_duplicate=True),
        Input("units-cancel", "n_clicks"), State("units-key", "data"),
        State("model-run", "value"),
        prevent_initial_call=True,
    )
    @survive(NOTICE, no_update)
    def _cancel(clicks, data, run):
        if not clicks:
            return no_update, no_update
        try:
            st = cancel_units(state, run, _layer_of(data))
        except ConvscopeError as exc:
            return notice(str(exc), "warn"), no_update
        return status_view(st), False  # the polls follow it until it has stopped

    @app.callback(
        Output("units-status", "children", allow_duplicate=True),
        Output("units-poll", "disabled", allow_duplicate=True),
        Output("model-panel", "children", allow_duplicate=True),
        Output("units-cancel", "hidden", allow_duplicate=True),
        Input("units-poll", "n_intervals"), State("units-key", "data"),
        State("model-run", "value"), State("model-selected", "data"),
        prevent_initial_call=True,
    )
    @survive(NOTICE, True, no_update, True)
    def _poll(_n, data, run, selected):
        layer = _layer_of(data)
        if layer is None or not isinstance(run, str):
            return no_update, True, no_update, True
        reader = state.reader(run)
        st = state.jobs.status(units_key(reader.path, layer))
        if st is None:
            return None, True, no_update, True
        if st.active:
            return status_view(st), False, no_update, False
        if st.state in ("done", "cancelled") and selected == layer:
            # the panel again, with what the job stored (a cancelled job's status is shown
            # again by the new section's controls)
            from .model import layer_panel  # the page imports this module: import when used

            return no_update, True, layer_panel(reader, layer), True
        return status_view(st), True, no_update, True


# -- starting a job ------------------------------------------------------------------------------
def check_layer(reader: Any, layer: Any) -> str:
    """``layer`` when it names a module with 4-d outputs in the run's stored graph; else
    :class:`InputError` (any other value a request may carry)."""
    if not isinstance(layer, str) or not 0 < len(layer) <= MAX_LAYER_CHARS:
        raise InputError("pick a layer in the graph (the request named none).")
    if layer not in structure.graph_layers(reader):
        shown = layer if len(layer) <= 80 else layer[:80] + "…"
        raise InputError(f"{shown!r} is not a layer with feature maps in the graph of run "
                         f"{reader.name!r}: click a convolution (or another layer with 4-d "
                         "outputs) in the graph.")
    return layer


def start_units(state: Any, run: Any, layer: Any, method: Any, effort: Any) -> JobStatus:
    """Start (or join) the job computing what ``layer`` of ``run`` lacks, after checking every
    value a request sends; its status. :class:`InputError` says why a request is refused."""
    if not getattr(state, "compute", False):
        raise InputError(COMPUTE_OFF)
    if not isinstance(method, str) or method not in METHODS:
        raise InputError(f"the method must be one of {', '.join(METHODS)}.")
    if not isinstance(effort, str) or effort not in EFFORTS:
        raise InputError(f"the effort must be one of {', '.join(EFFORTS)}.")
    reader = state.reader(run)  # NotARunError for anything but a run of the logdir
    layer = check_layer(reader, layer)
    if not ck_format.has(reader):
        raise InputError(f"run {reader.name!r} has no saved model to compute with: record one "
                         f"with {ck_format.SOURCE}.")
    trust = bool(getattr(state, "trust_checkpoints", False))
    if ck_format.form(reader, ck_format.default_key(reader)) == "pickle" and not trust:
        raise InputError(f"the saved model of run {reader.name!r} is a whole-module pickle. "
                         + ck_format.TRUST_HINT)
    key = units_key(reader.path, layer)
    st = state.jobs.status(key)
    if st is not None and st.active:  # join: the run is being written by that job
        return st
    want_pref, want_top, want_proj, has_samples = _todo(reader, layer)
    if not _anything(want_pref, want_top, want_proj, has_samples):
        raise InputError(f"{layer} of run {reader.name!r} already has its preferred inputs"
                         + ("" if has_samples else " (top examples and projections need "
                            "sample images)") + ": reload the panel.")
    if state.jobs.running() is None:  # else the runner says which job holds the server
        check_appendable(reader)  # (checked again by the job itself)
    what = _missing_words(want_pref, want_top and has_samples, want_proj and has_samples)
    return state.jobs.start(key, f"{what} of {layer} (run {reader.name})",
                            partial(_job, reader.path, layer, method, effort, trust))


def cancel_units(state: Any, run: Any, layer: Any) -> JobStatus:
    """Ask the job of ``layer`` of ``run`` to stop at its next step (after checking every
    value a request sends); its status, which says it is cancelling. :class:`InputError`
    when no job of that layer runs."""
    reader = state.reader(run)  # NotARunError for anything but a run of the logdir
    layer = check_layer(reader, layer)
    key = units_key(reader.path, layer)
    if not state.jobs.stop(key):
        raise InputError(f"nothing is being computed for {layer} of run {reader.name!r}: "
                         "there is nothing to cancel.")
    st = state.jobs.status(key)
    if st is None:  # pragma: no cover - stop() said it runs
        raise InputError("the job has already ended: reload the panel.")
    return st


def _job(path: Path, layer: str, method: str, effort: str, trust: bool, progress: Any) -> str:
    return compute_units(path, layer, method, effort, trust=trust, progress=progress)


def check_appendable(reader: Any) -> str:
    """The run's status when the dashboard may append to it ("ended" or "failed"); else
    :class:`InputError`: a run still being written (or whose writer died without closing it)
    is left alone."""
    status = reader.info().status
    if status == "running":
        raise InputError(f"run {reader.name!r} is still being written: compute when it has "
                         "ended, or record in the training script (run.log_preferred_inputs).")
    if status not in ("ended", "failed"):
        raise InputError(f"run {reader.name!r} is marked {status!r} (its writer stopped "
                         "without closing it): resume and close it in Python "
                         "(cs.Run(logdir, name, resume=True).close()) first.")
    return status


# -- the job -------------------------------------------------------------------------------------
class _Quiet:
    """A progress sink for calls outside the job runner."""

    def __call__(self, phase: str | None = None, done: float | None = None,
                 total: float | None = None) -> None:
        pass

    def check(self) -> None:
        pass


def preferred_options(model: Any, layer: str, method: str, effort: str, *, seed: int = 0,
                      progress: Any = None) -> tuple[dict[str, Any], str]:
    """The keywords of ``log_preferred_inputs`` for a method and effort, and a note on what was
    fitted to the budget ("" when nothing)."""
    from ...features import yosinski
    from ...features.preferred import input_shape, layer_channels, preferred_inputs
    from ...record.budget import BUDGETS, PREFERRED_UNITS, fit_preferred, preferred_size

    if method not in METHODS or effort not in EFFORTS:
        raise InputError(f"unknown method {method!r} or effort {effort!r}: pick one of "
                         f"{', '.join(METHODS)} and {', '.join(EFFORTS)}.")
    quick = {"steps": QUICK_STEPS, "max_units": QUICK_UNITS} if effort == "quick" else {}
    if method == "lucid":  # log_preferred_inputs' own defaults (fitted to its budget)
        return quick, ""
    preset = yosinski(int(method.split(":")[1]))
    _, h, w = input_shape(model, None, None)
    opts: dict[str, Any] = {"regularizers": preset, "size": preferred_size((h, w))}
    if quick:
        return {**opts, **quick}, ""
    paper = int(preset["steps"])
    units = list(range(min(PREFERRED_UNITS, layer_channels(model, layer, size=opts["size"]))))
    (progress or _Quiet())(phase="timing two steps (to fit the budget)")
    t0 = time.perf_counter()
    preferred_inputs(model, layer, units, seed=seed, quiet=True, regularizers=preset,
                     size=opts["size"], steps=PROBE_STEPS)
    step_s = (time.perf_counter() - t0) / PROBE_STEPS
    steps, n_units = fit_preferred(step_s, len(units), paper,
                                   budget=BUDGETS["log_preferred_inputs"])
    note = "" if (steps, n_units) == (paper, len(units)) else (
        f" ({paper} -> {steps} steps, {len(units)} -> {n_units} units to fit the "
        f"{BUDGETS['log_preferred_inputs']:.0f} s budget)")
    return {**opts, "steps": steps, "max_units": n_units}, note


def _samples(reader: Any) -> Any:
    """The run's first :data:`MAX_SAMPLES` sample images as a float32 tensor, or None."""
    import torch

    if not len(fm_format.samples_index(reader)):
        return None
    stored = fm_format.samples(reader, mmap=True)
    return torch.as_tensor(np.array(stored[:MAX_SAMPLES], dtype=np.float32))


def compute_units(run_path: str | Path, layer: str, method: str = "lucid",
                  effort: str = "standard", *, trust: bool = False, seed: int = 0,
                  progress: Any = None) -> str:
    """Compute and store what ``layer`` of the run at ``run_path`` lacks: its preferred inputs
    (``method``, ``effort``: see the module), its top examples over the run's sample images
    and the DeconvNet projections of the units that have preferred inputs (the first
    ``max_units`` channels when it has none); returns what was stored, in words.
    ``progress``: a :class:`~convscope.app.jobs.Progress` (the job runner's), told the phase
    (:data:`PHASES`) and ``done`` of ``total`` of it through the recording calls'
    ``progress=`` hook; its "stop" (:class:`~convscope.app.jobs.JobCancelled`) ends the work
    between two steps, and the message then names what had been stored."""
    progress = progress or _Quiet()
    said: list[str] = []
    try:
        _compute(Path(run_path), layer, method, effort, trust, seed, progress, said)
    except JobCancelled as exc:
        kept = ("; kept: " + " and ".join(said)) if said else "; nothing was stored"
        raise JobCancelled(f"{str(exc).rstrip('.')}{kept}.") from None
    return "stored " + " and ".join(said) + "."


def _compute(path: Path, layer: str, method: str, effort: str, trust: bool, seed: int,
             progress: Any, said: list[str]) -> None:
    """The work of :func:`compute_units`; appends what it stored to ``said`` as it goes."""
    from ...formats.reader import RunReader
    from ...record.features import log_preferred_inputs, log_top_examples
    from ...record.projections import log_projections
    from ...run import Run

    reader = RunReader(path)
    status = check_appendable(reader)
    want_pref, want_top, want_proj, _ = _todo(reader, layer)
    samples = _samples(reader) if (want_top or want_proj) else None
    progress(phase="loading the saved model")
    model = ck_format.load_model(reader, ck_format.default_key(reader), trust=trust)
    check_layer(reader, layer)
    words = {k: v.format(method=method) for k, v in PHASES.items()}

    def told(phase: str, done: int, total: int | None) -> None:
        progress(phase=words.get(phase, phase), done=done, total=total)

    options, fitted = ({}, "")
    if want_pref:
        options, fitted = preferred_options(model, layer, method, effort, seed=seed,
                                            progress=progress)
    run = Run(path.parent, path.name, resume=True, quiet=True, rank=0)
    try:
        units, ranked = None, None
        if want_pref:
            progress(phase=words["preferred inputs"])
            out = log_preferred_inputs(run, model, [layer], seed=seed, quiet=True,
                                       progress=told, **options)
            units = list(range(len(out[layer])))  # the first channels (units=None)
            said.append(f"the preferred inputs of {len(out[layer])} units ({method}{fitted})")
        else:
            stored = pi_format.meta(reader, layer)
            units = [int(u) for u in stored["units"]] if stored and stored.get("units") \
                else None
        if want_top and samples is not None:
            k = min(TOP_K, len(samples))
            progress(phase=words["top examples"])
            ranked = log_top_examples(run, model, [layer], samples, k=k, batch_size=TOP_BATCH,
                                      quiet=True, progress=told)
            said.append(f"the top examples (top {k} of {len(samples)} sample images of every "
                        "channel)")
        if want_proj and samples is not None:
            k = min(TOP_K, len(samples))
            progress(phase=words["ranking" if ranked is None else "projections"])
            got = log_projections(run, model, [layer], samples, units=units,
                                  max_units=QUICK_UNITS if effort == "quick" else 16, k=k,
                                  batch_size=TOP_BATCH, quiet=True, progress=told,
                                  ranked=ranked)  # the top examples' ranking, when just made
            said.append(f"the DeconvNet projections of {len(got[layer].units)} units "
                        f"(their top {k} images)")
        if (want_top or want_proj) and samples is None:
            said.append(f"no top examples or projections (the run stores no sample images: "
                        f"{fm_format.SOURCE})")
    finally:
        run.close(failed=status == "failed")  # the run's own outcome stays as it was
