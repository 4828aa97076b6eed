"""Carrying out an adapter set's :class:`PatchPlan` on a ComfyUI MODEL clone, through ComfyUI's own mechanisms.

* Blocks with hooks or wrapped children: one *object patch* per block path (``add_object_patch``),
  a tapped block adopting the original's children; ComfyUI swaps it in when the clone loads
  and restores the original on unload. Nothing patches a child path (nested object patches
  would not restore cleanly in ComfyUI), so restoring a block path restores everything.
* Weight functions: one *weight patch* per weight (``add_patches``); ComfyUI computes the new
  weight when the clone loads, keeps a backup and restores it on unload.
"""

from __future__ import annotations

from typing import Any

from comfy.ldm.modules.diffusionmodules.openaimodel import TimestepBlock

from ..adapter_core.blocks import TappedResBlock, TappedTransformerBlock
from ..adapter_core.errors import ConfigError
from ..adapter_core.patch_plan import HostOps, PatchPlan
from ..adapter_core.positions import SiteKind
from ..adapter_core.sites import site_of
from .host_ops import COMFY_HOST_OPS
from .model_access import DIFFUSION_PREFIX, block_children, model_object, model_sites
from .weight_patch import FunctionalWeightPatch


class ComfyTappedResBlock(TappedResBlock, TimestepBlock):
    """A tapped ResBlock that ComfyUI's UNet still recognises as a ``TimestepBlock``.

    ComfyUI's ``forward_timestep_embed`` passes the timestep embedding only to children that are
    ``TimestepBlock`` instances.
    """


def _wrap_block(
    patched: Any,
    path: str,
    hooks: list[tuple[Any, float]],
    wrappers: dict[str, Any],
    host: HostOps,
    checkpointing: bool | None,
) -> None:
    current = model_object(patched, path)
    site = site_of(path, current)
    if site is None:
        raise ConfigError(f"{path} is not a transformer block or ResBlock of this model")
    if site.kind is SiteKind.RESBLOCK:
        if wrappers:
            raise ConfigError(f"{path}: a ResBlock runs its own children; they cannot be wrapped")
        wrapper = ComfyTappedResBlock.wrap(current, hooks, checkpointing=checkpointing)
    else:
        children = block_children(patched, path)
        for name, wrap in wrappers.items():
            children[name] = wrap(children[name], host)
        wrapper = TappedTransformerBlock.wrap(current, hooks, children, checkpointing)
    patched.add_object_patch(DIFFUSION_PREFIX + path, wrapper)


def install_plan(patched: Any, plan: PatchPlan, strength: float = 1.0, host: HostOps = COMFY_HOST_OPS) -> Any:
    """Carry out ``plan`` on ``patched`` (a clone the caller owns) at ``strength``; returns it.

    One strength reaches every kind the same way: each hook is installed with it, and it is the
    weight patches' strength (ComfyUI passes it to the weight function when it loads the clone).
    Hooks stack on blocks this clone already taps; the original clone is never changed.
    """
    for path in plan.blocks():
        hooks = [(hook, float(strength)) for hook in plan.hooks.get(path, [])]
        _wrap_block(patched, path, hooks, plan.child_wrappers.get(path, {}), host, None)
    if plan.weight_functions:
        patches = {
            f"{DIFFUSION_PREFIX}{path}.weight": FunctionalWeightPatch.of(function)
            for path, function in plan.weight_functions.items()
        }
        applied = patched.add_patches(patches, strength)
        missing = sorted(set(patches) - set(applied))
        if missing:
            raise ConfigError(f"no weight {missing[0]} in this model to patch")
    return patched


def with_gradient_checkpointing(model: Any) -> Any:
    """A clone of ``model`` whose transformer blocks and ResBlocks recompute activations in backward.

    Blocks already wrapped by this clone (adapters, OFT training) keep what they hold.
    """
    patched = model.clone()
    for site in model_sites(patched):
        _wrap_block(patched, site.path, [], {}, COMFY_HOST_OPS, True)
    return patched
