"""Model checkpoints that load without running code from the run directory.

**The form, and why.** A checkpoint is the model's ``state_dict`` (``torch.save``; read back with
``torch.load(weights_only=True)``, whose restricted unpickler builds tensors and plain containers
only) plus a JSON record naming the *builder* that rebuilds the architecture and its keyword
arguments. Builders come from a fixed allow-list in code: the ``convscope.zoo`` builders, the
``torchvision.models`` builders by their registered name (looked up in torchvision's own registry,
always with ``weights=None``), and builders the loading process registered itself with
:func:`register_builder`. No module or class name read from disk is ever imported.

The alternatives were weighed against torch 2.x's own code:

* ``torch.export`` programs (``.pt2``) are *not* safe to load: ``torch.export.load`` falls back to
  ``torch.load(weights_only=False)`` when the weights-only load fails
  (``torch/_export/serde/serialize.py: deserialize_torch_artifact``), and the PT2 archive reader
  unpickles weights and constants with ``weights_only=False`` / ``pickle.loads``
  (``torch/export/pt2_archive/_package.py``). A crafted ``.pt2`` therefore runs code. Its
  unflattened module also replaces every layer by an ``InterpreterModule``, so type-based layer
  specifications, training mode and ``"relu:2"`` call paths would stop working.
* safetensors is not installed; ``weights_only=True`` gives the same guarantee for the tensors.

A rebuilt model is a genuine ``nn.Module`` of the original class, so forward hooks on layer paths,
gradients and every convscope analysis work on it as on the original.

Whether the record fits the model is checked when saving: the builder's model, built on the meta
device (no memory, no random init), must have the same class, the same ``repr`` (module types and
their hyper-parameters) and the same state-dict keys and shapes. When loading, the builder's meta
model must match the stored weights before anything is allocated.

A model no builder reproduces (a user's own class) is saved as well as a pickle of the module
*without its weights* ``<key>.pt`` (every tensor of its ``state_dict`` replaced by a meta tensor,
so the file is kilobytes: the weights are stored once, in ``<key>.state.pt``), with a warning:
that file loads only with an explicit opt-in (``trust=True``, ``convscope serve
--trust-checkpoints``, ``convscope diagnose --trust-checkpoints``), and gets its weights from the
state file (``load_state_dict(assign=True)``). The whole-module pickles (weights included) that
earlier versions wrote load as before, with the same opt-in.

Builders that compute with tensors while building (torchvision's RegNets derive their widths
with ``torch.pow``) cannot run with every tensor on the meta device; they are built on the CPU
with each parameter and buffer moved to the meta device as it is registered (no memory either).
Builders with a pretrained backbone (torchvision's detection and segmentation models) are always
called with ``weights_backbone=None`` too: nothing is downloaded, and a record may not ask for it.

Files, for a key ``k`` in file-name form (:func:`~convscope.store.layout.safe_key`)::

    checkpoints/<k>.state.pt    state_dict (weights only)
    checkpoints/<k>.arch.json   {"format", "key", "builder", "kwargs", "class", "input_shape",
                                 "state", "pickle", "pickle_weights"}
    checkpoints/<k>.pt          the module without its weights (``"pickle_weights": "state"``):
                                only when "builder" is null (needs trust)

This module is the files' transport (it needs torch, which :mod:`convscope.formats` never
imports). Pages, the report and the CLI go through :mod:`convscope.formats.checkpoints`, which
lists the users' keys (from each record's ``"key"``), reads the record into a dataclass and calls
the functions here to save and load.
"""

from __future__ import annotations

import io
import json
import math
import threading
import warnings
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..errors import InputError, StoreError
from .layout import atomic_write_bytes, find_key_file, safe_key

__all__ = [
    "FORMAT",
    "TRUST_HINT",
    "register_builder",
    "builder_names",
    "save_checkpoint",
    "load_checkpoint",
    "checkpoint_keys",
    "checkpoint_form",
    "checkpoint_identity",
    "input_shape",
]

