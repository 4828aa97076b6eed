"""A set of OFT rotations: which linear layers, with which configuration, and the file form.

This is what a ``kind: "oft"`` file holds. Tensors per layer (path inside
``diffusion_model``): ``<path>.oft.S``, the skew-symmetric generator, ``(r, k, k)`` or
``(k, k)`` when shared; optionally ``<path>.oft.magnitude``, ``(out,)``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .file_format import AdapterFile, AdapterFileError, split_by_module, unclaimed_tensors
from .oft import OFTConfig, OFTConfigError, OFTRotation
from .sites import SiteKind, find_tap_sites

MARKER = "oft"

ATTENTION_LAYERS: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
FEED_FORWARD_LAYERS: tuple[str, ...] = ("ff.net.0.proj", "ff.net.2")
_ALL_ATTENTION = tuple(f"{a}.{layer}" for a in ("attn1", "attn2") for layer in ATTENTION_LAYERS)
TARGET_PRESETS: dict[str, tuple[str, ...]] = {
    "attention": _ALL_ATTENTION,
    "self_attention": tuple(f"attn1.{layer}" for layer in ATTENTION_LAYERS),
    "cross_attention": tuple(f"attn2.{layer}" for layer in ATTENTION_LAYERS),
    "attention_ff": _ALL_ATTENTION + FEED_FORWARD_LAYERS,
}

#: ``(in_features, out_features)`` of a linear layer.
LayerShape = tuple[int, int]


def find_oft_targets(
    diffusion_model: nn.Module,
    targets: str | Iterable[str] = "attention",
    resolve: Callable[[str], nn.Module] | None = None,
) -> dict[str, LayerShape]:
    """The linear layers OFT should rotate, with their shapes, in module order.

    ``targets`` is a preset (``attention`` = the paper's setting, ``self_attention``,
    ``cross_attention``, ``attention_ff``) or an explicit list of layer paths.
    """
    get = resolve if resolve is not None else (lambda p: diffusion_model.get_submodule(p))
    if isinstance(targets, str):
        if targets not in TARGET_PRESETS:
            raise OFTConfigError(
                f"unknown targets {targets!r}; allowed: {', '.join(TARGET_PRESETS)} or a list of layer paths"
            )
        blocks = [s.path for s in find_tap_sites(diffusion_model, resolve) if s.kind is SiteKind.TRANSFORMER]
        paths = [f"{b}.{suffix}" for b in blocks for suffix in TARGET_PRESETS[targets]]
    else:
        paths = [p.strip().removeprefix("diffusion_model.") for p in targets]
    out: dict[str, LayerShape] = {}
    for path in paths:
        try:
            layer = get(path)
        except AttributeError:
            raise OFTConfigError(f"{path!r} is not a layer of this model") from None
        if not (
            hasattr(layer, "in_features")
            and hasattr(layer, "out_features")
            and getattr(layer, "weight", None) is not None
        ):
            raise OFTConfigError(f"{path!r} is not a linear layer ({type(layer).__name__})")
        out[path] = (int(layer.in_features), int(layer.out_features))
    if not out:
        raise OFTConfigError(f"no layers selected by targets {targets!r}")
    return out


@dataclass
class OFTGroup:
    """One metadata entry: a configuration and the layer paths it covers."""

    config: OFTConfig
    modules: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The metadata form (``r`` or ``block_size``, whichever the group was configured by)."""
        entry: dict[str, Any] = {
            "block_share": self.config.block_share,
            "coft": self.config.coft,
            "eps": self.config.eps,
            "modules": list(self.modules),
        }
        if self.config.r is not None:
            entry["r"] = self.config.r
        else:
            entry["block_size"] = self.config.block_size
        return entry

    @classmethod
    def from_json(cls, entry: Mapping[str, Any]) -> "OFTGroup":
        """Parse one metadata entry; unknown keys are ignored."""
        modules = entry.get("modules")
        if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
            raise AdapterFileError("OFT group 'modules' must be a list of layer paths")
        r = entry.get("r")
        block_size = entry.get("block_size")
        try:
            config = OFTConfig(
                r=int(r) if r is not None else None,
                block_size=int(block_size) if block_size is not None else None,
                block_share=bool(entry.get("block_share", False)),
                coft=bool(entry.get("coft", False)),
                eps=float(entry.get("eps", 6e-5)),
            )
        except (TypeError, ValueError) as exc:
            raise AdapterFileError(f"OFT group has an invalid setting: {exc}") from None
        return cls(config, list(modules))


