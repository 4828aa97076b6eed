"""What a TAPTUNE_SPEC socket carries: a recipe for new adapters, tap-point or OFT."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

from ..adapter_core.oft import OFTConfig
from ..adapter_core.oft_set import OFTAdapterSet
from ..adapter_core.tap_adapter import InitMode, TapConfig
from ..adapter_core.tap_set import TapAdapterSet
from ..patching.model_access import model_linear_layers, model_sites

#: The papers' learning rates (Closer Look: 1e-4 for adapters; OFT DreamBooth: 6e-5).
DEFAULT_LEARNING_RATE = {"tap": 1e-4, "oft": 6e-5}


@dataclass(frozen=True)
class TapGroupSpec:
    """One group of tap adapters: a configuration and which blocks get it."""

    config: TapConfig
    blocks: str | tuple[str, ...] = "all"
    init: InitMode = "zero_up"


@dataclass(frozen=True)
class TapSpec:
    """Tap-point adapters to train; several groups (e.g. transformer + ResBlock) make one file."""

    groups: tuple[TapGroupSpec, ...] = field(default_factory=tuple)

    kind = "tap"

    def build(self, model: Any, seed: int) -> TapAdapterSet:
        """Fresh adapters for ``model`` (a ComfyUI MODEL), initialised from ``seed``."""
        sites = model_sites(model)
        tap_set = TapAdapterSet()
        for i, group in enumerate(self.groups):
            tap_set.add_group(sites, group.config, group.blocks, group.init, seed + 1000 * i)
        return tap_set

    def describe(self) -> dict[str, Any]:
        """JSON-ready configuration for file metadata and checkpoints."""
        return {
            "kind": "tap",
            "groups": [
                {
                    "din": g.config.din,
                    "dout": g.config.dout,
                    "mid_dim": g.config.mid_dim,
                    "method": g.config.method,
                    "scale": g.config.scale,
                    "blocks": g.blocks if isinstance(g.blocks, str) else list(g.blocks),
                    "init": g.init,
                }
                for g in self.groups
            ],
        }


@dataclass(frozen=True)
class OFTSpec:
    """OFT/COFT rotations to train, with an optional magnitude post-stage."""

    config: OFTConfig = field(default_factory=OFTConfig)
    targets: str | tuple[str, ...] = "attention"
    neumann_terms: int | None = None
    magnitude_steps: int = 0

    kind = "oft"

    def build(self, model: Any, seed: int) -> OFTAdapterSet:
        """Identity rotations (``P = 0``) on the target layers of ``model``."""
        layers = model_linear_layers(model, self.targets if isinstance(self.targets, str) else list(self.targets))
        return OFTAdapterSet.create(layers, self.config, magnitude=self.magnitude_steps > 0)

    def describe(self) -> dict[str, Any]:
        """JSON-ready configuration for file metadata and checkpoints."""
        c = self.config
        return {
            "kind": "oft",
            "r": c.r,
            "block_size": c.block_size,
            "block_share": c.block_share,
            "coft": c.coft,
            "eps": c.eps,
            "targets": self.targets if isinstance(self.targets, str) else list(self.targets),
            "neumann_terms": self.neumann_terms,
            "magnitude_steps": self.magnitude_steps,
        }


AdapterSpec = Union[TapSpec, OFTSpec]
