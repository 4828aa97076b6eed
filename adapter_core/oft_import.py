"""Import OFT adapters made by other tools into the ``taptune/1`` OFT format.

Two sources, both rotating the *input* side of each linear layer as the paper does:

* Hugging Face PEFT (0.16 and newer; files with ``<module>.oft_R.weight``): per layer a
  ``(r or 1, k(k-1)/2)`` tensor packing the strict upper triangle (row-major) of each block's
  skew matrix ``Q = U - U^T``. With exact Cayley PEFT computes ``(I - Q)(I + Q)^-1`` and
  ``W R^T``: exactly our ``S = Q``. With its Cayley-Neumann setting (its default) PEFT uses a
  truncated series of ``(I + Q)(I - Q)^-1`` instead, the rotation of ``S = -Q``; the import
  takes that exact rotation and reports how far PEFT's truncated series is from it.
  Older PEFT files (``.oft_r`` / ``.oft_s``) are refused, as current PEFT refuses them.
* The official OFT DreamBooth code (``Zeju1997/oft``, ``oft-db``): diffusers attention
  processors saved as ``<attn>.processor.to_q_oft.R`` (also ``to_k``, ``to_v``,
  ``to_out``), raw ``P`` of shape ``(r, k, k)`` (or ``(k, k)`` shared).

Module names are diffusers' (``down_blocks.0.attentions.0...``) and are mapped to ComfyUI's
(``input_blocks.1.1...``) for the SD UNet layout (``layers_per_block`` ResBlocks per level).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from .file_format import AdapterFile, AdapterFileError, parse_json_object
from .oft import OFTConfig, OFTConfigError, cayley, skew
from .oft_set import OFTGroup

_PREFIXES = ("base_model.model.", "unet.", "model.")
_DOWN = re.compile(r"^down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)$")
_MID = re.compile(r"^mid_block\.attentions\.0\.(.+)$")
_UP = re.compile(r"^up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)$")
_OFFICIAL_LAYERS = {"to_q_oft": "to_q", "to_k_oft": "to_k", "to_v_oft": "to_v", "to_out_oft": "to_out.0"}


def diffusers_to_comfy_path(path: str, layers_per_block: int = 2) -> str:
    """Map a diffusers UNet module path inside an attention block to ComfyUI's (LDM) path.

    ``down_blocks.x.attentions.i.rest`` -> ``input_blocks.{1 + x(L+1) + i}.1.rest``;
    ``mid_block.attentions.0.rest`` -> ``middle_block.1.rest``;
    ``up_blocks.x.attentions.i.rest`` -> ``output_blocks.{x(L+1) + i}.1.rest``, with ``L``
    ResBlocks per encoder level (2 in SD 1.x, SD 2.x and SDXL; decoder levels have ``L + 1``).
    """
    for prefix in _PREFIXES:
        if path.startswith(prefix):
            path = path[len(prefix) :]
    if match := _DOWN.match(path):
        level, index, rest = int(match[1]), int(match[2]), match[3]
        return f"input_blocks.{1 + level * (layers_per_block + 1) + index}.1.{rest}"
    if match := _MID.match(path):
        return f"middle_block.1.{match[1]}"
    if match := _UP.match(path):
        level, index, rest = int(match[1]), int(match[2]), match[3]
        return f"output_blocks.{level * (layers_per_block + 1) + index}.1.{rest}"
    raise AdapterFileError(
        f"{path!r} is not inside a UNet attention block (down_blocks/mid_block/up_blocks ... attentions)"
    )


def _load_any(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and (safetensors only) the metadata of a weights file."""
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                return {k: handle.get_tensor(k) for k in handle.keys()}, handle.metadata() or {}  # noqa: SIM118
        except Exception as exc:  # safetensors raises several types for damaged files
            raise AdapterFileError(f"{path.name}: not a readable safetensors file: {exc}") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise AdapterFileError(f"{path.name}: cannot be read as a weights-only state dict: {exc}") from None
    if not isinstance(state, Mapping):
        raise AdapterFileError(f"{path.name}: expected a state dict")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}, {}


def _group(layers: list[str], **config: Any) -> dict[str, Any]:
    """A metadata entry for ``layers``, validated as any TapTune OFT group is."""
    try:
        return OFTGroup(OFTConfig(**config), sorted(layers)).to_json()
    except OFTConfigError as exc:
        raise AdapterFileError(f"the adapter's OFT settings are not valid: {exc}") from None


