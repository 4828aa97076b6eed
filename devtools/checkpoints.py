"""Random-weight Stable Diffusion checkpoints and UNets built from ComfyUI's own classes.

Nothing can be downloaded here, so tests, benchmarks and the demo *generate* their
models: exact SD 1.x layout (so the stock ``CheckpointLoaderSimple`` detects it), random
values. Needs ComfyUI on ``sys.path`` (see ``devtools/comfy_host.py``).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch

#: Bump when the generated content changes, so cached files are rebuilt.
GENERATOR_VERSION = 2

SD15_SMALL: dict[str, Any] = {
    "use_checkpoint": False,
    "image_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "num_res_blocks": [1, 1],
    "channel_mult": [1, 2],
    "transformer_depth": [1, 1],
    "transformer_depth_output": [1, 1, 1, 1],
    "transformer_depth_middle": 1,
    "num_heads": 8,
    "num_head_channels": -1,
    "context_dim": 768,
    "use_linear_in_transformer": False,
    "use_spatial_transformer": True,
    "legacy": False,
    "adm_in_channels": None,
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
}

SD15_FULL: dict[str, Any] = {
    **SD15_SMALL,
    "num_res_blocks": [2, 2, 2, 2],
    "channel_mult": [1, 2, 4, 4],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
}

#: SD 2.x-style: linear projections in the transformer, 1024-wide context, 64-channel heads.
SD2_SMALL: dict[str, Any] = {
    **SD15_SMALL,
    "context_dim": 1024,
    "use_linear_in_transformer": True,
    "num_heads": -1,
    "num_head_channels": 64,
}

#: SDXL-shaped: no attention at the first level, depth 2 then more, ADM conditioning of 2816.
SDXL_SMALL: dict[str, Any] = {
    **SD15_SMALL,
    "model_channels": 64,
    "channel_mult": [1, 2, 4],
    "num_res_blocks": [1, 1, 1],
    "transformer_depth": [0, 1, 2],
    "transformer_depth_output": [0, 0, 1, 1, 2, 2],
    "transformer_depth_middle": 2,
    "context_dim": 2048,
    "use_linear_in_transformer": True,
    "num_heads": -1,
    "num_head_channels": 32,
    "adm_in_channels": 2816,
    "num_classes": "sequential",
}

#: Narrow variants (64 channels) of the SD 1.x and SD 2.x shapes, for tests that train on every
#: family and need each step to be cheap; built in-process like the SDXL shape.
SD15_TINY: dict[str, Any] = {**SD15_SMALL, "model_channels": 64, "num_heads": 4}
SD2_TINY: dict[str, Any] = {**SD2_SMALL, "model_channels": 64, "num_head_channels": 32}

VAE_DDCONFIG: dict[str, Any] = {
    "double_z": True,
    "z_channels": 4,
    "resolution": 256,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 128,
    "ch_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_resolutions": [],
    "dropout": 0.0,
}


@torch.no_grad()
def randomise(module: torch.nn.Module, seed: int, std: float = 0.02) -> None:
    """Give every tensor a defined value: norms 1/0, biases 0, other weights N(0, std).

    ComfyUI creates layers without initialising them, so this is required.
    """
    generator = torch.Generator().manual_seed(seed)
    for name, param in module.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if param.dim() <= 1:
            if (leaf == "weight" and "norm" in name.lower()) or (leaf == "weight" and param.dim() == 1):
                param.fill_(1.0)
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * std)
        else:
            param.copy_(torch.randn(param.shape, generator=generator) * std)


def build_unet(unet_config: dict[str, Any], seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A ComfyUI ``UNetModel`` with random weights."""
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    config = copy.deepcopy(unet_config)
    unet = UNetModel(**config, dtype=dtype, device="cpu", operations=comfy.ops.disable_weight_init)
    randomise(unet, seed)
    return unet


