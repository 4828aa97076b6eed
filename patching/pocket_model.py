"""The pocket model as ComfyUI objects: MODEL (``ModelPatcher``), CLIP (``comfy.sd.CLIP``), VAE (``comfy.sd.VAE``).

This is the only place that turns the pocket architecture (``pocket/architecture.py``) and
its weights file into ComfyUI objects. Everything is built from ComfyUI's own public classes
and constructors, the way ``comfy.sd.load_state_dict_guess_config`` builds a checkpoint,
minus the detection step (the pocket UNet matches none of ComfyUI's known families, so the
model configuration is given here instead of guessed). ComfyUI behaviour relied on is named
where it is used; all of it exists unchanged from 0.3.75 to 0.28 (checked against both trees).

The weights file (one ``.safetensors``) uses the SD checkpoint layout: ``model.diffusion_model.*``,
``cond_stage_model.*`` (the ``SD1ClipModel``-shaped text encoder, ``clip_l.transformer...``),
``first_stage_model.*`` (the ``AutoencoderKL``); its metadata key ``pocket`` holds a JSON object
with the configurations, the measured latent scale and latent-to-RGB preview factors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import comfy.latent_formats
import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.sd1_clip
import comfy.supported_models_base
import comfy.utils
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ..adapter_core.errors import TapTuneError
from ..pocket import architecture as arch

#: Where the shipped weights live (inside the pack).
WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "pocket" / "weights"
MODEL_FILE = WEIGHTS_DIR / "pocket_model.safetensors"

UNET_PREFIX = "model.diffusion_model."
TEXT_PREFIX = "cond_stage_model."
VAE_PREFIX = "first_stage_model."
METADATA_KEY = "pocket"


class PocketModelError(TapTuneError):
    """The pocket model's weights file is missing or not a pocket model file of this version."""


class PocketLatentFormat(comfy.latent_formats.LatentFormat):
    """4 latent channels, the VAE's measured scale; linear latent-to-RGB factors for previews.

    ``LatentFormat.process_in/process_out`` multiply/divide by ``scale_factor`` (what
    ``BaseModel.process_latent_in`` and the samplers use); ``latent_rgb_factors`` and
    ``latent_rgb_factors_bias`` are what ComfyUI's latent2rgb previewer reads.
    """

    latent_channels = arch.LATENT_CHANNELS

    def __init__(self, scale_factor: float = 1.0, rgb_factors: Any = None, rgb_bias: Any = None) -> None:
        self.scale_factor = float(scale_factor)
        self.latent_rgb_factors = rgb_factors
        self.latent_rgb_factors_bias = rgb_bias
        self.taesd_decoder_name = None


class TapTunePocket(comfy.supported_models_base.BASE):
    """ComfyUI's model configuration for the pocket UNet (eps prediction, ComfyUI's standard discrete schedule).

    ``BASE.get_model`` makes a ``comfy.model_base.BaseModel`` (``UNetModel`` with our
    ``unet_config``); ``BaseModel`` builds its ``model_sampling`` from ``model_type`` (EPS by
    ``BASE.model_type``) and ``sampling_settings`` (empty: ``ModelSamplingDiscrete``'s
    defaults, SD 1.x's scaled-linear 0.00085..0.012 over 1000 steps). Never registered in
    ``comfy.supported_models``: no checkpoint is ever detected as this.
    """

    unet_config: ClassVar[dict] = {"model_channels": arch.UNET_CONFIG["model_channels"], "context_dim": arch.TEXT_WIDTH}
    # BASE's default adds num_heads/num_head_channels; ours are in the full configuration.
    unet_extra_config: ClassVar[dict] = {}
    sampling_settings: ClassVar[dict] = {}
    latent_format = PocketLatentFormat
    memory_usage_factor = 1.0
    supported_inference_dtypes: ClassVar[list] = [torch.float16, torch.bfloat16, torch.float32]
    text_config: ClassVar[dict] = arch.TEXT_CONFIG

    def clip_target(self, state_dict: Any = None) -> comfy.supported_models_base.ClipTarget:
        return pocket_clip_target(self.text_config)