FORMAT = 1
DIR = "checkpoints"
STATE_SUFFIX = ".state.pt"
ARCH_SUFFIX = ".arch.json"
PICKLE_SUFFIX = ".pt"
#: An architecture record is a few hundred bytes; anything far larger is not one.
MAX_ARCH_BYTES = 64 * 1024
#: Builder arguments read from disk: largest integer (in magnitude), string and number of values
#: in all (a list counts each element). ImageNet-21k's 21,843 classes fit with room to spare.
MAX_KWARG_INT = 2**20
MAX_KWARG_STR = 256
MAX_KWARG_VALUES = 256
#: Rebuilding from a record may register at most this many modules, parameters and buffers per
#: state-dict entry (plus BUILD_SLACK): torchvision's models register 1.5-2.5 per entry, so a
#: record asking for far more than its weights hold (``"blocks": [20000, 1, 1, 1]``) is stopped
#: after a few hundred, not built for half a minute.
BUILD_PER_ENTRY = 4
BUILD_SLACK = 1024

TRUST_HINT = (
    "Loading a pickle runs code stored in the file, so convscope does so only on request: if you "
    "trust this run, pass trust=True to reader.load_model, or restart with "
    "`convscope serve --trust-checkpoints` (or `convscope diagnose/analyze --trust-checkpoints`). "
    "Better, re-save the model with this version's run.log_checkpoint(model), which for "
    "convscope.zoo and torchvision models (or a builder registered with "
    "convscope.store.checkpoints.register_builder) stores a form that loads without running code."
)

# name -> (builder, model class or None, infer(model) -> kwargs | None)
_REGISTERED: dict[str, tuple[Callable[..., Any], type | None, Callable[[Any], Any] | None]] = {}


def register_builder(name: str, fn: Callable[..., Any], *, model_class: type | None = None,
                     infer: Callable[[Any], Mapping[str, Any] | None] | None = None) -> None:
    """Allow ``fn(**kwargs)`` to rebuild checkpoints recorded under ``name`` in this process.

    ``model_class`` with ``infer(model) -> kwargs`` lets :func:`save_checkpoint` recognise such a
    model on its own; otherwise pass ``arch=(name, kwargs)`` to ``run.log_checkpoint``. The
    registry lives in the loading process only: nothing read from disk adds to it.
    """
    if not isinstance(name, str) or not name or name.startswith(("convscope.", "torchvision.")):
        raise InputError(f"register_builder: {name!r} is not a usable name; pick a non-empty name "
                         "outside the reserved 'convscope.' and 'torchvision.' prefixes.")
    if not callable(fn):
        raise InputError(f"register_builder({name!r}, fn): fn must be callable, got "
                         f"{type(fn).__name__}.")
    _REGISTERED[name] = (fn, model_class, infer)


def _zoo_builders() -> dict[str, Callable[..., Any]]:
    from .. import zoo

    return {"convscope.zoo.resnet": zoo.resnet,
            "convscope.zoo.DCGANGenerator": zoo.DCGANGenerator,
            "convscope.zoo.DCGANDiscriminator": zoo.DCGANDiscriminator}


def _torchvision_names() -> list[str]:
    try:
        from torchvision.models import list_models
    except ImportError:
        return []
    return list(list_models())


def builder_names() -> list[str]:
    """Every builder name a checkpoint may record here (the allow-list)."""
    return (sorted(_zoo_builders()) + [f"torchvision.{n}" for n in _torchvision_names()]
            + sorted(_REGISTERED))


def _resolve(name: Any) -> Callable[..., Any]:
    """The allow-listed builder called ``name``; never imports a name read from disk."""
    if not isinstance(name, str):
        raise StoreError(f"the checkpoint's builder is {type(name).__name__}, not a name: the "
                         "record is damaged; re-save the model with run.log_checkpoint(model).")
    zoo = _zoo_builders()
    if name in zoo:
        return zoo[name]
    if name.startswith("torchvision."):
        tv = name[len("torchvision."):]
        if tv in _torchvision_names():
            from torchvision.models import get_model_builder

            fn = get_model_builder(tv)
            fixed = {"weights": None}
            if "weights_backbone" in _parameters(fn):  # never download a backbone either
                fixed["weights_backbone"] = None
            return lambda **kw: fn(**fixed, **kw)
    if name in _REGISTERED:
        return _REGISTERED[name][0]
    raise StoreError(
        f"the checkpoint names builder {name!r}, which is not one convscope rebuilds here: "
        "install torchvision if it is a torchvision model, or call "
        f"convscope.store.checkpoints.register_builder({name!r}, fn) before loading."
    )


