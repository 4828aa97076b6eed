"""Blocks that run their original computation with hooks reading and adding at its positions.

A tapped block *replaces* a UNet block for as long as it is installed (the host installs
it as an object patch and restores the original afterwards). It adopts the original
block's children under their own names, so every weight keeps its path
(``...transformer_blocks.0.attn1.to_q.weight``) and weight patches such as LoRAs still
find it; the hooks live in an extra child list, ``taptune``, left out of ``state_dict`` so
that saving a model never picks them up. Children may be replaced by wrappers (OFT
training), and the block may recompute its activations in backward (checkpointing).

A hook is any module with ``din``, ``dout``, ``scale`` and ``site_kind`` (a tap adapter is
one). Several hooks can share one block (stacked from several files). At each position every
hook whose ``din`` is here reads the value first; then every hook whose ``dout`` is here adds
``strength * scale * hook(read)``; later positions are computed from the written value
(specification §1.1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import attend
from .bypass import Bypassable
from .errors import ConfigError
from .positions import RESBLOCK_ORDER, TRANSFORMER_ORDER, SiteKind
from .sites import base_block, is_resblock, is_transformer_block

TAP_CHILD = "taptune"
_TRANSFORMER_ATTRS = ("n_heads", "d_head", "attn_precision", "disable_self_attn")


class _TappedBlock(Bypassable, nn.Module):
    """Shared machinery: adopt the base block's children, hold hooks and strengths.

    ``children`` replaces the children taken from the block (the same names): the host
    passes the originals it resolved itself, or training wrappers around them (OFT). With
    ``checkpointing`` the block recomputes its activations in the backward pass instead
    of storing them (gradient checkpointing).
    """

    site_kind: SiteKind
    positions: tuple[str, ...]

    def __init__(
        self,
        block: nn.Module,
        taps: Sequence[tuple[nn.Module, float]],
        children: Mapping[str, nn.Module] | None = None,
        checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.check_block(block, children)
        if list(block.parameters(recurse=False)) or list(block.buffers(recurse=False)):
            raise ConfigError(f"{type(block).__name__} holds tensors of its own; it cannot be tapped")
        # Kept out of the module tree on purpose: its children are adopted below, so the
        # tree (and every weight path) stays exactly the base block's.
        object.__setattr__(self, "base_block", block)
        own = dict(block.named_children())
        chosen = dict(own) if children is None else dict(children)
        if set(chosen) != set(own):
            raise ConfigError(f"children {sorted(chosen)} do not match the block's {sorted(own)}")
        for name in own:  # the block's order, so that module walks see the same tree
            if name == TAP_CHILD:
                raise ConfigError(f"{type(block).__name__} already has a child named {TAP_CHILD!r}")
            self.add_module(name, chosen[name])
        for hook, _ in taps:
            if hook.site_kind is not self.site_kind:
                raise ConfigError(f"a {hook.din}->{hook.dout} adapter cannot sit in a {self.site_kind.value} block")
        self.taptune = nn.ModuleList([adapter for adapter, _ in taps])
        self.strengths: tuple[float, ...] = tuple(float(s) for _, s in taps)
        self.checkpointing = checkpointing
        self._readers: dict[str, list[int]] = {}
        self._writers: dict[str, list[int]] = {}
        for i, (hook, _) in enumerate(taps):
            self._readers.setdefault(hook.din, []).append(i)
            self._writers.setdefault(hook.dout, []).append(i)
        self.adopt_attributes(block)
        self.train(block.training)
        self._register_state_dict_hook(_drop_tap_tensors)

    @classmethod
    def check_block(cls, block: nn.Module, children: Mapping[str, nn.Module] | None) -> None:
        """Raise :class:`ConfigError` unless this wrapper can stand in for ``block``."""

    def adopt_attributes(self, block: nn.Module) -> None:
        """Copy the plain attributes the forward pass reads from the block."""

    @property
    def taps(self) -> list[tuple[nn.Module, float]]:
        """The (hook, strength) pairs installed in this block, in stacking order."""
        return list(zip(self.taptune, self.strengths, strict=True))

    @classmethod
    def wrap(
        cls,
        block: nn.Module,
        taps: Sequence[tuple[nn.Module, float]],
        children: Mapping[str, nn.Module] | None = None,
        checkpointing: bool | None = None,
    ) -> "_TappedBlock":
        """A new tapped block over ``block``; if ``block`` is already tapped, the hooks stack.

        The given block (tapped or not) is never changed. ``children`` and
        ``checkpointing`` default to those of an already tapped block.
        """
        # Duck-typed rather than isinstance: a block tapped by another copy of this
        # package (two installs, or a test harness) must stack just the same.
        tapped = hasattr(block, "base_block")
        existing: list[tuple[nn.Module, float]] = list(getattr(block, "taps", [])) if tapped else []
        if children is None and tapped:
            children = dict(block.named_children())
            children.pop(TAP_CHILD, None)
        if checkpointing is None:
            checkpointing = bool(getattr(block, "checkpointing", False))
        return cls(base_block(block), existing + list(taps), children, checkpointing)

    def _visit(self, position: str, value: torch.Tensor, reads: list[torch.Tensor | None]) -> torch.Tensor:
        for i in self._readers.get(position, ()):
            reads[i] = value
        for i in self._writers.get(position, ()):
            hook = self.taptune[i]
            if not self.is_bypassed(hook):
                value = value + (self.strengths[i] * hook.scale) * hook(reads[i])
        return value

    def _maybe_checkpointed(self, run: Any, *args: Any) -> torch.Tensor:
        if self.checkpointing and torch.is_grad_enabled():
            return checkpoint(run, *args, use_reentrant=False)
        return run(*args)


def _drop_tap_tensors(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    marker = prefix + TAP_CHILD + "."
    for key in [k for k in state_dict if k.startswith(marker)]:
        del state_dict[key]


def _attention_key(transformer_options: dict[str, Any]) -> tuple[Any, Any]:
    block = transformer_options.get("block")
    index = transformer_options.get("block_index", 0)
    full = (block[0], block[1], index) if block is not None else None
    return full, block


class TappedTransformerBlock(_TappedBlock):
    """A BasicTransformerBlock (SD 1.x, SD 2.x, SDXL) with tap adapters.

    Its forward pass is the base block's, position by position, including ComfyUI's
    transformer patches at the same places (``attn1_patch``, ``attn1_output_patch``,
    ``middle_patch``, ``attn2_patch``, ``attn2_output_patch`` and the ``attn1``/``attn2``
    replace patches), so other nodes' patches keep working alongside the adapters.
    """

    site_kind = SiteKind.TRANSFORMER
    positions = TRANSFORMER_ORDER

    @classmethod
    def check_block(cls, block: nn.Module, children: Mapping[str, nn.Module] | None) -> None:
        if not is_transformer_block(block):
            raise ConfigError(f"{type(block).__name__} is not a transformer block")
        if getattr(block, "ff_in", False) or not getattr(block, "is_res", True) or block.attn2 is None:
            raise ConfigError(
                f"{type(block).__name__} variant (ff_in / no cross-attention / non-residual) is not supported; "
                "tap adapters work on the image transformer blocks of SD 1.x, SD 2.x and SDXL"
            )
        if getattr(block, "switch_temporal_ca_to_sa", False):
            raise ConfigError("temporal transformer blocks are not supported")

    def adopt_attributes(self, block: nn.Module) -> None:
        for name in _TRANSFORMER_ATTRS:
            setattr(self, name, getattr(block, name, None))

    def _attend(
        self,
        name: str,
        attention: nn.Module,
        n: torch.Tensor,
        context: torch.Tensor | None,
        value: torch.Tensor | None,
        extra: dict[str, Any],
        transformer_options: dict[str, Any],
    ) -> torch.Tensor:
        replacements = transformer_options.get("patches_replace", {}).get(name, {})
        full, block = _attention_key(transformer_options)
        key = full if full in replacements else block
        if key not in replacements:
            return attention(n, context=context, value=value, transformer_options=transformer_options)
        replacement = replacements[key]
        return attend(attention, n, context, value, lambda q, k, v: replacement(q, k, v, extra))

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, transformer_options: dict[str, Any] = {}
    ) -> torch.Tensor:
        # A snapshot: the UNet keeps changing "block"/"block_index" in the shared dict, and a
        # checkpointed recomputation must see the values of this call.
        return self._maybe_checkpointed(self._run, x, context, dict(transformer_options))

    def _run(self, x: torch.Tensor, context: torch.Tensor | None, transformer_options: dict[str, Any]) -> torch.Tensor:
        patches = transformer_options.get("patches", {})
        extra = {k: v for k, v in transformer_options.items() if k not in ("patches", "patches_replace")}
        extra["n_heads"] = self.n_heads
        extra["dim_head"] = self.d_head
        extra["attn_precision"] = self.attn_precision
        reads: list[torch.Tensor | None] = [None] * len(self.taptune)

        x = self._visit("attn1i", x, reads)
        n = self.norm1(x)
        context_1 = context if self.disable_self_attn else None
        value_1 = None
        if "attn1_patch" in patches:
            if context_1 is None:
                context_1 = n
            value_1 = context_1
            for patch in patches["attn1_patch"]:
                n, context_1, value_1 = patch(n, context_1, value_1, extra)
        n = self._attend("attn1", self.attn1, n, context_1, value_1, extra, transformer_options)
        for patch in patches.get("attn1_output_patch", ()):
            n = patch(n, extra)
        n = self._visit("attn1o", n, reads)
        x = n + x
        x = self._visit("attn2i", x, reads)
        for patch in patches.get("middle_patch", ()):
            x = patch(x, extra)

        context_2 = self._visit("attn2c", context, reads) if context is not None else None
        n = self.norm2(x)
        value_2 = None
        if "attn2_patch" in patches:
            value_2 = context_2
            for patch in patches["attn2_patch"]:
                n, context_2, value_2 = patch(n, context_2, value_2, extra)
        n = self._attend("attn2", self.attn2, n, context_2, value_2, extra, transformer_options)
        for patch in patches.get("attn2_output_patch", ()):
            n = patch(n, extra)
        n = self._visit("attn2o", n, reads)
        x = n + x
        x = self._visit("ffni", x, reads)

        ff_out = self.ff(self.norm3(x))
        ff_out = self._visit("ffno", ff_out, reads)
        x = x + ff_out
        return self._visit("transo", x, reads)


class TappedResBlock(_TappedBlock):
    """A ResBlock with tap adapters at its input (``resi``) and output (``reso``).

    The base block runs unchanged between the two positions. ComfyUI dispatches
    ResBlocks by ``isinstance(TimestepBlock)``, so the ComfyUI side installs a subclass
    that also derives from it.
    """

    site_kind = SiteKind.RESBLOCK
    positions = RESBLOCK_ORDER

    @classmethod
    def check_block(cls, block: nn.Module, children: Mapping[str, nn.Module] | None) -> None:
        if not is_resblock(block):
            raise ConfigError(f"{type(block).__name__} is not a ResBlock")
        if children is not None and any(children[n] is not c for n, c in block.named_children()):
            raise ConfigError("a ResBlock runs its own children; they cannot be replaced")

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self._maybe_checkpointed(self._run, x, emb)

    def _run(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        reads: list[torch.Tensor | None] = [None] * len(self.taptune)
        x = self._visit("resi", x, reads)
        out = self.base_block(x, emb)
        return self._visit("reso", out, reads)
