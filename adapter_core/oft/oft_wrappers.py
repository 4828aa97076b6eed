"""The training form of OFT: attention and feed-forward modules whose projections go through rotations.

At inference a rotation is merged into the weight once. While training, the weight
must stay frozen and the gradient must reach ``P``, and the rotation should sit on
whichever side of the layer is cheaper (weights or activations). So the *parent* of each
rotated layer (the attention module, the feed-forward module) is wrapped for the run by a
module that adopts the parent's children under their own names: every linear layer stays
where it was, with its own weights, so weight patches, LoRAs and the host's bookkeeping of
loaded weights keep working untouched. The wrappers are installed as children of a tapped
transformer block (``PatchPlan.child_wrappers``), never on their own paths.

The host supplies :class:`~..patch_plan.HostOps`: the effective weight and bias of a layer
for an input (after the host's own casting and weight functions), their release, and its
attention kernel.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import ProjectingModule, attend
from ..patch_plan import HostOps
from .oft_config import TARGET_PRESETS, OFTConfigError
from .oft_rotation import OFTRotation

OFT_CHILD = "oft"

#: The layers OFT can train (every target preset's), by where they sit in a transformer block:
#: (module, layer inside it).
_TRAINABLE_LAYERS: tuple[tuple[str, str], ...] = tuple(
    (module, layer) for module, layer in (path.split(".", 1) for path in TARGET_PRESETS["attention_ff"])
)


def split_layer_path(path: str) -> tuple[str, str, str]:
    """``(transformer block path, module, layer)`` of a layer OFT can train.

    ``...transformer_blocks.0.attn1.to_out.0`` -> (``...transformer_blocks.0``, ``attn1``,
    ``to_out.0``); ``...transformer_blocks.0.ff.net.0.proj`` -> (..., ``ff``, ``net.0.proj``).
    """
    for module, layer in _TRAINABLE_LAYERS:
        suffix = f".{module}.{layer}"
        if path.endswith(suffix):
            return path[: -len(suffix)], module, layer
    raise OFTConfigError(
        f"{path!r} cannot be trained with OFT: training supports the attention projections (attn1/attn2 to_q, to_k, "
        "to_v, to_out.0) and the feed-forward layers (ff.net.0.proj, ff.net.2) of transformer blocks; any linear "
        "layer can still be loaded merged"
    )


class _RotatedParent(ProjectingModule):
    """Adopts a parent module's children and routes some of its linear layers through rotations."""

    def __init__(
        self,
        parent: nn.Module,
        rotations: Mapping[str, OFTRotation],
        host: HostOps,
        neumann_terms: int | None = None,
    ) -> None:
        super().__init__()
        if isinstance(parent, _RotatedParent):
            raise OFTConfigError("these layers are already being trained with OFT in this MODEL", input_name="spec")
        self.check_parent(parent, rotations)
        object.__setattr__(self, "base_module", parent)
        for name, child in parent.named_children():
            if name == OFT_CHILD:
                raise OFTConfigError(f"{type(parent).__name__} already has a child named {OFT_CHILD!r}")
            self.add_module(name, child)
        for name in rotations:
            layer = parent.get_submodule(name)
            if not hasattr(layer, "weight"):
                raise OFTConfigError(f"{name} of {type(parent).__name__} is not a linear layer")
        self.oft = nn.ModuleDict({name.replace(".", "__"): rotation for name, rotation in rotations.items()})
        self.host = host
        self.neumann_terms = neumann_terms
        self.train(parent.training)
        self._register_state_dict_hook(_drop_rotations)

    @classmethod
    def check_parent(cls, parent: nn.Module, rotations: Mapping[str, OFTRotation]) -> None:
        """Raise :class:`OFTConfigError` unless this wrapper can stand in for ``parent``."""

    def project(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Child layer ``name`` applied to ``x``, through its rotation if it has one."""
        layer = self.get_submodule(name)
        key = name.replace(".", "__")
        if key not in self.oft:
            return layer(x)
        cast = self.host.weights_of(layer, x)
        try:
            return self.oft[key].linear(x, cast[0], cast[1], 1.0, self.neumann_terms)
        finally:
            if self.host.release_weights is not None:
                self.host.release_weights(layer, cast)


def _drop_rotations(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    # Saving the model while training must not pick up the rotations as model weights.
    for key in [k for k in state_dict if k.startswith(prefix + OFT_CHILD + ".")]:
        del state_dict[key]


class OFTCrossAttention(_RotatedParent):
    """An attention module (``to_q``, ``to_k``, ``to_v``, ``to_out``) with rotated projections."""

    def __init__(
        self,
        parent: nn.Module,
        rotations: Mapping[str, OFTRotation],
        host: HostOps,
        neumann_terms: int | None = None,
    ) -> None:
        super().__init__(parent, rotations, host, neumann_terms)
        self.heads = parent.heads
        self.attn_precision = getattr(parent, "attn_precision", None)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        value: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        transformer_options: dict[str, Any] = {},
    ) -> torch.Tensor:
        def kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return self.host.attention(q, k, v, self.heads, mask, self.attn_precision, transformer_options)

        return attend(self, x, context, value, kernel)


class OFTFeedForward(_RotatedParent):
    """A feed-forward block (``net = [GEGLU(proj), dropout, out]``) with rotated ``proj`` and/or ``out``."""

    @classmethod
    def check_parent(cls, parent: nn.Module, rotations: Mapping[str, OFTRotation]) -> None:
        if "net.0.proj" in rotations and not hasattr(parent.net[0], "proj"):
            raise OFTConfigError("ff.net.0.proj: this feed-forward block has no GEGLU projection")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if "net__0__proj" in self.oft:
            h, gate = self.project("net.0.proj", x).chunk(2, dim=-1)
            h = h * F.gelu(gate)
        else:
            h = self.net[0](x)
        return self.project("net.2", self.net[1](h))


def rotated_module(
    name: str,
    module: nn.Module,
    rotations: Mapping[str, OFTRotation],
    host: HostOps,
    neumann_terms: int | None = None,
) -> _RotatedParent:
    """The training wrapper for a block's ``attn1``/``attn2``/``ff`` with these rotated layers."""
    if name in ("attn1", "attn2"):
        return OFTCrossAttention(module, rotations, host, neumann_terms)
    if name == "ff":
        return OFTFeedForward(module, rotations, host, neumann_terms)
    raise OFTConfigError(f"no OFT training wrapper for {name!r}")
