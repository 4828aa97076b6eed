"""Installing tap adapters on a ComfyUI MODEL as object patches on a clone."""

from __future__ import annotations

from typing import Any

from comfy.ldm.modules.diffusionmodules.openaimodel import TimestepBlock

from ..adapter_core.sites import SiteKind
from ..adapter_core.tap_set import TapAdapterSet
from ..adapter_core.tapped_blocks import TappedResBlock, TappedTransformerBlock
from .model_access import DIFFUSION_PREFIX, model_object, model_sites


class ComfyTappedResBlock(TappedResBlock, TimestepBlock):
    """A tapped ResBlock that ComfyUI's UNet still recognises as a ``TimestepBlock``."""


def with_tap_adapters(model: Any, tap_set: TapAdapterSet, strength: float = 1.0) -> Any:
    """A clone of ``model`` with ``tap_set`` installed at ``strength``; ``model`` is not changed.

    Adapters already installed on ``model`` (from other files) stay, and the new ones
    stack on the same blocks. Strength 0 returns a plain clone (exactly the input model).
    The adapter modules are shared with ``tap_set`` (not copied), so training them
    changes what the returned clone computes.
    """
    tap_set.check_fits(model_sites(model))
    patched = model.clone()
    if strength == 0.0:
        return patched
    for path, adapter in tap_set.adapters.items():
        current = model_object(patched, path)
        wrapper = TappedTransformerBlock if adapter.config.site_kind is SiteKind.TRANSFORMER else ComfyTappedResBlock
        patched.add_object_patch(DIFFUSION_PREFIX + path, wrapper.wrap(current, [(adapter, strength)]))
    return patched
