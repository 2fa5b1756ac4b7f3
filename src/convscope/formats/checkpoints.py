"""Checkpoints: what ``run.log_checkpoint(model, key)`` saves, as the dashboard and the CLI see
it.

Contract, for a key ``k`` stored under its file-name form ``f`` (:func:`file_key`)::

    checkpoints/<f>.state.pt    state_dict (weights only)
    checkpoints/<f>.arch.json   {"format", "key": k, "builder", "kwargs", "class",
                                 "input_shape", "state", "pickle"}
    checkpoints/<f>.pt          only when "builder" is null: the module pickled without its
                                weights ("pickle_weights": "state"; older runs: whole-module
                                pickle); needs trust

Runs recorded before keys were made injective keep their files under the older file-name form;
every function here finds them by the user's key as well as by the file-name form.

This module is torch-free: it reads the JSON record and names the files. Writing and loading
the weights (``torch.save`` / ``torch.load(weights_only=True)`` and the allow-listed builders)
stay in :mod:`convscope.store.checkpoints`, the transport that reads these files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import StoreError
from ..store import checkpoints as transport
from ..store.layout import find_key_file, read_json, safe_key

__all__ = ["DIR", "STATE_SUFFIX", "ARCH_SUFFIX", "PICKLE_SUFFIX", "DEFAULT_KEY", "SOURCE",
           "TRUST_HINT", "Checkpoint", "write", "load", "load_model", "keys", "file_keys",
           "file_key", "has", "default_key", "form", "identity", "input_shape",
           "CheckpointQueries"]

DIR = transport.DIR
STATE_SUFFIX = transport.STATE_SUFFIX
ARCH_SUFFIX = transport.ARCH_SUFFIX
PICKLE_SUFFIX = transport.PICKLE_SUFFIX
DEFAULT_KEY = "model"
SOURCE = "run.log_checkpoint(model)"
TRUST_HINT = transport.TRUST_HINT


@dataclass(frozen=True)
class Checkpoint:
    """What the record of checkpoint ``key`` says (no weights: see :func:`load_model`).

    ``form``: ``"rebuild"`` (no code runs), ``"pickle"`` (needs trust), ``"state"`` (weights
    only). ``builder``/``kwargs``/``model_class``/``input_shape`` are None/{} where the run
    has no record (pickles of older versions)."""

    key: str
    form: str
    builder: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    model_class: str | None = None
    input_shape: list[int] | None = None


def _run_path(where: Any) -> Path:
    return Path(getattr(where, "path", where))


def file_key(key: str) -> str:
    """The file-name form new checkpoints of ``key`` are written under."""
    return safe_key(str(key))


def file_keys(where: Any) -> list[str]:
    """Keys in file-name form of every checkpoint in the run (``where``: a reader, a sink or a
    run path), whatever its form."""
    return transport.checkpoint_keys(_run_path(where))


def _record(path: Path) -> dict[str, Any] | None:
    try:
        if not path.is_file() or path.stat().st_size > transport.MAX_ARCH_BYTES:
            return None
        doc = read_json(path, max_bytes=transport.MAX_ARCH_BYTES)
    except (OSError, ValueError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None


def keys(where: Any) -> list[str]:
    """The users' keys of every checkpoint in the run (``"my model"``, not its file name), as
    recorded in each ``arch.json``; a checkpoint without a readable record (a pickle of an older
    version) is listed by its file-name key. Each loads with :func:`load_model`."""
    root = _run_path(where) / DIR
    out = []
    for fk in file_keys(where):
        doc = _record(root / f"{fk}{ARCH_SUFFIX}")
        user = doc.get("key") if doc is not None else None
        out.append(user if isinstance(user, str) and user else fk)
    return sorted(set(out))


def has(where: Any) -> bool:
    return bool(file_keys(where))


def default_key(where: Any) -> str:
    """The checkpoint a page runs: :data:`DEFAULT_KEY` when there is one, else the first."""
    found = keys(where)
    return DEFAULT_KEY if DEFAULT_KEY in found or not found else found[0]


def form(where: Any, key: str = DEFAULT_KEY) -> str | None:
    """How ``key`` loads: ``"rebuild"``, ``"pickle"``, ``"state"`` or None (no checkpoint)."""
    return transport.checkpoint_form(_run_path(where), key)


def identity(where: Any, key: str = DEFAULT_KEY) -> tuple:
    """Changes whenever the checkpoint is re-saved (for caches of loaded models)."""
    return transport.checkpoint_identity(_run_path(where), key)


def input_shape(where: Any, key: str = DEFAULT_KEY) -> list[int] | None:
    """The ``[C, H, W]`` input shape recorded with the checkpoint, if any."""
    return transport.input_shape(_run_path(where), key)


def model_input_shape(reader: Any, key: str = DEFAULT_KEY) -> list[Any] | None:
    """The model's input ``[C, H, W]`` as the run recorded it: the stored sample images'
    shape, else the graph's input, else the shape saved with checkpoint ``key``; None when the
    run has none of them (the values are as stored: the caller checks them)."""
    from . import feature_maps, structure

    samples = feature_maps.samples_index(reader)
    if len(samples):
        return list(samples.iloc[0]["shape"][1:])
    if structure.has_graph(reader):
        shape = structure.graph_input_shape(reader)
        if shape is not None:
            return list(shape)
    return input_shape(reader, key)


def write(sink: Any, model: Any, key: str = DEFAULT_KEY, *, example_inputs: Any = None,
          arch: Any = None) -> Path:
    """Save ``model`` (an ``nn.Module``, already unwrapped) as checkpoint ``key`` of the sink's
    run; returns the path of the record. See :func:`convscope.store.checkpoints.save_checkpoint`.
    """
    return transport.save_checkpoint(_run_path(sink), model, key,
                                      example_inputs=example_inputs, arch=arch)


def load(reader: Any, key: str = DEFAULT_KEY) -> Checkpoint:
    """The record of checkpoint ``key`` (the user's key or its file-name form); a
    :class:`StoreError` saying what to do when the run has none."""
    how = form(reader, key)
    if how is None:
        have = keys(reader)
        raise StoreError(f"run {getattr(reader, 'name', _run_path(reader).name)!r} has no "
                         f"checkpoint {key!r}: save one with {SOURCE}."
                         + (f" It has: {', '.join(have)}." if have else ""))
    arch = find_key_file(_run_path(reader), _run_path(reader) / DIR, str(key),
                                   ARCH_SUFFIX)
    doc = _record(arch) or {}
    user = doc.get("key")
    return Checkpoint(key=user if isinstance(user, str) and user else str(key), form=how,
                      builder=doc.get("builder"), kwargs=dict(doc.get("kwargs") or {}),
                      model_class=doc.get("class"), input_shape=input_shape(reader, key))


def load_model(reader: Any, key: str = DEFAULT_KEY, map_location: Any = "cpu", *,
               trust: bool = False) -> Any:
    """The module saved as checkpoint ``key``, in eval mode (rebuilt without running code;
    a whole-module pickle only with ``trust=True``)."""
    return transport.load_checkpoint(_run_path(reader), key, map_location, trust=trust,
                                     run_name=getattr(reader, "name", None))


class CheckpointQueries:
    """``RunReader.checkpoints/load_model`` (mixed into
    :class:`convscope.formats.reader.RunReader`)."""

    def checkpoints(self) -> list[str]:
        """Keys (file-name form) of the models saved with ``run.log_checkpoint``, whatever their
        form (including whole-module pickles written by older versions). The users' keys:
        :func:`convscope.formats.checkpoints.keys`; both load with :meth:`load_model`."""
        return file_keys(self)

    def load_model(self, key: str = DEFAULT_KEY, map_location: Any = "cpu", *,
                   trust: bool = False) -> Any:
        """The module saved with ``run.log_checkpoint(model, key)``, in eval mode.

        Rebuilt from its weights (``weights_only=True``) and an allow-listed architecture
        record, so nothing from the run directory runs. A whole-module pickle (runs of older
        versions, or models no builder reproduces) loads only with ``trust=True``; without it a
        :class:`StoreError` says how to opt in. See :mod:`convscope.store.checkpoints`."""
        return load_model(self, key, map_location, trust=trust)
