"""TapTuneImportOfficialAdapters: a folder saved by the Closer-Look paper's official code, into one TapTune file."""

from __future__ import annotations

from comfy_api.v0_0_2 import io, ui

from ..adapter_core.file_format import check_adapter_file, write_adapter_file
from ..adapter_core.tap.tap_official_import import import_official_tap_dir
from .common import CATEGORY_CONVERT, node_errors, write_new_output
from .user_paths import resolve_user_path

NODE = "TapTuneImportOfficialAdapters"


class TapTuneImportOfficialAdapters(io.ComfyNode):
    """Convert a folder saved by the paper's official code into one TapTune adapter file."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=NODE,
            display_name="TapTune Import Official Tap Adapters",
            category=CATEGORY_CONVERT,
            description=(
                "Converts adapters saved by the official code of 'A Closer Look at Parameter-Efficient Tuning "
                "in Diffusion Models' (a folder of <module>.adapter_inout.pt / <module>.adapter.pt files plus "
                "its <din>-<dout>.yaml) into one .safetensors file in models/adapters. Pickles are read with "
                "torch.load(weights_only=True)."
            ),
            inputs=[
                io.String.Input(
                    "directory",
                    default="",
                    tooltip="The official adapter folder, inside ComfyUI's input, output or models folder (relative "
                    "paths start in the input folder).",
                ),
                io.String.Input(
                    "config",
                    default="",
                    tooltip="The official YAML config (same folders allowed); empty = the single .yaml inside the folder.",
                ),
                io.String.Input(
                    "filename_prefix",
                    default="imported/official",
                    tooltip="Written as models/adapters/<prefix>_<counter>.safetensors.",
                ),
            ],
            outputs=[io.String.Output(display_name="adapter_name", tooltip="The new file, as the loader lists it.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, directory: str, config: str = "", filename_prefix: str = "imported/official") -> io.NodeOutput:
        folder = resolve_user_path(NODE, "directory", directory, "dir")
        config_path = resolve_user_path(NODE, "config", config, "file") if str(config).strip() else None
        with node_errors(NODE, "directory"):
            tap_set = import_official_tap_dir(folder, config_path)
            adapter_file = tap_set.to_file(notes=f"imported from the official code's folder {folder.name}")
            check_adapter_file(adapter_file)  # what is written must load (the folder name is in it too)
        _, name = write_new_output(NODE, filename_prefix, lambda tmp: write_adapter_file(tmp, adapter_file))
        return io.NodeOutput(name, ui=ui.PreviewText(f"saved {name}: " + "; ".join(tap_set.describe())))
