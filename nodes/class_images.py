"""TapTuneClassImages: prior-preservation images from the base model, cached on disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import comfy.samplers
import comfy.utils
import folder_paths
from comfy_api.v0_0_2 import io

from ..training.class_image_cache import ClassImageSettings, generate_class_images
from ..training.images import check_image_budget
from .common import CATEGORY_TRAIN, NodeInputError, bounded_integer, bounded_number, choice, hidden_input, node_errors

NODE = "TapTuneClassImages"


def class_image_cache() -> Path:
    """<output>/taptune/class_images/<key>/ (PNGs and a manifest, curatable by hand)."""
    return Path(folder_paths.get_output_directory()) / "taptune" / "class_images"


class TapTuneClassImages(io.ComfyNode):
    """Generate class images with the base model for prior preservation (cached)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=NODE,
            display_name="TapTune Class Images",
            category=CATEGORY_TRAIN,
            description=(
                "Generates prior-preservation images of the class ('a photo of dog') with the frozen base model and "
                "ComfyUI's own sampler, and caches them under output/taptune/class_images keyed by the models' weights, "
                "the prompts, count, seed and sampler settings: a second run with the same inputs generates nothing. "
                "Preview or curate them before they go into TapTuneDreamBoothTrain."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The base MODEL (before any adapter you are about to train)."),
                io.Clip.Input("clip", tooltip="Its CLIP."),
                io.Vae.Input("vae", tooltip="Its VAE."),
                io.String.Input("class_prompt", default="a photo of dog", tooltip="What the class images show."),
                io.Int.Input(
                    "count", default=100, min=1, max=10000, tooltip="How many images (the papers use 100 to 200)."
                ),
                io.Int.Input("seed", default=0, min=0, max=2**63 - 1, tooltip="Image i uses seed + i."),
                io.Int.Input("steps", default=25, min=1, max=200, optional=True, tooltip="Sampler steps."),
                io.Float.Input(
                    "cfg", default=7.0, min=0.0, max=30.0, step=0.1, optional=True, tooltip="Classifier-free guidance."
                ),
                io.Combo.Input(
                    "sampler_name",
                    options=list(comfy.samplers.KSampler.SAMPLERS),
                    default="euler",
                    optional=True,
                    tooltip="Sampler.",
                ),
                io.Combo.Input(
                    "scheduler",
                    options=list(comfy.samplers.KSampler.SCHEDULERS),
                    default="normal",
                    optional=True,
                    tooltip="Scheduler.",
                ),
                io.Int.Input("width", default=512, min=64, max=4096, step=8, optional=True, tooltip="Image width."),
                io.Int.Input("height", default=512, min=64, max=4096, step=8, optional=True, tooltip="Image height."),
                io.String.Input("negative_prompt", default="", optional=True, tooltip="Negative prompt."),
            ],
            outputs=[io.Image.Output(display_name="images", tooltip="The class images.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(
        cls,
        model: Any,
        clip: Any,
        vae: Any,
        class_prompt: str,
        count: int,
        seed: int,
        steps: int = 25,
        cfg: float = 7.0,
        sampler_name: str = "euler",
        scheduler: str = "normal",
        width: int = 512,
        height: int = 512,
        negative_prompt: str = "",
    ) -> io.NodeOutput:
        with node_errors(NODE, "class_prompt"):
            if not isinstance(class_prompt, str) or not class_prompt.strip():
                raise NodeInputError(NODE, "class_prompt", "is empty; describe the class, e.g. 'a photo of dog'")
            if not isinstance(negative_prompt, str):
                raise NodeInputError(NODE, "negative_prompt", "must be text")
            size = [bounded_integer(v, name, 64, 4096) for v, name in ((width, "width"), (height, "height"))]
            if size[0] % 8 or size[1] % 8:
                raise NodeInputError(NODE, "width/height", "must be multiples of 8")
            settings = ClassImageSettings(
                class_prompt.strip(),
                negative_prompt,
                bounded_integer(count, "count", 1, 10000),
                bounded_integer(seed, "seed", 0, 2**63 - 1),
                bounded_integer(steps, "steps", 1, 200),
                bounded_number(cfg, "cfg", 0.0, 30.0),
                choice(sampler_name, "sampler_name", comfy.samplers.KSampler.SAMPLERS),
                choice(scheduler, "scheduler", comfy.samplers.KSampler.SCHEDULERS),
                size[0],
                size[1],
            )
            # The images come out as one float32 batch: count x width x height within one set's budget.
            check_image_budget(settings.count, settings.count * size[0] * size[1], "count")
        bar = comfy.utils.ProgressBar(settings.count, node_id=hidden_input(cls, "unique_id"))

        def progress(done: int, total: int, preview: Any) -> None:
            bar.update_absolute(done, total, ("JPEG", preview, 512) if preview is not None else None)

        images, _ = generate_class_images(model, clip, vae, settings, class_image_cache(), progress)
        return io.NodeOutput(images)
