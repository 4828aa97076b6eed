"""Tap points: which positions a tap adapter may read from (``din``) and add to (``dout``).

The names, the order and the 20 pairs follow "A Closer Look at Parameter-Efficient Tuning in
Diffusion Models" (specification §1.1-§1.3). The positions themselves are the blocks'
(:mod:`..positions`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from ..positions import ALL_POSITIONS, RESBLOCK_ORDER, TRANSFORMER_ORDER, SiteKind, site_kind_of

TRANSFORMER_DIN: tuple[str, ...] = TRANSFORMER_ORDER
TRANSFORMER_DOUT: tuple[str, ...] = ("attn1i", "attn2i", "ffni", "transo", "attn2c")
RESBLOCK_DIN: tuple[str, ...] = RESBLOCK_ORDER
RESBLOCK_DOUT: tuple[str, ...] = RESBLOCK_ORDER

METHODS: tuple[str, ...] = ("relu", "default", "sig", "silu", "ident")

#: The 20 pairs the paper studies; they are exactly the pairs the rules allow (specification §1.3).
PAPER_PAIRS: tuple[tuple[str, str], ...] = (
    ("attn1i", "attn1i"),
    ("attn1i", "attn2i"),
    ("attn1i", "ffni"),
    ("attn1i", "transo"),
    ("attn1o", "attn2i"),
    ("attn1o", "ffni"),
    ("attn1o", "transo"),
    ("attn2c", "attn2c"),
    ("attn2i", "attn2i"),
    ("attn2i", "ffni"),
    ("attn2i", "transo"),
    ("attn2o", "ffni"),
    ("attn2o", "transo"),
    ("ffni", "ffni"),
    ("ffni", "transo"),
    ("ffno", "transo"),
    ("transo", "transo"),
    ("resi", "resi"),
    ("resi", "reso"),
    ("reso", "reso"),
)

#: The paper's recommended recipe.
BEST_PAIR: tuple[str, str] = ("attn2o", "ffni")


class TapConfigError(ConfigError):
    """A tap-adapter configuration that the tap-point rules do not allow."""


@dataclass(frozen=True)
class TapPoint:
    """One adapter placement: where it reads (``din``) and where it adds (``dout``)."""

    din: str
    dout: str

    def __post_init__(self) -> None:
        validate_pair(self.din, self.dout)

    @property
    def site_kind(self) -> SiteKind:
        """The block kind this pair lives in."""
        return site_kind_of(self.din)

    def __str__(self) -> str:
        return f"{self.din}->{self.dout}"


def _allowed(names: tuple[str, ...]) -> str:
    return ", ".join(names)


def validate_pair(din: str, dout: str) -> None:
    """Raise :class:`TapConfigError` (naming ``din`` or ``dout``) unless ``din -> dout`` is a valid pair."""
    if not isinstance(din, str) or din not in ALL_POSITIONS:
        raise TapConfigError(
            f"unknown din {din!r}; allowed: {_allowed(TRANSFORMER_DIN)} (transformer blocks), "
            f"{_allowed(RESBLOCK_DIN)} (ResBlocks)",
            input_name="din",
        )
    if not isinstance(dout, str) or dout not in ALL_POSITIONS:
        raise TapConfigError(
            f"unknown dout {dout!r}; allowed: {_allowed(TRANSFORMER_DOUT)} (transformer blocks), "
            f"{_allowed(RESBLOCK_DOUT)} (ResBlocks)",
            input_name="dout",
        )
    try:
        _check_order(din, dout)
    except TapConfigError as exc:
        raise TapConfigError(f"{exc.message}. {valid_pairs_text(din)}", input_name=exc.input_name) from None


def valid_pairs_text(din: str | None = None) -> str:
    """The valid pairs, those reading ``din`` first when it is a tap point, for messages that must say what to pick."""
    every = ", ".join(f"{a}->{b}" for a, b in PAPER_PAIRS)
    from_din = [f"{a}->{b}" for a, b in PAPER_PAIRS if a == din]
    first = f"Valid pairs reading {din}: {', '.join(from_din)}. " if from_din else ""
    return f"{first}All 20 valid pairs: {every}"


def _check_order(din: str, dout: str) -> None:
    """The rules between two known tap points (block kind, dout positions, attn2c, order)."""
    if din in RESBLOCK_ORDER or dout in RESBLOCK_ORDER:
        if not (din in RESBLOCK_ORDER and dout in RESBLOCK_ORDER):
            raise TapConfigError(
                f"din {din!r} and dout {dout!r} lie in different block kinds; ResBlock pairs use only "
                f"{_allowed(RESBLOCK_ORDER)}, transformer pairs only {_allowed(TRANSFORMER_ORDER)}",
                input_name="dout",
            )
        if RESBLOCK_ORDER.index(dout) < RESBLOCK_ORDER.index(din):
            raise TapConfigError(
                f"dout {dout!r} comes before din {din!r}; allowed ResBlock pairs: resi->resi, resi->reso, reso->reso",
                input_name="dout",
            )
        return
    if dout not in TRANSFORMER_DOUT:
        raise TapConfigError(
            f"{dout!r} cannot be a dout; allowed douts: {_allowed(TRANSFORMER_DOUT)}", input_name="dout"
        )
    if (din == "attn2c") != (dout == "attn2c"):
        raise TapConfigError(f"attn2c pairs only with itself (attn2c->attn2c); got {din}->{dout}", input_name="dout")
    if TRANSFORMER_ORDER.index(dout) < TRANSFORMER_ORDER.index(din):
        raise TapConfigError(
            f"dout {dout!r} comes before din {din!r}; the block computes positions in the order "
            f"{' -> '.join(TRANSFORMER_ORDER)} and an adapter can only add at or after the position it reads",
            input_name="dout",
        )


def validate_method(method: str) -> str:
    """Return ``method`` normalised (``default`` means ``relu``), or raise :class:`TapConfigError`."""
    if not isinstance(method, str) or method not in METHODS:
        raise TapConfigError(f"unknown method {method!r}; allowed: {_allowed(METHODS)}", input_name="method")
    return "relu" if method == "default" else method
