"""The dashboard's background jobs (convscope.app.jobs) and the Model page's units on demand
(convscope.app.pages.model_units): progress, completion, errors, joining, one job at a time
(also across worker processes), the time limit; the job stores exactly what the recording
functions store when called directly with the same seed (the oracle); refused requests.

No test waits on time: threads are sequenced with events, and the time limit and the estimate of
the time left run on a fake clock."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading

import numpy as np
import pytest
import torch

import convscope as cs
from convscope.app.jobs import JobBusy, JobCancelled, JobRunner, JobStatus, progress_text
from convscope.app.pages import model_units as mu
from convscope.app.state import AppState
from convscope.errors import InputError, NotARunError
from convscope.formats import feature_maps as fm_format
from convscope.formats import preferred_inputs as pi_format
from convscope.formats import projections as pj_format
from convscope.formats import top_examples as te_format

WAIT = 60  # seconds an event may take on a loaded machine (a bound, never a measurement)


# -- the job runner ------------------------------------------------------------------------------
def test_progress_then_completion_and_the_estimate_of_time_left(tmp_path):
    now = [0.0]
    runner = JobRunner(tmp_path, clock=lambda: now[0])
    reported, go = threading.Event(), threading.Event()

    def work(progress):
        progress(phase="steps", total=5)
        go.wait(WAIT)
        go.clear()
        progress(done=2)  # at t = 4: 2 s a step, 3 steps left
        reported.set()
        go.wait(WAIT)
        return "stored 5 things"

    first = runner.start("k", "five things", work)
    assert first.state == "running" and first.title == "five things"
    now[0] = 4.0
    go.set()
    assert reported.wait(WAIT)
    st = runner.status("k")
    assert (st.state, st.phase, st.done, st.total) == ("running", "steps", 2, 5)
    assert st.eta_s == pytest.approx(6.0)
    assert progress_text(st) == "steps 2 of 5 · about 6 s left"
    assert runner.running().key == "k"
    go.set()
    st = runner.wait("k", WAIT)
    assert st.state == "done" and st.message == "stored 5 things"
    assert st.finished is not None and st.eta_s is None
    assert runner.running() is None


def test_a_second_start_of_the_same_key_joins_the_running_job(tmp_path):
    runner = JobRunner(tmp_path)
    calls, go = [], threading.Event()

    def work(progress):
        calls.append(1)
        go.wait(WAIT)
        return "ok"

    runner.start("same", "a job", work)
    joined = runner.start("same", "a job", work)  # e.g. a second tab clicking the same layer
    assert joined.state == "running" and joined.key == "same"
    go.set()
    assert runner.wait("same", WAIT).state == "done"
    assert calls == [1]  # the work ran once


def test_one_job_at_a_time_another_key_is_refused_naming_the_running_job(tmp_path):
    runner = JobRunner(tmp_path)
    go = threading.Event()
    runner.start("a", "preferred inputs of conv1", lambda p: go.wait(WAIT) and "a done")
    with pytest.raises(JobBusy, match="preferred inputs of conv1"):
        runner.start("b", "something else", lambda p: "b done")
    # another worker process sees the same directory: the same answers
    other = JobRunner(tmp_path)
    assert other.status("a").state == "running"
    with pytest.raises(JobBusy):
        other.start("b", "something else", lambda p: "b done")
    go.set()
    assert runner.wait("a", WAIT).state == "done"
    assert runner.start("b", "something else", lambda p: "b done").state == "running"
    assert runner.wait("b", WAIT).message == "b done"


def test_errors_end_the_job_with_their_message_and_the_runner_goes_on(tmp_path):
    runner = JobRunner(tmp_path)

    def refuse(progress):
        raise InputError("the layer has no channels: pick another.")

    def crash(progress):
        raise RuntimeError("boom")

    runner.start("x", "x", refuse)
    st = runner.wait("x", WAIT)
    assert st.state == "failed" and st.message == "the layer has no channels: pick another."
    assert progress_text(st).startswith("Failed: the layer has no channels")
    runner.start("y", "y", crash)
    st = runner.wait("y", WAIT)
    assert st.state == "failed" and st.message == "RuntimeError: boom"
    # the failed job can be started again, and other jobs run
    runner.start("x", "x", lambda p: "fine now")
    assert runner.wait("x", WAIT).state == "done"


def test_the_time_limit_stops_a_job_at_its_next_progress_report(tmp_path):
    now = [0.0]
    runner = JobRunner(tmp_path, max_seconds=10, clock=lambda: now[0])
    reported, go = threading.Event(), threading.Event()

    def work(progress):
        progress(phase="steps", done=1, total=100)
        reported.set()
        go.wait(WAIT)
        progress(done=2)  # past the limit: raises
        return "never"

    runner.start("slow", "a slow job", work)
    assert reported.wait(WAIT)
    now[0] = 11.0
    go.set()
    st = runner.wait("slow", WAIT)
    assert st.state == "failed" and "longer than the server's limit of 10 s" in st.message
    assert runner.running() is None


@pytest.mark.parametrize("from_other_worker", [False, True])
def test_stop_cancels_a_running_job_at_its_next_report(tmp_path, from_other_worker):
    runner = JobRunner(tmp_path)
    reported, go = threading.Event(), threading.Event()
    steps = []

    def work(progress):
        progress(phase="steps", done=0, total=3)
        reported.set()
        go.wait(WAIT)
        steps.append(1)  # the step under way when the stop came is finished
        progress(done=1)  # the next report: raises
        steps.append(2)
        return "never"

    runner.start("s", "a job", work)
    assert reported.wait(WAIT)
    # the Cancel request may reach a worker process that does not run the job
    asker = JobRunner(tmp_path) if from_other_worker else runner
    assert asker.stop("s") and not asker.stop("nothing")
    st = asker.status("s")
    assert st.state == "running" and st.stopping
    assert progress_text(st) == "steps 0 of 3 · cancelling (at the next step)"
    go.set()
    st = runner.wait("s", WAIT)
    assert (st.state, st.message) == ("cancelled", "a job was cancelled.")
    assert steps == [1] and not st.stopping
    assert progress_text(st) == "Cancelled: a job was cancelled."
    assert runner.running() is None and not asker.stop("s")  # nothing left to stop
    # the request does not outlive the job: the next job of the key runs to its end
    runner.start("s", "a job", lambda p: (p(phase="steps", done=1, total=1), "ok")[1])
    assert runner.wait("s", WAIT).state == "done"


def test_a_stop_left_by_an_ended_job_does_not_cancel_the_next_one(tmp_path):
    runner = JobRunner(tmp_path)
    runner.start("k", "t", lambda p: "ok")
    runner.wait("k", WAIT)
    runner._stop_path("k").touch()  # a stop that came as the job ended
    runner.start("k", "t", lambda p: (p(phase="x", done=1, total=2), "again")[1])
    assert runner.wait("k", WAIT).message == "again"


def _child_job(directory, ready):
    """A worker process running a job that never ends (killed by the test)."""
    runner = JobRunner(directory)
    block = threading.Event()

    def work(progress):
        progress(phase="steps", done=3, total=10)
        ready.set()
        block.wait()

    runner.start("child", "the child's job", work)
    block.wait()


def test_a_job_of_a_worker_that_died_reads_as_failed_and_frees_the_server(tmp_path):
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    proc = ctx.Process(target=_child_job, args=(str(tmp_path), ready), daemon=True)
    proc.start()
    try:
        assert ready.wait(WAIT)
        runner = JobRunner(tmp_path)
        st = runner.status("child")  # the status another worker writes
        assert (st.state, st.done, st.total, st.pid) == ("running", 3, 10, proc.pid)
        with pytest.raises(JobBusy, match="the child's job"):
            runner.start("mine", "mine", lambda p: "ok")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(WAIT)
    st = runner.status("child")
    assert st.state == "failed" and "stopped before it finished" in st.message
    assert runner.start("mine", "mine", lambda p: "ok").state == "running"  # lock released
    assert runner.wait("mine", WAIT).state == "done"


def test_a_status_file_that_is_not_a_status_reads_as_none(tmp_path):
    runner = JobRunner(tmp_path)
    runner.start("k", "t", lambda p: "ok")
    runner.wait("k", WAIT)
    for path in tmp_path.glob("*.json"):
        path.write_text('{"key": "k", "state": "rm -rf"}')
    assert runner.status("k") is None
    assert JobStatus.from_dict([1, 2]) is None and JobStatus.from_dict({"key": 1}) is None


def test_close_removes_only_a_directory_the_runner_made(tmp_path):
    given = JobRunner(tmp_path / "given")
    given.close()
    assert (tmp_path / "given").is_dir()
    own = JobRunner()
    assert own.directory.is_dir() and oct(own.directory.stat().st_mode & 0o777) == "0o700"
    own.close()
    assert not own.directory.exists()


# -- units on demand: the real job ---------------------------------------------------------------
NEW = "layer1.0.conv2"  # no preferred inputs or top examples recorded
DONE = "conv1"  # both recorded


def _model():
    torch.manual_seed(0)
    return cs.zoo.resnet(width=4).eval()


@pytest.fixture
def logdir(tmp_path):
    model = _model()
    x = torch.rand(6, 3, 32, 32)
    with cs.Run(tmp_path, "r", quiet=True) as run:
        run.log_model(model, x[:2], profile=False)
        run.log_feature_maps(model, x, layers=[DONE])
        run.log_checkpoint(model)
        run.log_preferred_inputs(model, [DONE], units=[0, 1], steps=4)
        run.log_top_examples(model, [DONE], x, k=3)
        run.log_projections(model, [DONE], x, units=[0, 1], k=3)
    with cs.Run(tmp_path, "nockpt", quiet=True) as run:
        run.log_model(model, x[:2], profile=False)
    return tmp_path


@pytest.fixture
def state(logdir):
    st = AppState(logdir)
    st.compute = True
    yield st
    st.jobs.close()


def _oracle(tmp_path, model, samples, **options):
    """What the recording functions store when called directly (a fresh run)."""
    from convscope.record.features import log_preferred_inputs, log_top_examples
    from convscope.record.projections import log_projections

    k = min(mu.TOP_K, len(samples))
    with cs.Run(tmp_path / "oracle", "o", quiet=True) as run:
        out = log_preferred_inputs(run, model, [NEW], seed=0, quiet=True, **options)
        log_top_examples(run, model, [NEW], samples, k=k, quiet=True)
        log_projections(run, model, [NEW], samples, units=list(range(len(out[NEW]))), k=k,
                        quiet=True)
    return cs.open_run(run.path)


def _files_outside(logdir, run_dir):
    return sorted((str(p), p.stat().st_mtime_ns) for p in logdir.rglob("*")
                  if p.is_file() and not p.is_relative_to(run_dir))


@pytest.mark.parametrize("method", ["lucid", "yosinski:2"])
def test_the_job_stores_what_the_recording_functions_store(state, logdir, tmp_path, method):
    reader = state.reader("r")
    assert pi_format.meta(reader, NEW) is None and te_format.crops_meta(reader, NEW) is None
    outside = _files_outside(logdir, reader.path)
    st = mu.start_units(state, "r", NEW, method, "quick")
    assert st.state == "running"
    st = state.jobs.wait(st.key, 300)
    assert st.state == "done", st.message
    assert "preferred inputs of 4 units" in st.message and "top 6 of 6" in st.message
    assert "DeconvNet projections of 4 units (their top 6 images)" in st.message
    assert _files_outside(logdir, reader.path) == outside  # it wrote only inside the run
    # the same reader (as the dashboard caches it) sees the new arrays
    got = pi_format.load(reader, NEW)
    samples = torch.as_tensor(np.asarray(fm_format.samples(reader), dtype=np.float32))
    options = {"steps": mu.QUICK_STEPS, "max_units": mu.QUICK_UNITS}
    if method != "lucid":
        options.update(regularizers=cs.features.yosinski(2), size=(32, 32))
    want_reader = _oracle(tmp_path, _model(), samples, **options)
    want = pi_format.load(want_reader, NEW)
    assert got.units == want.units == [0, 1, 2, 3]
    np.testing.assert_array_equal(got.images, want.images)
    np.testing.assert_allclose(got.values, want.values, rtol=1e-6)
    assert got.settings.get("regularizers") == want.settings.get("regularizers")
    te_got, te_want = te_format.load(reader, NEW), te_format.load(want_reader, NEW)
    np.testing.assert_array_equal(te_got.indices, te_want.indices)
    np.testing.assert_allclose(te_got.values, te_want.values, rtol=1e-6)
    # the projections of the units that got preferred inputs, as log_projections stores them
    pj_got, pj_want = pj_format.load(reader, NEW), pj_format.load(want_reader, NEW)
    assert pj_got.units == pj_want.units == [0, 1, 2, 3]
    np.testing.assert_array_equal(pj_got.indices, pj_want.indices)
    np.testing.assert_array_equal(pj_got.locations, pj_want.locations)
    np.testing.assert_allclose(pj_got.values, pj_want.values, rtol=1e-6)
    np.testing.assert_allclose(pj_got.projections, pj_want.projections, atol=1e-3)
    np.testing.assert_array_equal(pj_got.crops, pj_want.crops)
    # the run is closed again as it was, the append recorded
    assert reader.meta["status"] == "ended" and len(reader.meta["resumed"]) == 1
    # nothing left to compute: a second request is refused
    with pytest.raises(InputError, match="already has"):
        mu.start_units(state, "r", NEW, method, "quick")


def test_preferred_options_follow_the_method_and_effort():
    model = _model()
    assert mu.preferred_options(model, NEW, "lucid", "standard") == ({}, "")
    assert mu.preferred_options(model, NEW, "lucid", "quick") == (
        {"steps": 64, "max_units": 4}, "")
    opts, note = mu.preferred_options(model, NEW, "yosinski:3", "standard")
    # the paper's 1000 steps when two timed steps say they fit the budget, else fewer (said)
    assert opts["steps"] == 1000 and note == "" or (64 <= opts["steps"] < 1000 and "1000 ->"
                                                    in note)
    assert opts["max_units"] == 4  # the layer has 4 channels (at most 16)
    assert opts["size"] == (32, 32) and opts["regularizers"].name == "yosinski(3)"
    quick, _ = mu.preferred_options(model, NEW, "yosinski:1", "quick")
    assert quick["steps"] == 64 and quick["max_units"] == 4


@pytest.mark.parametrize("layer", [
    None, 5, "", ["conv1"], {"layer": "conv1"}, "x" * 10_000, "../../etc/passwd",
    "layer9.0.conv1", "conv1'; DROP TABLE arrays; --", "fc",
])
def test_layer_names_outside_the_stored_graph_are_refused(state, layer):
    with pytest.raises(InputError, match="layer"):
        mu.start_units(state, "r", layer, "lucid", "quick")
    assert state.jobs.running() is None


@pytest.mark.parametrize("method, effort", [
    ("lucid; rm", "quick"), (None, "quick"), ("yosinski:5", "quick"), ("lucid", "huge"),
    ("lucid", 3),
])
def test_unknown_methods_and_efforts_are_refused(state, method, effort):
    with pytest.raises(InputError, match="must be one of"):
        mu.start_units(state, "r", NEW, method, effort)


def test_refusals_name_what_to_do(state, logdir):
    with pytest.raises(NotARunError):
        mu.start_units(state, "../r", NEW, "lucid", "quick")
    with pytest.raises(InputError, match="no saved model"):
        mu.start_units(state, "nockpt", NEW, "lucid", "quick")
    with pytest.raises(InputError, match="already has"):
        mu.start_units(state, "r", DONE, "lucid", "quick")
    state.compute = False
    with pytest.raises(InputError, match="convscope serve --compute"):
        mu.start_units(state, "r", NEW, "lucid", "quick")
    assert state.jobs.running() is None


def test_a_run_still_being_written_is_left_alone(state, logdir):
    model = _model()
    x = torch.rand(2, 3, 32, 32)
    with cs.Run(logdir, "live", quiet=True) as run:
        run.log_model(model, x, profile=False)
        run.log_checkpoint(model)
        run.flush()
        with pytest.raises(InputError, match="still being written"):
            mu.start_units(state, "live", NEW, "lucid", "quick")


def test_the_panel_offers_compute_only_where_something_is_missing(state):
    reader = state.reader("r")
    assert mu.compute_section(reader, DONE) is None
    assert mu.compute_section(reader, "fc") is None  # a vector: no channels to render
    sec = mu.compute_section(reader, NEW)
    assert sec.id == "units-section"
    assert "no preferred inputs, top examples and DeconvNet projections" in str(sec)
    bare = mu.compute_section(state.reader("nockpt"), NEW)
    assert "run.log_checkpoint(model)" in str(bare) and "units-key" not in str(bare)


@pytest.mark.parametrize("args, on", [
    ([], True), (["--no-compute"], False), (["--host", "0.0.0.0"], False),
    (["--host", "0.0.0.0", "--compute"], True),
])
def test_serve_computes_by_default_on_loopback_only(logdir, monkeypatch, capsys, args, on):
    import convscope.app.server as server
    import convscope.app.shell as shell
    from convscope.cli import main

    apps = []
    real = shell.create_app

    def spy(*a, **kw):
        apps.append(real(*a, **kw))
        return apps[-1]

    monkeypatch.setattr(shell, "create_app", spy)
    monkeypatch.setattr(server, "_run_waitress", lambda wsgi, sock, threads: None)
    monkeypatch.delenv("CONVSCOPE_TOKEN", raising=False)
    assert main(["serve", "--logdir", str(logdir), "--port", "0", "--workers", "1",
                 *args]) == 0
    state = apps[0].convscope_state
    assert state.compute is on
    out = capsys.readouterr()
    assert ("computing on demand (Model page): on" in out.out) is on
    if on:  # the status directory made before the workers fork is gone after the server
        assert state._jobs is not None and not state._jobs.directory.exists()


def test_the_page_shows_step_k_of_n_and_the_time_left():
    st = JobStatus(key="k", title="t", phase="preferred inputs (lucid): step", done=12,
                   total=64, eta_s=8.2)
    view = mu.status_view(st)
    bar, text = view.children
    assert (bar.id, bar.value, bar.max) == ("units-progress", 12, 64)
    assert text.children == "preferred inputs (lucid): step 12 of 64 · about 8 s left"
    assert getattr(view, "data-state") == "running"
    st.state, st.message, st.started, st.finished = "failed", "no model", 1.0, 2.0
    assert mu.status_view(st).children[0].children == "Failed: no model"


class _Recorder:
    """A job's progress sink that records every report and cancels at a chosen phase."""

    def __init__(self, cancel_at: str | None = None, after: int = 0):
        self.seen: list[tuple[str, float | None, float | None]] = []
        self.phase = "starting"
        self.cancel_at, self.after = cancel_at, after

    def __call__(self, phase=None, done=None, total=None):
        if phase is not None:
            self.phase = phase
        self.seen.append((self.phase, done, total))
        if self.cancel_at and self.phase.startswith(self.cancel_at) and (done or 0) >= self.after:
            raise JobCancelled("the job was cancelled.")

    def check(self):
        pass


