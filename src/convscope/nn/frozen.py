"""Borrowing a user's model: whatever happens inside the block (also an error), the model
leaves it as it came in."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["eval_frozen", "preserved", "restore_mode"]

_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
)


@contextlib.contextmanager
def preserved(
    model: nn.Module, eval_mode: bool | None = None, *, freeze: bool = False
) -> Iterator[None]:
    """The one way convscope borrows a user's model: whatever happens inside the block (also an
    error), the model leaves it as it came in.

    Saved and restored: every sub-module's ``training`` flag, every parameter's
    ``requires_grad`` and ``.grad``, the running statistics of every normalisation layer
    (``running_mean``, ``running_var``, ``num_batches_tracked`` of batch / instance norms) and
    the hooks (any forward/backward hook added inside the block and still registered is
    removed).

    Args:
        model: the user's network.
        eval_mode: ``True`` puts it in eval mode, ``False`` in train mode, ``None`` leaves it.
        freeze: set ``requires_grad=False`` on every parameter inside the block (no parameter
            gradients are computed; autograd records only what the input/layer gradients need).
    """
    modules = list(model.modules())
    modes = [(m, m.training) for m in modules]
    params = list(model.parameters())
    flags = [(p, p.requires_grad, p.grad) for p in params]
    stats: list[tuple[nn.Module, str, torch.Tensor, torch.Tensor]] = []
    with torch.no_grad():
        for m in modules:
            if isinstance(m, nn.modules.batchnorm._NormBase):
                for bname, buf in m.named_buffers(recurse=False):
                    if buf is not None:
                        stats.append((m, bname, buf, buf.detach().clone()))
    hooks = [(m, {d: set(getattr(m, d, {}) or {}) for d in _HOOK_DICTS}) for m in modules]
    try:
        if eval_mode is True:
            model.eval()
        elif eval_mode is False:
            model.train()
        if freeze:
            for p in params:
                p.requires_grad_(False)
        yield
    finally:
        for m, flag in modes:
            m.training = flag
        for p, flag, grad in flags:
            p.requires_grad_(flag)
            p.grad = grad
        with torch.no_grad():
            for m, bname, buf, saved in stats:
                m._buffers[bname] = buf
                if not torch.equal(buf, saved):
                    buf.copy_(saved)
        for m, before in hooks:
            for d, keys in before.items():
                table = getattr(m, d, None)
                if table:
                    for key in [k for k in table if k not in keys]:
                        del table[key]


def restore_mode(model: nn.Module, eval_mode: bool | None) -> contextlib.AbstractContextManager:
    """Put ``model`` in eval (``True``) or train (``False``) mode, or leave it (``None``), and
    restore it afterwards, even on error: see :func:`preserved` (modes, ``requires_grad``,
    normalisation statistics, hooks)."""
    return preserved(model, eval_mode)


def eval_frozen(model: nn.Module, eval_mode: bool = True) -> contextlib.AbstractContextManager:
    """Put ``model`` in eval mode with parameters frozen; on exit (even on error) the model is as
    it came in (see :func:`preserved`).

    Freezing parameters (``requires_grad=False``) means no parameter gradients are computed and
    autograd records only what the gradients to the input/layer need.
    """
    return preserved(model, True if eval_mode else None, freeze=True)
