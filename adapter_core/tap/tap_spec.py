"""The training recipe of tap adapters: groups to create, and how a run trains them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import nn

from ..model_view import ModelView
from ..patch_plan import PatchPlan
from .tap_config import InitMode, TapConfig
from .tap_set import TapAdapterSet

#: The Closer Look paper's learning rate for adapters (specification §3).
PAPER_LEARNING_RATE = 1e-4


@dataclass(frozen=True)
class TapGroupSpec:
    """One group of tap adapters: a configuration and which blocks get it."""

    config: TapConfig = field(default_factory=TapConfig)
    blocks: str | tuple[str, ...] = "all"
    init: InitMode = "zero_up"


@dataclass(frozen=True)
class TapSpec:
    """Tap-point adapters to train; several groups (e.g. transformer + ResBlock) make one file."""

    groups: tuple[TapGroupSpec, ...] = field(default_factory=lambda: (TapGroupSpec(),))
    learning_rate: float = PAPER_LEARNING_RATE

    kind: ClassVar[str] = "tap"
    #: Tap adapters have no post-stage.
    post_steps: ClassVar[int] = 0

    def build(self, view: ModelView, seed: int) -> TapAdapterSet:
        """Fresh adapters for the model in ``view``, initialised from ``seed``."""
        sites = view.sites()
        tap_set = TapAdapterSet()
        for i, group in enumerate(self.groups):
            tap_set.add_group(sites, group.config, group.blocks, group.init, seed + 1000 * i)
        return tap_set

    def training_plan(self, adapter_set: TapAdapterSet, view: ModelView) -> PatchPlan:
        """The adapters as hooks at strength 1; their parameters are shared, so gradients reach them."""
        return adapter_set.inference_plan(view, 1.0)

    def trainable(self, adapter_set: TapAdapterSet, phase: str) -> list[nn.Parameter]:
        """Every adapter parameter (tap adapters train in one phase)."""
        return adapter_set.parameters()

    def before_forward(self, adapter_set: TapAdapterSet, phase: str) -> None:
        """Nothing: tap adapters are unconstrained."""

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