def test_the_job_reports_steps_images_and_units_in_its_phases(state):
    rec = _Recorder()
    message = mu.compute_units(state.reader("r").path, NEW, "lucid", "quick", progress=rec)
    assert message.startswith("stored the preferred inputs of 4 units")
    by_phase: dict[str, list] = {}
    for phase, done, total in rec.seen:
        if done is not None:
            by_phase.setdefault(phase, []).append((done, total))
    # 64 steps of the 4 units (one batch), every step told; 6 sample images in one batch of 16;
    # then the 4 units projected one by one (on the ranking the top examples just made)
    assert by_phase["preferred inputs (lucid): step"] == [(d, 64) for d in range(65)]
    assert by_phase["top examples: image"] == [(0, 6), (6, 6)]
    assert "DeconvNet projections, ranking: image" not in by_phase
    assert by_phase["DeconvNet projections: unit"] == [(d, 4) for d in range(5)]
    order = list(dict.fromkeys(p for p, _, _ in rec.seen))
    assert order.index("preferred inputs (lucid): step") < order.index("top examples: image") \
        < order.index("DeconvNet projections: unit")
    st = JobStatus(key="k", title="t", phase="top examples: image", done=6, total=6)
    assert progress_text(st) == "top examples: image 6 of 6"
    # a layer that has its top examples and preferred inputs: the projections rank first
    other = "layer1.0.conv1"
    samples = torch.as_tensor(np.asarray(fm_format.samples(state.reader("r")), np.float32))
    with cs.Run(state.reader("r").path.parent, "r", resume=True, quiet=True) as run:
        run.log_preferred_inputs(_model(), [other], units=[1, 3], steps=2)
        run.log_top_examples(_model(), [other], samples, k=6)
    rec = _Recorder()
    message = mu.compute_units(state.reader("r").path, other, "lucid", "quick", progress=rec)
    assert message == "stored the DeconvNet projections of 2 units (their top 6 images)."
    phases = [(p, d, t) for p, d, t in rec.seen if d is not None]
    assert phases == [("DeconvNet projections, ranking: image", d, 6) for d in (0, 6)] + [
        ("DeconvNet projections: unit", d, 2) for d in range(3)]
    assert pj_format.units(state.reader("r"), other) == [1, 3]  # the preferred inputs' units


