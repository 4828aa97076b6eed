"""The ``taptune/1`` file: one safetensors file per adapter set, described by JSON metadata.

Metadata key ``taptune`` holds ``{"format": "taptune/1", "kind": <a registered kind>,
"adapters": [...], "base": {...}, "trigger_word", "class_word", "steps", "notes", ...}``;
unknown fields are kept and passed through. Tensors are named by module path inside the
UNet (``diffusion_model``): ``<path>.<kind marker>.<name>`` (specification §4; the README
lists the whole contract). This module reads and writes the container; what a kind's
entries and tensors mean is the kind's (``tap/``, ``oft/``), and which kinds exist is the
registry's.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .errors import AdapterFileError
from .json_values import parse_json_object
from .safe_write import atomic_write

METADATA_KEY = "taptune"
FORMAT = "taptune/1"
_KNOWN_FIELDS = ("format", "kind", "adapters", "base")
#: Tensor dtypes an adapter file may hold (float8 and integer tensors are refused).
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
#: Adapter tensors are vectors, matrices, skew stacks or conv kernels.
MAX_TENSOR_DIMS = 4
#: Most tensors one adapter file may hold (``kind.MAX_MODULES`` modules of up to 6 tensors each);
#: checked on the header before any tensor is read.
MAX_FILE_TENSORS = 6 * 4096


@dataclass
class AdapterFile:
    """The parsed content of one adapter file.

    ``adapters`` are the raw metadata entries (one per group); ``info`` holds every
    other top-level field (trigger word, steps, notes and any unknown ones).
    """

    kind: str
    adapters: list[dict[str, Any]]
    tensors: dict[str, torch.Tensor]
    base: dict[str, Any] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    #: The file's name as the user knows it (for messages); empty for files not read from disk.
    name: str = ""

    def header(self) -> dict[str, Any]:
        """The JSON object stored under the ``taptune`` metadata key."""
        header: dict[str, Any] = {"format": FORMAT, "kind": self.kind, "adapters": self.adapters}
        if self.base is not None:
            header["base"] = self.base
        for key, value in self.info.items():
            if key not in _KNOWN_FIELDS and value is not None:
                header[key] = value
        return header


def _file_name(path: str | os.PathLike[str]) -> str:
    return Path(path).name


def write_adapter_file(path: str, adapter_file: AdapterFile) -> None:
    """Write the safetensors content to ``path`` as it is (callers make it atomic)."""
    metadata = {METADATA_KEY: json.dumps(adapter_file.header(), sort_keys=True)}
    save_file(plain_tensors(adapter_file), path, metadata=metadata)


def save_adapter_file(path: str | os.PathLike[str], adapter_file: AdapterFile, *, replace: bool = False) -> Path:
    """Save atomically as safetensors with the ``taptune`` metadata (a new file unless ``replace``)."""
    return atomic_write(path, lambda tmp: write_adapter_file(tmp, adapter_file), replace=replace)


def plain_tensors(adapter_file: AdapterFile) -> dict[str, torch.Tensor]:
    """The tensors as safetensors wants them: detached, contiguous, on the CPU."""
    return {k: v.detach().to("cpu").contiguous() for k, v in adapter_file.tensors.items()}


def read_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``taptune`` metadata object of a file, without loading its tensors."""
    name = _file_name(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        detail = type(exc).__name__ if isinstance(exc, OSError) else str(exc)[:200]
        raise AdapterFileError(
            f"not a readable safetensors file (truncated or corrupt?): {detail}", file=name
        ) from None
    raw = metadata.get(METADATA_KEY)
    if raw is None:
        raise AdapterFileError(
            f"no '{METADATA_KEY}' metadata; this is not a TapTune adapter file "
            "(LoRA files go into ComfyUI's LoraLoader instead)",
            file=name,
        )
    try:
        return _checked_header(parse_json_object(raw, f"'{METADATA_KEY}' metadata"))
    except AdapterFileError as exc:
        raise exc.concerning(file=name) from None


def _checked_header(header: dict[str, Any]) -> dict[str, Any]:
    fmt = header.get("format")
    if fmt != FORMAT:
        raise AdapterFileError(f"format {str(fmt)[:40]!r} is not supported; this version reads {FORMAT!r}")
    if not isinstance(header.get("kind"), str):
        raise AdapterFileError("'kind' must be a string")
    adapters = header.get("adapters")
    if not isinstance(adapters, list) or not adapters or not all(isinstance(a, dict) for a in adapters):
        raise AdapterFileError("'adapters' must be a non-empty list of objects")
    if header.get("base") is not None and not isinstance(header["base"], dict):
        raise AdapterFileError("'base' must be an object when present")
    return header


def check_adapter_file(adapter_file: AdapterFile) -> None:
    """The checks :func:`load_adapter_file` makes, on content about to be written (importers call this).

    The metadata goes through the same JSON reading (size, depth, numbers, text) and field checks,
    the tensors through the same count, dtype and shape checks; the kind's own checks are the
    caller's (``from_file``).
    """
    _checked_header(parse_json_object(json.dumps(adapter_file.header(), sort_keys=True), f"'{METADATA_KEY}' metadata"))
    if len(adapter_file.tensors) > MAX_FILE_TENSORS:
        raise AdapterFileError(
            f"holds {len(adapter_file.tensors)} tensors; an adapter file holds at most {MAX_FILE_TENSORS}"
        )
    for key, tensor in adapter_file.tensors.items():
        _checked_tensor(key, tensor)


def _checked_tensor(key: str, tensor: torch.Tensor) -> torch.Tensor:
    if tensor.dtype not in FLOAT_DTYPES:
        raise AdapterFileError(
            f"tensor {key[:200]} has dtype {tensor.dtype}; adapter tensors are float16/32/64 or bf16"
        )
    if tensor.dim() > MAX_TENSOR_DIMS or tensor.numel() == 0:
        raise AdapterFileError(
            f"tensor {key[:200]} has shape {tuple(tensor.shape)}; adapter tensors are 1-D to 4-D, not empty"
        )
    return tensor


def load_adapter_file(path: str | os.PathLike[str]) -> AdapterFile:
    """Read a ``taptune/1`` file (metadata checked, tensors loaded on the CPU and checked for dtype and size)."""
    name = _file_name(path)
    header = read_header(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            keys = list(handle.keys())
            if len(keys) > MAX_FILE_TENSORS:
                raise AdapterFileError(f"holds {len(keys)} tensors; an adapter file holds at most {MAX_FILE_TENSORS}")
            tensors = {key: _checked_tensor(key, handle.get_tensor(key)) for key in keys}
    except AdapterFileError as exc:
        raise exc.concerning(file=name) from None
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as exc:
        raise AdapterFileError(
            f"tensors could not be read (truncated or corrupt?): {str(exc)[:200]}", file=name
        ) from None
    info = {k: v for k, v in header.items() if k not in _KNOWN_FIELDS}
    return AdapterFile(header["kind"], header["adapters"], tensors, header.get("base"), info, name)


#: Dots looked at in a tensor name when finding its module (module paths have fewer than 20).
MAX_NAME_DOTS = 64


def split_by_prefix(
    tensors: dict[str, torch.Tensor], prefixes: dict[str, str]
) -> tuple[dict[str, dict[str, torch.Tensor]], list[str]]:
    """Group ``<prefix>.<name>`` tensors by module: ``({module: {name: tensor}}, stray names)``.

    ``prefixes`` maps each module's tensor prefix to its module path. A name belongs to the
    longest prefix it starts with (a module path may begin with another's); names of no listed
    module are returned sorted as strays. Raises when a listed module has no tensor.
    """
    out: dict[str, dict[str, torch.Tensor]] = {m: {} for m in prefixes.values()}
    stray: list[str] = []
    for key, value in tensors.items():
        parts = key.split(".", MAX_NAME_DOTS)
        for cut in range(len(parts) - 1, 0, -1):
            module = prefixes.get(".".join(parts[:cut]))
            if module is not None:
                out[module][".".join(parts[cut:])] = value
                break
        else:
            stray.append(key)
    empty = [m for m, t in out.items() if not t]
    if empty:
        listed = ", ".join(m[:120] for m in empty[:3])
        raise AdapterFileError(f"no tensors for module(s) {listed}{' ...' if len(empty) > 3 else ''}")
    return out, sorted(stray)
