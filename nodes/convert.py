"""Nodes that bring adapters made elsewhere into the TapTune format."""

from __future__ import annotations

import os
from pathlib import Path

import folder_paths
from comfy_api.v0_0_2 import io, ui

from ..adapter_core.file_format import AdapterFileError, save_adapter_file
from ..adapter_core.official_tap_import import import_official_tap_dir
from ..adapter_core.tap_points import TapConfigError
from .common import CATEGORY_CONVERT, NodeInputError, new_output_file


def resolve_user_path(node: str, input_name: str, value: str, expect: str = "any") -> Path:
    """An absolute path, or one relative to ComfyUI's input folder; a clear error if it is missing.

    ``expect`` is ``file``, ``dir`` or ``any``.
    """
    if not value.strip():
        raise NodeInputError(node, input_name, "a path is required")
    path = Path(os.path.expanduser(value.strip()))
    if not path.is_absolute():
        path = Path(folder_paths.get_input_directory()) / path
    if expect == "dir" and not path.is_dir():
        raise NodeInputError(node, input_name, f"{path} is not a folder")
    if expect == "file" and not path.is_file():
        raise NodeInputError(node, input_name, f"{path} is not a file")
    if not path.exists():
        raise NodeInputError(node, input_name, f"{path} does not exist")
    return path


class TapTuneImportOfficialAdapters(io.ComfyNode):
    """Convert a folder saved by the paper's official code into one TapTune adapter file."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TapTuneImportOfficialAdapters",
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
                    tooltip="The official adapter folder: an absolute path or one inside ComfyUI's input folder.",
                ),
                io.String.Input(
                    "config",
                    default="",
                    tooltip="The official YAML config; empty = the single .yaml inside the folder.",
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
        node = "TapTuneImportOfficialAdapters"
        folder = resolve_user_path(node, "directory", directory, "dir")
        config_path = resolve_user_path(node, "config", config, "file") if config.strip() else None
        try:
            tap_set = import_official_tap_dir(folder, config_path)
        except (AdapterFileError, TapConfigError) as exc:
            raise NodeInputError(node, "directory", str(exc)) from None
        target, name = new_output_file(node, filename_prefix)
        save_adapter_file(target, tap_set.to_file(notes=f"imported from the official code's folder {folder.name}"))
        return io.NodeOutput(name, ui=ui.PreviewText(f"saved {name}: " + "; ".join(tap_set.describe())))
