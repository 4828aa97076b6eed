"""The ``taptune/1`` file: one safetensors file per adapter set, described by JSON metadata.

Metadata key ``taptune`` holds ``{"format": "taptune/1", "kind": "tap" | "oft",
"adapters": [...], "base": {...}, "trigger_word", "class_word", "steps", "notes", ...}``;
unknown fields are kept and passed through. Tensors are named by module path inside
ComfyUI's ``diffusion_model`` (see the README for the full contract).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

METADATA_KEY = "taptune"
FORMAT = "taptune/1"
KINDS: tuple[str, ...] = ("tap", "oft")
_KNOWN_FIELDS = ("format", "kind", "adapters", "base")


class AdapterFileError(ValueError):
    """A file that is not a readable ``taptune/1`` adapter file."""


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

    def header(self) -> dict[str, Any]:
        """The JSON object stored under the ``taptune`` metadata key."""
        header: dict[str, Any] = {"format": FORMAT, "kind": self.kind, "adapters": self.adapters}
        if self.base is not None:
            header["base"] = self.base
        for key, value in self.info.items():
            if key not in _KNOWN_FIELDS and value is not None:
                header[key] = value
        return header


def atomic_write(path: str | os.PathLike[str], write: Any) -> Path:
    """Write a file through a temporary file in the same folder, then rename it into place.

    ``write(tmp_path)`` produces the content. A crash leaves either the old file or the
    new one, never half of one.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target


def save_adapter_file(path: str | os.PathLike[str], adapter_file: AdapterFile) -> Path:
    """Save atomically as safetensors with the ``taptune`` metadata."""
    if adapter_file.kind not in KINDS:
        raise AdapterFileError(f"unknown adapter kind {adapter_file.kind!r}; allowed: {', '.join(KINDS)}")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in adapter_file.tensors.items()}
    metadata = {METADATA_KEY: json.dumps(adapter_file.header(), sort_keys=True)}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``taptune`` metadata object of a file, without loading its tensors."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise AdapterFileError(
            f"{Path(path).name}: not a readable safetensors file (truncated or corrupt?): {exc}"
        ) from None
    raw = metadata.get(METADATA_KEY)
    if raw is None:
        raise AdapterFileError(
            f"{Path(path).name}: no '{METADATA_KEY}' metadata; this is not a TapTune adapter file "
            "(LoRA files go into ComfyUI's LoraLoader instead)"
        )
    header = parse_json_object(raw, f"{Path(path).name}: '{METADATA_KEY}' metadata")
    fmt = header.get("format")
    if fmt != FORMAT:
        raise AdapterFileError(f"{Path(path).name}: format {fmt!r} is not supported; this version reads {FORMAT!r}")
    kind = header.get("kind")
    if kind not in KINDS:
        raise AdapterFileError(f"{Path(path).name}: unknown adapter kind {kind!r}; allowed: {', '.join(KINDS)}")
    adapters = header.get("adapters")
    if not isinstance(adapters, list) or not all(isinstance(a, dict) for a in adapters) or not adapters:
        raise AdapterFileError(f"{Path(path).name}: 'adapters' must be a non-empty list of objects")
    base = header.get("base")
    if base is not None and not isinstance(base, dict):
        raise AdapterFileError(f"{Path(path).name}: 'base' must be an object when present")
    return header


def parse_json_object(text: str, what: str) -> dict[str, Any]:
    """``text`` parsed as a JSON object; ``what`` names it in the :class:`AdapterFileError` otherwise."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AdapterFileError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise AdapterFileError(f"{what} must be a JSON object")
    return value


def load_adapter_file(path: str | os.PathLike[str]) -> AdapterFile:
    """Read a ``taptune/1`` file (metadata checked, tensors loaded on the CPU)."""
    header = read_header(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - a safe_open handle is not a dict
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise AdapterFileError(f"{Path(path).name}: tensors could not be read (truncated or corrupt?): {exc}") from None
    info = {k: v for k, v in header.items() if k not in _KNOWN_FIELDS}
    return AdapterFile(header["kind"], header["adapters"], tensors, header.get("base"), info)


def split_by_module(
    tensors: dict[str, torch.Tensor], modules: list[str], marker: str
) -> dict[str, dict[str, torch.Tensor]]:
    """Group ``<module>.<marker>.<rest>`` tensors by module: ``{module: {"<marker>.<rest>": t}}``.

    Raises when a listed module has no tensor; tensors of unlisted modules are reported
    by :func:`unclaimed_tensors`.
    """
    out: dict[str, dict[str, torch.Tensor]] = {m: {} for m in modules}
    for key, value in tensors.items():
        head, sep, rest = key.partition(f".{marker}.")
        if sep and head in out:
            out[head][f"{marker}.{rest}"] = value
    empty = [m for m, t in out.items() if not t]
    if empty:
        raise AdapterFileError(
            f"no '{marker}' tensors for module(s) {', '.join(empty[:3])}{' ...' if len(empty) > 3 else ''}"
        )
    return out


def unclaimed_tensors(tensors: dict[str, torch.Tensor], modules: list[str], marker: str) -> list[str]:
    """Tensor names that belong to no listed module."""
    claimed = {m for m in modules}
    return sorted(k for k in tensors if k.partition(f".{marker}.")[0] not in claimed)


def numbered_path(folder: str | os.PathLike[str], prefix: str, suffix: str = ".safetensors") -> Path:
    """``<folder>/<prefix>_<counter>.safetensors`` with the next free 5-digit counter.

    ``prefix`` may contain subfolders (``taptune/dog``); it may not climb out of ``folder``.
    """
    root = Path(folder).resolve()
    prefix = prefix.strip().replace("\\", "/").strip("/")
    if not prefix:
        raise ValueError("filename_prefix is empty")
    target_dir = (root / prefix).parent.resolve()
    if target_dir != root and root not in target_dir.parents:
        raise ValueError(f"filename_prefix {prefix!r} points outside {root}")
    stem = Path(prefix).name
    highest = 0
    if target_dir.is_dir():
        for existing in target_dir.glob(f"{stem}_*{suffix}"):
            number = existing.name[len(stem) + 1 : -len(suffix)]
            if number.isdigit():
                highest = max(highest, int(number))
    return target_dir / f"{stem}_{highest + 1:05d}{suffix}"
