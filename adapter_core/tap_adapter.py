"""The tap adapter itself: a small bottleneck MLP ``up(act(down(h)))``.

Transformer-block adapters use linear layers on token features; ResBlock adapters
use ``GroupNorm(32, fp32) -> SiLU -> Conv3x3 -> act -> Conv3x3`` on feature maps
(REFERENCE.md section 1).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .tap_points import SiteKind, TapConfigError, TapPoint, validate_method

InitMode = Literal["zero_up", "paper"]
INIT_MODES: tuple[str, ...] = ("zero_up", "paper")

#: GroupNorm settings of the ResBlock adapter: 32 groups, computed in fp32 (as LDM's GroupNorm32).
RES_NORM_GROUPS = 32
RES_NORM_EPS = 1e-5


@dataclass(frozen=True)
class TapConfig:
    """The configuration shared by every adapter of one group."""

    din: str
    dout: str
    mid_dim: int = 60
    method: str = "relu"
    scale: float = 1.0

    def __post_init__(self) -> None:
        TapPoint(self.din, self.dout)  # validates the pair
        object.__setattr__(self, "method", validate_method(self.method))
        if not isinstance(self.mid_dim, int) or isinstance(self.mid_dim, bool) or self.mid_dim < 1:
            raise TapConfigError(f"mid_dim must be a positive integer, got {self.mid_dim!r}")
        if not math.isfinite(float(self.scale)):
            raise TapConfigError(f"scale must be a finite number, got {self.scale!r}")
        object.__setattr__(self, "scale", float(self.scale))

    @property
    def point(self) -> TapPoint:
        """The ``din -> dout`` placement."""
        return TapPoint(self.din, self.dout)

    @property
    def site_kind(self) -> SiteKind:
        """Whether these adapters sit in transformer blocks or in ResBlocks."""
        return self.point.site_kind


@dataclass
class TapGroup:
    """One entry of a file's ``adapters`` list: a configuration and the module paths it covers."""

    config: TapConfig
    modules: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The metadata form of this group (format ``taptune/1``)."""
        return {**asdict(self.config), "modules": list(self.modules)}

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> "TapGroup":
        """Parse one metadata entry; unknown keys are ignored."""
        try:
            config = TapConfig(
                din=entry["din"],
                dout=entry["dout"],
                mid_dim=int(entry.get("mid_dim", 60)),
                method=entry.get("method", "relu"),
                scale=float(entry.get("scale", 1.0)),
            )
            modules = entry["modules"]
        except KeyError as missing:
            raise TapConfigError(f"adapter group is missing {missing}; it needs din, dout and modules") from None
        except (TypeError, ValueError) as exc:
            if isinstance(exc, TapConfigError):
                raise
            raise TapConfigError(f"adapter group has a value of the wrong type: {exc}") from None
        if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
            raise TapConfigError("adapter group 'modules' must be a list of module paths")
        return cls(config, list(modules))


def _activation(method: str, h: torch.Tensor) -> torch.Tensor:
    if method == "relu":
        return F.relu(h)
    if method == "sig":
        return torch.sigmoid(h)
    if method == "silu":
        return F.silu(h)
    return h


def _cast(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    # Adapters keep fp32 master weights; the block may run in fp16/bf16 on another device.
    if t is None:
        return None
    return t.to(device=like.device, dtype=like.dtype)


class TapAdapter(nn.Module):
    """``scale * up(act(down(h)))`` for one site (one transformer block or one ResBlock).

    ``d_in`` is the width at ``din`` and ``d_out`` at ``dout`` (channels for ResBlocks).
    Parameters are named ``down``, ``up`` (and ``norm`` for ResBlocks), matching the
    file format's ``<path>.tap.<name>.<weight|bias>`` tensors.
    """

    def __init__(
        self,
        config: TapConfig,
        d_in: int,
        d_out: int,
        *,
        init: InitMode = "zero_up",
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.config = config
        self.d_in = d_in
        self.d_out = d_out
        mid = config.mid_dim
        if config.site_kind is SiteKind.RESBLOCK:
            if d_in % RES_NORM_GROUPS:
                raise TapConfigError(f"a ResBlock adapter needs channels divisible by {RES_NORM_GROUPS}; got {d_in}")
            self.norm = nn.GroupNorm(RES_NORM_GROUPS, d_in, eps=RES_NORM_EPS, dtype=dtype)
            self.down = nn.Conv2d(d_in, mid, 3, padding=1, dtype=dtype)
            self.up = nn.Conv2d(mid, d_out, 3, padding=1, dtype=dtype)
        else:
            self.norm = None
            self.down = nn.Linear(d_in, mid, dtype=dtype)
            self.up = nn.Linear(mid, d_out, dtype=dtype)
        self.reset_parameters(init, generator)

    @property
    def is_conv(self) -> bool:
        """True for ResBlock adapters."""
        return self.norm is not None

    @torch.no_grad()
    def reset_parameters(self, init: InitMode = "zero_up", generator: torch.Generator | None = None) -> None:
        """Initialise like PyTorch's default layers (seeded by ``generator``).

        ``zero_up`` then zeroes the ``up`` layer so the adapted model starts exactly as the
        base model; ``paper`` keeps the default initialisation, as the official code does.
        """
        if init not in INIT_MODES:
            raise TapConfigError(f"unknown init {init!r}; allowed: {', '.join(INIT_MODES)}")
        for layer in (self.down, self.up):
            nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
            fan_in = layer.weight[0].numel()
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(layer.bias, -bound, bound, generator=generator)
        if self.norm is not None:
            nn.init.ones_(self.norm.weight)
            nn.init.zeros_(self.norm.bias)
        if init == "zero_up":
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """The adapter's output ``up(act(down(h)))``, without ``scale``, in ``h``'s dtype."""
        if self.down.weight.device != h.device and not self.down.weight.requires_grad:
            # Installing an adapter does not make the host move an already loaded model, so a
            # frozen adapter follows its block to the device once, instead of being copied
            # there on every call. (Trainable ones are placed by the trainer.)
            self.to(h.device)
        method = self.config.method
        if self.norm is None:
            z = F.linear(h, _cast(self.down.weight, h), _cast(self.down.bias, h))
            z = _activation(method, z)
            return F.linear(z, _cast(self.up.weight, h), _cast(self.up.bias, h))
        h32 = h.float()
        normed = F.group_norm(
            h32, RES_NORM_GROUPS, _cast(self.norm.weight, h32), _cast(self.norm.bias, h32), RES_NORM_EPS
        ).to(h.dtype)
        z = F.silu(normed)
        z = F.conv2d(z, _cast(self.down.weight, z), _cast(self.down.bias, z), padding=1)
        z = _activation(method, z)
        return F.conv2d(z, _cast(self.up.weight, z), _cast(self.up.bias, z), padding=1)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The file-format tensors of this adapter, keyed ``tap.<layer>.<weight|bias>``."""
        out: dict[str, torch.Tensor] = {}
        layers = {"down": self.down, "up": self.up}
        if self.norm is not None:
            layers["norm"] = self.norm
        for name, layer in layers.items():
            out[f"tap.{name}.weight"] = layer.weight.detach()
            out[f"tap.{name}.bias"] = layer.bias.detach()
        return out

    @torch.no_grad()
    def load_tensors(self, tensors: dict[str, torch.Tensor], where: str) -> None:
        """Copy ``tap.*`` tensors into this adapter, checking names and shapes.

        ``where`` names the module path in error messages.
        """
        expected = {k: v.shape for k, v in self.tensors().items()}
        missing = sorted(set(expected) - set(tensors))
        extra = sorted(set(tensors) - set(expected))
        if missing or extra:
            raise TapConfigError(
                f"{where}: tensors do not match a {'ResBlock' if self.is_conv else 'transformer'} adapter "
                f"(missing {missing or 'none'}, unexpected {extra or 'none'})"
            )
        for key, shape in expected.items():
            if tuple(tensors[key].shape) != tuple(shape):
                raise TapConfigError(
                    f"{where}.{key}: shape {tuple(tensors[key].shape)} does not fit this model, expected {tuple(shape)}"
                )
        for key, value in self.tensors().items():
            value.copy_(tensors[key].to(value.dtype))

    def num_parameters(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters())
