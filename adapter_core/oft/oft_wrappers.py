"""The training form of OFT: the rotated layers of a transformer block, computed through their rotations.

At inference a rotation is merged into the weight once. While training, the weight must stay
frozen and the gradient must reach ``P``, so each block's ``attn1``/``attn2``/``ff`` is replaced
for the run by the kind-neutral wrappers of ``adapter_core/linear_wrappers.py`` (they adopt the
original's children, so every weight keeps its path and the host's casting and weight patches
apply), with one :class:`RotationMember` per rotated layer. The rotation itself sits on the input
side and is applied to the activations (``OFTRotation.linear``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ..linear_wrappers import child_wrapper_factory, group_by_block, split_block_layer
from ..patch_plan import ChildWrapper
from .oft_config import OFTConfigError
from .oft_rotation import OFTRotation
from .shared_rotations import SharedRotations

#: The child of a wrapper that holds the rotations (left out of ``state_dict``).
OFT_CHILD = "oft"


def _untrainable(path: str) -> OFTConfigError:
    return OFTConfigError(
        f"{path!r} cannot be trained with OFT: training supports the attention projections (attn1/attn2 to_q, to_k, "
        "to_v, to_out.0) and the feed-forward layers (ff.net.0.proj, ff.net.2) of transformer blocks; any linear "
        "layer can still be loaded merged"
    )


def split_layer_path(path: str) -> tuple[str, str, str]:
    """``(transformer block path, module, layer)`` of a layer OFT can train.

    ``...transformer_blocks.0.attn1.to_out.0`` -> (``...transformer_blocks.0``, ``attn1``,
    ``to_out.0``); ``...transformer_blocks.0.ff.net.0.proj`` -> (..., ``ff``, ``net.0.proj``).
    """
    split = split_block_layer(path)
    if split is None:
        raise _untrainable(path)
    return split


class RotationMember(nn.Module):
    """One rotation as a wrapper member: its layer computed through it at strength 1.

    With ``shared``, the rotation's ``R^T`` comes from the run's batched solve where that
    applies (:meth:`SharedRotations.applies`, and the exact transform is in use).
    """

    def __init__(
        self, rotation: OFTRotation, neumann_terms: int | None = None, shared: SharedRotations | None = None
    ) -> None:
        super().__init__()
        self.rotation = rotation
        self.neumann_terms = neumann_terms
        self.shared = shared

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """The rotated layer on ``x`` given its frozen weight and bias."""
        rotation, transposed = self.rotation, None
        if (
            self.shared is not None
            and self.shared.applies(rotation, x.device)
            and rotation.training_neumann_terms(self.neumann_terms) is None
        ):
            transposed = self.shared.transposed(rotation, x.device, x.dtype)
        return rotation.linear(x, weight, bias, 1.0, self.neumann_terms, transposed)


def rotation_wrappers(
    rotations: Mapping[str, OFTRotation], neumann_terms: int | None = None
) -> dict[str, dict[str, ChildWrapper]]:
    """``PatchPlan.child_wrappers`` computing every rotated layer through its rotation: ``{block: {child: factory}}``.

    On a GPU the rotations' ``R^T`` are solved together per block size (:class:`SharedRotations`).
    """
    shared = SharedRotations(rotations.values())
    members = {path: RotationMember(rotation, neumann_terms, shared) for path, rotation in rotations.items()}
    grouped = group_by_block(members, _untrainable)
    return {
        block: {child: child_wrapper_factory(child, layers, OFT_CHILD) for child, layers in children.items()}
        for block, children in grouped.items()
    }
