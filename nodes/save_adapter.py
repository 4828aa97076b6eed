"""TapTuneSaveAdapter: write a trained adapter into models/adapters, atomically."""

from __future__ import annotations

from typing import Any

from comfy_api.v0_0_2 import io, ui

from ..adapter_core.file_format import write_adapter_file
from ..training.trained_adapter import TrainedAdapter
from .common import CATEGORY_TRAIN, NodeInputError, TapTuneAdapter, write_new_output

NODE = "TapTuneSaveAdapter"


class TapTuneSaveAdapter(io.ComfyNode):
    """Save a trained adapter as a shareable .safetensors file (taptune/1 format)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=NODE,
            display_name="TapTune Save Adapter",
            category=CATEGORY_TRAIN,
            description=(
                "Writes the trained adapter to models/adapters/<prefix>_<counter>.safetensors (atomically: a crash never "
                "leaves half a file), with its configuration, trigger word, class word, base architecture, steps and "
                "final loss in the metadata. TapTuneLoadAdapter loads it in any workflow."
            ),
            inputs=[
                TapTuneAdapter.Input("adapter", tooltip="From TapTuneDreamBoothTrain."),
                io.String.Input(
                    "filename_prefix", default="taptune/adapter", tooltip="Subfolders allowed; a counter is appended."
                ),
            ],
            outputs=[
                io.String.Output(display_name="adapter_name", tooltip="The file, as TapTuneLoadAdapter lists it.")
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, adapter: Any, filename_prefix: str = "taptune/adapter") -> io.NodeOutput:
        if not isinstance(adapter, TrainedAdapter):
            raise NodeInputError(NODE, "adapter", "connect the adapter output of TapTuneDreamBoothTrain")
        adapter_file = adapter.to_file()
        _, name = write_new_output(NODE, filename_prefix, lambda tmp: write_adapter_file(tmp, adapter_file))
        info = adapter.info
        summary = f"saved models/adapters/{name}: {adapter.kind}, {adapter.adapter_set.num_parameters():,} parameters"
        if info.get("steps") is not None:
            summary += f", {info['steps']} steps, final loss {info.get('final_loss')}"
        return io.NodeOutput(name, ui=ui.PreviewText(summary))
