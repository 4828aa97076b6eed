"""Reading files made by other tools (official code, PEFT): bounded, typed, never executing anything.

* Text (YAML, JSON configs): a regular file, at most :data:`MAX_TEXT_BYTES`, UTF-8.
* Weights: ``.safetensors`` through safetensors; anything else through
  ``torch.load(weights_only=True)`` (which refuses to run code), a regular file of at most
  :data:`MAX_WEIGHTS_BYTES`; the result must be a flat mapping of names to float tensors.
  A pickle must be a ``torch.save`` zip archive (PyTorch 1.6+, what the official codes write)
  whose entries are stored uncompressed and add up to no more than the file: the legacy
  format and compressed entries declare sizes that ``torch.load`` allocates before reading
  the bytes behind them (a few bytes on disk could ask for any amount of memory).
"""

from __future__ import annotations

import os
import stat
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import safe_open

from .errors import AdapterFileError
from .file_format import FLOAT_DTYPES, MAX_TENSOR_DIMS

MAX_TEXT_BYTES = 4 * 2**20
MAX_WEIGHTS_BYTES = 4 * 2**30
#: Most tensors one foreign weights file may hold (an SDXL PEFT OFT file holds about 1,000).
MAX_TENSORS = 32_768


def _regular_file(path: str | os.PathLike[str], limit: int) -> Path:
    file = Path(path)
    try:
        info = file.stat()
    except OSError:
        raise AdapterFileError("cannot be read", file=file.name) from None
    if not stat.S_ISREG(info.st_mode):
        raise AdapterFileError("is not a regular file", file=file.name)
    if info.st_size > limit:
        size = f"{limit // 2**20} MiB" if limit >= 2**20 else f"{limit // 2**10} KiB"
        raise AdapterFileError(f"is larger than {size}", file=file.name)
    return file


def read_text_file(path: str | os.PathLike[str], limit: int = MAX_TEXT_BYTES) -> str:
    """The text of a small UTF-8 file (at most ``limit`` bytes), or :class:`AdapterFileError`."""
    file = _regular_file(path, limit)
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise AdapterFileError("is not UTF-8 text", file=file.name) from None
    except OSError:
        raise AdapterFileError("cannot be read", file=file.name) from None


def _checked(file: Path, state: object) -> dict[str, torch.Tensor]:
    if not isinstance(state, Mapping):
        raise AdapterFileError("expected a state dict of tensors", file=file.name)
    if len(state) > MAX_TENSORS:
        raise AdapterFileError(f"holds more than {MAX_TENSORS} entries", file=file.name)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise AdapterFileError("has a non-text key", file=file.name)
        if not isinstance(value, torch.Tensor):
            continue  # config values some tools store beside the tensors
        if value.dtype not in FLOAT_DTYPES:
            if value.dtype.is_floating_point or value.dtype.is_complex:
                raise AdapterFileError(f"tensor {key[:120]} has dtype {value.dtype}", file=file.name)
            continue  # integer buffers (widths, counters) are not weights
        if value.dim() > MAX_TENSOR_DIMS or value.numel() == 0:
            raise AdapterFileError(f"tensor {key[:120]} has shape {tuple(value.shape)}", file=file.name)
        out[key] = value
    return out


def _check_torch_archive(file: Path) -> None:
    """Refuse a pickle whose declared sizes are not backed by its bytes (see the module docstring)."""
    try:
        with zipfile.ZipFile(file) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError):
        raise AdapterFileError(
            "is not a torch.save archive (PyTorch 1.6 or newer); older or damaged pickles are not read", file=file.name
        ) from None
    if len(entries) > MAX_TENSORS + 16:
        raise AdapterFileError(f"holds more than {MAX_TENSORS} entries", file=file.name)
    declared = sum(entry.file_size for entry in entries)
    if any(entry.compress_type != zipfile.ZIP_STORED for entry in entries) or declared > file.stat().st_size:
        raise AdapterFileError(
            "is a torch.save archive with compressed or oversized entries (torch.save writes neither)", file=file.name
        )


def read_weights_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The float tensors of a weights file (safetensors, or a weights-only torch pickle)."""
    file = _regular_file(path, MAX_WEIGHTS_BYTES)
    if file.suffix == ".safetensors":
        try:
            with safe_open(str(file), framework="pt", device="cpu") as handle:
                keys = list(handle.keys())
                if len(keys) > MAX_TENSORS:  # counted on the header, before reading any tensor
                    raise AdapterFileError(f"holds more than {MAX_TENSORS} entries", file=file.name)
                state = {k: handle.get_tensor(k) for k in keys}
        except AdapterFileError:
            raise
        except Exception as exc:  # safetensors raises several types for damaged files
            raise AdapterFileError(f"not a readable safetensors file: {str(exc)[:200]}", file=file.name) from None
        return _checked(file, state)
    _check_torch_archive(file)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=False)
    except Exception as exc:  # any unpickling failure is the file's
        raise AdapterFileError(
            f"cannot be read as a weights-only state dict: {str(exc)[:200]}", file=file.name
        ) from None
    return _checked(file, state)


def safetensors_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The metadata strings of a safetensors file (empty for other files)."""
    file = Path(path)
    if file.suffix != ".safetensors":
        return {}
    try:
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            return dict(handle.metadata() or {})
    except Exception as exc:  # safetensors raises several types for damaged files
        raise AdapterFileError(f"not a readable safetensors file: {str(exc)[:200]}", file=file.name) from None
