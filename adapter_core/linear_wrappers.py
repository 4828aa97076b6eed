"""Training wrappers for kinds that change linear layers: attention and feed-forward modules computing
some of their projections through trainable members.

At sampling, a kind that changes weights merges its change into them (a weight function). While
training, the frozen weight comes from the host (``HostOps.weights_of``: after its casting and
weight patches) and gradients must reach the member's parameters, so the *parent* of each adapted
layer (``attn1``/``attn2``/``ff`` of a transformer block) is replaced for the run by a wrapper
that adopts the parent's children under their own names (every weight keeps its path) and computes
the adapted layers as ``member.linear(x, weight, bias)``. The wrappers are installed as children
of a tapped transformer block (``PatchPlan.child_wrappers``), never on their own paths.

Kind-neutral: a member is any module with ``linear(x, weight, bias) -> y``; LoRA's layers are
members, and OFT's rotations through ``oft/oft_wrappers.RotationMember``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from .attention import ProjectingModule, attend
from .bypass import Bypassable
from .errors import ConfigError
from .patch_plan import ChildWrapper, HostOps

#: The layers a wrapper can compute itself, by the block child they sit in.
ATTENTION_CHILDREN: tuple[str, ...] = ("attn1", "attn2")
ATTENTION_PROJECTIONS: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
#: GEGLU projection (SD), plain GELU projection (``Sequential(Linear, GELU)``), output layer.
FEED_FORWARD_LAYERS: tuple[str, ...] = ("net.0.proj", "net.0.0", "net.2")
TRAINABLE_LAYERS: tuple[tuple[str, str], ...] = tuple(
    (child, layer) for child in ATTENTION_CHILDREN for layer in ATTENTION_PROJECTIONS
) + tuple(("ff", layer) for layer in FEED_FORWARD_LAYERS)


class LinearMember(Protocol):
    """What a wrapper needs of a member: the adapted layer on ``x`` given the frozen weight and bias."""

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor: ...


def split_block_layer(path: str) -> tuple[str, str, str] | None:
    """``(transformer block path, child, layer)`` of a layer a wrapper can train, or ``None``.

    ``...transformer_blocks.0.attn1.to_out.0`` -> (``...transformer_blocks.0``, ``attn1``, ``to_out.0``).
    """
    for child, layer in TRAINABLE_LAYERS:
        suffix = f".{child}.{layer}"
        if path.endswith(suffix) and len(path) > len(suffix):
            return path[: -len(suffix)], child, layer
    return None


class _AdoptingParent(Bypassable, ProjectingModule):
    """Adopts a parent's children; the layers in ``members`` are computed through them.

    The members sit in a child named ``holder`` (dropped from ``state_dict``, so saving the
    model mid-run never picks them up as model weights).
    """

    def __init__(self, parent: nn.Module, members: Mapping[str, nn.Module], host: HostOps, holder: str) -> None:
        super().__init__()
        if isinstance(parent, _AdoptingParent):
            raise ConfigError("these layers are already being trained in this MODEL", input_name="spec")
        object.__setattr__(self, "base_module", parent)
        for name, child in parent.named_children():
            if name == holder:
                raise ConfigError(f"{type(parent).__name__} already has a child named {holder!r}")
            self.add_module(name, child)
        for name in members:
            try:
                layer = parent.get_submodule(name)
            except AttributeError:
                raise ConfigError(f"{type(parent).__name__} has no layer {name}") from None
            if getattr(layer, "weight", None) is None or not hasattr(layer, "in_features"):
                raise ConfigError(f"{name} of {type(parent).__name__} is not a linear layer")
        self.holder = holder
        self.add_module(holder, nn.ModuleDict({name.replace(".", "__"): m for name, m in members.items()}))
        self.host = host
        self.train(parent.training)
        self._register_state_dict_hook(_drop_members)

    def members(self) -> nn.ModuleDict:
        """The adapted layers' members, keyed by layer name with ``__`` for dots."""
        return self.get_submodule(self.holder)  # type: ignore[return-value]

    def adapts(self, name: str) -> bool:
        """Whether child layer ``name`` goes through a member."""
        return name.replace(".", "__") in self.members()

    def project(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Child layer ``name`` applied to ``x``, through its member if it has one."""
        layer = self.get_submodule(name)
        key = name.replace(".", "__")
        members = self.members()
        if key not in members or self.is_bypassed(members[key]):
            return layer(x)
        cast = self.host.weights_of(layer, x)
        try:
            return members[key].linear(x, cast[0], cast[1])
        finally:
            if self.host.release_weights is not None:
                self.host.release_weights(layer, cast)


def _drop_members(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    holder = getattr(module, "holder", None)
    for key in [k for k in state_dict if holder and k.startswith(f"{prefix}{holder}.")]:
        del state_dict[key]


class AdaptedAttention(_AdoptingParent):
    """An attention module (``to_q``, ``to_k``, ``to_v``, ``to_out``) with some projections adapted."""

    def __init__(self, parent: nn.Module, members: Mapping[str, nn.Module], host: HostOps, holder: str) -> None:
        super().__init__(parent, members, host, holder)
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


class AdaptedFeedForward(_AdoptingParent):
    """A feed-forward module (``net = [GEGLU(proj) | Sequential(Linear, GELU), dropout, out]``) with adapted layers."""

    def __init__(self, parent: nn.Module, members: Mapping[str, nn.Module], host: HostOps, holder: str) -> None:
        first = parent.net[0]
        if "net.0.proj" in members and not hasattr(first, "proj"):
            raise ConfigError("ff.net.0.proj: this feed-forward module has no GEGLU projection")
        if "net.0.0" in members and not (
            isinstance(first, nn.Sequential) and len(first) == 2 and isinstance(first[1], nn.GELU)
        ):
            raise ConfigError("ff.net.0.0: this feed-forward module's first layer is not Linear + GELU")
        super().__init__(parent, members, host, holder)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = self.net[0]
        if self.adapts("net.0.proj"):
            h, gate = self.project("net.0.proj", x).chunk(2, dim=-1)
            h = h * F.gelu(gate)
        elif self.adapts("net.0.0"):
            h = first[1](self.project("net.0.0", x))
        else:
            h = first(x)
        return self.project("net.2", self.net[1](h))


def adapted_child(
    name: str, module: nn.Module, members: Mapping[str, nn.Module], host: HostOps, holder: str
) -> _AdoptingParent:
    """The training wrapper for a block's ``attn1``/``attn2``/``ff`` with these adapted layers."""
    if name in ATTENTION_CHILDREN:
        return AdaptedAttention(module, members, host, holder)
    if name == "ff":
        return AdaptedFeedForward(module, members, host, holder)
    raise ConfigError(f"no training wrapper for a block's {name!r}")


def child_wrapper_factory(name: str, members: Mapping[str, nn.Module], holder: str) -> ChildWrapper:
    """A ``PatchPlan.child_wrappers`` factory: ``(original child, host) -> wrapper``."""

    def wrap(child: nn.Module, host: HostOps) -> nn.Module:
        return adapted_child(name, child, members, host, holder)

    return wrap


def group_by_block(
    members: Mapping[str, nn.Module], refuse: Callable[[str], Exception]
) -> dict[str, dict[str, dict[str, nn.Module]]]:
    """``{block: {child: {layer: member}}}`` for layer-path keyed members; ``refuse(path)`` for one no wrapper trains."""
    grouped: dict[str, dict[str, dict[str, nn.Module]]] = {}
    for path, member in members.items():
        split = split_block_layer(path)
        if split is None:
            raise refuse(path)
        block, child, layer = split
        grouped.setdefault(block, {}).setdefault(child, {})[layer] = member
    return grouped
