"""The MODEL clone a training run computes with, and its life in ComfyUI's model management.

The clone carries the run's patch plan (adapters as hooks, or OFT training wrappers), optional
gradient checkpointing in every block, and fresh autograd-capable weights; it is loaded
through model management with a memory estimate for training (activations kept for backward,
optimiser state) and always unloaded afterwards, which removes every patch it carried.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import comfy.model_management
import torch
from torch import nn

from ..adapter_core.patch_plan import PatchPlan
from .autograd_weights import with_autograd_weights
from .install import install_plan, with_gradient_checkpointing

#: Activations kept for backward, relative to a forward pass's working memory (without / with checkpointing).
BACKWARD_MEMORY_FACTOR = 4.0
CHECKPOINTED_MEMORY_FACTOR = 2.0


def static_clone(model: Any) -> Any:
    """A clone of ``model`` whose weights load whole, as training needs them.

    Current ComfyUI on NVIDIA loads models with ``ModelPatcherDynamic`` (``is_dynamic()``), which
    streams each layer's weight in per call and rebuilds weight patches per layer. Training replaces
    weights with autograd-capable tensors and keeps them resident, so on such a model it works on
    ComfyUI's own non-dynamic delegate (``get_non_dynamic_delegate()``, what its sampler uses for
    hooks), which reloads the weights through the loader that made the model. A dynamic model with
    no loader record (``cached_patcher_init`` unset: made by a custom loader) is cloned as it is;
    every patch the pack makes survives the dynamic rebuild, so it still computes correctly.
    """
    is_dynamic = getattr(model, "is_dynamic", None)
    if (
        callable(is_dynamic)
        and is_dynamic()
        and hasattr(model, "get_non_dynamic_delegate")
        and getattr(model, "cached_patcher_init", None) is not None
    ):
        return model.get_non_dynamic_delegate()
    return model.clone()


def training_clone(model: Any, plan: PatchPlan, *, gradient_checkpointing: bool = False) -> Any:
    """A clone of ``model`` that computes through ``plan`` with gradients; ``model`` is never changed."""
    patched = install_plan(static_clone(model), plan)
    if gradient_checkpointing:
        patched = with_gradient_checkpointing(patched)
    return with_autograd_weights(patched)


def training_memory(
    model: Any, latent_shape: list[int], trainable_parameters: int, gradient_checkpointing: bool
) -> float:
    """Bytes to reserve: ComfyUI's forward estimate scaled for backward, plus fp32 weights, grads and two moments."""
    factor = CHECKPOINTED_MEMORY_FACTOR if gradient_checkpointing else BACKWARD_MEMORY_FACTOR
    return model.memory_required(latent_shape) * factor + trainable_parameters * 4 * 4


def release(model: Any) -> None:
    """Unload ``model`` from ComfyUI's model management (which removes its patches) and free the cache.

    ComfyUI keeps loaded models in ``current_loaded_models``; unloading one entry restores the
    weights and objects its patches replaced.
    """
    loaded = comfy.model_management.current_loaded_models
    for i in reversed(range(len(loaded))):
        if loaded[i].model is model:
            loaded[i].model_unload()
            loaded.pop(i)
    comfy.model_management.soft_empty_cache()


@contextlib.contextmanager
def loaded_for_training(model: Any, memory_required: float) -> Iterator[nn.Module]:
    """``model`` fully loaded for training (outside inference mode); its UNet is yielded; always released.

    The torch module is shared with the MODEL the clone was made from; its parameters'
    ``requires_grad`` flags are put back as they were once the clone is released.
    """
    flags = requires_grad_flags(model.model)
    try:
        with torch.inference_mode(False):
            comfy.model_management.load_models_gpu([model], memory_required=memory_required, force_full_load=True)
        yield model.model.diffusion_model
    finally:
        release(model)
        restore_requires_grad(model.model, flags)


def requires_grad_flags(module: nn.Module) -> dict[str, bool]:
    """Each parameter's ``requires_grad``, by name."""
    return {name: p.requires_grad for name, p in module.named_parameters()}


def restore_requires_grad(module: nn.Module, flags: dict[str, bool]) -> None:
    """Put back the flags :func:`requires_grad_flags` recorded.

    Unloading restores each patched weight as a new ``Parameter(requires_grad=False)`` (ComfyUI's
    ``set_attr_param``), so without this the shared module would come back changed. Loaded weights are
    usually inference tensors, whose flag can only be set inside inference mode.
    """
    with torch.inference_mode():
        for name, p in module.named_parameters():
            flag = flags.get(name)
            if flag is not None and p.requires_grad != flag:
                p.requires_grad_(flag)
