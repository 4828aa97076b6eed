"""The positions inside a UNet block where a value can be read or changed (specification §1.1, §1.2).

A transformer block's forward pass computes its positions in :data:`TRANSFORMER_ORDER`; a
ResBlock has only its input and output. These are facts about the blocks (LDM's
``BasicTransformerBlock`` and ``ResBlock``), shared by every adapter kind; which pairs of
positions a tap adapter may connect is the tap kind's rule (``tap/tap_points.py``).
"""

from __future__ import annotations

from enum import Enum

TRANSFORMER_ORDER: tuple[str, ...] = (
    "attn1i",
    "attn1o",
    "attn2i",
    "attn2c",
    "attn2o",
    "ffni",
    "ffno",
    "transo",
)
RESBLOCK_ORDER: tuple[str, ...] = ("resi", "reso")
ALL_POSITIONS: tuple[str, ...] = TRANSFORMER_ORDER + RESBLOCK_ORDER


class SiteKind(str, Enum):
    """Which kind of UNet block a position belongs to."""

    TRANSFORMER = "transformer"
    RESBLOCK = "resblock"


def site_kind_of(position: str) -> SiteKind:
    """The block kind ``position`` lives in (ResBlock positions are ``resi``/``reso``)."""
    return SiteKind.RESBLOCK if position in RESBLOCK_ORDER else SiteKind.TRANSFORMER
