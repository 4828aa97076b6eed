"""Paths typed into a node: only inside the folders ComfyUI gives (input, output, models).

A path input is resolved (symlinks followed) and must land inside ComfyUI's input folder, its
output folder or one of its model folders; relative paths are taken from the input folder.
Anything else — missing, outside, the wrong kind of file — gets one and the same message, so
that an error never tells whether some other path exists or what it holds.
"""

from __future__ import annotations

from pathlib import Path

import folder_paths

from .common import NodeInputError

#: Longest path text accepted.
MAX_PATH_CHARS = 4096


def allowed_roots() -> list[Path]:
    """ComfyUI's input and output folders, its models folder and every registered model folder, resolved."""
    roots = [folder_paths.get_input_directory(), folder_paths.get_output_directory(), folder_paths.models_dir]
    for paths, _extensions in list(folder_paths.folder_names_and_paths.values()):
        roots.extend(paths)
    resolved = []
    for root in roots:
        try:
            resolved.append(Path(root).resolve())
        except (OSError, RuntimeError):
            continue
    return resolved


def resolve_user_path(
    node: str, input_name: str, value: object, expect: str = "any", *, input_folder_only: bool = False
) -> Path:
    """The resolved path a user typed, if it exists inside ComfyUI's folders (``expect``: file, dir, any).

    With ``input_folder_only`` only ComfyUI's input folder is allowed.
    """
    where = "ComfyUI's input folder" if input_folder_only else "ComfyUI's input, output or models folders"
    refusal = NodeInputError(
        node,
        input_name,
        f"must name an existing {'folder' if expect == 'dir' else 'file' if expect == 'file' else 'file or folder'} "
        f"inside {where} (relative paths start in the input folder)",
    )
    if not isinstance(value, str) or not value.strip():
        raise NodeInputError(node, input_name, "a path is required")
    text = value.strip()
    if len(text) > MAX_PATH_CHARS or "\x00" in text:
        raise refusal
    path = Path(text)
    if not path.is_absolute():
        path = Path(folder_paths.get_input_directory()) / path
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):
        raise refusal from None
    roots = [Path(folder_paths.get_input_directory()).resolve()] if input_folder_only else allowed_roots()
    if not any(real == root or root in real.parents for root in roots):
        raise refusal
    try:
        if (expect == "dir" and not real.is_dir()) or (expect == "file" and not real.is_file()):
            raise refusal
    except OSError:
        raise refusal from None
    return real
