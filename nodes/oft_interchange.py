"""OFT interchange nodes: import PEFT / official OFT adapters, export an OFT file for stock LoRA loaders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import folder_paths
import torch
from comfy_api.v0_0_2 import io, ui
from safetensors.torch import save_file

from ..adapter_core.architecture import check_architecture
from ..adapter_core.file_format import check_adapter_file, load_adapter_file, write_adapter_file
from ..adapter_core.oft.oft_import import import_oft
from ..patching.apply import adapter_set_for_model
from ..patching.model_access import model_architecture, model_layers_per_block, model_view
from ..patching.weight_export import MAX_EXPORT_RANK, lora_differences, lora_low_rank
from .common import (
    CATEGORY_CONVERT,
    adapter_file_stamp,
    adapter_names,
    adapter_path,
    bounded_integer,
    bounded_number,
    choice,
    node_errors,
    write_new_output,
)
from .user_paths import resolve_user_path

EXPORT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class TapTuneImportOFT(io.ComfyNode):
    """Convert a Hugging Face PEFT OFT adapter or an official OFT DreamBooth output to a TapTune OFT file."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TapTuneImportOFT",
            display_name="TapTune Import OFT (PEFT / official)",
            category=CATEGORY_CONVERT,
            description=(
                "Reads an OFT adapter made by Hugging Face PEFT (>= 0.16: a folder with adapter_model.safetensors and "
                "adapter_config.json, or a diffusers pytorch_lora_weights.safetensors) or by the official OFT DreamBooth "
                "code (pytorch_lora_weights.bin with ...processor.to_q_oft.R), maps diffusers module names to ComfyUI's, "
                "and writes a TapTune OFT file into models/adapters. Older PEFT formats are refused."
            ),
            inputs=[
                io.String.Input(
                    "source", default="", tooltip="File or PEFT folder: absolute, or inside ComfyUI's input folder."
                ),
                io.String.Input(
                    "filename_prefix",
                    default="imported/oft",
                    tooltip="Written as models/adapters/<prefix>_<counter>.safetensors.",
                ),
                io.Int.Input(
                    "layers_per_block",
                    default=0,
                    min=0,
                    max=8,
                    tooltip="ResBlocks per UNet level, for mapping diffusers names; 0 = read it from the connected "
                    "MODEL, or 2 (SD 1.x, SD 2.x and SDXL) without one.",
                ),
                io.Model.Input(
                    "model",
                    optional=True,
                    tooltip="Optional: check that the adapter fits this MODEL and record its architecture in the file.",
                ),
            ],
            outputs=[io.String.Output(display_name="adapter_name", tooltip="The new file, as the loader lists it.")],
            is_output_node=True,
        )

    @classmethod
    def execute(
        cls, source: str, filename_prefix: str = "imported/oft", layers_per_block: int = 0, model: Any = None
    ) -> io.NodeOutput:
        node = "TapTuneImportOFT"
        path = resolve_user_path(node, "source", source)
        with node_errors(node, "source"):
            blocks = bounded_integer(layers_per_block, "layers_per_block", 0, 8) or model_layers_per_block(model)
            adapter_file = import_oft(path, blocks)
            if model is not None:
                adapter_set_for_model(adapter_file, model).check_fits(model_view(model))
                adapter_file.base = model_architecture(model)
            check_adapter_file(adapter_file)  # what is written must load, with the base recorded
        _, name = write_new_output(node, filename_prefix, lambda tmp: write_adapter_file(tmp, adapter_file))
        layers = sum(len(g["modules"]) for g in adapter_file.adapters)
        return io.NodeOutput(name, ui=ui.PreviewText(f"saved {name}: {layers} rotated layers"))


