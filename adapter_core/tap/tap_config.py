"""One tap-adapter group's settings: the pair, the bottleneck width, the activation, the scale.

Defaults are the paper's best recipe (specification §1.3): ``attn2o -> ffni``, ``mid_dim``
60, relu, scale 1.0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from ..errors import AdapterFileError
from ..json_values import float_field, int_field, str_field
from ..positions import SiteKind
from .tap_points import BEST_PAIR, TapConfigError, TapPoint, validate_method

InitMode = Literal["zero_up", "paper"]
INIT_MODES: tuple[str, ...] = ("zero_up", "paper")
#: The widest bottleneck a file may declare (the tensors must then agree with it).
MAX_MID_DIM = 65536
#: ``|scale|`` bound (a scale is a plain factor; the node offers -100..100).
MAX_SCALE = 1e6


@dataclass(frozen=True)
class TapConfig:
    """The configuration shared by every adapter of one group."""

    din: str = BEST_PAIR[0]
    dout: str = BEST_PAIR[1]
    mid_dim: int = 60
    method: str = "relu"
    scale: float = 1.0

    def __post_init__(self) -> None:
        TapPoint(self.din, self.dout)  # validates the pair
        object.__setattr__(self, "method", validate_method(self.method))
        if not isinstance(self.mid_dim, int) or isinstance(self.mid_dim, bool) or not 1 <= self.mid_dim <= MAX_MID_DIM:
            raise TapConfigError(
                f"mid_dim must be an integer in 1..{MAX_MID_DIM}, got {self.mid_dim!r}", input_name="mid_dim"
            )
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) or not math.isfinite(self.scale):
            raise TapConfigError(f"scale must be a finite number, got {self.scale!r}", input_name="scale")
        if abs(self.scale) > MAX_SCALE:
            raise TapConfigError(f"|scale| must be at most {MAX_SCALE:g}", input_name="scale")
        object.__setattr__(self, "scale", float(self.scale))

    @property
    def point(self) -> TapPoint:
        """The ``din -> dout`` placement."""
        return TapPoint(self.din, self.dout)

    @property
    def site_kind(self) -> SiteKind:
        """Whether these adapters sit in transformer blocks or in ResBlocks."""
        return self.point.site_kind

    def to_json(self) -> dict[str, Any]:
        """The metadata form (``din``, ``dout``, ``mid_dim``, ``method``, ``scale``)."""
        return asdict(self)

    @classmethod
    def from_json(cls, entry: Mapping[str, Any], where: str) -> TapConfig:
        """Parse one metadata entry (types and bounds checked); unknown keys are ignored."""
        defaults = cls.__dataclass_fields__
        try:
            return cls(
                din=str_field(entry, "din", where, max_length=16),
                dout=str_field(entry, "dout", where, max_length=16),
                mid_dim=int_field(
                    entry, "mid_dim", where, default=defaults["mid_dim"].default, minimum=1, maximum=MAX_MID_DIM
                ),
                method=str_field(entry, "method", where, default=defaults["method"].default, max_length=16),
                scale=float_field(
                    entry, "scale", where, default=defaults["scale"].default, minimum=-MAX_SCALE, maximum=MAX_SCALE
                ),
            )
        except TapConfigError as exc:  # in a file, a bad setting is the file's fault, not an input's
            raise AdapterFileError(f"{where}: {exc.message}") from None
