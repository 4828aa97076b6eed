"""Running a ComfyUI MODEL's UNet the way samplers do, for tests that compare outputs."""

from __future__ import annotations

from typing import Any

import comfy.model_management
import torch


def fixed_inputs(context_dim: int, seed: int = 0, batch: int = 2, size: int = 16, adm: int | None = None):
    """Noise latents, timesteps and a text context, reproducible from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, size, size, generator=g)
    sigma = torch.tensor([1.5, 7.0][:batch] + [3.0] * max(0, batch - 2))
    ctx = torch.randn(batch, 77, context_dim, generator=g)
    extra = {"y": torch.randn(batch, adm, generator=g)} if adm else {}
    return x, sigma, ctx, extra


def unet_output(model: Any, x: torch.Tensor, sigma: torch.Tensor, ctx: torch.Tensor, **extra: Any) -> torch.Tensor:
    """Load ``model`` through model management (applying its patches) and denoise once."""
    comfy.model_management.load_models_gpu([model])
    return raw_output(model, x, sigma, ctx, **extra)


@torch.no_grad()
def raw_output(model: Any, x: torch.Tensor, sigma: torch.Tensor, ctx: torch.Tensor, **extra: Any) -> torch.Tensor:
    """``apply_model`` on whatever is currently patched into the shared model."""
    device = model.load_device
    out = model.model.apply_model(
        x.to(device),
        sigma.to(device),
        c_crossattn=ctx.to(device),
        transformer_options=dict(model.model_options.get("transformer_options", {})),
        **{k: v.to(device) for k, v in extra.items()},
    )
    return out.float().cpu()


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||``."""
    return float((a - b).norm() / b.norm())