def pocket_clip_target(text_config: dict) -> comfy.supported_models_base.ClipTarget:
    """Tokenizer and text-encoder classes for ``comfy.sd.CLIP``.

    ``comfy.sd.CLIP`` instantiates ``target.tokenizer(embedding_directory=..., tokenizer_data=...)``
    and ``target.clip(dtype=..., device=..., model_options=...)``; ``SD1Tokenizer`` /
    ``SD1ClipModel`` wrap one SD 1.x tokenizer / ``SDClipModel`` under the name ``clip_l``.
    ``SDTokenizer`` defaults to ComfyUI's bundled SD 1.x vocabulary (``comfy/sd1_tokenizer``),
    pads to 77 tokens with the end token; ``embedding_size`` (textual-inversion embeddings)
    is our width. ``SDClipModel`` takes the transformer's JSON config as a dict; layer
    ``last`` returns the final-LayerNorm hidden state, as SD 1.x uses.
    """
    width = int(text_config["hidden_size"])
    config = dict(text_config)

    class PocketSDTokenizer(comfy.sd1_clip.SDTokenizer):
        def __init__(self, embedding_directory: Any = None, tokenizer_data: dict = {}) -> None:
            super().__init__(
                embedding_directory=embedding_directory,
                embedding_size=width,
                embedding_key="clip_l",
                tokenizer_data=tokenizer_data,
            )

    class PocketTokenizer(comfy.sd1_clip.SD1Tokenizer):
        def __init__(self, embedding_directory: Any = None, tokenizer_data: dict = {}) -> None:
            super().__init__(
                embedding_directory=embedding_directory,
                tokenizer_data=tokenizer_data,
                clip_name="l",
                tokenizer=PocketSDTokenizer,
            )

    class PocketTextEncoder(comfy.sd1_clip.SDClipModel):
        def __init__(self, device: Any = "cpu", dtype: Any = None, model_options: dict = {}) -> None:
            super().__init__(
                device=device,
                dtype=dtype,
                textmodel_json_config=dict(config),
                return_projected_pooled=False,
                model_options=model_options,
            )

    class PocketClipModel(comfy.sd1_clip.SD1ClipModel):
        def __init__(self, device: Any = "cpu", dtype: Any = None, model_options: dict = {}, **kwargs: Any) -> None:
            super().__init__(
                device=device, dtype=dtype, model_options=model_options, clip_name="l", clip_model=PocketTextEncoder
            )

    return comfy.supported_models_base.ClipTarget(PocketTokenizer, PocketClipModel)


# ----------------------------------------------------------------------------------------------
# Metadata