def build_model_patcher(
    family: str,
    unet_config: dict[str, Any],
    seed: int = 0,
    prediction: str = "eps",
) -> Any:
    """A ComfyUI MODEL (``ModelPatcher``) built in-process around a random UNet.

    ``family`` names a class of ``comfy.supported_models`` (``SD15``, ``SD20``, ``SDXL``);
    ``prediction`` is ``eps`` or ``v``.
    """
    import comfy.model_base
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    config_class = getattr(comfy.supported_models, family)
    model_config = config_class(copy.deepcopy(unet_config))
    model_config.set_inference_dtype(torch.float32, None)
    model_type = comfy.model_base.ModelType.V_PREDICTION if prediction == "v" else comfy.model_base.ModelType.EPS
    base = model_config.get_model({}, "", device="cpu")
    if base.model_type != model_type:
        base = type(base)(model_config, model_type=model_type, device="cpu")
    randomise(base.diffusion_model, seed)
    base.eval()
    patcher = comfy.model_patcher.ModelPatcher(
        base, load_device=comfy.model_management.get_torch_device(), offload_device=torch.device("cpu")
    )
    if hasattr(patcher, "cached_patcher_init"):
        # Newer ComfyUI rebuilds a model from this factory for deep copies (TrainLoraNode's
        # clone(force_deepcopy=True), non-dynamic delegates), as its stock loaders register theirs;
        # the same seed gives the same weights.
        patcher.cached_patcher_init = (_rebuilt_model_patcher, (family, unet_config, seed, prediction))
    return patcher


def _rebuilt_model_patcher(
    family: str, unet_config: dict[str, Any], seed: int, prediction: str, disable_dynamic: bool = False
) -> Any:
    """:func:`build_model_patcher` again, called the way ComfyUI calls a ``cached_patcher_init`` factory."""
    return build_model_patcher(family, unet_config, seed, prediction)


def sd15_checkpoint_state_dict(
    seed: int = 0, unet_config: dict[str, Any] | None = None, dtype: torch.dtype = torch.float16
) -> dict[str, torch.Tensor]:
    """Every tensor of an SD 1.x checkpoint (UNet, CLIP ViT-L/14 text model, VAE), random."""
    import comfy.sd1_clip
    from comfy.ldm.models.autoencoder import AutoencoderKL

    state: dict[str, torch.Tensor] = {}
    unet = build_unet(unet_config or SD15_SMALL, seed)
    state.update({f"model.diffusion_model.{k}": v.to(dtype) for k, v in unet.state_dict().items()})
    del unet
    clip = comfy.sd1_clip.SDClipModel(device="cpu", dtype=torch.float32)
    randomise(clip, seed + 1)
    for key, value in clip.state_dict().items():
        keep = value if not value.is_floating_point() else value.to(dtype)
        state[f"cond_stage_model.{key}"] = keep
    del clip
    vae = AutoencoderKL(ddconfig=VAE_DDCONFIG, embed_dim=4)
    randomise(vae, seed + 2)
    state.update({f"first_stage_model.{k}": v.to(dtype) for k, v in vae.state_dict().items()})
    return state


def write_sd15_checkpoint(
    path: str | os.PathLike[str],
    seed: int = 0,
    unet_config: dict[str, Any] | None = None,
    dtype: torch.dtype = torch.float16,
) -> Path:
    """Write a random SD 1.x-layout checkpoint (atomically); returns its path."""
    from safetensors.torch import save_file

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    state = sd15_checkpoint_state_dict(seed, unet_config, dtype)
    save_file(state, str(tmp), metadata={"taptune_generated": f"random weights, seed {seed}, v{GENERATOR_VERSION}"})
    os.replace(tmp, target)
    return target


def cached_sd15_checkpoint(folder: str | os.PathLike[str], seed: int = 0) -> Path:
    """The small random SD 1.x checkpoint in ``folder``, generated once per generator version."""
    target = Path(folder) / f"taptune-test-RANDOM-sd15-small-s{seed}-v{GENERATOR_VERSION}.safetensors"
    if not target.exists():
        write_sd15_checkpoint(target, seed)
    return target
