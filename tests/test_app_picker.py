"""The dashboard's shared page blocks (``convscope.app.components``): the run-picker callback
every page registers, the page frame around it, and ``Damage.load``. Checked against fakes whose
answers are known by construction (which runs have the data, which table is damaged)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from convscope.app.components import (
    Damage,
    keep_or_first,
    picker_page,
    register_choice,
    register_run_picker,
)
from convscope.errors import StoreError


class FakeApp:
    """Records what ``@app.callback`` is given."""

    def __init__(self) -> None:
        self.callbacks: list[tuple[tuple, object]] = []

    def callback(self, *deps, **_kwargs):
        def deco(fn):
            self.callbacks.append((deps, fn))
            return fn

        return deco


class FakeReader:
    def __init__(self, root: Path, name: str, problems: list[str] | None = None) -> None:
        self.name = name
        self.path = root / name
        self.path.mkdir(exist_ok=True)
        (self.path / "run.json").write_text(json.dumps({"name": name}))
        self.problems = problems or []


class FakeState:
    def __init__(self, readers: list[FakeReader]) -> None:
        self._readers = {r.name: r for r in readers}

    def readers(self, selected):
        if not isinstance(selected, list):
            return []
        return [self._readers[n] for n in selected if n in self._readers]


def text(c) -> str:
    """All the text of a Dash component tree."""
    if c is None:
        return ""
    if isinstance(c, (str, int, float)):
        return str(c)
    if isinstance(c, (list, tuple)):
        return "".join(text(x) for x in c)
    return text(getattr(c, "children", None))


def ids(c) -> list[str]:
    """Component ids in document order."""
    if isinstance(c, (list, tuple)):
        return [i for x in c for i in ids(x)]
    if not hasattr(c, "to_plotly_json"):
        return []
    own = [c.id] if getattr(c, "id", None) else []
    return own + ids(getattr(c, "children", None))


def _register(tmp_path, **kwargs):
    app = FakeApp()
    state = FakeState([FakeReader(tmp_path, "a"), FakeReader(tmp_path, "b")])
    register_run_picker(app, state, "wid", lambda r: r.name == "a", "widgets",
                        "run.log_widgets()", **kwargs)
    assert len(app.callbacks) == 1
    return app.callbacks[0]


def test_the_picker_callback_is_wired_to_the_prefixed_ids(tmp_path):
    deps, _ = _register(tmp_path)
    wired = [(type(d).__name__, d.component_id, d.component_property) for d in deps]
    assert wired == [("Output", "wid-run", "options"), ("Output", "wid-run", "value"),
                     ("Output", "wid-status", "children"), ("Input", "run-select", "value"),
                     ("State", "wid-run", "value")]


def test_the_picker_offers_the_runs_with_data_and_names_the_others(tmp_path):
    _, runs = _register(tmp_path)
    options, value, notes = runs(["a", "b"], "b")  # "b" lacks the data: not kept
    assert options == [{"label": "a", "value": "a"}]
    assert value == "a"
    assert len(notes) == 1
    assert text(notes) == "b: no widgets recorded yet. Record them with run.log_widgets()."


@pytest.mark.parametrize("selected", [None, []])
def test_no_selected_run_asks_for_one(tmp_path, selected):
    _, runs = _register(tmp_path)
    options, value, note = runs(selected, "a")
    assert (options, value) == ([], None)
    assert "Select one or more runs" in text(note)


def test_a_status_function_replaces_the_default_answer(tmp_path):
    seen = []

    def status(selected, current):
        seen.append((selected, current))
        return [{"label": "x", "value": "x"}], "x", "note"

    _, runs = _register(tmp_path, status=status)
    assert runs(["a"], "q") == ([{"label": "x", "value": "x"}], "x", "note")
    assert runs([], "q")[:2] == ([], None)  # nothing selected: never asked
    assert seen == [(["a"], "q")]


def test_a_failing_picker_answers_a_notice_not_an_error(tmp_path):
    def status(selected, current):
        raise StoreError("run.json of a is unreadable: restore it.")

    _, runs = _register(tmp_path, status=status)
    options, value, note = runs(["a"], None)
    assert (options, value) == ([], None)
    assert "run.json of a is unreadable: restore it." in text(note)


def test_the_page_frame_puts_picker_controls_status_then_body():
    from dash import html

    page = picker_page("wid", "Widgets", "All the widgets.", [html.Div(id="wid-knob")],
                       html.Div(id="wid-body"), html.Div(id="wid-notes"))
    assert ids(page) == ["wid-run", "wid-knob", "wid-status", "wid-body", "wid-notes"]
    header, controls = page.children[0], page.children[1]
    assert text(header) == "WidgetsAll the widgets."
    assert controls.className == "controls"


def test_damage_load_skips_a_damaged_table_with_nothing_left(tmp_path):
    bad = "tables/t/part-1.parquet is not a readable Parquet file (truncated)"
    reader = FakeReader(tmp_path, "a", problems=[bad])
    calls = []
    dmg = Damage()
    assert dmg.load(reader, ["t"], lambda r: False, lambda: calls.append(1), "the t") is None
    assert calls == []  # never tried
    assert dmg.items == [("a", "t table is damaged: tables/t/part-1.parquet (truncated)")]
    # some rows are still readable: loaded despite the damage, which stays named
    dmg = Damage()
    assert dmg.load(reader, ["t"], lambda r: True, lambda: 42, "the t") == 42
    assert len(dmg.items) == 1


def test_damage_load_records_a_failed_load(tmp_path):
    reader = FakeReader(tmp_path, "a")

    def fail():
        raise StoreError("objects/t/x.json is damaged: record it again.")

    dmg = Damage()
    assert dmg.load(reader, ["t"], lambda r: True, lambda: "ok", "the t") == "ok"
    assert not dmg
    assert dmg.load(reader, ["t"], lambda r: True, fail, "the t") is None
    assert dmg.items == [("a", "objects/t/x.json is damaged: record it again.")]


def test_keep_or_first():
    assert keep_or_first("b", ["a", "b"]) == "b"
    assert keep_or_first("c", ["a", "b"]) == "a"
    assert keep_or_first({"x": 1}, ["a"]) == "a"  # a crafted value is never kept
    assert keep_or_first("a", []) is None


def test_a_choice_offers_the_picked_runs_options_and_keeps_its_value(tmp_path):
    app = FakeApp()
    readers = [FakeReader(tmp_path, "a"), FakeReader(tmp_path, "b")]
    state = FakeState(readers)
    state.reader = {r.name: r for r in readers}.__getitem__
    keys = {"a": ["k1", "k2"], "b": []}
    register_choice(app, state, "wid-run", "wid-key", lambda r: keys[r.name])
    (deps, choices), = app.callbacks
    assert [(type(d).__name__, d.component_id, d.component_property) for d in deps] == [
        ("Output", "wid-key", "options"), ("Output", "wid-key", "value"),
        ("Input", "wid-run", "value"), ("State", "wid-key", "value")]
    assert choices("a", "k2") == (["k1", "k2"], "k2")
    assert choices("a", "gone") == (["k1", "k2"], "k1")
    assert choices("b", "k1") == ([], None)
    assert choices(None, "k1") == ([], None)
    assert choices("missing", "k1") == ([], None)  # a failure (KeyError here): no options
