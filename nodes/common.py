"""What every TapTune node shares: categories, custom socket types, input errors, the adapters folder."""

from __future__ import annotations

import os
from pathlib import Path

import folder_paths
from comfy_api.v0_0_2 import io

from ..adapter_core.file_format import numbered_path

ADAPTER_FOLDER = "adapters"
ADAPTER_EXTENSIONS = {".safetensors"}

CATEGORY_LOAD = "TapTune/load"
CATEGORY_TRAIN = "TapTune/train"
CATEGORY_CONVERT = "TapTune/convert"

#: A recipe for new adapters (tap or OFT), made by the spec nodes and consumed by training.
TapTuneSpec = io.Custom("TAPTUNE_SPEC")
#: A trained adapter set with its metadata, made by training and saved by TapTuneSaveAdapter.
TapTuneAdapter = io.Custom("TAPTUNE_ADAPTER")


class NodeInputError(ValueError):
    """Bad input to a node: the message names the node, the input and what was expected."""

    def __init__(self, node: str, input_name: str, message: str) -> None:
        super().__init__(f"{node}: input '{input_name}': {message}")
        self.node = node
        self.input_name = input_name


def register_model_folder() -> None:
    """Register ``models/adapters`` with ``folder_paths``, keeping paths added by extra_model_paths.yaml."""
    default = os.path.join(folder_paths.models_dir, ADAPTER_FOLDER)
    os.makedirs(default, exist_ok=True)
    paths, extensions = folder_paths.folder_names_and_paths.get(ADAPTER_FOLDER, ([], set()))
    paths = list(paths)
    if default not in paths:
        paths.insert(0, default)
    folder_paths.folder_names_and_paths[ADAPTER_FOLDER] = (paths, set(extensions) | ADAPTER_EXTENSIONS)


def adapter_names() -> list[str]:
    """Adapter files under every registered ``adapters`` folder (subfolders included)."""
    register_model_folder()
    return folder_paths.get_filename_list(ADAPTER_FOLDER)


def adapter_path(node: str, input_name: str, name: str) -> Path:
    """Full path of an adapter file chosen in a combo, or a clear error."""
    full = folder_paths.get_full_path(ADAPTER_FOLDER, name) if name else None
    if full is None or not os.path.isfile(full):
        choices = adapter_names()
        listed = ", ".join(choices[:8]) + (" ..." if len(choices) > 8 else "") if choices else "none"
        raise NodeInputError(
            node, input_name, f"no adapter file {name!r} in models/{ADAPTER_FOLDER} (available: {listed})"
        )
    return Path(full)


def adapter_fingerprint(name: str) -> tuple[str, float]:
    """Changes whenever the chosen file changes, so ComfyUI re-runs the node."""
    full = folder_paths.get_full_path(ADAPTER_FOLDER, name) if name else None
    return (name, os.path.getmtime(full) if full and os.path.exists(full) else -1.0)


def adapters_output_folder() -> Path:
    """The first registered ``models/adapters`` folder, where nodes write new files."""
    register_model_folder()
    return Path(folder_paths.get_folder_paths(ADAPTER_FOLDER)[0])


def new_output_file(node: str, filename_prefix: str, folder: Path | None = None) -> tuple[Path, str]:
    """The next numbered file for ``filename_prefix`` and the name a file combo lists it by.

    ``folder`` defaults to the adapters folder; a prefix that is empty or climbs out of the
    folder is the node's input error.
    """
    root = (folder if folder is not None else adapters_output_folder()).resolve()
    try:
        target = numbered_path(root, filename_prefix)
    except ValueError as exc:
        raise NodeInputError(node, "filename_prefix", str(exc)) from None
    return target, target.relative_to(root).as_posix()
