"""Text conditionings for training, encoded once and turned into the UNet's inputs the way samplers do.

A prompt is encoded by the CLIP once; ComfyUI's own ``extra_conds`` then builds what the
model needs for a given latent size (cross-attention context, and for SDXL the ADM vector
from the pooled output and the image size), cached per (prompt, size).
"""

from __future__ import annotations

from typing import Any

import comfy.sampler_helpers
import comfy.samplers
import torch


def encode_prompt(clip: Any, text: str) -> list[Any]:
    """A ComfyUI CONDITIONING for ``text`` (what CLIPTextEncode makes)."""
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


def _detached(value: Any) -> Any:
    # Encoded under the executor's inference mode; normal tensors are needed for autograd.
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    return value


class ConditioningCache:
    """Model inputs per (prompt, latent size), computed on first use."""

    def __init__(self, model: Any, clip: Any, device: torch.device) -> None:
        self.model = model
        self.clip = clip
        self.device = device
        self._encoded: dict[str, list[Any]] = {}
        self._model_conds: dict[tuple[str, tuple[int, ...]], dict[str, Any]] = {}

    def conditioning(self, prompt: str) -> list[Any]:
        """The CONDITIONING of ``prompt`` (encoded once)."""
        if prompt not in self._encoded:
            with torch.inference_mode(False), torch.no_grad():
                self._encoded[prompt] = [
                    [_detached(c), _detached(extra)] for c, extra in encode_prompt(self.clip, prompt)
                ]
        return self._encoded[prompt]

    def model_conds(self, prompt: str, latent_shape: tuple[int, ...]) -> dict[str, Any]:
        """ComfyUI's cond objects (``c_crossattn``, ``y``...) for one sample of ``latent_shape`` (C, H, W)."""
        key = (prompt, tuple(latent_shape))
        if key not in self._model_conds:
            conds = comfy.sampler_helpers.convert_cond(self.conditioning(prompt))[:1]
            noise = torch.zeros((1, *latent_shape))
            with torch.inference_mode(False), torch.no_grad():
                conds = comfy.samplers.encode_model_conds(
                    self.model.model.extra_conds, conds, noise, self.device, "positive", latent_image=noise, seed=0
                )
            self._model_conds[key] = dict(conds[0]["model_conds"])
        return self._model_conds[key]

    def batch(self, prompts: list[str], latent_shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
        """Model inputs for a batch whose sample ``i`` has prompt ``prompts[i]``, in that order."""
        per_sample = [self.model_conds(p, latent_shape) for p in prompts]
        out: dict[str, torch.Tensor] = {}
        for key in per_sample[0]:
            first, rest = per_sample[0][key], [c[key] for c in per_sample[1:]]
            out[key] = first.concat(rest) if rest else first.process_cond(batch_size=1, area=None).cond
        return {k: v.to(self.device) for k, v in out.items()}