def default_metadata() -> dict[str, Any]:
    """The configuration part of a weights file's metadata (what :func:`load_pocket_model` reads)."""
    return {
        "format": arch.FORMAT,
        "unet_config": arch.UNET_CONFIG,
        "text_config": arch.TEXT_CONFIG,
        "vae_ddconfig": arch.VAE_DDCONFIG,
        "vae_embed_dim": arch.VAE_EMBED_DIM,
        "latent_scale": 1.0,
        "latent_rgb_factors": None,
        "latent_rgb_bias": None,
        "sampler_defaults": arch.SAMPLER_DEFAULTS,
    }


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ``pocket`` metadata of a weights file (configurations, latent scale, training record)."""
    with safe_open(str(path), framework="pt") as f:
        raw = (f.metadata() or {}).get(METADATA_KEY)
    if raw is None:
        raise ValueError(f"{path} is not a pocket model file (no '{METADATA_KEY}' metadata)")
    meta = json.loads(raw)
    if meta.get("format") != arch.FORMAT:
        raise ValueError(f"{path}: format {meta.get('format')!r}, expected {arch.FORMAT!r}")
    return meta


# ----------------------------------------------------------------------------------------------
# Building


def model_config(meta: dict[str, Any]) -> TapTunePocket:
    """ComfyUI's model configuration object for the file's UNet and latent format."""
    config = TapTunePocket(dict(meta["unet_config"]))
    config.text_config = dict(meta["text_config"])
    # BASE.__init__ instantiated the latent format class with defaults; give it the measured values.
    config.latent_format = PocketLatentFormat(
        meta.get("latent_scale", 1.0), meta.get("latent_rgb_factors"), meta.get("latent_rgb_bias")
    )
    return config


def build_diffusion_model(meta: dict[str, Any], state_dict: dict[str, torch.Tensor] | None = None, dtype: Any = None):
    """``comfy.model_base.BaseModel`` for the pocket UNet, weights loaded from ``state_dict`` (if given).

    As ``load_state_dict_guess_config``: the weight dtype from ``model_management.unet_dtype``
    (fp32 on a CPU), a manual-cast dtype where the device needs one, ``set_inference_dtype``
    before ``get_model`` (the layer classes are picked from it), ``load_model_weights`` with
    the ``model.diffusion_model.`` prefix.
    """
    config = model_config(meta)
    load_device = comfy.model_management.get_torch_device()
    parameters = comfy.utils.calculate_parameters(state_dict, UNET_PREFIX) if state_dict else 0
    if dtype is None:
        dtype = comfy.model_management.unet_dtype(
            model_params=parameters, supported_dtypes=config.supported_inference_dtypes
        )
    manual_cast = comfy.model_management.unet_manual_cast(dtype, load_device, config.supported_inference_dtypes)
    config.set_inference_dtype(dtype, manual_cast)
    initial_device = comfy.model_management.unet_inital_load_device(parameters, dtype)
    model = config.get_model(state_dict or {}, UNET_PREFIX, device=initial_device)
    if state_dict:
        model.load_model_weights(state_dict, UNET_PREFIX)
    return model, load_device


def model_patcher(model: Any, load_device: Any) -> Any:
    """ComfyUI's plain ``ModelPatcher`` (what a checkpoint loader returns as MODEL).

    The plain class on purpose: newer ComfyUI also has a dynamic-VRAM patcher for NVIDIA GPUs
    (``CoreModelPatcher``), but the plain ``ModelPatcher`` with this constructor exists in
    every version and is what ComfyUI itself uses when dynamic VRAM is off.
    """
    return comfy.model_patcher.ModelPatcher(
        model, load_device=load_device, offload_device=comfy.model_management.unet_offload_device()
    )


def build_clip(
    meta: dict[str, Any],
    state_dict: dict[str, torch.Tensor] | None = None,
    embedding_directory: Any = None,
    dtype: Any = None,
):
    """``comfy.sd.CLIP`` around the pocket text encoder; ``state_dict`` keys without ``cond_stage_model.``.

    ``comfy.sd.CLIP(target, ...)`` builds the encoder on ComfyUI's text-encoder device and dtype
    and wraps it in its own ``ModelPatcher``; ``CLIP.load_sd(sd, full_model=True)`` is a
    non-strict ``load_state_dict`` on the whole encoder (keys ``clip_l.transformer...``).
    """
    target = pocket_clip_target(meta["text_config"])
    parameters = sum(t.numel() for t in state_dict.values()) if state_dict else 0
    # model_options["dtype"]: CLIP's own override of its weight dtype (default: ComfyUI's text-encoder
    # dtype, fp16 even on a CPU, computed through manual-cast layers).
    options = {"dtype": dtype} if dtype is not None else {}
    clip = comfy.sd.CLIP(target, embedding_directory=embedding_directory, parameters=parameters, model_options=options)
    if state_dict:
        missing, unexpected = clip.load_sd(state_dict, full_model=True)
        if missing or unexpected:
            raise ValueError(f"pocket text encoder: missing {list(missing)[:4]}, unexpected {list(unexpected)[:4]}")
    return clip


def vae_config(meta: dict[str, Any]) -> dict[str, Any]:
    """The ``config`` ``comfy.sd.VAE`` takes: it then builds ``AutoencoderKL(**config['params'])``."""
    return {"params": {"ddconfig": dict(meta["vae_ddconfig"]), "embed_dim": int(meta["vae_embed_dim"])}}


def build_vae(meta: dict[str, Any], state_dict: dict[str, torch.Tensor]):
    """``comfy.sd.VAE`` for the pocket ``AutoencoderKL``; ``state_dict`` keys without ``first_stage_model.``.

    With an explicit ``config`` the VAE keeps its defaults for the rest: 4 latent channels,
    ``downscale_ratio``/``upscale_ratio`` 8, pixels scaled to -1..1 on the way in and clamped
    to 0..1 on the way out: exactly this autoencoder.
    """
    vae = comfy.sd.VAE(sd=state_dict, config=vae_config(meta))
    ratio = getattr(vae, "downscale_ratio", arch.DOWNSCALE)
    if vae.latent_channels != arch.LATENT_CHANNELS or ratio != arch.DOWNSCALE:
        raise ValueError(f"pocket VAE: {vae.latent_channels} channels, downscale {ratio}; expected 4 and 8")
    return vae


def split_state_dict(sd: dict[str, torch.Tensor]) -> tuple[dict, dict, dict]:
    """(UNet with its prefix, text encoder without prefix, VAE without prefix)."""
    unet = {k: v for k, v in sd.items() if k.startswith(UNET_PREFIX)}
    text = comfy.utils.state_dict_prefix_replace(sd, {TEXT_PREFIX: ""}, filter_keys=True)
    vae = comfy.utils.state_dict_prefix_replace(sd, {VAE_PREFIX: ""}, filter_keys=True)
    return unet, text, vae


def load_pocket_model(path: str | Path | None = None, embedding_directory: Any = None) -> tuple[Any, Any, Any]:
    """(MODEL, CLIP, VAE) of the pocket model file (default: the shipped one).

    Each call builds new objects; the caller (a node) is cached by ComfyUI's executor.
    """
    path = Path(path) if path is not None else MODEL_FILE
    if not path.is_file():
        raise PocketModelError(
            "is missing: it ships with the pack in pocket/weights/; reinstall the pack (ComfyUI-Manager, or "
            "`git pull` in custom_nodes/ComfyUI-TapTune)",
            file=path.name,
        )
    try:
        meta = read_metadata(path)
        sd = load_file(str(path))
        unet_sd, text_sd, vae_sd = split_state_dict(sd)
        model, load_device = build_diffusion_model(meta, unet_sd)
        clip = build_clip(meta, text_sd, embedding_directory)
        vae = build_vae(meta, vae_sd)
    except Exception as exc:  # safetensors' own SafetensorError subclasses none of the builtins
        # A damaged or foreign file can fail in the reader, the JSON, or a shape check while building.
        raise PocketModelError(
            f"is not a pocket model file this version can load ({type(exc).__name__}: {exc}); reinstall the pack",
            file=path.name,
        ) from None
    return model_patcher(model, load_device), clip, vae