@pytest.mark.parametrize("cancel_at, after, kept", [
    ("preferred inputs", 10, ()),  # mid-optimisation: nothing stored
    ("top examples", 0, ("preferred inputs",)),  # before the first batch
    ("DeconvNet projections: unit", 2, ("preferred inputs", "top examples")),  # mid-layer
])
def test_a_cancelled_job_leaves_the_run_whole(state, cancel_at, after, kept):
    reader = state.reader("r")
    rec = _Recorder(cancel_at, after)
    with pytest.raises(JobCancelled) as err:
        mu.compute_units(reader.path, NEW, "lucid", "quick", progress=rec)
    msg = str(err.value)
    assert msg.startswith("the job was cancelled; ")
    assert ("nothing was stored" in msg) is (not kept)
    have = {"preferred inputs": pi_format.meta(reader, NEW) is not None,
            "top examples": te_format.crops_meta(reader, NEW) is not None,
            "projections": pj_format.meta(reader, NEW) is not None}
    assert {k for k, v in have.items() if v} == set(kept)
    for what in kept:
        assert f"kept: the {what}" in msg or f"and the {what}" in msg
    # what is there reads whole; the run is closed as it was and can be computed again
    if "preferred inputs" in kept:
        assert pi_format.load(reader, NEW).units == [0, 1, 2, 3]
    if "top examples" in kept:
        assert te_format.load(reader, NEW).indices.shape == (4, 6)
    assert reader.meta["status"] == "ended"
    assert not list((reader.path / "arrays").rglob("*.tmp*"))  # no half-written file
    rest = mu.compute_units(reader.path, NEW, "lucid", "quick")
    assert "DeconvNet projections of 4 units" in rest
    assert pj_format.meta(reader, NEW) is not None


