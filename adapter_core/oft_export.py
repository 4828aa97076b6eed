"""Export OFT rotations as full weight differences that stock LoRA loaders apply.

ComfyUI's ``LoraLoader``/``LoraLoaderModelOnly`` read ``<layer>.diff`` tensors and add
``strength * diff`` to the weight. Writing ``diff = diag(m) W R^T - W`` reproduces the
rotation exactly at strength 1 (other strengths then scale the difference linearly, which
is no longer a rotation). The file is as large as the layers it touches.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .oft_set import OFTAdapterSet

LORA_PREFIX = "diffusion_model."


def oft_weight_diffs(
    oft_set: OFTAdapterSet,
    weight_of: Callable[[str], torch.Tensor],
    strength: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """``{"diffusion_model.<layer>.diff": diag(m^s) W R(sS)^T - W}`` for every rotated layer.

    ``weight_of`` gives the base weight ``W`` of a layer path; it is asked for one layer at a
    time, so the caller need not hold every weight at once.
    """
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for path, rotation in oft_set.rotations.items():
            weight = weight_of(path).to(torch.float32)
            merged = rotation.merged_weight(weight, strength)
            out[f"{LORA_PREFIX}{path}.diff"] = (merged - weight).to(dtype).contiguous()
    return out
