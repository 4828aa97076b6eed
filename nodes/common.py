"""What every TapTune node shares: categories, custom socket types, the adapters folder, and errors.

Every node reports bad input the same way: the pack's error family is caught once, by
:func:`node_errors`, and becomes a :class:`NodeInputError` whose message names the node, the
input (the one the error carries, else the node's main input), the file and the problem.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import folder_paths
from comfy_api.v0_0_2 import io

from ..adapter_core.errors import ConfigError, TapTuneError
from ..adapter_core.safe_write import write_numbered

ADAPTER_FOLDER = "adapters"
ADAPTER_EXTENSIONS = {".safetensors"}

CATEGORY_LOAD = "TapTune/load"
CATEGORY_TRAIN = "TapTune/train"
CATEGORY_CONVERT = "TapTune/convert"
CATEGORY_IMAGE = "TapTune/image"

#: A recipe for new adapters (tap or OFT), made by the spec nodes and consumed by training.
TapTuneSpec = io.Custom("TAPTUNE_SPEC")
#: A trained adapter set with its metadata, made by training and saved by TapTuneSaveAdapter.
TapTuneAdapter = io.Custom("TAPTUNE_ADAPTER")


class NodeInputError(TapTuneError):
    """Bad input to a node: the message names the node, the input and what was expected."""

    def __init__(self, node: str, input_name: str, message: str, file: str | None = None) -> None:
        detail = f"{file}: {message}" if file and not message.startswith(file) else message
        super().__init__(f"{node}: input '{input_name}': {detail}", input_name=input_name, file=file)
        self.node = node

    def __str__(self) -> str:
        # The message already names the file after the node and input; never prefix it again.
        return self.message


@contextlib.contextmanager
def node_errors(node: str, default_input: str) -> Iterator[None]:
    """Turn the pack's errors raised inside into the node's message (node, input, file, problem)."""
    try:
        yield
    except NodeInputError:
        raise
    except TapTuneError as exc:
        raise NodeInputError(node, exc.input_name or default_input, exc.message, exc.file) from None


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
    """Adapter files under every registered ``adapters`` folder (subfolders included); never raises."""
    try:
        register_model_folder()
        names = folder_paths.get_filename_list(ADAPTER_FOLDER)
    except OSError:
        return []
    # Never a file inside a hidden folder: a file being written atomically lives in one until it is whole.
    return [n for n in names if not any(part.startswith(".") for part in n.replace("\\", "/").split("/")[:-1])]


def adapter_path(node: str, input_name: str, name: str) -> Path:
    """Full path of an adapter file chosen in a combo, or a clear error."""
    full = folder_paths.get_full_path(ADAPTER_FOLDER, name) if isinstance(name, str) and name else None
    if full is None or not os.path.isfile(full):
        choices = adapter_names()
        listed = ", ".join(choices[:8]) + (" ..." if len(choices) > 8 else "") if choices else "none"
        raise NodeInputError(
            node, input_name, f"no adapter file {str(name)[:200]!r} in models/{ADAPTER_FOLDER} (available: {listed})"
        )
    return Path(full)


def adapter_file_stamp(name: str) -> tuple[str, float]:
    """Changes whenever the chosen file changes, so ComfyUI re-runs the node (its ``fingerprint_inputs``)."""
    try:
        full = folder_paths.get_full_path(ADAPTER_FOLDER, name) if name else None
        return (name, os.path.getmtime(full) if full and os.path.exists(full) else -1.0)
    except (OSError, TypeError, ValueError):
        return (str(name), -1.0)


def adapters_output_folder() -> Path:
    """The first registered ``models/adapters`` folder, where nodes write new files."""
    register_model_folder()
    return Path(folder_paths.get_folder_paths(ADAPTER_FOLDER)[0])


def write_new_output(
    node: str, filename_prefix: str, write: Callable[[str], object], folder: Path | None = None
) -> tuple[Path, str]:
    """Write a new numbered file ``<folder>/<prefix>_<counter>.safetensors``; returns it and its combo name.

    ``folder`` defaults to the adapters folder. The file is created whole or not at all and never
    replaces an existing one; a bad prefix is the node's ``filename_prefix`` error.
    """
    root = (folder if folder is not None else adapters_output_folder()).resolve()
    with node_errors(node, "filename_prefix"):
        target = write_numbered(root, filename_prefix, write)
    return target, target.relative_to(root).as_posix()


def bounded_number(value: object, input_name: str, low: float, high: float) -> float:
    """``value`` as a float within ``low..high``; NaN, infinities and non-numbers are the input's error.

    ComfyUI checks widget minimums and maximums, but NaN passes every comparison.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"must be a finite number, got {str(value)[:40]}", input_name=input_name)
    if not low <= value <= high:
        raise ConfigError(f"must be within {low:g}..{high:g}, got {value:g}", input_name=input_name)
    return float(value)


def bounded_integer(value: object, input_name: str, low: int, high: int) -> int:
    """``value`` as an int within ``low..high`` (an integral float is accepted), else the input's error."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"must be an integer within {low}..{high}, got {str(value)[:40]}", input_name=input_name)
    return value


def choice(value: object, input_name: str, options: Iterable[str]) -> str:
    """``value`` if it is one of ``options`` (API prompts can send anything), else the input's error."""
    allowed = list(options)
    if not isinstance(value, str) or value not in allowed:
        listed = ", ".join(allowed[:12]) + (" ..." if len(allowed) > 12 else "")
        raise ConfigError(f"{str(value)[:60]!r} is not one of: {listed}", input_name=input_name)
    return value


def first_input(value: Any, default: Any = None) -> Any:
    """The value of an input of an ``is_input_list`` node: ComfyUI hands every input over as a list."""
    if isinstance(value, list):
        return value[0] if value else default
    return default if value is None else value


def hidden_input(node: type, name: str) -> Any:
    """A hidden input (``unique_id``, ``prompt``) of the running node, or ``None`` when it runs outside ComfyUI's executor.

    ComfyUI sets ``cls.hidden`` only while its executor runs the node; code that calls ``execute``
    directly (headless tools, tests) gets ``None`` rather than an AttributeError.
    """
    hidden = getattr(node, "hidden", None)
    return first_input(getattr(hidden, name, None)) if hidden is not None else None
