"""The DreamBooth objective with prior preservation, in the model's own parametrisation.

The noise schedule and the prediction type come from the model's ``model_sampling``:
noisy latents are made with its ``noise_scaling`` and the loss is the squared error of
the raw prediction (eps for eps-models, v for v-models), recovered from ComfyUI's denoised
output through the model's own (affine) ``calculate_denoised``.
"""

from __future__ import annotations

from typing import Any

import torch


def sample_sigmas(model_sampling: Any, count: int, generator: torch.Generator) -> torch.Tensor:
    """A fresh noise level per sample: a uniform training timestep of the model's schedule."""
    sigmas = getattr(model_sampling, "sigmas", None)
    if sigmas is not None and len(sigmas) > 1:
        index = torch.randint(0, len(sigmas), (count,), generator=generator)
        return sigmas[index.to(sigmas.device)].detach().float().cpu()  # only the drawn ones leave the device
    percent = torch.rand(count, generator=generator)
    return torch.tensor([float(model_sampling.percent_to_sigma(float(p))) for p in percent])


def noisy_latents(model_sampling: Any, sigma: torch.Tensor, noise: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    """``x_t`` as the model's sampler would see it at noise level ``sigma``."""
    return model_sampling.noise_scaling(sigma, noise, latents)


def prediction_error(
    model_sampling: Any, sigma: torch.Tensor, x_t: torch.Tensor, denoised: torch.Tensor, x0: torch.Tensor
) -> torch.Tensor:
    """Per-sample mean squared error of the model's raw prediction against its target.

    ``denoised = a + b * prediction`` for every model type ComfyUI has, so the target
    (the prediction that would give ``x0``: eps, or v) differs from the prediction by
    ``(denoised - x0) / b``.
    """
    zeros = torch.zeros_like(x_t)
    b = model_sampling.calculate_denoised(sigma, torch.ones_like(x_t), zeros) - model_sampling.calculate_denoised(
        sigma, zeros, zeros
    )
    error = (denoised.float() - x0.float()) / b.float()
    return error.square().mean(dim=tuple(range(1, error.dim())))


def prior_preservation_loss(
    instance_error: torch.Tensor, class_error: torch.Tensor | None, weight: float
) -> torch.Tensor:
    """``mean(instance) + weight * mean(class)`` (DreamBooth's loss); the class term is skipped at weight 0."""
    loss = instance_error.mean()
    if class_error is not None and weight != 0.0:
        loss = loss + weight * class_error.mean()
    return loss