def _parameters(fn: Callable[..., Any]) -> set[str]:
    """Names of ``fn``'s parameters (through ``functools.wraps``); empty when not inspectable."""
    import inspect

    try:
        return set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return set()


def _check_kwargs(kwargs: Any) -> dict[str, Any]:
    """Builder keyword arguments from disk: JSON scalars and lists of them, no ``weights``;
    integers within +-MAX_KWARG_INT, finite floats, strings of at most MAX_KWARG_STR characters,
    at most MAX_KWARG_VALUES values in all."""
    if kwargs is None:
        return {}
    if not isinstance(kwargs, Mapping):
        raise StoreError("the checkpoint's builder arguments are not a mapping: the record is "
                         "damaged; re-save the model with run.log_checkpoint(model).")
    count = [0]

    def plain(v: Any, depth: int = 0) -> bool:
        count[0] += 1
        if count[0] > MAX_KWARG_VALUES:
            return False
        if isinstance(v, list | tuple):
            return depth < 4 and len(v) <= 64 and all(plain(x, depth + 1) for x in v)
        if isinstance(v, bool) or v is None:
            return True
        if isinstance(v, int):
            return abs(v) <= MAX_KWARG_INT
        if isinstance(v, float):
            return math.isfinite(v)
        return isinstance(v, str) and len(v) <= MAX_KWARG_STR

    if len(kwargs) > MAX_KWARG_VALUES:
        raise StoreError(f"the checkpoint's builder has {len(kwargs)} arguments, more than a "
                         "record can hold: re-save the model with run.log_checkpoint(model).")
    out = {}
    for k, v in kwargs.items():
        if (not isinstance(k, str) or not k.isidentifier() or k.startswith("_")
                or k in ("weights", "weights_backbone", "progress") or not plain(v)):
            raise StoreError(f"the checkpoint's builder argument {k!r}={str(v)[:200]} is not "
                             "allowed (plain values only: integers within "
                             f"+-{MAX_KWARG_INT:,}, at most {MAX_KWARG_VALUES} values, no "
                             "weights): re-save the model with run.log_checkpoint(model).")
        out[k] = list(v) if isinstance(v, tuple) else v
    return out


# -- architecture inference -------------------------------------------------------------------
def _shapes(module: Any) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


class _OverBudget(Exception):
    """A builder registered more modules, parameters and buffers than its budget."""


def _on_meta(fn: Callable[..., Any], kwargs: Mapping[str, Any], budget: int | None = None
             ) -> Any:
    """``fn(**kwargs)`` with its parameters and buffers on the meta device (no memory, no random
    init); with ``budget``, stopped (:class:`_OverBudget`) as soon as it registers more modules,
    parameters and buffers than that (counted in this thread only, with torch's global
    registration hooks, removed afterwards).

    First built under ``torch.device("meta")``; a builder that needs real values while building
    (RegNet's widths) is built again on the CPU with each parameter and buffer moved to the meta
    device as it is registered (the initialisers then run on meta tensors)."""
    import torch
    from torch.nn.modules import module as tm

    me, seen = threading.get_ident(), [0]

    def count(*_: Any) -> None:
        if threading.get_ident() == me:
            seen[0] += 1
            if seen[0] > budget:
                raise _OverBudget(f"more than {budget} modules, parameters and buffers")

    def meta_param(_m: Any, _name: str, p: Any) -> Any:
        if threading.get_ident() != me or p is None or p.is_meta:
            return None
        return torch.nn.Parameter(p.to("meta"), requires_grad=p.requires_grad)

    def meta_buffer(_m: Any, _name: str, b: Any) -> Any:
        if threading.get_ident() != me or b is None or b.is_meta:
            return None
        return b.to("meta")

    hooks = [] if budget is None else [
        tm.register_module_module_registration_hook(count),
        tm.register_module_parameter_registration_hook(count),
        tm.register_module_buffer_registration_hook(count)]
    try:
        try:
            with torch.device("meta"):
                return fn(**kwargs)
        except _OverBudget:
            raise
        except Exception:  # a builder computing with tensors, or arguments it refuses
            seen[0] = 0
        hooks += [tm.register_module_parameter_registration_hook(meta_param),
                  tm.register_module_buffer_registration_hook(meta_buffer)]
        return fn(**kwargs)
    finally:
        for h in hooks:
            h.remove()


