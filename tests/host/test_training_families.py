"""Training on SD 2.x (v-prediction) and SDXL-shaped models: the objective follows the model, extra conditioning is built.

These models are built in-process (no SD 2.x / SDXL text encoder or VAE weights exist here), so a
fixed text-encoder stand-in and a pooling VAE stand-in (devtools/standins.py) feed them.
"""

from __future__ import annotations

import comfy.model_sampling
import pytest
import torch

from devtools.checkpoints import SD2_SMALL, SDXL_SMALL, build_model_patcher
from devtools.standins import FixedTextEncoder, PixelVAE
from taptune.adapter_core import TapConfig, TapGroupSpec, TapSpec
from taptune.patching.apply import apply_adapter_set
from taptune.training.objective import prediction_error
from taptune.training.run_inputs import ImageSet, RunInputs
from taptune.training.settings import TrainSettings
from taptune.training.trainer import DreamBoothTrainer

from .training_helpers import denoising_error, smooth_image


@pytest.mark.parametrize("sampling_type", [comfy.model_sampling.EPS, comfy.model_sampling.V_PREDICTION])
def test_prediction_error_is_the_models_own_target(sampling_type):
    class Sampling(comfy.model_sampling.ModelSamplingDiscrete, sampling_type):
        pass

    sampling = Sampling()
    g = torch.Generator().manual_seed(0)
    x0, noise, output = (torch.randn(3, 4, 8, 8, generator=g) for _ in range(3))
    sigma = sampling.sigmas[torch.tensor([10, 500, 990])]
    s = sigma.view(-1, 1, 1, 1)
    x_t = x0 + noise * s
    denoised = sampling.calculate_denoised(sigma, output, x_t)
    if sampling_type is comfy.model_sampling.EPS:
        target = noise
    else:  # v = alpha * eps - sigma_vp * x0, with alpha = 1/sqrt(1+s^2), sigma_vp = s/sqrt(1+s^2)
        target = (noise - s * x0) / torch.sqrt(1 + s**2)
    expected = (output - target).square().mean(dim=(1, 2, 3))
    torch.testing.assert_close(prediction_error(sampling, sigma, x_t, denoised, x0), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "family,config,prediction,pooled",
    [("SD20", SD2_SMALL, "v", None), ("SDXL", SDXL_SMALL, "eps", 1280)],
    ids=["sd2-v", "sdxl"],
)
def test_trains_other_families(family, config, prediction, pooled):
    model = build_model_patcher(family, config, seed=2, prediction=prediction)
    encoder = FixedTextEncoder(config["context_dim"], pooled)
    images = [smooth_image(i) for i in range(2)]
    classes = [smooth_image(10 + i) for i in range(2)]
    vae = PixelVAE()
    before = denoising_error(model, encoder, vae, images, "a photo of sks dog")
    encoder.calls.clear()
    settings = TrainSettings(steps=30, learning_rate=1e-2, resolution=64, seed=0, batch_size=2, prior_loss_weight=1.0)
    spec = TapSpec(
        (TapGroupSpec(TapConfig("attn2o", "ffni", mid_dim=16)), TapGroupSpec(TapConfig("resi", "reso", mid_dim=8)))
    )
    result = DreamBoothTrainer(
        model,
        encoder,
        vae,
        spec,
        RunInputs(ImageSet(images, "a photo of sks dog"), ImageSet(classes, "a photo of dog"), settings),
    ).run()
    assert result.steps_done == 30
    assert all(torch.isfinite(torch.tensor(result.losses)))
    # Each prompt was encoded once, not once per step.
    assert sorted(encoder.calls) == ["a photo of dog", "a photo of sks dog"]
    after = denoising_error(apply_adapter_set(model, result.adapter_set), encoder, vae, images, "a photo of sks dog")
    assert after < 0.9 * before, (before, after)
