"""The attention computation shared by blocks and training wrappers: projections around a kernel.

A replaced attention kernel (ComfyUI's ``patches_replace``) receives ``q, k, v``; the block must
compute the projections itself. When the attention module is a :class:`ProjectingModule` (a
training wrapper that routes some projections through trainable parameters), its own
:meth:`ProjectingModule.project` is used, so that gradients still reach those parameters.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

Kernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class ProjectingModule(nn.Module):
    """A stand-in for an attention module that may compute some of its child layers its own way."""

    def project(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Child layer ``name`` (``to_q``, ``to_out.0``...) applied to ``x``."""
        return self.get_submodule(name)(x)


def attend(
    attention: nn.Module,
    x: torch.Tensor,
    context: torch.Tensor | None,
    value: torch.Tensor | None,
    kernel: Kernel,
) -> torch.Tensor:
    """``to_out(kernel(to_q(x), to_k(context), to_v(value)))`` for an LDM ``CrossAttention``-shaped module.

    ``context`` defaults to ``x`` (self-attention) and ``value`` to ``context``, as in LDM's forward.
    """
    if isinstance(attention, ProjectingModule):
        project = attention.project
    else:

        def project(name: str, t: torch.Tensor) -> torch.Tensor:
            return attention.get_submodule(name)(t)

    context = x if context is None else context
    value = context if value is None else value
    out = project("to_out.0", kernel(project("to_q", x), project("to_k", context), project("to_v", value)))
    return attention.to_out[1](out) if len(attention.to_out) > 1 else out