def _fits(model: Any, fn: Callable[..., Any], kwargs: Mapping[str, Any]) -> bool:
    """Does ``fn(**kwargs)`` build exactly ``model``'s architecture? (built on the meta device)"""
    try:
        probe = _on_meta(fn, kwargs)
    except Exception:  # a candidate that does not take these arguments is simply no match
        return False
    return (type(probe) is type(model) and repr(probe) == repr(model)
            and _shapes(probe) == _shapes(model))


def _last(model: Any, types: tuple[type, ...]) -> Any:
    found = None
    for m in model.modules():
        if isinstance(m, types):
            found = m
    return found


def _candidates(model: Any) -> list[tuple[str, dict[str, Any]]]:
    """(builder name, kwargs) guesses for ``model``, each still to be verified by :func:`_fits`."""
    from torch import nn

    from .. import zoo

    cls = type(model)
    out: list[tuple[str, dict[str, Any]]] = []
    if cls is zoo.ResNet:
        out.append(("convscope.zoo.resnet", {
            "num_classes": model.fc.out_features, "in_channels": model.conv1.in_channels,
            "width": model.conv1.out_channels,
            "blocks": [len(getattr(model, f"layer{k}")) for k in range(1, 5)],
            **({"block": model.block} if getattr(model, "block", "basic") != "basic" else {})}))
    elif cls is zoo.DCGANGenerator:
        kw = {"version": model.version, "latent_dim": model.latent_dim,
              "image_size": model.image_size, "output": getattr(model, "output", "tanh")}
        last = _last(model, (nn.ConvTranspose2d, nn.Conv2d))
        if last is not None:
            kw["channels"] = last.out_channels
        if model.version == 1 and isinstance(getattr(model, "fc1", None), nn.Linear):
            kw["hidden"] = model.fc1.out_features
        out.append(("convscope.zoo.DCGANGenerator", kw))
    elif cls is zoo.DCGANDiscriminator:
        kw = {"version": model.version, "image_size": model.image_size}
        first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        if first is not None:
            kw["channels"] = first.in_channels
        if isinstance(getattr(model, "fc1", None), nn.Linear):
            kw["hidden"] = model.fc1.out_features
        act = next((m for m in model.modules() if isinstance(m, nn.LeakyReLU)), None)
        if act is not None:
            kw["negative_slope"] = act.negative_slope
        out.append(("convscope.zoo.DCGANDiscriminator", kw))
    elif cls.__module__.startswith("torchvision.models"):
        from torchvision.models import get_model_builder

        head = _last(model, (nn.Linear, nn.Conv2d))
        n = getattr(head, "out_features", None) or getattr(head, "out_channels", None)
        guesses: list[dict[str, Any]] = [{}] + ([{"num_classes": int(n)}] if n else [])
        size = getattr(model, "image_size", None)  # vision transformers
        if isinstance(size, int) and not isinstance(size, bool):
            guesses += [{**g, "image_size": size} for g in guesses]
        for name in _torchvision_names():
            if getattr(get_model_builder(name), "__module__", None) == cls.__module__:
                out += [(f"torchvision.{name}", g) for g in guesses]
    for name, (_, model_class, infer) in _REGISTERED.items():
        if model_class is not None and cls is model_class and infer is not None:
            kw = infer(model)
            if kw is not None:
                out.append((name, dict(kw)))
    return out