def read_oft_source(source: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Tensors and (for PEFT) the adapter configuration of a file or a PEFT output folder."""
    path = Path(source)
    config: dict[str, Any] | None = None
    if path.is_dir():
        weights = [p for p in (path / "adapter_model.safetensors", path / "adapter_model.bin") if p.exists()]
        weights = weights or sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin"))
        if not weights:
            raise AdapterFileError(f"{path}: no adapter_model.safetensors / .bin inside")
        if (path / "adapter_config.json").exists():
            config = parse_json_object((path / "adapter_config.json").read_text(), "adapter_config.json")
        path = weights[0]
    elif not path.is_file():
        raise AdapterFileError(f"{path} does not exist")
    state, metadata = _load_any(path)
    if config is None and "lora_adapter_metadata" in metadata:
        config = parse_json_object(metadata["lora_adapter_metadata"], "lora_adapter_metadata")
    if config is None and (path.parent / "adapter_config.json").exists():
        config = parse_json_object((path.parent / "adapter_config.json").read_text(), "adapter_config.json")
    return state, config


def detect_oft_format(state: Mapping[str, torch.Tensor]) -> str:
    """``peft`` (0.16+), ``official``, or an error naming what the file is."""
    keys = list(state)
    if any(k.endswith(".oft_R.weight") for k in keys):
        return "peft"
    if any(".oft_r" in k or ".oft_s" in k for k in keys):
        raise AdapterFileError(
            "this is an OFT file from PEFT 0.15 or older (.oft_r/.oft_s); current PEFT reads those differently and "
            "refuses them, and so does TapTune: re-save it with PEFT >= 0.16"
        )
    if any(k.split(".")[-2] in _OFFICIAL_LAYERS and k.endswith(".R") for k in keys if k.count(".") >= 2):
        return "official"
    if any(k.endswith(".oft_blocks") for k in keys):
        raise AdapterFileError(
            "this is a LyCORIS/kohya OFT file (.oft_blocks, output-side rotation); load it with ComfyUI's own LoraLoader"
        )
    raise AdapterFileError("no OFT tensors found (expected PEFT '.oft_R.weight' or official '_oft.R' keys)")


def _unpack_upper(vector: torch.Tensor) -> torch.Tensor:
    """Blocks ``U - U^T`` from PEFT's packed strict upper triangles, shape ``(blocks, k, k)``."""
    n = vector.shape[-1]
    k = round((1 + math.sqrt(1 + 8 * n)) / 2)
    if k * (k - 1) // 2 != n:
        raise AdapterFileError(f"a packed OFT block of {n} values is not a k(k-1)/2 triangle")
    rows, cols = torch.triu_indices(k, k, 1)
    upper = torch.zeros(vector.shape[0], k, k, dtype=torch.float64)
    upper[:, rows, cols] = vector.double()
    return upper - upper.transpose(1, 2)


def _peft_version_at_least(version: str | None, wanted: tuple[int, int]) -> bool:
    if not version:
        return False
    numbers = tuple(int(p) for p in re.findall(r"\d+", version)[:2])
    return numbers >= wanted


def peft_neumann_rotation(Q: torch.Tensor, terms: int, peft_version: str | None) -> torch.Tensor:
    """The truncated series PEFT uses with ``use_cayley_neumann``: ``I + 2Q + 2Q^2 + ...``.

    From PEFT 0.18 the last term has coefficient 1 (``... + 2Q^(n-2) + Q^(n-1)``); 0.16 and
    0.17 (no ``peft_version`` in the config) use 2 throughout (``... + 2Q^(n-1)``).
    """
    eye = torch.eye(Q.shape[-1], dtype=Q.dtype).expand_as(Q)
    R = eye.clone()
    if terms <= 1:
        return R
    R = R + 2.0 * Q
    if terms == 2:
        return R
    power = Q @ Q
    R = R + 2.0 * power
    if _peft_version_at_least(peft_version, (0, 18)):
        for _ in range(3, terms - 1):
            power = power @ Q
            R = R + 2.0 * power
        return R + power @ Q
    for _ in range(3, terms):
        power = power @ Q
        R = R + 2.0 * power
    return R


def oft_file_from_peft(
    state: Mapping[str, torch.Tensor], config: Mapping[str, Any] | None, layers_per_block: int = 2
) -> AdapterFile:
    """A ``kind: "oft"`` file from PEFT OFT tensors (and its ``adapter_config.json``)."""
    if config is None:
        raise AdapterFileError("a PEFT OFT adapter needs its adapter_config.json (or diffusers' lora_adapter_metadata)")
    if config.get("peft_type", "OFT") != "OFT":
        raise AdapterFileError(f"adapter_config.json is for {config.get('peft_type')}, not OFT")
    if config.get("oft_block_size") is None:
        raise AdapterFileError("adapter_config.json has no oft_block_size: an OFT file from PEFT <= 0.13, refused")
    neumann = bool(config.get("use_cayley_neumann", False))
    terms = int(config.get("num_cayley_neumann_terms", 5))
    shared = bool(config.get("block_share", False))
    tensors: dict[str, torch.Tensor] = {}
    by_block_size: dict[int, list[str]] = {}
    worst = 0.0
    for key, value in state.items():
        if not key.endswith(".oft_R.weight"):
            continue
        layer = diffusers_to_comfy_path(key[: -len(".oft_R.weight")], layers_per_block)
        Q = _unpack_upper(value)
        S = -Q if neumann else Q
        if neumann:
            approx = peft_neumann_rotation(Q, terms, config.get("peft_version"))
            worst = max(worst, float((approx - cayley(S)).abs().max()))
        tensors[f"{layer}.oft.S"] = (S[0] if shared else S).to(torch.float32)
        by_block_size.setdefault(Q.shape[-1], []).append(layer)
    if not tensors:
        raise AdapterFileError("no '.oft_R.weight' tensors in the PEFT file")
    if worst > 1e-3:
        raise AdapterFileError(
            f"PEFT's Cayley-Neumann series ({terms} terms) is far from orthogonal for this adapter (max entry error "
            f"{worst:.2g}); it cannot be represented as an exact rotation"
        )
    coft = bool(config.get("coft", False))
    # PEFT clips ||Q|| to eps / sqrt(blocks); the paper (and TapTune) clip ||P|| to eps k^2 / sqrt(blocks),
    # so the same constraint is eps_peft / k^2 here.
    eps = float(config.get("eps", 6e-5))
    groups = [
        _group(layers, r=None, block_size=k, block_share=shared, coft=coft, eps=eps / (k * k))
        for k, layers in sorted(by_block_size.items())
    ]
    notes = "imported from Hugging Face PEFT OFT"
    if neumann:
        notes += f" (Cayley-Neumann, {terms} terms; max entry difference to the exact rotation {worst:.2g})"
    return AdapterFile("oft", groups, tensors, None, {"notes": notes})


def oft_file_from_official(
    state: Mapping[str, torch.Tensor], layers_per_block: int = 2, coft: bool = True, eps: float = 6e-5
) -> AdapterFile:
    """A ``kind: "oft"`` file from the official OFT DreamBooth output (``...processor.to_q_oft.R``)."""
    tensors: dict[str, torch.Tensor] = {}
    groups: dict[tuple[int | None, int | None], list[str]] = {}
    for key, value in state.items():
        parts = key.split(".")
        if len(parts) < 4 or parts[-1] != "R" or parts[-2] not in _OFFICIAL_LAYERS or parts[-3] != "processor":
            continue
        attention = ".".join(parts[:-3])
        layer = diffusers_to_comfy_path(f"{attention}.{_OFFICIAL_LAYERS[parts[-2]]}", layers_per_block)
        raw = value.to(torch.float64)
        tensors[f"{layer}.oft.S"] = skew(raw).to(torch.float32)  # (k, k) when shared, else (r, k, k)
        # A shared block is configured by its size (r differs per layer width), separate ones by r.
        shape = (None, raw.shape[-1]) if raw.dim() == 2 else (raw.shape[0], None)
        groups.setdefault(shape, []).append(layer)
    if not tensors:
        raise AdapterFileError("no official OFT tensors ('<attention>.processor.to_q_oft.R' ...)")
    entries = [
        _group(layers, r=r, block_size=block_size, block_share=r is None, coft=coft, eps=eps)
        for (r, block_size), layers in sorted(groups.items(), key=lambda item: (item[0][0] or 0, item[0][1] or 0))
    ]
    return AdapterFile("oft", entries, tensors, None, {"notes": "imported from the official OFT DreamBooth code"})


def import_oft(source: str | os.PathLike[str], layers_per_block: int = 2) -> AdapterFile:
    """Read a PEFT OFT adapter (folder or file) or an official OFT output into an OFT file."""
    state, config = read_oft_source(source)
    kind = detect_oft_format(state)
    if kind == "peft":
        return oft_file_from_peft(state, config, layers_per_block)
    return oft_file_from_official(state, layers_per_block)
