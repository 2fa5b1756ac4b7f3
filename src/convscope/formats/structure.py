"""Structure and resources: what ``run.log_model(model, example_inputs)`` records.

Contract, for a model key ``k`` (default :data:`DEFAULT_KEY`):

* ``objects/graph/<k>.json``: the graph (:meth:`convscope.model.Graph.to_dict`: ``nodes``,
  ``edges``, ``blocks``, ``method``, ...);
* table ``profile``: one row per module (:func:`convscope.model.profile`'s columns: name, type,
  level, params, memory_bytes, forward_s, backward_s and the ``*_share`` columns) plus a
  ``model`` column holding ``k``;
* ``objects/profile/<k>.json``: the profile's settings (the DataFrame's ``attrs``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ..errors import StoreError
from ..store.duck import identifier
from .base import Sink

__all__ = ["DEFAULT_KEY", "GRAPH_KIND", "PROFILE_TABLE", "PROFILE_KIND", "MODEL_COLUMN",
           "PROFILE_SHARES", "SOURCE", "Structure", "write", "write_graph", "write_profile",
           "load", "has_graph", "graph", "graph_layers", "graph_input_shape", "has_profile",
           "profile", "profile_row", "profile_attrs", "shares", "StructureQueries"]

DEFAULT_KEY = "model"
GRAPH_KIND = "graph"
PROFILE_TABLE = "profile"
PROFILE_KIND = "profile"  # the profile's attrs (an object kind, not the table)
MODEL_COLUMN = "model"
#: the share columns of the profile table (convscope.model.profile): the only column names
#: :func:`shares` lets into SQL text
PROFILE_SHARES = ("time_share", "memory_share", "param_share", "activation_share",
                  "forward_share", "backward_share")
SOURCE = "run.log_model(model, example_inputs)"


@dataclass(frozen=True)
class Structure:
    """One model's structure: its graph (a dict), and its profile rows (without the ``model``
    column) and settings, or None when it was recorded without ``profile``."""

    key: str
    graph: dict[str, Any]
    profile: pd.DataFrame | None = None
    profile_attrs: dict[str, Any] | None = field(default=None)


def _graph_dict(g: Any) -> dict[str, Any]:
    return g.to_dict() if hasattr(g, "to_dict") and not isinstance(g, dict) else g


def write_graph(sink: Sink, g: Any, *, key: str = DEFAULT_KEY) -> None:
    """Store the graph (a dict, or a :class:`convscope.model.Graph`) as ``objects/graph/<key>``."""
    sink.log_object(GRAPH_KIND, key, _graph_dict(g))


def write_profile(sink: Sink, df: pd.DataFrame, *, key: str = DEFAULT_KEY) -> None:
    """Append the profile rows (tagged with ``model=key``) and store their ``attrs``."""
    sink.log_rows(PROFILE_TABLE, df.assign(**{MODEL_COLUMN: key}))
    sink.log_object(PROFILE_KIND, key, {k: v for k, v in df.attrs.items()})


def write(sink: Sink, result: Structure | Any, profile_df: pd.DataFrame | None = None, *,
          key: str | None = None) -> None:
    """Store a :class:`Structure` (or a graph plus an optional profile DataFrame)."""
    if isinstance(result, Structure):
        key = result.key if key is None else key
        g, profile_df = result.graph, result.profile
        if profile_df is not None and result.profile_attrs is not None:
            profile_df = profile_df.copy()
            profile_df.attrs = dict(result.profile_attrs)
    else:
        g = result
    key = DEFAULT_KEY if key is None else key
    write_graph(sink, g, key=key)
    if profile_df is not None:
        write_profile(sink, profile_df, key=key)


def load(reader: Any, key: str = DEFAULT_KEY) -> Structure:
    """The graph, profile rows and settings of model ``key``; :class:`StoreError` (saying what
    records them) when the run has no graph of that key."""
    if not has_graph(reader, key):
        raise StoreError(f"run {reader.name!r} has no model graph {key!r}: record it with "
                         f"{SOURCE}.")
    prof = profile(reader, key) if has_profile(reader) else None
    prof = prof.drop(columns=[MODEL_COLUMN]) if prof is not None else None
    attrs = profile_attrs(reader, key) if reader.has_object(PROFILE_KIND, key) else None
    return Structure(key=key, graph=graph(reader, key),
                     profile=prof if prof is not None and len(prof) else None,
                     profile_attrs=attrs)


# -- graph ----------------------------------------------------------------------------------
def has_graph(reader: Any, key: str = DEFAULT_KEY) -> bool:
    return reader.has_object(GRAPH_KIND, key)


def graph(reader: Any, key: str = DEFAULT_KEY) -> dict[str, Any]:
    """The stored graph of ``key`` (a dict)."""
    return reader.object(GRAPH_KIND, key)


def graph_layers(reader: Any, key: str = DEFAULT_KEY) -> list[str]:
    """Names of the graph's modules with 4-d outputs (``[]`` without a graph; a damaged graph:
    :class:`StoreError`)."""
    if not has_graph(reader, key):
        return []
    nodes = graph(reader, key)
    nodes = nodes.get("nodes") if isinstance(nodes, dict) else None
    if not isinstance(nodes, list):
        raise StoreError(f"objects/{GRAPH_KIND}/{key}.json of run {reader.name!r} has no list of "
                         f"nodes: record the graph again with {SOURCE}.")
    out = []
    for n in nodes:
        if not isinstance(n, dict) or n.get("op") != "module" or not isinstance(n.get("name"), str):
            continue
        shapes = n.get("output_shapes")
        if isinstance(shapes, list) and shapes and isinstance(shapes[0], list) \
                and len(shapes[0]) == 4:
            out.append(n["name"])
    return out


def graph_input_shape(reader: Any, key: str = DEFAULT_KEY) -> list[Any] | None:
    """The graph input's shape without the batch dimension, or None (no graph, no input)."""
    if not has_graph(reader, key):
        return None
    nodes = graph(reader, key).get("nodes") or []
    first = next((n for n in nodes if isinstance(n, dict) and n.get("op") == "input"), None)
    if first and first.get("output_shapes"):
        return list(first["output_shapes"][0][1:])
    return None