def _architecture(model: Any, arch: Any) -> tuple[str, dict[str, Any]] | None:
    """The verified (builder, kwargs) that rebuilds ``model``, or None when none does."""
    if arch is not None:
        name, kwargs = (arch, {}) if isinstance(arch, str) else tuple(arch)
        try:
            fn, kwargs = _resolve(name), _check_kwargs(kwargs)
        except StoreError as exc:
            raise InputError(f"arch={arch!r}: {exc}") from None
        if not _fits(model, fn, kwargs):
            raise InputError(
                f"arch={arch!r} does not rebuild this model: {name}(**kwargs) gives a different "
                "class, module structure or parameter shapes. Pass the builder and arguments the "
                "model was built with, or leave arch out.")
        return name, kwargs
    for name, kwargs in _candidates(model):
        try:
            fn, kwargs = _resolve(name), _check_kwargs(kwargs)
        except StoreError:
            continue
        if _fits(model, fn, kwargs):
            return name, kwargs
    return None


# -- save ---------------------------------------------------------------------------------------
def _files(run_path: Path, key: str, *, write: bool = False) -> tuple[Path, Path, Path]:
    """(state, arch, pickle) paths of ``key``; for reading, a run recorded before keys were made
    injective finds its files under their old names (:func:`~.layout.find_key_file`)."""
    key = str(key)
    if key.endswith((".state", ".arch")):
        raise InputError(f"checkpoint key {key!r} ends in .state or .arch, which name the files "
                         "of other keys: pick another key.")
    root = Path(run_path) / DIR
    if write:
        base = safe_key(key)
        return tuple(root / f"{base}{s}" for s in (STATE_SUFFIX, ARCH_SUFFIX, PICKLE_SUFFIX))
    return tuple(find_key_file(Path(run_path), root, key, s)
                 for s in (STATE_SUFFIX, ARCH_SUFFIX, PICKLE_SUFFIX))


def _torch_bytes(obj: Any) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _skeleton(model: Any) -> Any:
    """A copy of ``model`` whose ``state_dict`` tensors are meta tensors of the same shape, dtype
    and ``requires_grad`` (the weights are saved once, in the state file); everything else
    (non-persistent buffers, plain attributes) is copied as is. The model is not touched."""
    import copy

    import torch
    from torch import nn

    memo: dict[int, Any] = {}
    for t in model.state_dict(keep_vars=True).values():
        if not isinstance(t, torch.Tensor) or id(t) in memo:
            continue
        twin = torch.empty_like(t, device="meta")
        if isinstance(t, nn.Parameter):
            twin = nn.Parameter(twin, requires_grad=t.requires_grad)
        memo[id(t)] = twin
    return copy.deepcopy(model, memo)


def _input_shape(example_inputs: Any) -> list[int] | None:
    shape = getattr(example_inputs, "shape", None)
    if shape is None or len(shape) < 2:
        return None
    return [int(s) for s in shape[1:]]