def test_cancel_units_checks_the_request_and_cancels_the_running_job(state, monkeypatch):
    with pytest.raises(InputError, match="nothing is being computed"):
        mu.cancel_units(state, "r", NEW)
    with pytest.raises(InputError, match="layer"):
        mu.cancel_units(state, "r", "../../etc")
    with pytest.raises(NotARunError):
        mu.cancel_units(state, "../r", NEW)
    started, go = threading.Event(), threading.Event()
    real = mu.compute_units

    def slow(*args, progress=None, **kw):  # hold the job before its first step
        progress(phase="loading the saved model")
        started.set()
        go.wait(WAIT)
        return real(*args, progress=progress, **kw)

    monkeypatch.setattr(mu, "compute_units", slow)
    st = mu.start_units(state, "r", NEW, "lucid", "quick")
    assert started.wait(WAIT)
    asked = mu.cancel_units(state, "r", NEW)
    assert asked.state == "running" and asked.stopping
    assert "cancelling" in mu.status_view(asked).children[-1].children
    go.set()
    st = state.jobs.wait(st.key, WAIT)
    assert st.state == "cancelled" and "nothing was stored" in st.message
    view = mu.status_view(st)
    assert getattr(view, "data-state") == "cancelled" and "notice-warn" in view.className
    assert view.children[-1].children.startswith("Cancelled: ")
    assert pi_format.meta(state.reader("r"), NEW) is None
