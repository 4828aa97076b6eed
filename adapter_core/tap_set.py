"""A set of tap adapters: groups of one configuration each, one adapter per module path.

This is what a ``kind: "tap"`` file holds and what the patching layer installs.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .file_format import AdapterFile, AdapterFileError, split_by_module, unclaimed_tensors
from .sites import TapSite, select_sites
from .tap_adapter import InitMode, TapAdapter, TapConfig, TapGroup
from .tap_points import TapConfigError

MARKER = "tap"


@dataclass
class TapAdapterSet:
    """Groups of tap adapters keyed by module path inside ``diffusion_model``."""

    groups: list[TapGroup] = field(default_factory=list)
    adapters: dict[str, TapAdapter] = field(default_factory=dict)

    kind = "tap"

    @classmethod
    def create(
        cls,
        sites: Sequence[TapSite],
        config: TapConfig,
        blocks: str | Iterable[str] = "all",
        init: InitMode = "zero_up",
        seed: int = 0,
    ) -> "TapAdapterSet":
        """New adapters for the selected sites, initialised from ``seed``."""
        out = cls()
        out.add_group(sites, config, blocks, init, seed)
        return out

    def add_group(
        self,
        sites: Sequence[TapSite],
        config: TapConfig,
        blocks: str | Iterable[str] = "all",
        init: InitMode = "zero_up",
        seed: int = 0,
    ) -> TapGroup:
        """Add one group (for example ResBlock adapters next to transformer ones)."""
        chosen = select_sites(sites, config.site_kind, blocks)
        clash = [s.path for s in chosen if s.path in self.adapters]
        if clash:
            raise TapConfigError(f"{clash[0]} already has an adapter in this set; one adapter per block per file")
        generator = torch.Generator().manual_seed(int(seed) + len(self.groups))
        group = TapGroup(config, [s.path for s in chosen])
        for site in chosen:
            self.adapters[site.path] = TapAdapter(
                config, site.width_at(config.din), site.width_at(config.dout), init=init, generator=generator
            )
        self.groups.append(group)
        return group

    def tensors(self) -> dict[str, torch.Tensor]:
        """File-format tensors: ``<path>.tap.<down|up|norm>.<weight|bias>``."""
        return {f"{path}.{name}": t for path, adapter in self.adapters.items() for name, t in adapter.tensors().items()}

    def to_file(self, base: dict[str, Any] | None = None, **info: Any) -> AdapterFile:
        """The :class:`AdapterFile` to save, with optional ``base`` fingerprint and info fields."""
        return AdapterFile("tap", [g.to_json() for g in self.groups], self.tensors(), base, dict(info))

    @classmethod
    def from_file(cls, adapter_file: AdapterFile) -> "TapAdapterSet":
        """Rebuild the adapters of a ``kind: "tap"`` file; widths come from the tensor shapes."""
        if adapter_file.kind != "tap":
            raise AdapterFileError(f"expected a tap adapter file, got kind {adapter_file.kind!r}")
        out = cls()
        seen: set[str] = set()
        for entry in adapter_file.adapters:
            group = TapGroup.from_json(entry)
            twice = seen.intersection(group.modules)
            if twice or len(set(group.modules)) != len(group.modules):
                raise AdapterFileError(
                    f"module {sorted(twice or group.modules)[0]} is listed twice; one adapter per module"
                )
            seen.update(group.modules)
            per_module = split_by_module(adapter_file.tensors, group.modules, MARKER)
            for path, tensors in per_module.items():
                down = tensors.get("tap.down.weight")
                up = tensors.get("tap.up.weight")
                if down is None or up is None:
                    raise AdapterFileError(f"{path}: needs tap.down.weight and tap.up.weight")
                if down.shape[0] != group.config.mid_dim:
                    raise AdapterFileError(
                        f"{path}: tap.down.weight has {down.shape[0]} outputs but mid_dim is {group.config.mid_dim}"
                    )
                if down.dim() not in (2, 4) or up.dim() != down.dim():
                    raise AdapterFileError(f"{path}: tap.down/up weights must be 2-D (linear) or 4-D (conv) kernels")
                bad = [k for k, t in tensors.items() if not torch.isfinite(t).all()]
                if bad:
                    raise AdapterFileError(f"{path}.{bad[0]} holds NaN or infinite values")
                adapter = TapAdapter(group.config, int(down.shape[1]), int(up.shape[0]))
                adapter.load_tensors(tensors, path)
                adapter.requires_grad_(False)  # loaded adapters are for sampling
                out.adapters[path] = adapter
            out.groups.append(group)
        stray = unclaimed_tensors(adapter_file.tensors, sorted(seen), MARKER)
        if stray:
            raise AdapterFileError(f"tensor {stray[0]} belongs to no module listed in 'adapters'")
        return out

    def check_fits(self, sites: Sequence[TapSite]) -> None:
        """Raise unless every adapter sits on a block of the right kind and widths in ``sites``."""
        by_path = {s.path: s for s in sites}
        for group in self.groups:
            config = group.config
            for path in group.modules:
                site = by_path.get(path)
                if site is None or site.kind is not config.site_kind:
                    raise TapConfigError(f"{path} is not a {config.site_kind.value} block of this model")
                adapter = self.adapters[path]
                for position, width in ((config.din, adapter.d_in), (config.dout, adapter.d_out)):
                    if site.width_at(position) != width:
                        raise TapConfigError(
                            f"{path}: the adapter was made for width {width} at {position} but this model has "
                            f"{site.width_at(position)} there (a file for another architecture?)"
                        )

    def num_parameters(self) -> int:
        """Total trainable parameters of all adapters."""
        return sum(a.num_parameters() for a in self.adapters.values())

    def parameters(self) -> list[torch.nn.Parameter]:
        """All adapter parameters (for an optimiser)."""
        return [p for a in self.adapters.values() for p in a.parameters()]

    def frozen_copy(self) -> "TapAdapterSet":
        """A detached copy whose parameters do not require gradients."""
        out = TapAdapterSet(copy.deepcopy(self.groups), {})
        for path, adapter in self.adapters.items():
            clone = copy.deepcopy(adapter)
            clone.requires_grad_(False)
            out.adapters[path] = clone
        return out

    def describe(self) -> list[str]:
        """One line per group, e.g. ``attn2o->ffni mid_dim 60 relu scale 1.0: 16 modules``."""
        return [
            f"{g.config.din}->{g.config.dout} mid_dim {g.config.mid_dim} {g.config.method} scale {g.config.scale}: "
            f"{len(g.modules)} modules"
            for g in self.groups
        ]
