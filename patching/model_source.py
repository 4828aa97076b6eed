"""Whether a MODEL is the bare checkpoint a job file names: no patches, the file's own weights.

A training job reloads its checkpoint file from disk, so what was connected in the graph must
be exactly that file, unpatched (TapTuneExportTrainingJob).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..adapter_core.errors import ConfigError
from .model_access import DIFFUSION_PREFIX
from .weight_export import original_weight_of

#: What the stock checkpoint layout puts before the model's own key (``diffusion_model.…``).
CHECKPOINT_PREFIX = "model."


def _carries_user_patches(patcher: Any, unet: bool) -> bool:
    """Whether LoRA, adapter or other user patches sit on ``patcher``.

    ComfyUI: LoRAs and weight-changing adapters are ``ModelPatcher.patches`` (weight patches);
    module replacements inside the UNet are object patches under ``diffusion_model.``; tap
    hooks are ``transformer_options`` patches. The stock loaders add object patches of their own
    outside the UNet in some versions (``manual_cast_dtype``, ``model_sampling``): a reload of
    the same file makes those again, so they do not count.
    """
    if getattr(patcher, "patches", None):
        return True
    if not unet:
        return False
    if any(str(key).startswith(DIFFUSION_PREFIX) for key in getattr(patcher, "object_patches", {}) or {}):
        return True
    transformer = (getattr(patcher, "model_options", {}) or {}).get("transformer_options", {}) or {}
    return bool(transformer.get("patches") or transformer.get("patches_replace"))


def check_unpatched(model: Any, clip: Any) -> None:
    """Refuse a MODEL or CLIP carrying user patches (LoRAs, adapters): a job loads the checkpoint file alone."""
    for name, patcher, unet in (("model", model, True), ("clip", getattr(clip, "patcher", None), False)):
        if patcher is not None and _carries_user_patches(patcher, unet):
            raise ConfigError(
                "carries patches (a LoRA or adapter applied): a job loads the checkpoint file alone; connect the "
                "checkpoint loader's output directly",
                input_name=name,
            )


def check_loaded_from(model: Any, checkpoint: Path) -> None:
    """Refuse ``checkpoint`` unless the MODEL's first UNet weight the file holds equals the file's (safetensors only)."""
    if checkpoint.suffix.lower() != ".safetensors":
        return
    from safetensors import safe_open

    # ComfyUI's get_key_patches: every weight's original tensor, in the model's order, also while
    # it is offloaded or patched by another clone.
    key_patches = model.get_key_patches(filter_prefix=DIFFUSION_PREFIX)
    weight_names = [k for k in key_patches if k.endswith(".weight")]
    try:
        with safe_open(str(checkpoint), framework="pt") as handle:
            stored_keys = set(handle.keys())
            name = next((k for k in weight_names if CHECKPOINT_PREFIX + k in stored_keys), None)
            if name is None:
                return  # a layout the comparison cannot follow; the stock loader still checks the file
            stored = handle.get_tensor(CHECKPOINT_PREFIX + name)
    except (OSError, RuntimeError, ValueError):
        raise ConfigError("cannot be read as a safetensors checkpoint", input_name="ckpt_name") from None
    weight = original_weight_of(model)(name[len(DIFFUSION_PREFIX) : -len(".weight")])
    # ComfyUI may load the file in another dtype (fp16 on a GPU): compare in the dtype it holds.
    held_dtype = key_patches[name][0][0].dtype
    if stored.shape != weight.shape or not torch.equal(stored.to(held_dtype).to(torch.float32), weight):
        raise ConfigError(
            "is not the checkpoint the connected MODEL was loaded from (its weights differ)", input_name="ckpt_name"
        )
