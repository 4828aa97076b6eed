"""TapTunePocketModel: the pack's own small trained text-to-image model, as MODEL, CLIP and VAE."""

from __future__ import annotations

from typing import Any

import folder_paths
from comfy_api.v0_0_2 import io

from ..patching.pocket_model import MODEL_FILE, PocketModelError, load_pocket_model
from .common import CATEGORY_LOAD

NODE = "TapTunePocketModel"


def _embedding_directory() -> Any:
    # What CheckpointLoaderSimple passes: textual-inversion embeddings ("embedding:name" in prompts).
    try:
        return folder_paths.get_folder_paths("embeddings")
    except Exception:  # a ComfyUI without the embeddings folder type
        return None


class TapTunePocketModel(io.ComfyNode):
    """Load the pocket model shipped with the pack (trained from scratch on the pocket world)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=NODE,
            display_name="TapTune Pocket Model",
            category=CATEGORY_LOAD,
            description=(
                "Loads the pocket model that ships with TapTune: a small latent text-to-image model (a UNet with "
                "transformer blocks, a CLIP-style text encoder on ComfyUI's SD 1.x tokenizer, a VAE) trained from "
                "scratch on a world of coloured shapes, e.g. 'a red star on a blue background' (colours red, green, "
                "blue, yellow, white, black; shapes circle, square, triangle, star). Use it like any checkpoint: "
                "CLIPTextEncode, EmptyLatentImage at 64x64, KSampler (euler, normal, 20 steps, cfg 5), VAEDecode. "
                "Small enough to train TapTune adapters on a CPU in a minute or two."
            ),
            inputs=[],
            outputs=[
                io.Model.Output(
                    display_name="MODEL", tooltip="The pocket diffusion model (eps prediction, 64x64 pictures)."
                ),
                io.Clip.Output(display_name="CLIP", tooltip="Its text encoder, for CLIPTextEncode."),
                io.Vae.Output(display_name="VAE", tooltip="Its VAE: 64x64 pictures <-> 8x8x4 latents."),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls) -> Any:
        # Re-run when the weights file changes (e.g. after retraining).
        return MODEL_FILE.stat().st_mtime if MODEL_FILE.is_file() else -1.0

    @classmethod
    def execute(cls) -> io.NodeOutput:
        try:
            model, clip, vae = load_pocket_model(MODEL_FILE, embedding_directory=_embedding_directory())
        except PocketModelError as exc:
            raise PocketModelError(f"{NODE}: {exc}", file=exc.file) from None
        return io.NodeOutput(model, clip, vae)
