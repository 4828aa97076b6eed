"""The tap adapter itself: a small bottleneck MLP ``up(act(down(h)))`` (specification §1.1, §1.2).

Transformer-block adapters use linear layers on token features; ResBlock adapters use
``GroupNorm(32, fp32) -> SiLU -> Conv3x3 -> act -> Conv3x3`` on feature maps. An adapter is
a position hook for :mod:`..blocks`: it reads at ``din`` and adds ``scale * A(h)`` at ``dout``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import AdapterFileError
from ..positions import SiteKind
from .tap_config import INIT_MODES, InitMode, TapConfig
from .tap_points import TapConfigError

#: GroupNorm settings of the ResBlock adapter: 32 groups, computed in fp32 (as LDM's GroupNorm32).
RES_NORM_GROUPS = 32
RES_NORM_EPS = 1e-5


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

    # The position-hook interface of ..blocks.
    @property
    def din(self) -> str:
        """Where the adapter reads."""
        return self.config.din

    @property
    def dout(self) -> str:
        """Where the adapter adds its output."""
        return self.config.dout

    @property
    def scale(self) -> float:
        """The fixed factor on the adapter's output."""
        return self.config.scale

    @property
    def site_kind(self) -> SiteKind:
        """The block kind the adapter sits in."""
        return self.config.site_kind

    @property
    def is_conv(self) -> bool:
        """True for ResBlock adapters."""
        return self.norm is not None

    @torch.no_grad()
    def reset_parameters(self, init: InitMode = "zero_up", generator: torch.Generator | None = None) -> None:
        """Initialise like PyTorch's default layers (seeded by ``generator``), specification §1.4.

        ``zero_up`` then zeroes the ``up`` layer so the adapted model starts exactly as the
        base model; ``paper`` keeps the default initialisation, as the official code does.
        """
        if init not in INIT_MODES:
            raise TapConfigError(f"unknown init {init!r}; allowed: {', '.join(INIT_MODES)}", input_name="init")
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

    @classmethod
    def expected_shapes(cls, config: TapConfig, d_in: int, d_out: int) -> dict[str, tuple[int, ...]]:
        """The file tensors' shapes of an adapter of these widths (computed, nothing allocated)."""
        mid = config.mid_dim
        if config.site_kind is SiteKind.RESBLOCK:
            return {
                "tap.norm.weight": (d_in,),
                "tap.norm.bias": (d_in,),
                "tap.down.weight": (mid, d_in, 3, 3),
                "tap.down.bias": (mid,),
                "tap.up.weight": (d_out, mid, 3, 3),
                "tap.up.bias": (d_out,),
            }
        return {
            "tap.down.weight": (mid, d_in),
            "tap.down.bias": (mid,),
            "tap.up.weight": (d_out, mid),
            "tap.up.bias": (d_out,),
        }

    @classmethod
    def from_tensors(cls, config: TapConfig, tensors: Mapping[str, torch.Tensor], where: str) -> TapAdapter:
        """An adapter holding ``tensors`` (``tap.*`` names), whose names, shapes and values are checked first.

        The widths come from the tensors themselves and must agree among all of them and with
        ``config.mid_dim``, so nothing larger than what the file holds is ever allocated.
        """
        down, up = tensors.get("tap.down.weight"), tensors.get("tap.up.weight")
        if down is None or up is None:
            raise AdapterFileError(f"{where}: needs tap.down.weight and tap.up.weight")
        conv = config.site_kind is SiteKind.RESBLOCK
        if down.dim() != (4 if conv else 2) or up.dim() != down.dim():
            kind = "3x3 conv kernels (ResBlock adapter)" if conv else "matrices (transformer adapter)"
            raise AdapterFileError(f"{where}: tap.down/up weights must be {kind} for {config.din}->{config.dout}")
        if down.shape[0] != config.mid_dim:
            raise AdapterFileError(
                f"{where}: tap.down.weight has {down.shape[0]} outputs but mid_dim is {config.mid_dim}"
            )
        d_in, d_out = int(down.shape[1]), int(up.shape[0])
        expected = cls.expected_shapes(config, d_in, d_out)
        missing = sorted(set(expected) - set(tensors))
        extra = sorted(set(tensors) - set(expected))
        if missing or extra:
            raise AdapterFileError(
                f"{where}: tensors do not match a {'ResBlock' if conv else 'transformer'} adapter "
                f"(missing {missing or 'none'}, unexpected {extra[:3] or 'none'})"
            )
        for key, shape in expected.items():
            if tuple(tensors[key].shape) != shape:
                raise AdapterFileError(f"{where}.{key}: shape {tuple(tensors[key].shape)}, expected {shape}")
            if not bool(torch.isfinite(tensors[key]).all()):
                raise AdapterFileError(f"{where}.{key} holds NaN or infinite values")
        if conv and d_in % RES_NORM_GROUPS:
            raise AdapterFileError(
                f"{where}: a ResBlock adapter needs channels divisible by {RES_NORM_GROUPS}; got {d_in}"
            )
        adapter = cls(config, d_in, d_out)
        with torch.no_grad():
            for key, value in adapter.tensors().items():
                value.copy_(tensors[key])
        return adapter

    def num_parameters(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters())