# -- profile --------------------------------------------------------------------------------
def has_profile(reader: Any) -> bool:
    return reader.has_table(PROFILE_TABLE)


def profile(reader: Any, key: str = DEFAULT_KEY) -> pd.DataFrame:
    """The profile rows of model ``key`` (with their ``model`` column); :class:`StoreError`
    (saying what records one) when the run has no profile table."""
    if not has_profile(reader):
        raise StoreError(f"run {reader.name!r} has no profile (table {PROFILE_TABLE!r}): record "
                         f"it with {SOURCE}.")
    return reader.query(f"SELECT * FROM {PROFILE_TABLE} WHERE {MODEL_COLUMN} = ?", [key])


def profile_row(reader: Any, layer: str, key: str = DEFAULT_KEY) -> pd.Series | None:
    """The profile row of module ``layer``, or None."""
    if not has_profile(reader):
        return None
    df = reader.query(f"SELECT * FROM {PROFILE_TABLE} WHERE name = ? AND {MODEL_COLUMN} = ?",
                      [layer, key])
    return df.iloc[0] if len(df) else None


def profile_attrs(reader: Any, key: str = DEFAULT_KEY) -> dict[str, Any]:
    """The profile's settings (``{}`` when absent or not a mapping)."""
    if not reader.has_object(PROFILE_KIND, key):
        return {}
    attrs = reader.object(PROFILE_KIND, key)
    return attrs if isinstance(attrs, dict) else {}


def shares(reader: Any, column: str, key: str = DEFAULT_KEY) -> dict[str, float]:
    """``{module path: share}`` of one share column of the profile; ``{}`` without one.
    ``column`` must be one of :data:`PROFILE_SHARES` (it names a column, so it is checked,
    never pasted as given)."""
    column = identifier(column, PROFILE_SHARES, "profile share")
    if not has_profile(reader):
        return {}
    df = reader.query(f'SELECT name, "{column}" AS v FROM {PROFILE_TABLE} '
                      f"WHERE {MODEL_COLUMN} = ?", [key])
    return dict(zip(df["name"].astype(str), df["v"].astype(float), strict=True))


class StructureQueries:
    """``RunReader.profile_shares`` (mixed into :class:`convscope.formats.reader.RunReader`)."""

    def profile_shares(self, column: str, model: str = DEFAULT_KEY) -> dict[str, float]:
        """``{module path: share}`` of one share column of the ``profile`` table (recorded by
        ``run.log_model``); ``{}`` without one. ``column`` must be one of
        :data:`PROFILE_SHARES` (it names a column, so it is checked, never pasted as given)."""
        return shares(self, column, model)
