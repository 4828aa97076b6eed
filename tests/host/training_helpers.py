"""Shared pieces of the training tests: small images, a fixed denoising probe, and quick runs."""

from __future__ import annotations

from typing import Any

import comfy.model_management
import torch
import torch.nn.functional as F

from taptune.adapter_core import OFTConfig, OFTSpec, TapConfig, TapGroupSpec, TapSpec
from taptune.training.conditioning import ConditioningCache
from taptune.training.data import encode_latents
from taptune.training.objective import noisy_latents, prediction_error
from taptune.training.run_inputs import ImageSet, RunInputs
from taptune.training.settings import TrainSettings
from taptune.training.trainer import DreamBoothTrainer

SIZE = 64


def smooth_image(seed: int, size: int = SIZE) -> torch.Tensor:
    """A smooth random picture ``[H, W, 3]`` (what a VAE can encode meaningfully)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, 4, 4, generator=g)
    return F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)[0].permute(1, 2, 0)


def tap_spec(mid_dim: int = 60) -> TapSpec:
    return TapSpec((TapGroupSpec(TapConfig("attn2o", "ffni", mid_dim=mid_dim)),))


def oft_spec(**kwargs: Any) -> OFTSpec:
    return OFTSpec(OFTConfig(r=4, coft=kwargs.pop("coft", False), eps=kwargs.pop("eps", 6e-5)), **kwargs)


def settings(**kwargs: Any) -> TrainSettings:
    defaults = {
        "steps": 4,
        "learning_rate": 3e-3,
        "resolution": SIZE,
        "seed": 1,
        "batch_size": 2,
        "prior_loss_weight": 0.0,
    }
    return TrainSettings(**{**defaults, **kwargs})


def train(
    sd15: Any,
    spec: Any,
    images: list[torch.Tensor],
    class_images: list[torch.Tensor] | None = None,
    report: Any = None,
    **kwargs: Any,
):
    model, clip, vae = sd15
    trainer = DreamBoothTrainer(
        model,
        clip,
        vae,
        spec,
        RunInputs(
            ImageSet(images, kwargs.pop("instance_prompt", "a photo of sks dog")),
            ImageSet(class_images or [], kwargs.pop("class_prompt", "a photo of dog")),
            settings(**kwargs),
        ),
        report,
    )
    return trainer.run()


def denoising_error(
    model: Any, clip: Any, vae: Any, images: list[torch.Tensor], prompt: str, draws: int = 4, seed: int = 123
) -> float:
    """Mean prediction error on ``images`` at fixed noise and noise levels (the same for every model)."""
    latents = torch.stack(encode_latents(vae, model, images))
    comfy.model_management.load_models_gpu([model])
    cache = ConditioningCache(model, clip, torch.device("cpu"))
    sampling = model.get_model_object("model_sampling")
    g = torch.Generator().manual_seed(seed)
    errors = []
    with torch.no_grad():
        for _ in range(draws):
            sigma = sampling.sigmas[torch.randint(0, len(sampling.sigmas), (len(latents),), generator=g)]
            noise = torch.randn(latents.shape, generator=g)
            x_t = noisy_latents(sampling, sigma, noise, latents)
            denoised = model.model.apply_model(
                x_t, sigma, **cache.batch([prompt] * len(latents), tuple(latents.shape[1:]))
            )
            errors.append(prediction_error(sampling, sigma, x_t, denoised, latents).mean())
    return float(torch.stack(errors).mean())


def prediction_drift(
    adapted: Any, base: Any, clip: Any, vae: Any, images: list[torch.Tensor], prompt: str, seed: int = 7
) -> float:
    """How far the adapted model's predictions for ``prompt`` moved from the base model's."""
    latents = torch.stack(encode_latents(vae, base, images))
    g = torch.Generator().manual_seed(seed)
    sampling = base.get_model_object("model_sampling")
    sigma = sampling.sigmas[torch.randint(0, len(sampling.sigmas), (len(latents),), generator=g)]
    noise = torch.randn(latents.shape, generator=g)
    x_t = noisy_latents(sampling, sigma, noise, latents)
    outputs = []
    for model in (adapted, base):
        comfy.model_management.load_models_gpu([model])
        cache = ConditioningCache(model, clip, torch.device("cpu"))
        with torch.no_grad():
            outputs.append(
                model.model.apply_model(x_t, sigma, **cache.batch([prompt] * len(latents), tuple(latents.shape[1:])))
            )
    return float((outputs[0] - outputs[1]).square().mean())
