"""Adapter sets that change weights only, written as the weight differences stock LoRA loaders apply.

ComfyUI's ``LoraLoader``/``LoraLoaderModelOnly`` read ``diffusion_model.<layer>.diff`` tensors and
add ``strength * diff`` to the weight. Writing ``diff = new weight - weight`` reproduces the
adapter exactly at strength 1 (other strengths then scale the difference linearly).

With a rank, each difference is replaced by its best rank-``r`` approximation (truncated SVD,
Eckart-Young) and written in the standard (kohya) LoRA layout every LoRA tool reads:
``lora_unet_<module>.lora_up.weight`` ``(out, r)``, ``.lora_down.weight`` ``(r, in)`` and
``.alpha`` = ``r`` (so the loader's scale ``alpha / r`` is 1), ``<module>`` being the layer's
diffusers path with ``_`` for ``.`` when ComfyUI maps one (``lora_unet_down_blocks_0_attentions_0_
transformer_blocks_0_attn1_to_q``), else its ComfyUI path. ComfyUI's ``model_lora_keys_unet``
maps both forms (``comfy/lora.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..adapter_core.errors import ConfigError
from ..adapter_core.kind import AdapterSetBase
from .model_access import DIFFUSION_PREFIX, model_view


def original_weight_of(model: Any) -> Callable[[str], torch.Tensor]:
    """``path -> fp32 copy of its unpatched weight``, even while some clone's patches are loaded.

    ComfyUI's ``get_key_patches`` gives each weight's original tensor with its conversion
    function first. One layer at a time, so an export never holds a second copy of every weight.
    """
    patches = model.get_key_patches(filter_prefix=DIFFUSION_PREFIX)

    def weight_of(path: str) -> torch.Tensor:
        weight, convert = patches[f"{DIFFUSION_PREFIX}{path}.weight"][0]
        # A copy: ``convert`` may work in place, and the model's own tensor must stay as it is.
        return convert(weight.detach().to(torch.float32, copy=True), inplace=True)

    return weight_of


def lora_differences(
    model: Any, adapter_set: AdapterSetBase[Any], strength: float = 1.0, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """The ``diffusion_model.<layer>.diff`` tensors that make a stock LoRA loader reproduce ``adapter_set``."""
    adapter_set.check_fits(model_view(model))
    diffs = adapter_set.weight_differences(original_weight_of(model), strength, dtype)
    return {f"{DIFFUSION_PREFIX}{path}.diff": diff for path, diff in diffs.items()}


#: Largest rank the export offers (SDXL's widest linear layer is 10240 by 2560).
MAX_EXPORT_RANK = 4096


def kohya_names(model: Any) -> dict[str, str]:
    """``{layer path in diffusion_model: standard LoRA module name}`` for every weight of the UNet.

    ComfyUI's own diffusers map (``comfy.utils.unet_to_diffusers``, the one its LoRA loader
    inverts) gives the diffusers path; layers it does not name keep their ComfyUI path.
    """
    import comfy.utils

    names: dict[str, str] = {}
    unet_config = getattr(getattr(model.model, "model_config", None), "unet_config", None)
    if unet_config is not None:
        try:
            mapping = comfy.utils.unet_to_diffusers(unet_config)
        except Exception:  # an architecture ComfyUI has no diffusers names for: ComfyUI paths below
            mapping = {}
        for diffusers_key, comfy_key in mapping.items():
            if diffusers_key.endswith(".weight") and comfy_key.endswith(".weight"):
                names[comfy_key[: -len(".weight")]] = "lora_unet_" + diffusers_key[: -len(".weight")].replace(".", "_")
    return names


def low_rank_factors(diff: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(up, down)`` with ``up @ down`` the best rank-``rank`` approximation of ``diff`` (fp32 SVD).

    The singular values are split evenly (``up = U sqrt(s)``, ``down = sqrt(s) V^T``) so both
    factors have the same scale, which keeps fp16 files from under- or overflowing.
    """
    U, s, Vh = torch.linalg.svd(diff.to(torch.float32), full_matrices=False)
    r = min(rank, s.numel())
    root = s[:r].sqrt()
    return U[:, :r] * root, root[:, None] * Vh[:r]


def lora_low_rank(
    model: Any,
    adapter_set: AdapterSetBase[Any],
    rank: int,
    strength: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """Standard LoRA tensors (``lora_up``/``lora_down``/``alpha``) approximating ``adapter_set`` at ``rank``.

    A rank at or above a layer's smaller side keeps that layer's difference whole (up to
    rounding). One layer at a time, so the export never holds every difference at once.
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= MAX_EXPORT_RANK:
        raise ConfigError(f"rank must be an integer in 1..{MAX_EXPORT_RANK}, got {rank!r}", input_name="rank")
    adapter_set.check_fits(model_view(model))
    names = kohya_names(model)
    weight_of = original_weight_of(model)
    out: dict[str, torch.Tensor] = {}
    for path, member in adapter_set.members.items():
        single = type(adapter_set)()  # the one layer, so that only its difference is formed
        single.members[path] = member
        diff = single.weight_differences(weight_of, strength, torch.float32)[path]
        up, down = low_rank_factors(diff, rank)
        name = names.get(path, "lora_unet_" + path.replace(".", "_"))
        out[f"{name}.lora_up.weight"] = up.to(dtype).contiguous()
        out[f"{name}.lora_down.weight"] = down.to(dtype).contiguous()
        out[f"{name}.alpha"] = torch.tensor(float(up.shape[1]), dtype=dtype)
    return out