def save_checkpoint(run_path: str | Path, model: Any, key: str = "model", *,
                    example_inputs: Any = None, arch: Any = None) -> Path:
    """Save ``model`` under ``checkpoints/`` of ``run_path`` (see the module docstring).

    ``arch``: ``"builder"`` or ``("builder", kwargs)`` from :func:`builder_names`, checked against
    the model; by default convscope recognises convscope.zoo and torchvision models (and those of
    registered builders). ``example_inputs`` records the input shape ``[C, H, W]`` for the
    dashboard's Live page. Returns the path of the architecture record.
    """
    from torch import nn

    if not isinstance(model, nn.Module):
        raise InputError(f"log_checkpoint takes an nn.Module, got {type(model).__name__}.")
    state_path, arch_path, pickle_path = _files(run_path, key, write=True)
    old = _read_arch(arch_path, missing_ok=True)
    if old is not None and old.get("key") not in (None, str(key)):
        raise StoreError(
            f"checkpoint key {key!r} is stored as {safe_key(key)!r}, which already holds key "
            f"{old.get('key')!r}: pick a key that differs in letters or digits.")
    found = _architecture(model, arch)
    record = {
        "format": FORMAT, "key": str(key), "class": f"{type(model).__module__}."
        f"{type(model).__qualname__}", "builder": found[0] if found else None,
        "kwargs": found[1] if found else {}, "input_shape": _input_shape(example_inputs),
        "state": state_path.name, "pickle": None if found else pickle_path.name,
        "pickle_weights": None if found else "state",
    }
    atomic_write_bytes(state_path, _torch_bytes(model.state_dict()))
    if found is None:
        avoid = ("Register a builder with convscope.store.checkpoints.register_builder, or pass "
                 "arch=, to avoid that.")
        try:
            pickled = _torch_bytes(_skeleton(model))
        except Exception as exc:  # a local class or an unpicklable attribute
            record["pickle"] = record["pickle_weights"] = None
            pickle_path.unlink(missing_ok=True)
            warnings.warn(
                f"convscope cannot record how to rebuild {record['class']}, and cannot pickle it "
                f"({str(exc)[:200]}): checkpoint {key!r} holds its weights only "
                f"({state_path.name}; load them into your own instance). {avoid}",
                UserWarning, stacklevel=3)
        else:
            warnings.warn(
                f"convscope cannot record how to rebuild {record['class']} without running "
                f"code, so checkpoint {key!r} is also saved as a pickle of the module without "
                f"its weights ({pickle_path.name}, beside the weights in {state_path.name}); "
                "loading it needs trust (reader.load_model(trust=True), "
                f"convscope serve --trust-checkpoints). {avoid}", UserWarning, stacklevel=3)
            atomic_write_bytes(pickle_path, pickled)
    atomic_write_bytes(arch_path, json.dumps(record, indent=2).encode())  # last: marks complete
    if found is not None and pickle_path.exists():
        pickle_path.unlink(missing_ok=True)  # an older pickle of this key is no longer needed
    return arch_path


# -- read ---------------------------------------------------------------------------------------
def _read_arch(path: Path, missing_ok: bool = False) -> dict[str, Any] | None:
    if not path.is_file():
        if missing_ok:
            return None
        raise StoreError(f"{path} is missing: re-save the model with run.log_checkpoint(model).")
    try:
        if path.stat().st_size > MAX_ARCH_BYTES:
            raise ValueError(f"{path.stat().st_size} bytes, more than a record can be")
        doc = json.loads(path.read_bytes())
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        raise StoreError(f"the checkpoint record {path} is damaged ({exc}): re-save the model "
                         "with run.log_checkpoint(model).") from None
    return doc


def checkpoint_keys(run_path: str | Path) -> list[str]:
    """Keys (file-name form) of every checkpoint in the run, whatever its form."""
    root = Path(run_path) / DIR
    if not root.is_dir():
        return []
    keys = set()
    for p in root.iterdir():
        name = p.name
        if name.startswith(".") or not p.is_file():
            continue
        for suffix in (ARCH_SUFFIX, STATE_SUFFIX, PICKLE_SUFFIX):
            if name.endswith(suffix):
                keys.add(name[: -len(suffix)])
                break
    return sorted(keys)


def checkpoint_form(run_path: str | Path, key: str = "model") -> str | None:
    """How checkpoint ``key`` loads: ``"rebuild"`` (no code runs), ``"pickle"`` (needs trust),
    ``"state"`` (weights only, no architecture recorded) or ``None`` (no such checkpoint)."""
    state_path, arch_path, pickle_path = _files(run_path, key)
    doc = None
    if arch_path.is_file():
        try:
            doc = _read_arch(arch_path)
        except StoreError:
            doc = None
    if doc is not None and doc.get("builder"):
        return "rebuild"
    if pickle_path.is_file():
        return "pickle"
    if state_path.is_file():
        return "state"
    return None


