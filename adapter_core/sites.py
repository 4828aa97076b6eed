"""Where tap adapters can sit in a UNet: transformer blocks and ResBlocks, found by shape.

The UNet is recognised structurally (LDM/ComfyUI naming: ``input_blocks``,
``middle_block``, ``output_blocks``; transformer blocks with ``attn1``, ``attn2``,
``ff``; ResBlocks with ``in_layers``, ``emb_layers``, ``out_layers``), so this
module needs nothing from ComfyUI itself.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from torch import nn

from .errors import ConfigError
from .positions import SiteKind

REGIONS: tuple[str, ...] = ("input", "middle", "output")
BLOCK_SELECTIONS: tuple[str, ...] = ("all", *REGIONS)


@dataclass(frozen=True)
class TapSite:
    """One block that can carry a tap adapter, with the widths an adapter needs."""

    path: str
    kind: SiteKind
    in_width: int
    out_width: int
    context_dim: int | None

    @property
    def region(self) -> str:
        """``input``, ``middle`` or ``output`` (from the path), or ``other``."""
        head = self.path.split(".", 1)[0]
        return {"input_blocks": "input", "middle_block": "middle", "output_blocks": "output"}.get(head, "other")

    def width_at(self, position: str) -> int:
        """Feature width at a tap position of this site."""
        if self.kind is SiteKind.TRANSFORMER:
            if position == "attn2c":
                if self.context_dim is None:
                    raise ConfigError(f"{self.path} has no cross-attention context", input_name="din")
                return self.context_dim
            return self.in_width
        return self.in_width if position == "resi" else self.out_width


def base_block(module: nn.Module) -> nn.Module:
    """The original block behind a tapped wrapper, or ``module`` itself."""
    return getattr(module, "base_block", module)


def is_transformer_block(module: nn.Module) -> bool:
    """True for a BasicTransformerBlock-shaped module."""
    return all(hasattr(module, name) for name in ("attn1", "attn2", "ff", "norm1", "norm2", "norm3"))


def is_resblock(module: nn.Module) -> bool:
    """True for an LDM ResBlock (with or without up/down sampling)."""
    return all(hasattr(module, name) for name in ("in_layers", "emb_layers", "out_layers", "skip_connection"))


def site_of(path: str, module: nn.Module) -> TapSite | None:
    """Describe ``module`` as a :class:`TapSite`, or ``None`` if it cannot carry an adapter."""
    block = base_block(module)
    if is_transformer_block(block):
        width = block.attn1.to_q.in_features
        attn2 = block.attn2
        context_dim = attn2.to_k.in_features if attn2 is not None else None
        return TapSite(path, SiteKind.TRANSFORMER, width, width, context_dim)
    if is_resblock(block):
        # The official code skips up/down-sampling ResBlocks; so do we.
        if getattr(block, "updown", False):
            return None
        channels = getattr(block, "channels", None) or block.in_layers[0].num_channels
        out_channels = getattr(block, "out_channels", None) or channels
        return TapSite(path, SiteKind.RESBLOCK, int(channels), int(out_channels), None)
    return None


def find_tap_sites(
    diffusion_model: nn.Module,
    resolve: Callable[[str], nn.Module] | None = None,
) -> list[TapSite]:
    """All blocks of ``diffusion_model`` that can carry a tap adapter, in module order.

    ``resolve(path)`` returns the object to describe at ``path``; pass a ComfyUI
    ``get_model_object`` wrapper so that another clone's object patches never leak in.
    """
    sites: list[TapSite] = []
    skip_prefixes: list[str] = []
    for path, module in diffusion_model.named_modules():
        if not path or any(path.startswith(p) for p in skip_prefixes):
            continue
        target = resolve(path) if resolve is not None else module
        site = site_of(path, target)
        if site is not None:
            sites.append(site)
            skip_prefixes.append(path + ".")
    return sites


def select_sites(
    sites: Sequence[TapSite],
    kind: SiteKind,
    blocks: str | Iterable[str] = "all",
) -> list[TapSite]:
    """Pick the sites of one kind: ``all``, one region, or an explicit list of paths.

    Raises :class:`ConfigError` naming an unknown path and the closest valid ones.
    """
    of_kind = [s for s in sites if s.kind is kind]
    if isinstance(blocks, str):
        if blocks not in BLOCK_SELECTIONS:
            raise ConfigError(
                f"unknown block selection {blocks!r}; allowed: {', '.join(BLOCK_SELECTIONS)} or a list of module paths",
                input_name="blocks",
            )
        chosen = of_kind if blocks == "all" else [s for s in of_kind if s.region == blocks]
    else:
        by_path = {s.path: s for s in of_kind}
        chosen = []
        for path in blocks:
            path = path.strip()
            if path.startswith("diffusion_model."):
                path = path[len("diffusion_model.") :]
            if path not in by_path:
                close = difflib.get_close_matches(path, list(by_path), n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise ConfigError(f"{path!r} is not a {kind.value} block of this model{hint}", input_name="block_list")
            chosen.append(by_path[path])
    if not chosen:
        raise ConfigError(f"no {kind.value} blocks selected ({blocks!r})", input_name="blocks")
    return chosen