class TapTuneExportOFTAsLoRA(io.ComfyNode):
    """Write an OFT adapter as weight differences (whole, or at a rank) that stock LoRA loaders apply."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TapTuneExportOFTAsLoRA",
            display_name="TapTune Export OFT as LoRA",
            category=CATEGORY_CONVERT,
            description=(
                "Turns a TapTune OFT file into a LoRA file in models/loras, so that stock LoraLoader / "
                "LoraLoaderModelOnly (and tools without TapTune) reproduce the rotation on this MODEL. rank 0 writes "
                "full weight differences (<layer>.diff): exact at strength 1, the size of the rotated layers' weights "
                "(187 MB in fp16 for SD 1.5's attention layers). A rank writes each difference's best rank-r "
                "approximation (truncated SVD) as a standard LoRA (lora_up / lora_down / alpha, kohya names) that "
                "LoRA-only tools read: far smaller, approximate. Other strengths scale the difference linearly."
            ),
            inputs=[
                io.Model.Input(
                    "model", tooltip="The base MODEL the OFT adapter was made for (its weights are needed)."
                ),
                io.Combo.Input(
                    "adapter_name", options=adapter_names(), tooltip="A TapTune OFT file in models/adapters."
                ),
                io.Float.Input(
                    "strength",
                    default=1.0,
                    min=-10.0,
                    max=10.0,
                    step=0.01,
                    tooltip="Baked into the differences (R(sS)).",
                ),
                io.String.Input(
                    "filename_prefix",
                    default="taptune/oft_as_lora",
                    tooltip="Written as models/loras/<prefix>_<counter>.safetensors.",
                ),
                io.Combo.Input(
                    "dtype", options=list(EXPORT_DTYPES), default="fp16", tooltip="fp32 is exact; fp16 halves the size."
                ),
                io.Int.Input(
                    "rank",
                    default=0,
                    min=0,
                    max=MAX_EXPORT_RANK,
                    optional=True,
                    tooltip="0 = full weight differences (.diff, exact). Otherwise a standard LoRA of this rank per "
                    "layer (truncated SVD of each difference): smaller and approximate; a rank at or above a layer's "
                    "width keeps it whole. On the pocket model a quarter of the layer width kept the output within 6 % "
                    "of the adapter's effect; use 0 when the exact result matters.",
                ),
            ],
            outputs=[io.String.Output(display_name="lora_name", tooltip="The written file, as LoRA loaders list it.")],
            is_output_node=True,
        )

    @classmethod
    def fingerprint_inputs(cls, model: Any = None, adapter_name: str = "", **kwargs: Any) -> Any:
        return adapter_file_stamp(adapter_name), tuple(sorted((k, str(v)) for k, v in kwargs.items()))

    @classmethod
    def execute(
        cls,
        model: Any,
        adapter_name: str,
        strength: float = 1.0,
        filename_prefix: str = "taptune/oft_as_lora",
        dtype: str = "fp16",
        rank: int = 0,
    ) -> io.NodeOutput:
        node = "TapTuneExportOFTAsLoRA"
        path = adapter_path(node, "adapter_name", adapter_name)
        with node_errors(node, "adapter_name"):
            dtype_name = choice(dtype, "dtype", EXPORT_DTYPES)
            rank = bounded_integer(0 if rank is None else rank, "rank", 0, MAX_EXPORT_RANK)
            adapter_file = load_adapter_file(path)
            check_architecture(adapter_file.base, model_architecture(model), f"adapter '{adapter_name}'")
            adapter_set = adapter_set_for_model(adapter_file, model)
            s = bounded_number(strength, "strength", -10.0, 10.0)
            if rank:
                diffs = lora_low_rank(model, adapter_set, rank, s, EXPORT_DTYPES[dtype_name])
            else:
                diffs = lora_differences(model, adapter_set, s, EXPORT_DTYPES[dtype_name])
        metadata = {"taptune_source": adapter_name, "taptune_strength": str(float(strength))}
        if rank:
            metadata["taptune_rank"] = str(rank)
        _, name = write_new_output(
            node,
            filename_prefix,
            lambda tmp: save_file(diffs, tmp, metadata=metadata),
            Path(folder_paths.get_folder_paths("loras")[0]),
        )
        size = sum(t.numel() * t.element_size() for t in diffs.values())
        return io.NodeOutput(
            name,
            ui=ui.PreviewText(
                f"saved models/loras/{name}: {len(diffs) // 3 if rank else len(diffs)} layers"
                f"{f' at rank {rank}' if rank else ''}, {size / 2**20:.1f} MiB"
            ),
        )
