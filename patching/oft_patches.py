"""Installing OFT rotations on a ComfyUI MODEL.

For sampling, each rotation is merged into its layer's weight through ComfyUI's weight
patching (``add_patches`` with a weight adapter): the merge runs once when the model is
loaded, and every sampling step then costs what the base model costs. For training, the
attention / feed-forward modules holding the layers are replaced (object patches) by the
wrappers of :mod:`adapter_core.oft_layer`, so that gradients reach the rotations.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import comfy.ldm.modules.attention as attention
import comfy.ops
import torch

from ..adapter_core.oft import OFTConfigError, OFTRotation
from ..adapter_core.oft_layer import plain_weights, rotated_module, split_layer_path
from ..adapter_core.oft_set import OFTAdapterSet
from ..adapter_core.tapped_blocks import TappedTransformerBlock
from .model_access import DIFFUSION_PREFIX, block_children, model_linear_layers, model_object
from .weight_patch import FunctionalWeightPatch


class OFTWeightPatch(FunctionalWeightPatch):
    """A weight patch that turns ``W`` into ``diag(m^s) W R(sS)^T`` at the patch's strength."""

    name = "taptune_oft"

    def __init__(self, rotation: OFTRotation) -> None:
        super().__init__()
        self.rotation = rotation
        # Low-VRAM loading recomputes patched weights on every forward: keep R per strength.
        self._rotations: dict[float, torch.Tensor] = {}

    def apply(self, weight: torch.Tensor, strength: float) -> torch.Tensor:
        if strength not in self._rotations:
            self._rotations[strength] = self.rotation.rotation(strength, precise=True)
        R = self._rotations[strength]
        if R.device != weight.device:
            R = self._rotations[strength] = R.to(weight.device)
        return self.rotation.merged_weight(weight, strength, R).to(weight.dtype)


def check_oft_fits(model: Any, oft_set: OFTAdapterSet) -> dict[str, tuple[int, int]]:
    """The shapes of the layers ``oft_set`` rotates; raises if one is missing or has another width."""
    layers = model_linear_layers(model, list(oft_set.rotations))
    oft_set.check_fits(layers)
    return layers


def with_oft_merged(model: Any, oft_set: OFTAdapterSet, strength: float = 1.0) -> Any:
    """A clone of ``model`` whose target weights are rotated (merged) at ``strength``.

    Strength 0 returns a plain clone. ``model`` is never changed; unloading the clone's
    patches restores the original weights exactly (ComfyUI keeps a backup).
    """
    check_oft_fits(model, oft_set)
    patched = model.clone()
    if strength == 0.0:
        return patched
    patches = {
        f"{DIFFUSION_PREFIX}{path}.weight": OFTWeightPatch(rotation) for path, rotation in oft_set.rotations.items()
    }
    applied = patched.add_patches(patches, strength)
    missing = sorted(set(patches) - set(applied))
    if missing:
        raise ValueError(f"OFT weight patch could not be applied to {missing[0]}")
    return patched


def comfy_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    heads: int,
    mask: torch.Tensor | None,
    attn_precision: Any,
    transformer_options: dict[str, Any],
) -> torch.Tensor:
    """ComfyUI's own attention kernel, as its CrossAttention calls it (looked up at call time)."""
    if mask is None:
        return attention.optimized_attention(
            q, k, v, heads, attn_precision=attn_precision, transformer_options=transformer_options
        )
    return attention.optimized_attention_masked(
        q, k, v, heads, mask, attn_precision=attn_precision, transformer_options=transformer_options
    )


def comfy_weights(layer: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A layer's effective weight for ``x``: ComfyUI's casting, offloading and weight functions applied."""
    if hasattr(layer, "comfy_cast_weights"):
        return comfy.ops.cast_bias_weight(layer, x)
    return plain_weights(layer, x)


def with_oft_trainable(model: Any, oft_set: OFTAdapterSet, neumann_terms: int | None = None) -> Any:
    """A clone of ``model`` whose target layers compute through ``oft_set`` with gradients.

    Each transformer block holding target layers is replaced (one object patch) by a tapped
    block whose ``attn1``/``attn2``/``ff`` are training wrappers around the originals; the
    rotations are shared with ``oft_set``.
    """
    check_oft_fits(model, oft_set)
    grouped: dict[str, dict[str, dict[str, OFTRotation]]] = defaultdict(lambda: defaultdict(dict))
    for path, rotation in oft_set.rotations.items():
        block, module, layer = split_layer_path(path)
        grouped[block][module][layer] = rotation
    patched = model.clone()
    for block, modules in grouped.items():
        current = model_object(patched, block)
        children = block_children(patched, block)
        for name, rotations in modules.items():
            if hasattr(children[name], "base_module"):
                raise OFTConfigError(f"{block}.{name} is already being trained with OFT in this MODEL")
            children[name] = rotated_module(
                name, children[name], rotations, comfy_attention, comfy_weights, neumann_terms
            )
        patched.add_object_patch(DIFFUSION_PREFIX + block, TappedTransformerBlock.wrap(current, [], children))
    return patched
