"""Torch plumbing shared by every analysis package (and nothing else; ``nn.dist`` alone is
torch-free, for the writers that must not import torch):

* :mod:`~convscope.nn.modules` -- the model check, DDP / compile unwrapping, module paths and the
  ONE layer specification (module path, ``path:k``, the module, a type, a predicate, a list);
* :mod:`~convscope.nn.forwarding` -- argument checks and the forward whose errors name the layer;
* :mod:`~convscope.nn.hooks` -- the one output recorder (stops with a ``BaseException``);
* :mod:`~convscope.nn.fold` -- batch norm folded into the convolution before it, for
  inference-only passes (Score-CAM's masked inputs);
* :mod:`~convscope.nn.frozen` -- borrowing a model: mode, ``requires_grad``, grads, batch-norm
  statistics and hooks restored, also after an error;
* :mod:`~convscope.nn.batches` -- walking a data set in batches, slicing shares, chunking;
* :mod:`~convscope.nn.dist` -- rank, world, gather, shard bounds;
* :mod:`~convscope.nn.passes` -- the one data-set pass protocol (run a share, merge partials
  exactly, finish) and its drivers, one process (:func:`run_pass`) or sharded
  (:func:`run_sharded`);
* :mod:`~convscope.nn.ops` -- float32 promotion, min-max scaling, upsampling;
* :mod:`~convscope.nn.tokens` -- token sequences and channels-last grids read as ``[B, D, h, w]``
  maps (vision transformers, Swin, ConvNeXt blocks).
"""

from __future__ import annotations

import importlib
from typing import Any

#: Where each name lives. Imported on first use, so that the torch-free parts (``nn.dist``)
#: load without torch.
_WHERE = {
    "DatasetPass": "passes",
    "INPUT_SUFFIX": "hooks",
    "Pass": "passes",
    "Share": "passes",
    "GridLayout": "tokens",
    "LayerSpec": "modules",
    "NONFINITE_MODEL_FIX": "forwarding",
    "Recorder": "hooks",
    "StopForward": "hooks",
    "as_args": "forwarding",
    "call_key": "modules",
    "check_args": "forwarding",
    "check_finite": "forwarding",
    "check_model": "modules",
    "chunks": "batches",
    "copy_tensors": "hooks",
    "dataset_length": "batches",
    "env_rank_world": "dist",
    "f32": "ops",
    "flat_tensors": "forwarding",
    "fold_batchnorm": "fold",
    "forward": "forwarding",
    "grid_layout": "tokens",
    "eval_frozen": "frozen",
    "gather_objects": "dist",
    "handles": "hooks",
    "is_leaf": "modules",
    "iter_batches": "batches",
    "layer_path": "modules",
    "leaf_modules": "modules",
    "minmax": "ops",
    "model_device": "modules",
    "module_names": "modules",
    "positive_int": "forwarding",
    "preserved": "frozen",
    "rank_world": "dist",
    "resolve_layer": "modules",
    "resolve_layers": "modules",
    "restore_mode": "frozen",
    "run_pass": "passes",
    "run_sharded": "passes",
    "run_split": "passes",
    "shape_of": "forwarding",
    "shard": "dist",
    "shard_bounds": "dist",
    "slice_dataset": "batches",
    "split_call": "modules",
    "to_grid": "tokens",
    "to_device": "passes",
    "translate_error": "forwarding",
    "unwrap": "modules",
    "upsample": "ops",
}


__all__ = [
    "DatasetPass",
    "GridLayout",
    "INPUT_SUFFIX",
    "NONFINITE_MODEL_FIX",
    "LayerSpec",
    "Pass",
    "Recorder",
    "Share",
    "StopForward",
    "as_args",
    "call_key",
    "check_args",
    "check_finite",
    "check_model",
    "chunks",
    "copy_tensors",
    "dataset_length",
    "env_rank_world",
    "f32",
    "flat_tensors",
    "fold_batchnorm",
    "forward",
    "eval_frozen",
    "gather_objects",
    "grid_layout",
    "handles",
    "is_leaf",
    "iter_batches",
    "layer_path",
    "leaf_modules",
    "minmax",
    "model_device",
    "module_names",
    "positive_int",
    "preserved",
    "rank_world",
    "resolve_layer",
    "resolve_layers",
    "restore_mode",
    "run_pass",
    "run_sharded",
    "run_split",
    "shard",
    "shard_bounds",
    "shape_of",
    "slice_dataset",
    "split_call",
    "to_device",
    "to_grid",
    "translate_error",
    "unwrap",
    "upsample",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