def checkpoint_identity(run_path: str | Path, key: str = "model") -> tuple:
    """(file name, size, mtime_ns, inode) of each of the checkpoint's files: changes whenever the
    checkpoint is re-saved, for caches of loaded models."""
    out = []
    for p in _files(run_path, key):
        try:
            st = p.stat()
        except OSError:
            continue
        out.append((p.name, st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(out)


def input_shape(run_path: str | Path, key: str = "model") -> list[int] | None:
    """The ``[C, H, W]`` input shape recorded with the checkpoint, if any."""
    try:
        doc = _read_arch(_files(run_path, key)[1], missing_ok=True)
    except StoreError:
        return None
    shape = (doc or {}).get("input_shape")
    if (isinstance(shape, list) and len(shape) == 3
            and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)):
        return shape
    return None


def _load_state(path: Path, where: str) -> dict[str, Any]:
    """The state dict in ``path`` (weights only), memory-mapped where the file allows: a sparse
    file declaring more tensor bytes than it holds on disk is refused before anything is read."""
    import torch

    try:
        mmap = zipfile.is_zipfile(path)  # torch.save's format since 1.6; older ones load whole
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # the restricted unpickler refuses anything but tensors: say so
        raise StoreError(f"cannot read the weights {path} of {where} ({str(exc)[:300]}): they "
                         "must be a state_dict saved with torch.save; re-save the model with "
                         "run.log_checkpoint(model).") from None
    if not isinstance(state, Mapping) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise StoreError(f"{path} of {where} is not a state_dict (names -> tensors): re-save the "
                         "model with run.log_checkpoint(model).")
    storages = {}
    for v in state.values():
        st = v.untyped_storage()
        storages[st.data_ptr()] = st.nbytes()
    declared, stat = sum(storages.values()), path.stat()
    on_disk = getattr(stat, "st_blocks", None)
    if on_disk is not None and declared > 2 * on_disk * 512 + 2**20:
        raise StoreError(f"{path} of {where} declares {declared / 2**20:,.0f} MB of weights but "
                         f"holds {on_disk * 512 / 2**20:,.1f} MB on disk (a sparse file): it is "
                         "damaged or crafted; re-save the model with run.log_checkpoint(model).")
    return dict(state)


def _rebuild(doc: dict[str, Any], state_path: Path, where: str) -> Any:
    import torch

    fn = _resolve(doc.get("builder"))
    kwargs = _check_kwargs(doc.get("kwargs"))
    if doc.get("builder") == "convscope.zoo.DCGANGenerator" and "output" not in kwargs:
        # recorded before the default output became Wang & Li's ReLU: trained with tanh
        kwargs = {**kwargs, "output": "tanh"}
    if not state_path.is_file():
        raise StoreError(f"the weights {state_path.name} of {where} are missing: re-save the "
                         "model with run.log_checkpoint(model).")
    state = _load_state(state_path, where)
    budget = BUILD_PER_ENTRY * len(state) + BUILD_SLACK
    try:
        probe = _on_meta(fn, kwargs, budget)
    except _OverBudget:
        raise StoreError(f"{doc.get('builder')}(**{str(kwargs)[:300]}) of {where} builds a model "
                         f"far larger than its weights ({len(state)} tensors; stopped after "
                         f"{budget} modules, parameters and buffers): the record is damaged or "
                         "crafted; re-save the model with run.log_checkpoint(model).") from None
    except Exception as exc:  # a builder refusing recorded arguments: a damaged record
        raise StoreError(f"{doc.get('builder')}(**{kwargs}) fails for {where} "
                         f"({str(exc)[:300]}): re-save the model with run.log_checkpoint(model)."
                         ) from None
    want = _shapes(probe)
    have = {k: tuple(v.shape) for k, v in state.items()}
    if want != have:
        diff = sorted(set(want) ^ set(have)) or [k for k in want if want[k] != have[k]]
        raise StoreError(f"the weights of {where} do not fit {doc.get('builder')}(**{kwargs}) "
                         f"(first differences: {diff[:3]}): re-save the model with "
                         "run.log_checkpoint(model).")
    model = fn(**kwargs)
    model.load_state_dict(state)
    dtypes = {v.dtype for v in state.values() if v.is_floating_point()}
    if len(dtypes) == 1 and (dtype := dtypes.pop()) != torch.float32:
        model = model.to(dtype)
    return model


def load_checkpoint(run_path: str | Path, key: str = "model", map_location: Any = "cpu", *,
                    trust: bool = False, run_name: str | None = None) -> Any:
    """The model saved as checkpoint ``key`` (in eval mode) on ``map_location``.

    Rebuilds it from its weights and architecture record when there is one (no code from the
    run runs). A whole-module pickle loads only with ``trust=True``; without it a
    :class:`~convscope.errors.StoreError` says how to opt in.
    """
    run_path = Path(run_path)
    where = f"checkpoint {key!r} of run {run_name or run_path.name!r}"
    state_path, arch_path, pickle_path = _files(run_path, key)
    doc = _read_arch(arch_path, missing_ok=True)
    if doc is not None and doc.get("builder"):
        model = _rebuild(doc, state_path, where)
    elif pickle_path.is_file():
        if not trust:
            raise StoreError(f"{where} is a whole-module pickle ({DIR}/{pickle_path.name}"
                             f"{', recorded by an older convscope' if doc is None else ''}). "
                             + TRUST_HINT)
        model = _load_pickle(pickle_path, where, map_location)
        model = _fill_weights(model, state_path, where)
    elif state_path.is_file():
        raise StoreError(
            f"{where} holds weights only ({DIR}/{state_path.name}), with no record of the "
            "architecture: build the model yourself and load them with model.load_state_dict("
            "torch.load(path, weights_only=True)), or re-save it with run.log_checkpoint(model).")
    else:
        raise StoreError(f"run {run_name or run_path.name!r} has no checkpoint {key!r}: save one "
                         "with run.log_checkpoint(model)."
                         + (f" It has: {', '.join(checkpoint_keys(run_path))}."
                            if checkpoint_keys(run_path) else ""))
    try:
        model = model.to(map_location)
    except Exception as exc:  # a device that is not there
        raise StoreError(f"cannot move {where} to {map_location!r} ({exc}): pass an available "
                         "map_location such as 'cpu'.") from None
    return model.eval()


def _fill_weights(model: Any, state_path: Path, where: str) -> Any:
    """A pickled module whose weights are meta tensors (this version's pickles) gets them from
    the state file; a whole-module pickle of an earlier version is returned as it is."""
    import torch

    if not isinstance(model, torch.nn.Module):
        return model
    tensors = model.state_dict(keep_vars=True).values()
    if not any(isinstance(t, torch.Tensor) and t.is_meta for t in tensors):
        return model
    if not state_path.is_file():
        raise StoreError(f"the weights {state_path.name} of {where} are missing (its pickle "
                         "holds the module without them): re-save the model with "
                         "run.log_checkpoint(model).")
    state = _load_state(state_path, where)
    tied: dict[int, list[tuple[Any, str]]] = {}  # shared parameters (tied weights) stay shared
    for _, module in model.named_modules(remove_duplicate=False):
        for name, p in module.named_parameters(recurse=False):
            tied.setdefault(id(p), []).append((module, name))
    try:
        model.load_state_dict(state, assign=True)
        for places in tied.values():
            first = getattr(places[0][0], places[0][1])
            for module, name in places[1:]:
                setattr(module, name, first)
    except Exception as exc:  # weights of another model
        raise StoreError(f"the weights {state_path.name} of {where} do not fit its pickled "
                         f"module ({str(exc)[:300]}): re-save the model with "
                         "run.log_checkpoint(model).") from None
    left = [k for k, t in model.state_dict(keep_vars=True).items()
            if isinstance(t, torch.Tensor) and t.is_meta]
    if left:
        raise StoreError(f"the weights {state_path.name} of {where} lack {left[:3]}: re-save the "
                         "model with run.log_checkpoint(model).")
    return model


def _load_pickle(path: Path, where: str, map_location: Any) -> Any:
    import torch

    try:
        model = torch.load(path, map_location=map_location, weights_only=False)
    except (AttributeError, ModuleNotFoundError, ImportError) as exc:
        raise StoreError(f"cannot load {where}: its class is not importable here ({exc}). Import "
                         "the module that defines the model first, or load the *.state.pt "
                         "weights into your own instance with load_state_dict.") from exc
    except Exception as exc:  # a damaged or foreign file
        raise StoreError(f"cannot load {where} from {path.name} ({str(exc)[:300]}): re-save the "
                         "model with run.log_checkpoint(model).") from exc
    if not hasattr(model, "eval") or not hasattr(model, "to"):
        raise StoreError(f"{path.name} of {where} holds a {type(model).__name__}, not a model: "
                         "re-save the model with run.log_checkpoint(model).")
    return model