@dataclass
class OFTAdapterSet:
    """OFT rotations keyed by linear-layer path inside ``diffusion_model``."""

    groups: list[OFTGroup] = field(default_factory=list)
    rotations: dict[str, OFTRotation] = field(default_factory=dict)

    kind = "oft"

    @classmethod
    def create(cls, layers: Mapping[str, LayerShape], config: OFTConfig, magnitude: bool = False) -> "OFTAdapterSet":
        """Identity rotations (``P = 0``) for ``layers``; raises for a width that does not divide."""
        out = cls()
        for path, (in_features, out_features) in layers.items():
            out.rotations[path] = OFTRotation(
                in_features, config, out_features=out_features, magnitude=magnitude, where=path
            )
        out.groups.append(OFTGroup(config, list(layers)))
        return out

    def tensors(self) -> dict[str, torch.Tensor]:
        """File-format tensors: ``<path>.oft.S`` and ``<path>.oft.magnitude``."""
        out: dict[str, torch.Tensor] = {}
        for path, rotation in self.rotations.items():
            S = rotation.generator().detach()
            out[f"{path}.oft.S"] = S[0] if rotation.config.block_share else S
            if rotation.magnitude is not None:
                out[f"{path}.oft.magnitude"] = rotation.magnitude.detach()
        return out

    def to_file(self, base: dict[str, Any] | None = None, **info: Any) -> AdapterFile:
        """The :class:`AdapterFile` to save."""
        return AdapterFile("oft", [g.to_json() for g in self.groups], self.tensors(), base, dict(info))

    @classmethod
    def from_file(cls, adapter_file: AdapterFile, layers: Mapping[str, LayerShape] | None = None) -> "OFTAdapterSet":
        """Rebuild the rotations of a ``kind: "oft"`` file, checking shapes and skew-symmetry.

        ``layers`` (the model's layer shapes) is needed only for shared blocks configured
        by ``block_size``, whose tensors do not say how many blocks a layer has.
        """
        if adapter_file.kind != "oft":
            raise AdapterFileError(f"expected an OFT adapter file, got kind {adapter_file.kind!r}")
        out = cls()
        seen: set[str] = set()
        for entry in adapter_file.adapters:
            group = OFTGroup.from_json(entry)
            twice = seen.intersection(group.modules)
            if twice:
                raise AdapterFileError(f"layer {sorted(twice)[0]} is listed twice")
            seen.update(group.modules)
            for path, tensors in split_by_module(adapter_file.tensors, group.modules, MARKER).items():
                width = layers[path][0] if layers is not None and path in layers else None
                out.rotations[path] = _rotation_from_tensors(path, tensors, group.config, width)
            out.groups.append(group)
        stray = unclaimed_tensors(adapter_file.tensors, sorted(seen), MARKER)
        if stray:
            raise AdapterFileError(f"tensor {stray[0]} belongs to no layer listed in 'adapters'")
        return out

    def check_fits(self, layers: Mapping[str, LayerShape]) -> None:
        """Raise unless every rotation matches a linear layer of ``layers`` in width."""
        for path, rotation in self.rotations.items():
            if path not in layers:
                raise OFTConfigError(f"{path} is not a linear layer of this model")
            in_features, out_features = layers[path]
            if rotation.in_features != in_features:
                raise OFTConfigError(
                    f"{path}: the rotation is for input width {rotation.in_features} but the layer has {in_features}"
                )
            if rotation.magnitude is not None and rotation.magnitude.numel() != out_features:
                raise OFTConfigError(
                    f"{path}: magnitude has {rotation.magnitude.numel()} entries but the layer has {out_features} outputs"
                )

    def num_parameters(self, free_only: bool = False) -> int:
        """Stored parameters, or the free ones (k(k-1)/2 per block) with ``free_only``."""
        return sum(r.num_parameters(free_only) for r in self.rotations.values())

    def parameters(self) -> list[nn.Parameter]:
        """All trainable parameters (``P`` and magnitudes)."""
        return [p for r in self.rotations.values() for p in r.parameters()]

    def project_(self) -> None:
        """Apply the COFT projection to every constrained rotation."""
        for rotation in self.rotations.values():
            if rotation.config.coft:
                rotation.project_()

    def frozen_copy(self) -> "OFTAdapterSet":
        """A detached copy whose parameters do not require gradients."""
        out = OFTAdapterSet(copy.deepcopy(self.groups), {})
        for path, rotation in self.rotations.items():
            clone = copy.deepcopy(rotation)
            clone.requires_grad_(False)
            out.rotations[path] = clone
        return out

    def describe(self) -> list[str]:
        """One line per group."""
        lines = []
        for g in self.groups:
            c = g.config
            size = f"r {c.r}" if c.r is not None else f"block_size {c.block_size}"
            kind = f"COFT eps {c.eps:g}" if c.coft else "OFT"
            lines.append(f"{kind} {size}{' shared' if c.block_share else ''}: {len(g.modules)} layers")
        return lines


