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

from ..errors import AdapterFileError
from ..file_format import AdapterFile, check_adapter_file
from ..foreign_files import read_text_file, read_weights_file, safetensors_metadata
from ..json_values import bool_field, float_field, int_field, parse_json_object, str_field
from ..kind import MAX_MODULES
from .cayley import MAX_NEUMANN_TERMS, cayley, skew
from .oft_config import MAX_BLOCKS, OFTConfig
from .oft_set import OFTAdapterSet

#: The official DreamBooth script's settings are the paper's (OFTConfig's defaults).
PAPER_SETTING = OFTConfig()
#: PEFT's own default ``eps`` (on ``Q``, a different scale from the paper's; see oft_file_from_peft).
PEFT_DEFAULT_EPS = 6e-5
_PREFIXES = ("base_model.model.", "unet.", "model.")
_DOWN = re.compile(r"^down_blocks\.(\d{1,4})\.attentions\.(\d{1,4})\.(.+)$")
_MID = re.compile(r"^mid_block\.attentions\.0\.(.+)$")
_UP = re.compile(r"^up_blocks\.(\d{1,4})\.attentions\.(\d{1,4})\.(.+)$")
_OFFICIAL_LAYERS = {"to_q_oft": "to_q", "to_k_oft": "to_k", "to_v_oft": "to_v", "to_out_oft": "to_out.0"}
#: Most generator entries (blocks x k x k over all layers, i.e. input width x k) a PEFT import unpacks,
#: checked from the tensor shapes before anything is unpacked. SD 1.x's attention layers add up to
#: about 0.1M input channels (3M entries with PEFT's 32-wide blocks), SDXL's to about 0.7M (k up to
#: about 190 fits); the converted file holds 4 bytes per entry.
MAX_IMPORT_ELEMENTS = 2**27
#: Largest multiply-add count spent on checking PEFT's Cayley-Neumann series exactly (about a second on
#: one core); only reached when the cheap norm bound cannot show the series is close enough.
MAX_CHECK_WORK = 2 * 10**9
#: Tolerated entry difference between PEFT's truncated series and the exact rotation.
NEUMANN_TOLERANCE = 1e-3


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
        f"{path[:200]!r} is not inside a UNet attention block (down_blocks/mid_block/up_blocks ... attentions)"
    )


def _group(layers: list[str], **config: Any) -> dict[str, Any]:
    """A metadata entry for ``layers``, validated as any TapTune OFT group is."""
    try:
        return {**OFTConfig(**config).to_json(), "modules": sorted(layers)}
    except ValueError as exc:
        raise AdapterFileError(f"the adapter's OFT settings are not valid: {exc}") from None


