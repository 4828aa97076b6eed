"""Fresh, autograd-capable copies of a MODEL's weights for the length of a training run.

ComfyUI creates models inside ``torch.inference_mode()``; their weights are inference
tensors, which autograd can never save for a backward pass (not even after their data is
replaced). So the training clone gets a weight patch on every UNet weight that leaves
the value unchanged: ComfyUI's own loading then puts a new tensor (made outside inference
mode) in place of each weight, and its unloading puts the originals back.
"""

from __future__ import annotations

from typing import Any

from .model_access import DIFFUSION_PREFIX
from .weight_patch import FunctionalWeightPatch, same_value


def with_autograd_weights(model: Any) -> Any:
    """A clone of ``model`` whose UNet weights are replaced by equal, autograd-capable tensors when loaded.

    Load it outside inference mode. Adapter parameters (not in the model's state dict)
    are left alone.
    """
    patched = model.clone()
    buffers = {name for name, _ in patched.model.named_buffers()}
    keys = [k for k in patched.model_state_dict(DIFFUSION_PREFIX) if k not in buffers]
    patched.add_patches({key: FunctionalWeightPatch.of(same_value) for key in keys}, 1.0)
    return patched
