"""A set of OFT rotations: which linear layers, with which configuration, and the file form.

This is what a ``kind: "oft"`` file holds. Tensors per layer (path inside ``diffusion_model``):
``<path>.oft.S``, the skew-symmetric generator, ``(r, k, k)`` or ``(k, k)`` when shared;
optionally ``<path>.oft.magnitude``, ``(out,)``. For sampling, each rotation is merged into its
layer's weight (a weight function); see specification §2.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from ..errors import AdapterFileError
from ..kind import AdapterGroup, AdapterSetBase
from ..model_view import LayerShape, ModelView
from ..patch_plan import PatchPlan
from .oft_config import OFTConfig, OFTConfigError
from .oft_rotation import OFTRotation, RotationMerge

MARKER = "oft"


class OFTAdapterSet(AdapterSetBase[OFTConfig]):
    """OFT rotations keyed by linear-layer path inside ``diffusion_model``."""

    kind = "oft"
    marker = MARKER
    config_type = OFTConfig
    parameter_group_names = ("rotation", "magnitude")

    @property
    def rotations(self) -> dict[str, OFTRotation]:
        """The rotations by layer path (the set's members)."""
        return self.members  # type: ignore[return-value]

    @classmethod
    def create(cls, layers: Mapping[str, LayerShape], config: OFTConfig, magnitude: bool = False) -> OFTAdapterSet:
        """Identity rotations (``P = 0``) for ``layers``; raises for a width that does not divide."""
        out = cls()
        for path, (in_features, out_features) in layers.items():
            out.members[path] = OFTRotation(
                in_features, config, out_features=out_features, magnitude=magnitude, where=path
            )
        out.groups.append(AdapterGroup(config, list(layers)))
        return out

    def member_tensors(self, member: nn.Module) -> dict[str, torch.Tensor]:
        assert isinstance(member, OFTRotation)
        S = member.generator().detach()
        out = {"oft.S": S[0] if member.config.block_share else S}
        if member.magnitude is not None:
            out["oft.magnitude"] = member.magnitude.detach()
        return out

    @classmethod
    def member_from_tensors(
        cls, path: str, tensors: Mapping[str, torch.Tensor], config: OFTConfig, view: ModelView | None
    ) -> OFTRotation:
        width = None
        if view is not None and config.block_share and config.r is None:
            # Only a shared block configured by its size leaves the layer width unsaid.
            width = view.linear_layer_shapes([path])[path][0]
        rotation = _rotation_from_tensors(path, tensors, config, width)
        rotation.requires_grad_(False)
        return rotation

    def check_fits(self, view: ModelView) -> None:
        """Raise unless every rotation matches a linear layer of the model in width."""
        layers = view.linear_layer_shapes(self.rotations)
        for path, rotation in self.rotations.items():
            in_features, out_features = layers[path]
            if rotation.in_features != in_features:
                raise OFTConfigError(
                    f"{path}: the rotation is for input width {rotation.in_features} but the layer has {in_features}"
                )
            if rotation.magnitude is not None and rotation.magnitude.numel() != out_features:
                raise OFTConfigError(
                    f"{path}: magnitude has {rotation.magnitude.numel()} entries but the layer has {out_features} outputs"
                )

    def inference_plan(self, view: ModelView) -> PatchPlan:
        """Every rotation merged into its layer's weight (once per load; sampling then costs what the base costs)."""
        return PatchPlan(weight_functions={path: RotationMerge(rotation) for path, rotation in self.rotations.items()})

    def weight_differences(
        self, weight_of: Callable[[str], torch.Tensor], strength: float, dtype: torch.dtype
    ) -> dict[str, torch.Tensor]:
        """``{layer path: diag(m^s) W R(sS)^T - W}``, one layer at a time (``weight_of`` gives each ``W``)."""
        out: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for path, rotation in self.rotations.items():
                weight = weight_of(path).to(torch.float32)
                out[path] = (rotation.merged_weight(weight, strength) - weight).to(dtype).contiguous()
        return out

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """``rotation``: every ``P``; ``magnitude``: the magnitudes (empty when the set has none)."""
        rotations = list(self.rotations.values())
        return {
            "rotation": [r.P for r in rotations],
            "magnitude": [r.magnitude for r in rotations if r.magnitude is not None],
        }

    def num_parameters(self, free_only: bool = False) -> int:
        """Stored parameters, or the free ones (k(k-1)/2 per block) with ``free_only``."""
        return sum(r.num_parameters(free_only) for r in self.rotations.values())

    def constraint_violation(self) -> float:
        """How far the largest constrained ``P`` block lies outside its COFT radius, relative to it (0: none)."""
        worst = 0.0
        for rotation in self.rotations.values():
            if rotation.config.coft:
                norm = float(torch.linalg.matrix_norm(rotation.blocks.detach().float()).max())
                worst = max(worst, norm / rotation.radius - 1.0)
        return worst

    def project_(self) -> None:
        """Apply the COFT projection to every constrained rotation."""
        for rotation in self.rotations.values():
            if rotation.config.coft:
                rotation.project_()

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