def read_oft_source(source: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Tensors and (for PEFT) the adapter configuration of a file or a PEFT output folder."""
    path = Path(source)
    config: dict[str, Any] | None = None
    if path.is_dir():
        weights = [p for p in (path / "adapter_model.safetensors", path / "adapter_model.bin") if p.exists()]
        weights = weights or sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin"))
        if not weights:
            raise AdapterFileError("no adapter_model.safetensors / .bin inside", file=path.name)
        if (path / "adapter_config.json").exists():
            config = _json_file(path / "adapter_config.json")
        path = weights[0]
    elif not path.is_file():
        raise AdapterFileError("does not exist", file=path.name)
    state = read_weights_file(path)
    metadata = safetensors_metadata(path)
    if config is None and "lora_adapter_metadata" in metadata:
        config = parse_json_object(metadata["lora_adapter_metadata"], f"{path.name}: lora_adapter_metadata")
    if config is None and (path.parent / "adapter_config.json").exists():
        config = _json_file(path.parent / "adapter_config.json")
    return state, config


def _json_file(path: Path) -> dict[str, Any]:
    return parse_json_object(read_text_file(path), path.name)


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


def _packed_size(vector: torch.Tensor) -> tuple[int, int]:
    """``(blocks, k)`` of a packed PEFT tensor, from its shape alone (checked, nothing allocated)."""
    if vector.dim() != 2:
        raise AdapterFileError(f"a packed OFT tensor must be 2-D (blocks, k(k-1)/2), got {tuple(vector.shape)}")
    blocks, n = int(vector.shape[0]), int(vector.shape[1])
    k = round((1 + math.sqrt(1 + 8 * n)) / 2)
    if k * (k - 1) // 2 != n or k > MAX_BLOCKS:
        raise AdapterFileError(f"a packed OFT block of {n} values is not a k(k-1)/2 triangle")
    if blocks * k > MAX_BLOCKS:
        raise AdapterFileError(f"{blocks} blocks of size {k} make a layer wider than {MAX_BLOCKS}")
    return blocks, k


def _unpack_upper(vector: torch.Tensor) -> torch.Tensor:
    """Blocks ``U - U^T`` from PEFT's packed strict upper triangles, shape ``(blocks, k, k)``."""
    _, k = _packed_size(vector)
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


def peft_neumann_error_bound(Q: torch.Tensor, terms: int) -> float:
    """Upper bound on the largest entry of ``peft_neumann_rotation(Q, terms, v) - cayley(-Q)``, any ``v``.

    The exact rotation is ``I + 2 (Q + Q^2 + ...)``; the truncated series drops ``2 Q^i`` for
    ``i >= terms`` and (PEFT 0.18) halves the last kept term, so with ``q`` bounding ``||Q||_2``
    (here the Frobenius norm, which costs no decomposition) the difference is at most
    ``q^(terms-1) + 2 q^terms / (1 - q)``; infinite when ``q >= 1``.
    """
    q = float(torch.linalg.matrix_norm(Q).max())
    if q >= 1.0:
        return math.inf
    return q ** max(terms - 1, 0) + 2.0 * q**terms / (1.0 - q)


def _check_layer_count(keys: list[str]) -> None:
    """Refuse more layers than a file may hold, before any is converted (each costs some work)."""
    if len(keys) > MAX_MODULES:
        raise AdapterFileError(f"{len(keys)} OFT layers; a file holds at most {MAX_MODULES}")


def _check_work(state: Mapping[str, torch.Tensor]) -> None:
    """Refuse a PEFT file whose generators would unpack into more than :data:`MAX_IMPORT_ELEMENTS` entries."""
    _check_layer_count([k for k in state if k.endswith(".oft_R.weight")])
    total = 0
    for key, value in state.items():
        if key.endswith(".oft_R.weight"):
            blocks, k = _packed_size(value)
            total += blocks * k * k
    if total > MAX_IMPORT_ELEMENTS:
        raise AdapterFileError(f"the PEFT generators hold more than {MAX_IMPORT_ELEMENTS:,} entries once unpacked")


def oft_file_from_peft(
    state: Mapping[str, torch.Tensor], config: Mapping[str, Any] | None, layers_per_block: int = 2
) -> AdapterFile:
    """A ``kind: "oft"`` file from PEFT OFT tensors (and its ``adapter_config.json``)."""
    if config is None:
        raise AdapterFileError("a PEFT OFT adapter needs its adapter_config.json (or diffusers' lora_adapter_metadata)")
    where = "adapter_config.json"
    if config.get("peft_type", "OFT") != "OFT":
        raise AdapterFileError(f"adapter_config.json is for {str(config.get('peft_type'))[:40]}, not OFT")
    if config.get("oft_block_size") is None:
        raise AdapterFileError("adapter_config.json has no oft_block_size: an OFT file from PEFT <= 0.13, refused")
    neumann = bool_field(config, "use_cayley_neumann", where, default=False)
    terms = int_field(config, "num_cayley_neumann_terms", where, default=5, minimum=1, maximum=MAX_NEUMANN_TERMS)
    shared = bool_field(config, "block_share", where, default=False)
    peft_version = str_field(config, "peft_version", where, default="", max_length=64) or None
    _check_work(state)
    tensors: dict[str, torch.Tensor] = {}
    by_block_size: dict[int, list[str]] = {}
    worst, work = 0.0, 0
    for key, value in state.items():
        if not key.endswith(".oft_R.weight"):
            continue
        layer = diffusers_to_comfy_path(key[: -len(".oft_R.weight")], layers_per_block)
        Q = _unpack_upper(value)
        if not bool(torch.isfinite(Q).all()):
            raise AdapterFileError(f"{key[:200]} holds NaN or infinite values")
        S = -Q if neumann else Q
        if neumann:
            bound = peft_neumann_error_bound(Q, terms)
            if bound > NEUMANN_TOLERANCE:
                # The cheap bound is not enough: compare exactly, within a stated amount of work
                # (a series this far from converging is refused either way, so a hostile file stops here).
                blocks, k = Q.shape[0], Q.shape[-1]
                work += blocks * (k**3 * (terms + 2) + 20_000)  # products, solves, per-block overhead
                if work > MAX_CHECK_WORK:
                    raise AdapterFileError(
                        f"PEFT's Cayley-Neumann series ({terms} terms) is not shown close to the exact rotation for "
                        f"{key[:200]} (generator norm too large); it cannot be represented as an exact rotation"
                    )
                approx = peft_neumann_rotation(Q, terms, peft_version)
                bound = float((approx - cayley(S)).abs().max())
            worst = max(worst, bound)
        tensors[f"{layer}.oft.S"] = (S[0] if shared else S).to(torch.float32)
        by_block_size.setdefault(Q.shape[-1], []).append(layer)
    if not tensors:
        raise AdapterFileError("no '.oft_R.weight' tensors in the PEFT file")
    if not worst <= NEUMANN_TOLERANCE:
        raise AdapterFileError(
            f"PEFT's Cayley-Neumann series ({terms} terms) is far from orthogonal for this adapter (max entry error "
            f"{worst:.2g}); it cannot be represented as an exact rotation"
        )
    coft = bool_field(config, "coft", where, default=False)
    # PEFT clips ||Q|| to eps / sqrt(blocks); the paper (and TapTune) clip ||P|| to eps k^2 / sqrt(blocks),
    # so the same constraint is eps_peft / k^2 here.
    eps = float_field(config, "eps", where, default=PEFT_DEFAULT_EPS, minimum=1e-30, maximum=1e6)
    groups = [
        _group(layers, r=None, block_size=k, block_share=shared, coft=coft, eps=eps / (k * k))
        for k, layers in sorted(by_block_size.items())
    ]
    notes = "imported from Hugging Face PEFT OFT"
    if neumann:
        notes += f" (Cayley-Neumann, {terms} terms; max entry difference to the exact rotation at most {worst:.2g})"
    return AdapterFile("oft", groups, tensors, None, {"notes": notes})


def oft_file_from_official(
    state: Mapping[str, torch.Tensor],
    layers_per_block: int = 2,
    coft: bool = PAPER_SETTING.coft,
    eps: float = PAPER_SETTING.eps,
) -> AdapterFile:
    """A ``kind: "oft"`` file from the official OFT DreamBooth output (``...processor.to_q_oft.R``)."""
    _check_layer_count([k for k in state if k.endswith("_oft.R")])
    tensors: dict[str, torch.Tensor] = {}
    groups: dict[tuple[int | None, int | None], list[str]] = {}
    for key, value in state.items():
        parts = key.split(".")
        if len(parts) < 4 or parts[-1] != "R" or parts[-2] not in _OFFICIAL_LAYERS or parts[-3] != "processor":
            continue
        attention = ".".join(parts[:-3])
        layer = diffusers_to_comfy_path(f"{attention}.{_OFFICIAL_LAYERS[parts[-2]]}", layers_per_block)
        if value.dim() not in (2, 3) or value.shape[-1] != value.shape[-2]:
            raise AdapterFileError(f"{key[:200]}: expected (r, k, k) or shared (k, k) blocks, got {tuple(value.shape)}")
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


class _BlockWidths:
    """Checking an import without a model: a shared block sized by ``block_size`` is taken as the
    whole layer (its real width is checked when the file is loaded onto a model)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self.tensors = tensors

    def linear_layer_shapes(self, paths: list[str]) -> dict[str, tuple[int, int]]:
        widths = {p: int(self.tensors[f"{p}.oft.S"].shape[-1]) for p in paths}
        return {p: (k, k) for p, k in widths.items()}


def import_oft(source: str | os.PathLike[str], layers_per_block: int = 2) -> AdapterFile:
    """Read a PEFT OFT adapter (folder or file) or an official OFT output into an OFT file.

    The result goes through the same checks as any file the loader reads before it is returned.
    """
    name = Path(source).name
    try:
        state, config = read_oft_source(source)
        kind = detect_oft_format(state)
        if kind == "peft":
            adapter_file = oft_file_from_peft(state, config, layers_per_block)
        else:
            adapter_file = oft_file_from_official(state, layers_per_block)
        check_adapter_file(adapter_file)
        OFTAdapterSet.from_file(adapter_file, _BlockWidths(adapter_file.tensors))
    except AdapterFileError as exc:
        raise exc.concerning(file=name) from None
    return adapter_file
