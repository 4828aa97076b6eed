"""The ComfyUI functions training wrappers compute with: its attention kernel and its weight casting."""

from __future__ import annotations

import inspect
from typing import Any

import comfy.ldm.modules.attention as attention
import comfy.ops
import torch

from ..adapter_core.patch_plan import HostOps, plain_weights


def comfy_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    heads: int,
    mask: torch.Tensor | None,
    attn_precision: Any,
    transformer_options: dict[str, Any],
) -> torch.Tensor:
    """ComfyUI's own attention kernel, as its ``CrossAttention`` calls it (looked up at call time, so
    ``--use-*-attention`` choices and later replacements of ``optimized_attention`` apply)."""
    if mask is None:
        return attention.optimized_attention(
            q, k, v, heads, attn_precision=attn_precision, transformer_options=transformer_options
        )
    return attention.optimized_attention_masked(
        q, k, v, heads, mask, attn_precision=attn_precision, transformer_options=transformer_options
    )


def _has_offloadable_cast() -> bool:
    # ComfyUI >= 0.3.6x: ``cast_bias_weight(..., offloadable=True)`` returns an offload handle that
    # must go back through ``uncast_bias_weight`` once the weight is used (on dynamic-VRAM layers it
    # unpins the layer's host buffer). Older hosts only have the two-value legacy cast.
    cast = getattr(comfy.ops, "cast_bias_weight", None)
    if cast is None or not hasattr(comfy.ops, "uncast_bias_weight"):
        return False
    return "offloadable" in inspect.signature(cast).parameters


_OFFLOADABLE_CAST = _has_offloadable_cast()


def comfy_weights(layer: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, Any]:
    """A layer's effective weight for ``x``: ComfyUI's casting, offloading and weight functions applied.

    ComfyUI's ``ops`` layers (``comfy_cast_weights``) get their weights through
    ``comfy.ops.cast_bias_weight``, the offloadable form where the host has it; plain torch layers
    are used as they are.
    """
    if not hasattr(layer, "comfy_cast_weights"):
        return plain_weights(layer, x)
    if _OFFLOADABLE_CAST:
        return comfy.ops.cast_bias_weight(layer, x, offloadable=True)
    weight, bias = comfy.ops.cast_bias_weight(layer, x)
    return weight, bias, None


def comfy_release(layer: torch.nn.Module, cast: tuple[torch.Tensor, torch.Tensor | None, Any]) -> None:
    """Give an offloadable cast back to ComfyUI (``uncast_bias_weight``), as its own layers do after use."""
    weight, bias, handle = cast
    if handle is not None and _OFFLOADABLE_CAST:
        comfy.ops.uncast_bias_weight(layer, weight, bias, handle)


COMFY_HOST_OPS = HostOps(attention=comfy_attention, weights_of=comfy_weights, release_weights=comfy_release)
