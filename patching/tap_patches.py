"""Installing tap adapters on a ComfyUI MODEL as object patches on a clone."""

from __future__ import annotations

from typing import Any

from comfy.ldm.modules.diffusionmodules.openaimodel import TimestepBlock

from ..adapter_core.sites import SiteKind
from ..adapter_core.tap_adapter import TapAdapter
from ..adapter_core.tap_set import TapAdapterSet
from ..adapter_core.tapped_blocks import TappedResBlock, TappedTransformerBlock
from .model_access import DIFFUSION_PREFIX, block_children, model_object, model_sites


class ComfyTappedResBlock(TappedResBlock, TimestepBlock):
    """A tapped ResBlock that ComfyUI's UNet still recognises as a ``TimestepBlock``."""


def _rewrap(
    patched: Any,
    path: str,
    kind: SiteKind,
    taps: list[tuple[TapAdapter, float]],
    checkpointing: bool | None = None,
) -> None:
    """Object-patch block ``path`` of ``patched`` with a tapped block that adds ``taps``."""
    current = model_object(patched, path)
    if kind is SiteKind.TRANSFORMER:
        wrapper = TappedTransformerBlock.wrap(current, taps, block_children(patched, path), checkpointing)
    else:
        wrapper = ComfyTappedResBlock.wrap(current, taps, checkpointing=checkpointing)
    patched.add_object_patch(DIFFUSION_PREFIX + path, wrapper)


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
        _rewrap(patched, path, adapter.config.site_kind, [(adapter, strength)])
    return patched


def with_gradient_checkpointing(model: Any) -> Any:
    """A clone of ``model`` whose transformer blocks and ResBlocks recompute activations in backward.

    Blocks already wrapped by this clone (adapters, OFT training) keep what they hold.
    """
    patched = model.clone()
    for site in model_sites(patched):
        _rewrap(patched, site.path, site.kind, [], checkpointing=True)
    return patched
