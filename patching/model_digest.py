"""A fast digest of what decides a MODEL/CLIP/VAE trio's outputs (the class-image cache key).

The digest covers the UNet's original weights, every weight patch on the clone (its strength
and, for patches that carry tensors or trainable state, samples of their values), every
object patch (the replacing module's own parameters, e.g. tap adapters), the text encoder and
the VAE. Each tensor contributes its name, shape, dtype and an even sample of its values;
hashing every byte of a checkpoint per run would cost seconds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from .model_access import DIFFUSION_PREFIX

#: Values read from each tensor (evenly strided), besides its shape and dtype.
SAMPLES_PER_TENSOR = 64


def _tensor_digest(digest: Any, name: str, tensor: torch.Tensor) -> None:
    flat = tensor.detach().reshape(-1)
    stride = max(1, flat.numel() // SAMPLES_PER_TENSOR)
    sample = flat[::stride][:SAMPLES_PER_TENSOR].float().cpu().numpy()
    digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
    digest.update(np.ascontiguousarray(sample).tobytes())


def tensors_digest(named_tensors: Iterable[tuple[str, Any]]) -> str:
    """A digest of named tensors (shapes, dtypes and strided samples of values); non-tensors are skipped."""
    digest = hashlib.sha256()
    for name, tensor in sorted(named_tensors, key=lambda item: item[0]):
        if isinstance(tensor, torch.Tensor):
            _tensor_digest(digest, name, tensor)
    return digest.hexdigest()[:24]


def _state_of(value: Any) -> list[tuple[str, torch.Tensor]]:
    """Tensors that decide what a patch computes: its own tensors, or the modules its functions hold."""
    found: list[tuple[str, torch.Tensor]] = []
    items = value if isinstance(value, (list, tuple)) else [value]
    for i, item in enumerate(items):
        if isinstance(item, torch.Tensor):
            found.append((str(i), item))
        elif isinstance(item, nn.Module):
            found += [(f"{i}.{k}", v) for k, v in item.state_dict(keep_vars=True).items()]
        elif isinstance(item, (list, tuple)):
            found += [(f"{i}.{k}", v) for k, v in _state_of(item)]
        else:
            # A weight patch (``weights`` holds its tensors or our weight function) or a function
            # object holding modules (an OFT rotation).
            for attribute in ("weights", "rotation"):
                inner = getattr(item, attribute, None)
                if inner is not None and inner is not item:
                    found += [(f"{i}.{attribute}.{k}", v) for k, v in _state_of(inner)]
    return found


def models_digest(model: Any, clip: Any, vae: Any) -> str:
    """Digest of the UNet's original weights plus all its patches, the text encoder and the VAE.

    ComfyUI's ``get_key_patches`` lists, per weight, the original first and then the patches as
    ``(strength, value, strength_model, offset, function)``; ``object_patches`` maps paths to the
    objects that replace them while the clone is loaded.
    """
    key_patches = model.get_key_patches(DIFFUSION_PREFIX)
    unet = [(k, v[0][0]) for k, v in key_patches.items()]
    patches = hashlib.sha256()
    for key, entries in sorted(key_patches.items()):
        for entry in entries[1:]:
            patches.update(f"{key}:{entry[0]}:{entry[2]}:{type(entry[1]).__name__}".encode())
            for name, tensor in _state_of(entry[1]):
                _tensor_digest(patches, f"{key}.{name}", tensor)
    for path, obj in sorted(model.object_patches.items()):
        patches.update(f"{path}:{type(obj).__name__}".encode())
        if isinstance(obj, nn.Module):
            # Everything the replacing module computes with: the adopted weights, its hooks'
            # parameters (left out of state_dict on purpose) and the hooks' strengths.
            for name, tensor in [*obj.named_parameters(), *obj.named_buffers()]:
                _tensor_digest(patches, f"{path}.{name}", tensor)
            for name, module in obj.named_modules():
                patches.update(f"{name}:{getattr(module, 'strengths', ())!r}".encode())
    parts = [
        tensors_digest(unet),
        patches.hexdigest()[:16],
        tensors_digest(clip.cond_stage_model.state_dict().items()),
        tensors_digest(vae.first_stage_model.state_dict().items()),
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]
