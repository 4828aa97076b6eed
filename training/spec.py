"""What a TAPTUNE_SPEC socket carries: a recipe for new adapters, tap-point or OFT."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

from torch import nn

from ..adapter_core.oft import OFTConfig
from ..adapter_core.oft_layer import split_layer_path
from ..adapter_core.oft_set import OFTAdapterSet
from ..adapter_core.tap_adapter import InitMode, TapConfig
from ..adapter_core.tap_set import TapAdapterSet
from ..patching.model_access import model_linear_layers, model_sites
from ..patching.oft_patches import with_oft_trainable
from ..patching.tap_patches import with_tap_adapters

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

    #: Steps after the main ones (tap adapters have no post-stage).
    extra_steps = 0

    def training_model(self, model: Any, adapter_set: TapAdapterSet) -> Any:
        """A clone of ``model`` that computes through ``adapter_set`` with gradients."""
        return with_tap_adapters(model, adapter_set)

    def trainable(self, adapter_set: TapAdapterSet, phase: str) -> list[nn.Parameter]:
        """The parameters the optimiser of ``phase`` trains (tap adapters: all, in the one phase)."""
        return adapter_set.parameters()

    def before_forward(self, adapter_set: TapAdapterSet, phase: str) -> None:
        """What runs before each training forward pass (nothing for tap adapters)."""

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
        """Identity rotations (``P = 0``) on the target layers of ``model``; every layer must be trainable."""
        layers = model_linear_layers(model, self.targets if isinstance(self.targets, str) else list(self.targets))
        for path in layers:
            split_layer_path(path)  # raises OFTConfigError for a layer OFT can load but not train
        return OFTAdapterSet.create(layers, self.config, magnitude=self.magnitude_steps > 0)

    @property
    def extra_steps(self) -> int:
        """Steps after the main ones: the magnitude post-stage."""
        return self.magnitude_steps

    def training_model(self, model: Any, adapter_set: OFTAdapterSet) -> Any:
        """A clone of ``model`` whose target layers compute through the rotations with gradients."""
        return with_oft_trainable(model, adapter_set, self.neumann_terms)

    def trainable(self, adapter_set: OFTAdapterSet, phase: str) -> list[nn.Parameter]:
        """``P`` in the main phase; the magnitudes in the ``magnitude`` post-stage."""
        rotations = adapter_set.rotations.values()
        if phase == "magnitude":
            return [r.magnitude for r in rotations if r.magnitude is not None]
        return [r.P for r in rotations]

    def before_forward(self, adapter_set: OFTAdapterSet, phase: str) -> None:
        """COFT: project ``P`` back into its radius, without gradient, as the paper does."""
        if phase == "main":
            adapter_set.project_()

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
