"""A set of tap adapters: groups of one configuration each, one adapter per block.

This is what a ``kind: "tap"`` file holds (tensors ``<block path>.tap.<down|up|norm>.<weight|bias>``)
and what sampling installs as position hooks in the blocks (specification §1).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch

from ..kind import AdapterGroup, AdapterSetBase
from ..model_view import ModelView
from ..patch_plan import PatchPlan
from ..sites import TapSite, select_sites
from .tap_adapter import TapAdapter
from .tap_config import InitMode, TapConfig
from .tap_points import TapConfigError

MARKER = "tap"


class TapAdapterSet(AdapterSetBase[TapConfig]):
    """Groups of tap adapters keyed by block path inside ``diffusion_model``."""

    kind = "tap"
    marker = MARKER
    config_type = TapConfig

    @property
    def adapters(self) -> dict[str, TapAdapter]:
        """The adapters by block path (the set's members)."""
        return self.members  # type: ignore[return-value]

    @classmethod
    def create(
        cls,
        sites: Sequence[TapSite],
        config: TapConfig,
        blocks: str | Iterable[str] = "all",
        init: InitMode = "zero_up",
        seed: int = 0,
    ) -> TapAdapterSet:
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
    ) -> AdapterGroup[TapConfig]:
        """Add one group (for example ResBlock adapters next to transformer ones)."""
        chosen = select_sites(sites, config.site_kind, blocks)
        clash = [s.path for s in chosen if s.path in self.members]
        if clash:
            raise TapConfigError(
                f"{clash[0]} already has an adapter in this set; one adapter per block per file", input_name="spec"
            )
        generator = torch.Generator().manual_seed(int(seed) + len(self.groups))
        group = AdapterGroup(config, [s.path for s in chosen])
        for site in chosen:
            self.members[site.path] = TapAdapter(
                config, site.width_at(config.din), site.width_at(config.dout), init=init, generator=generator
            )
        self.groups.append(group)
        return group

    @classmethod
    def member_from_tensors(
        cls, path: str, tensors: Mapping[str, torch.Tensor], config: TapConfig, view: ModelView | None
    ) -> TapAdapter:
        adapter = TapAdapter.from_tensors(config, tensors, path)
        adapter.requires_grad_(False)  # loaded adapters are for sampling
        return adapter

    def member_tensors(self, member: torch.nn.Module) -> dict[str, torch.Tensor]:
        assert isinstance(member, TapAdapter)
        return member.tensors()

    def check_fits(self, view: ModelView) -> None:
        """Raise unless every adapter sits on a block of the right kind and widths in the model."""
        by_path = {s.path: s for s in view.sites()}
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

    def inference_plan(self, view: ModelView) -> PatchPlan:
        """Every adapter as a position hook in its block."""
        return PatchPlan(hooks={path: [adapter] for path, adapter in self.adapters.items()})

    def describe(self) -> list[str]:
        """One line per group, e.g. ``attn2o->ffni mid_dim 60 relu scale 1.0: 16 modules``."""
        return [
            f"{g.config.din}->{g.config.dout} mid_dim {g.config.mid_dim} {g.config.method} scale {g.config.scale}: "
            f"{len(g.modules)} modules"
            for g in self.groups
        ]
