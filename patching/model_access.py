"""Reading a ComfyUI MODEL (a ``ModelPatcher``) safely: originals, sites, layers, architecture.

While another clone's object patches sit in the shared model, the module tree may hold
that clone's wrappers; every read here goes through ``get_model_object`` (ComfyUI: a
clone's own object patch for a path, else the original object, also while another clone's
patch is installed) so that a clone only ever sees its own patches or the originals.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..adapter_core.architecture import architecture_signature
from ..adapter_core.blocks import TAP_CHILD
from ..adapter_core.errors import ConfigError, UnsupportedModelError
from ..adapter_core.model_view import ModelView
from ..adapter_core.sites import TapSite, base_block

DIFFUSION_PREFIX = "diffusion_model."


def model_object(model: Any, path: str) -> nn.Module:
    """The object at ``path`` inside ``diffusion_model`` as this clone sees it."""
    return model.get_model_object(DIFFUSION_PREFIX + path)


def block_children(model: Any, path: str) -> dict[str, nn.Module]:
    """The children a new wrapper over block ``path`` should adopt, as this clone sees them.

    When this clone already wraps the block, that wrapper's children (which may be OFT
    training wrappers) are the clone's view. Otherwise never read through the live tree: it
    may hold another clone's wrapper with that clone's children. The original block's own
    children are pristine (nothing here patches a child path); a child path patched by
    someone else is read through ``get_model_object``.
    """
    current = model_object(model, path)
    if hasattr(current, "base_block"):  # duck-typed: a wrapper of another copy of this pack stacks too
        return {name: child for name, child in current.named_children() if name != TAP_CHILD}
    original = base_block(current)
    out = {}
    for name, child in original.named_children():
        key = f"{DIFFUSION_PREFIX}{path}.{name}"
        # ComfyUI keeps a clone's object patches in ``object_patches`` and what they replaced,
        # while loaded, in ``object_patches_backup``.
        patched = key in model.object_patches or key in model.object_patches_backup
        out[name] = model.get_model_object(key) if patched else child
    return out


def diffusion_model(model: Any) -> nn.Module:
    """The UNet (``diffusion_model``) of a MODEL, or a clear error for other architectures."""
    inner = getattr(model, "model", None)
    unet = getattr(inner, "diffusion_model", None)
    if unet is None or not hasattr(unet, "input_blocks"):
        name = type(unet).__name__ if unet is not None else type(inner).__name__
        raise UnsupportedModelError(
            f"this MODEL ({name}) is not a UNet; TapTune supports SD 1.x, SD 2.x and SDXL UNets", input_name="model"
        )
    return unet


def model_family(model: Any) -> str:
    """ComfyUI's name for the model's family (``SD15``, ``SD20``, ``SDXL``...): its model config class."""
    return type(model.model.model_config).__name__


def model_architecture(model: Any) -> dict[str, Any]:
    """The architecture signature written into adapter files and checked when loading them."""
    return architecture_signature(model_family(model), model.model.model_config.unet_config)


def model_view(model: Any) -> ModelView:
    """The MODEL's UNet as this clone sees it, for adapter kinds to size, check and plan with."""
    unet = diffusion_model(model)
    return ModelView(unet, resolve=lambda p: model_object(model, p), architecture=model_architecture(model))


def model_sites(model: Any) -> list[TapSite]:
    """Every block of the MODEL that can carry a block adapter."""
    return model_view(model).sites()


def unet_parameter_count(model: Any) -> int:
    """Parameters of the UNet alone (the base an adapter's share is measured against)."""
    return sum(p.numel() for p in diffusion_model(model).parameters())


def model_layers_per_block(model: Any | None, default: int = 2) -> int:
    """ResBlocks per encoder level of the MODEL's UNet (what diffusers calls ``layers_per_block``)."""
    if model is None:
        return default
    diffusion_model(model)
    blocks = model.model.model_config.unet_config.get("num_res_blocks", default)
    if isinstance(blocks, (list, tuple)):
        if len(set(blocks)) != 1:
            raise ConfigError(
                f"this UNet has a different number of ResBlocks per level ({list(blocks)}); set layers_per_block",
                input_name="layers_per_block",
            )
        return int(blocks[0])
    return int(blocks)
