"""Installing OFT rotations on a ComfyUI MODEL.

For sampling, each rotation is merged into its layer's weight through ComfyUI's weight
patching (``add_patches`` with a weight adapter): the merge runs once when the model is
loaded, and every sampling step then costs what the base model costs. For training,
each layer is replaced by an :class:`~adapter_core.oft_layer.OFTLinear` object patch so
that gradients reach the rotation.
"""

from __future__ import annotations

from typing import Any

import torch
from comfy.weight_adapter.base import WeightAdapterBase

from ..adapter_core.oft import OFTRotation
from ..adapter_core.oft_layer import OFTLinear
from ..adapter_core.oft_set import OFTAdapterSet
from .model_access import DIFFUSION_PREFIX, model_linear_layers, model_object


class OFTWeightPatch(WeightAdapterBase):
    """A weight patch that turns ``W`` into ``diag(m^s) W R(sS)^T`` at the patch's strength."""

    name = "taptune_oft"

    def __init__(self, rotation: OFTRotation) -> None:
        self.rotation = rotation
        self.loaded_keys: set[str] = set()
        self.weights: list[torch.Tensor] = []

    def calculate_weight(
        self,
        weight: torch.Tensor,
        key: str,
        strength: float,
        strength_model: float,
        offset: Any,
        function: Any,
        intermediate_dtype: torch.dtype = torch.float32,
        original_weight: Any = None,
    ) -> torch.Tensor:
        with torch.no_grad():
            return self.rotation.merged_weight(weight, strength).to(weight.dtype)


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


def with_oft_trainable(model: Any, oft_set: OFTAdapterSet, neumann_terms: int | None = None) -> Any:
    """A clone of ``model`` whose target layers compute through ``oft_set`` with gradients."""
    check_oft_fits(model, oft_set)
    patched = model.clone()
    for path, rotation in oft_set.rotations.items():
        base = model_object(patched, path)
        base = getattr(base, "base_layer", base)
        patched.add_object_patch(DIFFUSION_PREFIX + path, OFTLinear(base, rotation, 1.0, neumann_terms))
    return patched
