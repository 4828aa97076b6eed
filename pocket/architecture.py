"""The pocket model's architecture as data, and its explicit weight initialisation.

Three parts, each built from ComfyUI's own classes by ``patching/pocket_model.py``:

* the UNet: ComfyUI's ``UNetModel`` (``comfy.ldm.modules.diffusionmodules.openaimodel``)
  with :data:`UNET_CONFIG`: ResBlocks and one ``SpatialTransformer`` (one
  ``BasicTransformerBlock``: self-attention, cross-attention, feed-forward) per block at
  three resolutions (8x8, 4x4, 2x2 latents) and in the middle, so every tap point, all 20
  of the paper's pairs and OFT's attention targets exist;
* the text encoder: ComfyUI's ``SDClipModel`` (``comfy.sd1_clip``) with the small CLIP text
  transformer of :data:`TEXT_CONFIG`, fed by ComfyUI's own SD 1.x tokenizer (49,408 tokens,
  77 positions); its last hidden state (after the final LayerNorm) is the cross-attention
  context, as in SD 1.x;
* the VAE: ComfyUI's ``AutoencoderKL`` with :data:`VAE_DDCONFIG`: 4 latent channels,
  downscale 8 (a 64x64 picture is an 8x8x4 latent, what ``EmptyLatentImage`` makes).

Noise schedule and parametrisation are ComfyUI's standard ones for SD 1.x: eps prediction,
``ModelSamplingDiscrete`` with scaled-linear betas 0.00085..0.012 over 1000 steps. The
latent scale factor is measured on the trained VAE and stored in the weights file.

Nothing here imports ComfyUI: the initialisers work on any ``torch.nn`` tree by module type
(ComfyUI's layer classes subclass ``torch.nn.Linear``, ``Conv2d`` ... but are created
without initialisation; every weight gets an explicit value here, and :func:`check_all`
fails loudly if one was missed).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

#: Format tag in the weights file's metadata.
FORMAT = "taptune-pocket/1"
#: Picture size the world is drawn at and the model is trained on.
IMAGE_SIZE = 64
LATENT_CHANNELS = 4
DOWNSCALE = 8

#: Width of the text encoder = the UNet's cross-attention context size.
TEXT_WIDTH = 64

#: The UNet (keyword arguments of ComfyUI's ``UNetModel``; ``dtype`` is added at load time).
UNET_CONFIG: dict = {
    "image_size": IMAGE_SIZE // DOWNSCALE,
    "in_channels": LATENT_CHANNELS,
    "out_channels": LATENT_CHANNELS,
    "model_channels": 64,
    "channel_mult": [1, 2, 2],
    "num_res_blocks": [1, 1, 1],
    # One entry per input ResBlock, one per output block (ComfyUI pops the latter from the end).
    "transformer_depth": [1, 1, 1],
    "transformer_depth_middle": 1,
    "transformer_depth_output": [1, 1, 1, 1, 1, 1],
    "context_dim": TEXT_WIDTH,
    "num_heads": -1,
    "num_head_channels": 32,
    "use_spatial_transformer": True,
    "use_linear_in_transformer": False,
    "legacy": False,
    "adm_in_channels": None,
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
}

#: The text transformer (the JSON config ``SDClipModel`` takes; CLIP-text layout, quick GELU).
TEXT_CONFIG: dict = {
    "architectures": ["CLIPTextModel"],
    "model_type": "clip_text_model",
    "hidden_act": "quick_gelu",
    "hidden_size": TEXT_WIDTH,
    "intermediate_size": 4 * TEXT_WIDTH,
    "num_attention_heads": 2,
    "num_hidden_layers": 2,
    "max_position_embeddings": 77,
    "vocab_size": 49408,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 49407,
    "projection_dim": TEXT_WIDTH,
    "layer_norm_eps": 1e-5,
}

#: The VAE (``AutoencoderKL(ddconfig=..., embed_dim=4)``): three 2x downsamplings = 8.
VAE_DDCONFIG: dict = {
    "double_z": True,
    "z_channels": LATENT_CHANNELS,
    "resolution": IMAGE_SIZE,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 32,
    "ch_mult": [1, 1, 2, 4],
    "num_res_blocks": 1,
    "attn_resolutions": [],
    "dropout": 0.0,
}
VAE_EMBED_DIM = LATENT_CHANNELS

#: The sampler settings the quality figures are measured with (KSampler's inputs).
SAMPLER_DEFAULTS: dict = {"sampler_name": "euler", "scheduler": "normal", "steps": 20, "cfg": 5.0}


# ----------------------------------------------------------------------------------------------
# Initialisation


def _is_zero_init(name: str) -> bool:
    """LDM's ``zero_module`` layers: each ResBlock's last conv, each transformer's proj_out, the UNet's out conv."""
    return name.endswith("out_layers.3") or name.endswith("proj_out") or name == "out.2"


def _default_init(module: nn.Module) -> None:
    """PyTorch's own default for a layer (Kaiming-uniform weight, fan-in uniform bias)."""
    for base in (nn.Linear, nn.Conv2d, nn.Conv1d, nn.Conv3d):
        if isinstance(module, base):
            base.reset_parameters(module)  # the parent's method: ComfyUI's subclass disables it
            return


def init_module_tree(root: nn.Module, zero_init=_is_zero_init, embedding_std: float = 0.02) -> set[str]:
    """Give every parameter of ``root`` an explicit initial value (uses torch's global RNG).

    Linear/conv layers: PyTorch's default; LDM's zero-initialised output layers: zeros;
    norms: weight 1, bias 0; embeddings: normal(0, ``embedding_std``). Returns the names of
    the parameters it set.
    """
    done: set[str] = set()
    with torch.no_grad():
        for name, module in root.named_modules():
            prefix = f"{name}." if name else ""
            if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                if zero_init(name):
                    nn.init.zeros_(module.weight)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
                else:
                    _default_init(module)
            elif isinstance(module, (nn.GroupNorm, nn.LayerNorm)):
                if module.weight is not None:
                    nn.init.ones_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=embedding_std)
            else:
                continue
            done.update(prefix + n for n, _ in module.named_parameters(recurse=False))
    return done


def init_unet(unet: nn.Module) -> None:
    """The UNet: PyTorch defaults, LDM's zero-initialised output layers."""
    require_all(unet, init_module_tree(unet), "UNet")


def init_vae(vae: nn.Module) -> None:
    """The VAE: PyTorch defaults everywhere."""
    require_all(vae, init_module_tree(vae, zero_init=lambda name: False), "VAE")


def init_text_encoder(clip_module: nn.Module) -> None:
    """The text encoder: CLIP's initialisation (token embeddings normal 0.02, positions 0.01)."""
    done = init_module_tree(clip_module, zero_init=lambda name: False)
    with torch.no_grad():
        for name, module in clip_module.named_modules():
            if name.endswith("position_embedding") and isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.01)
        for name, p in clip_module.named_parameters():
            if name.endswith("logit_scale"):  # CLIP's temperature; unused for conditioning
                p.fill_(math.log(1 / 0.07))
                done.add(name)
    require_all(clip_module, done, "text encoder")


def require_all(root: nn.Module, done: Iterable[str], what: str) -> None:
    """Fail if a parameter of ``root`` was not given a value by the initialiser."""
    missing = [name for name, _ in root.named_parameters() if name not in set(done)]
    if missing:
        raise RuntimeError(f"{what}: no initialisation for {', '.join(missing[:5])}")


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
