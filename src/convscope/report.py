"""``convscope report RUN --out report.html``: one self-contained HTML file of a run's figures.

The file embeds plotly.js, so it opens without a network. Sections are functions from a
:class:`~convscope.formats.reader.RunReader` to HTML, each loading its data through
:mod:`convscope.formats`; a section whose data the run lacks says which call
records it.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import plotly.graph_objects as go

from ._version import __version__
from .figures.scalars import scalar_figure
from .formats import embedding as emb_format
from .formats import feature_maps as fm_format
from .formats import scalars as sc_format
from .formats import structure
from .formats.reader import RunReader, open_run
from .store.layout import atomic_write_bytes

__all__ = ["write_report", "Section", "SECTIONS"]


@dataclass(frozen=True)
class Section:
    title: str
    build: Callable[[RunReader], list[go.Figure] | str | None]
    records_with: str


def _scalars(reader: RunReader) -> list[go.Figure] | None:
    tags = sc_format.tags(reader)
    if not tags:
        return None
    series = {t: {reader.name: sc_format.series(reader, t, max_points=5000)} for t in tags}
    return [scalar_figure(series, smoothing=0.6)]


def _table_html(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(r.get(c, '')))}</td>" for c, _ in columns)
        + "</tr>" for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _model(reader: RunReader) -> str | None:
    if not structure.has_graph(reader):
        return None
    g = structure.graph(reader)
    rows = [
        {"name": n["name"], "type": n["type"],
         "output": " ".join(str(list(s)) for s in n["output_shapes"]),
         "params": f"{n['params']:,}"}
        for n in g["nodes"] if n["op"] in ("module", "function")
    ]
    total = sum(b["params"] for b in g["blocks"] if b["name"] == "")
    return (f"<p>{html.escape(g.get('model_type', ''))}: {len(rows)} layers and operations, "
            f"{total:,} parameters (graph recorded with {html.escape(g['method'])}).</p>"
            + _table_html(rows, [("name", "layer"), ("type", "type"), ("output", "output shape"),
                                 ("params", "parameters")]))


def _feature_maps(reader: RunReader) -> list[go.Figure] | None:
    from .figures.maps import feature_map_grid

    idx = fm_format.index(reader)
    if not len(idx):
        return None
    stem = [k for k in ("conv1", "bn1", "relu", "maxpool") if k in set(idx["key"])]
    keys = stem or idx["key"].tolist()[:4]
    figs = []
    for key in keys:
        meta = fm_format.layer_meta(reader, key, idx)
        maps = fm_format.maps(reader, key).astype("float32")
        figs.append(feature_map_grid(maps, meta["channels"], title=key))
    return figs


def _resources(reader: RunReader) -> list[go.Figure] | None:
    from .figures.resources import resource_rings

    if not structure.has_profile(reader):
        return None
    prof = structure.profile(reader)
    return [resource_rings(prof, "")]


def _embedding(reader: RunReader) -> list[go.Figure] | None:
    from .figures.embedding import embedding_figure

    if not emb_format.has(reader):
        return None
    figs = []
    for name in emb_format.names(reader):
        df = emb_format.frame(reader, name)
        meta = emb_format.meta(reader, name)
        figs.append(embedding_figure(df, class_names=meta.get("class_names"),
                                     explained=meta.get("explained_variance_ratio"), title=name))
    return figs


def _attribution(reader: RunReader) -> list[go.Figure] | None:
    from .figures.attribution import attribution_gallery
    from .formats import attribution as fa

    if not fa.has_sets(reader):
        return None
    figs = []
    for meta in fa.infos(reader):
        key = meta.key  # as logged; the store maps it to its file
        images = fa.images(reader, key).astype("float32")
        maps = {m: fa.maps(reader, key, m).astype("float32") for m in meta.methods}
        figs.append(attribution_gallery(images, maps, opacity=0.5))
    return figs


def _diagnosis(reader: RunReader) -> str | None:
    from .formats import diagnosis as fd

    keys = fd.keys(reader)
    if not keys:
        return None
    from .diagnose import Report

    return "<pre>" + html.escape(Report.from_dict(fd.report_dict(reader, keys[0])).to_text()) \
        + "</pre>"


SECTIONS: list[Section] = [
    Section("Scalars", _scalars, sc_format.SOURCE),
    Section("Model", _model, structure.SOURCE),
    Section("Feature maps", _feature_maps, fm_format.SOURCE),
    Section("Attribution", _attribution, "run.log_attributions(model, images)"),
    Section("Diagnosis", _diagnosis, "run.log_diagnosis(model, inputs)"),
    Section("Resources", _resources, structure.SOURCE),
    Section("Embedding", _embedding, emb_format.SOURCE),
]

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,Arial,sans-serif;margin:0;color:#1d2330;
background:#f6f7f9}header{background:#101828;color:#fff;padding:14px 24px}
header h1{margin:0;font-size:20px}header p{margin:4px 0 0;color:#98a2b3;font-size:13px}
main{max-width:1300px;margin:0 auto;padding:10px 24px 40px}
section{background:#fff;border:1px solid #e3e6eb;border-radius:8px;padding:12px 16px;margin:16px 0}
h2{font-size:17px;margin:4px 0 10px}table{border-collapse:collapse;font-size:13px}
td,th{padding:3px 12px 3px 0;text-align:left;vertical-align:top}th{color:#667085;font-weight:600}
.missing{background:#fff4e5;border:1px solid #f7c98b;border-radius:6px;padding:8px 12px}
code{background:#eef0f3;padding:1px 5px;border-radius:4px}
"""


def write_report(run: str | Path | RunReader, out: str | Path) -> Path:
    """Write the run's report to ``out`` (one HTML file, no external resources)."""
    reader = run if isinstance(run, RunReader) else open_run(run)
    meta = reader.meta
    parts: list[str] = []
    plotly_included = False
    rows = [
        ("run", reader.name), ("created", meta.get("created", "")),
        ("ended", meta.get("ended") or "still running"),
        ("convscope", meta.get("convscope_version", "")), ("torch", meta.get("torch_version")),
        ("host", meta.get("host", "")),
    ] + [(f"config.{k}", v) for k, v in sorted((meta.get("config") or {}).items())]
    meta_html = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows
    )
    parts.append(f"<section><h2>Run</h2><table>{meta_html}</table></section>")
    for section in SECTIONS:
        result = section.build(reader)
        body: str
        if result is None:
            body = (
                f'<div class="missing">This run has no {html.escape(section.title.lower())} '
                f"data. Record it with <code>{html.escape(section.records_with)}</code>.</div>"
            )
        elif isinstance(result, str):
            body = result
        else:
            chunks = []
            for fig in result:
                chunks.append(
                    fig.to_html(full_html=False, include_plotlyjs=not plotly_included)
                )
                plotly_included = True
            body = "\n".join(chunks)
        parts.append(f"<section><h2>{html.escape(section.title)}</h2>{body}</section>")
    doc = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>convscope report: {html.escape(reader.name)}</title><style>{_CSS}</style>"
        f"</head><body><header><h1>convscope report: {html.escape(reader.name)}</h1>"
        f"<p>convscope {__version__}</p></header><main>{''.join(parts)}</main></body></html>"
    )
    out = Path(out)
    atomic_write_bytes(out, doc.encode("utf-8"))
    return out
