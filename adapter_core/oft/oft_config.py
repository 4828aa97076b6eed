"""One OFT group's settings, and which linear layers OFT rotates (specification §2).

Defaults are the paper's DreamBooth setting: ``r`` = 4 blocks, COFT on with ``eps`` 6e-5,
the attention projections of every transformer block.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import AdapterFileError, ConfigError
from ..json_values import bool_field, float_field, optional_int_field
from ..model_view import LayerShape, ModelView
from ..positions import SiteKind

#: Most blocks / largest block size a configuration may name (SDXL's widest layer is 10240 wide).
MAX_BLOCKS = 65536
#: Largest ``eps`` (the node offers up to 10).
MAX_EPS = 1e6

ATTENTION_LAYERS: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
FEED_FORWARD_LAYERS: tuple[str, ...] = ("ff.net.0.proj", "ff.net.2")
_ALL_ATTENTION = tuple(f"{a}.{layer}" for a in ("attn1", "attn2") for layer in ATTENTION_LAYERS)
#: Layer sets inside every transformer block (``attention`` is the paper's setting).
TARGET_PRESETS: dict[str, tuple[str, ...]] = {
    "attention": _ALL_ATTENTION,
    "self_attention": tuple(f"attn1.{layer}" for layer in ATTENTION_LAYERS),
    "cross_attention": tuple(f"attn2.{layer}" for layer in ATTENTION_LAYERS),
    "attention_ff": _ALL_ATTENTION + FEED_FORWARD_LAYERS,
}


class OFTConfigError(ConfigError):
    """An OFT configuration that cannot apply to a layer."""


def _divisors(n: int, limit: int = 64) -> str:
    return ", ".join(str(d) for d in range(1, min(n, limit) + 1) if n % d == 0)


@dataclass(frozen=True)
class OFTConfig:
    """Settings shared by every rotation of one group.

    Exactly one of ``r`` (number of blocks) and ``block_size`` is given; the other
    follows from each layer's input width.
    """

    r: int | None = 4
    block_size: int | None = None
    block_share: bool = False
    coft: bool = True
    eps: float = 6e-5

    def __post_init__(self) -> None:
        if (self.r is None) == (self.block_size is None):
            raise OFTConfigError("give exactly one of r (number of blocks) and block_size", input_name="r")
        for name in ("r", "block_size"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_BLOCKS
            ):
                raise OFTConfigError(f"{name} must be an integer in 1..{MAX_BLOCKS}, got {value!r}", input_name=name)
        if (
            isinstance(self.eps, bool)
            or not isinstance(self.eps, (int, float))
            or not (math.isfinite(self.eps) and 0 < self.eps <= MAX_EPS)
        ):
            raise OFTConfigError(f"eps must be a positive number up to {MAX_EPS:g}, got {self.eps!r}", input_name="eps")

    def blocks_for(self, in_features: int, where: str = "layer") -> tuple[int, int]:
        """``(r, k)`` for a layer of input width ``in_features``; raises if it does not divide."""
        if self.r is not None:
            if in_features % self.r:
                raise OFTConfigError(
                    f"{where}: input width {in_features} does not divide into r={self.r} blocks "
                    f"(choose r among {_divisors(in_features)})",
                    input_name="r",
                )
            return self.r, in_features // self.r
        assert self.block_size is not None
        if in_features % self.block_size:
            raise OFTConfigError(
                f"{where}: input width {in_features} does not divide into blocks of size {self.block_size} "
                f"(choose block_size among {_divisors(in_features)})",
                input_name="block_size",
            )
        return in_features // self.block_size, self.block_size

    def to_json(self) -> dict[str, Any]:
        """The metadata form (``r`` or ``block_size``, whichever the group was configured by)."""
        entry: dict[str, Any] = {"block_share": self.block_share, "coft": self.coft, "eps": self.eps}
        if self.r is not None:
            entry["r"] = self.r
        else:
            entry["block_size"] = self.block_size
        return entry

    @classmethod
    def from_json(cls, entry: Mapping[str, Any], where: str) -> OFTConfig:
        """Parse one metadata entry (types and bounds checked); unknown keys are ignored."""
        defaults = cls.__dataclass_fields__
        try:
            return cls(
                r=optional_int_field(entry, "r", where, minimum=1, maximum=MAX_BLOCKS),
                block_size=optional_int_field(entry, "block_size", where, minimum=1, maximum=MAX_BLOCKS),
                block_share=bool_field(entry, "block_share", where, default=False),
                coft=bool_field(entry, "coft", where, default=False),
                eps=float_field(entry, "eps", where, default=defaults["eps"].default, minimum=0.0, maximum=MAX_EPS),
            )
        except OFTConfigError as exc:  # in a file, a bad setting is the file's fault, not an input's
            raise AdapterFileError(f"{where}: {exc.message}") from None


def oft_targets(view: ModelView, targets: str | Iterable[str] = "attention") -> dict[str, LayerShape]:
    """The linear layers OFT should rotate, with their shapes, in module order.

    ``targets`` is a preset (``attention`` = the paper's setting, ``self_attention``,
    ``cross_attention``, ``attention_ff``) or an explicit list of layer paths.
    """
    if isinstance(targets, str):
        if targets not in TARGET_PRESETS:
            raise OFTConfigError(
                f"unknown targets {targets!r}; allowed: {', '.join(TARGET_PRESETS)} or a list of layer paths",
                input_name="targets",
            )
        blocks = [s.path for s in view.sites() if s.kind is SiteKind.TRANSFORMER]
        paths = [f"{b}.{suffix}" for b in blocks for suffix in TARGET_PRESETS[targets]]
    else:
        paths = [p.strip().removeprefix("diffusion_model.") for p in targets]
    try:
        out = view.linear_layer_shapes(paths)
    except ConfigError as exc:
        raise OFTConfigError(exc.message, input_name="targets" if isinstance(targets, str) else "target_list") from None
    if not out:
        raise OFTConfigError(f"no layers selected by targets {targets!r}", input_name="targets")
    return out