def _rotation_from_tensors(
    path: str, tensors: Mapping[str, torch.Tensor], config: OFTConfig, layer_width: int | None
) -> OFTRotation:
    S = tensors.get("oft.S")
    if S is None:
        raise AdapterFileError(f"{path}: missing {path}.oft.S")
    extra = sorted(set(tensors) - {"oft.S", "oft.magnitude"})
    if extra:
        raise AdapterFileError(f"{path}: unexpected tensor {path}.{extra[0]}")
    S = S.to(torch.float32)
    if not torch.isfinite(S).all():
        raise AdapterFileError(f"{path}.oft.S holds NaN or infinite values")
    if config.block_share:
        if S.dim() != 2 or S.shape[0] != S.shape[1]:
            raise AdapterFileError(f"{path}.oft.S: a shared block must have shape (k, k), got {tuple(S.shape)}")
        k = S.shape[0]
        if config.r is not None:
            in_features = config.r * k
        elif config.block_size != k:
            raise AdapterFileError(f"{path}.oft.S: block size {k} but the group says block_size {config.block_size}")
        elif layer_width is None:
            raise AdapterFileError(f"{path}: a shared block configured by block_size needs the model's layer width")
        else:
            in_features = layer_width
    else:
        if S.dim() != 3 or S.shape[1] != S.shape[2]:
            raise AdapterFileError(f"{path}.oft.S: expected shape (r, k, k), got {tuple(S.shape)}")
        blocks, k = S.shape[0], S.shape[1]
        if (config.r is not None and config.r != blocks) or (config.block_size is not None and config.block_size != k):
            raise AdapterFileError(f"{path}.oft.S: shape {tuple(S.shape)} disagrees with the group's configuration")
        in_features = blocks * k
    asymmetry = float((S + S.transpose(-1, -2)).abs().max()) if S.numel() else 0.0
    if asymmetry > 1e-5 * max(1.0, float(S.abs().max())):
        raise AdapterFileError(f"{path}.oft.S is not skew-symmetric (max |S + S^T| = {asymmetry:.3g})")
    magnitude = tensors.get("oft.magnitude")
    rotation = OFTRotation(
        in_features,
        config,
        out_features=int(magnitude.numel()) if magnitude is not None else None,
        magnitude=magnitude is not None,
        where=path,
    )
    with torch.no_grad():
        rotation.P.copy_(S)
        if magnitude is not None:
            if magnitude.dim() != 1:
                raise AdapterFileError(f"{path}.oft.magnitude must be 1-D, got {tuple(magnitude.shape)}")
            if not bool(torch.isfinite(magnitude).all() and (magnitude > 0).all()):
                raise AdapterFileError(
                    f"{path}.oft.magnitude must be finite and positive (strength raises it to a power)"
                )
            rotation.magnitude.copy_(magnitude.to(torch.float32))
    return rotation
