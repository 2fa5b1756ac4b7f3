"""Batch normalisation folded into the convolution before it, for inference-only passes.

In eval mode a ``BatchNorm`` after a convolution is an affine map per channel, so the pair is
one convolution with rescaled weights and a shifted bias (``W' = W * g / sqrt(v + eps)``,
``b' = (b - m) * g / sqrt(v + eps) + beta``). Folded, a forward pass skips one full read and
write of every normalised activation: on the CPU that is a fifth to a third of a ResNet's
inference time. The function is the same up to floating-point rounding.

:func:`fold_batchnorm` never changes the user's model: it traces it with ``torch.fx`` into a
new module that calls the model's own submodules, except that each folded pair is replaced by
one new convolution (a copy). A model that cannot be traced (data-dependent control flow), is
in training mode, has parameters below float32, or has a hook on any of its modules (tracing
would bypass the hooks of the modules it traces through, and a folded pair's hooks would never
run) is returned as it is, with 0 folds.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .frozen import _HOOK_DICTS

__all__ = ["fold_batchnorm"]

logger = logging.getLogger("convscope.nn")

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (isinstance(conv, _CONVS) and isinstance(bn, _NORMS) and not conv.training
            and not bn.training and bn.track_running_stats
            and bn.running_mean is not None and bn.running_var is not None
            and bn.num_features == conv.out_channels)


def _hooked(model: nn.Module) -> bool:
    return any(getattr(m, d, None) for m in model.modules() for d in _HOOK_DICTS)


def fold_batchnorm(model: nn.Module) -> tuple[nn.Module, int]:
    """An inference module computing ``model``'s function with every eval-mode batch norm that
    directly follows a convolution (the convolution's only use) folded into it.

    Returns ``(module, folds)``: the new module and the number of pairs folded, or ``(model, 0)``
    when nothing can be folded (see the module docstring). The user's model is not modified;
    the new module shares its other submodules and parameters. Use it under
    ``torch.inference_mode()`` / ``torch.no_grad()`` only: the folded weights are copies, so
    gradients would not reach the model's parameters.
    """
    if model.training or any(p.is_floating_point() and p.dtype not in (torch.float32,
                                                                       torch.float64)
                             for p in model.parameters()):
        return model, 0
    if not any(isinstance(m, _NORMS) for m in model.modules()) or _hooked(model):
        return model, 0
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception as err:  # noqa: BLE001 - any tracing failure: run the model as it is
        logger.debug("fold_batchnorm: %s does not trace (%s): not folded",
                     type(model).__name__, err)
        return model, 0
    modules = dict(gm.named_modules())
    folds = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or len(node.args) != 1:
            continue
        prev = node.args[0]
        if not isinstance(prev, torch.fx.Node) or prev.op != "call_module" \
                or len(prev.users) != 1 or prev.kwargs:
            continue
        conv, bn = modules.get(prev.target), modules.get(node.target)
        if conv is None or bn is None or not _foldable(conv, bn):
            continue
        name = f"_folded_{folds}"
        fused = fuse_conv_bn_eval(conv, bn)
        if conv.weight.is_contiguous(memory_format=torch.channels_last) and fused.weight.dim() == 4:
            fused = fused.to(memory_format=torch.channels_last)
        gm.add_submodule(name, fused)
        with gm.graph.inserting_after(prev):
            new = gm.graph.call_module(name, prev.args, prev.kwargs)
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        gm.graph.erase_node(prev)
        folds += 1
    if not folds:
        return model, 0
    gm.graph.lint()
    gm.recompile()
    return gm, folds
