"""The training recipe of OFT/COFT rotations, with the magnitude post-stage (specification §2.3-§2.5)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import nn

from ..model_view import ModelView
from ..patch_plan import ChildWrapper, HostOps, PatchPlan
from .cayley import MAX_NEUMANN_TERMS
from .oft_config import OFTConfig, OFTConfigError, oft_targets
from .oft_rotation import OFTRotation
from .oft_set import OFTAdapterSet
from .oft_wrappers import rotated_module, split_layer_path

#: The OFT paper's DreamBooth learning rate (specification §2.4).
PAPER_LEARNING_RATE = 6e-5
#: Most magnitude post-stage steps (the node offers up to 100000).
MAX_MAGNITUDE_STEPS = 1_000_000


@dataclass(frozen=True)
class OFTSpec:
    """OFT/COFT rotations to train, with an optional magnitude post-stage."""

    config: OFTConfig = field(default_factory=OFTConfig)
    targets: str | tuple[str, ...] = "attention"
    neumann_terms: int | None = None
    magnitude_steps: int = 0
    learning_rate: float = PAPER_LEARNING_RATE

    kind: ClassVar[str] = "oft"

    def __post_init__(self) -> None:
        if self.neumann_terms is not None and not 1 <= self.neumann_terms <= MAX_NEUMANN_TERMS:
            raise OFTConfigError(
                f"neumann_terms must be 0 (exact) or 1..{MAX_NEUMANN_TERMS}", input_name="neumann_terms"
            )
        if not 0 <= self.magnitude_steps <= MAX_MAGNITUDE_STEPS:
            raise OFTConfigError(f"magnitude_steps must be 0..{MAX_MAGNITUDE_STEPS}", input_name="magnitude_steps")

    @property
    def post_steps(self) -> int:
        """Steps after the main ones: the magnitude post-stage."""
        return self.magnitude_steps

    def build(self, view: ModelView, seed: int) -> OFTAdapterSet:
        """Identity rotations (``P = 0``) on the target layers; every layer must be trainable."""
        layers = oft_targets(view, self.targets if isinstance(self.targets, str) else list(self.targets))
        for path in layers:
            split_layer_path(path)  # raises OFTConfigError for a layer OFT can load but not train
        return OFTAdapterSet.create(layers, self.config, magnitude=self.magnitude_steps > 0)

    def training_plan(self, adapter_set: OFTAdapterSet, view: ModelView) -> PatchPlan:
        """Each block's ``attn1``/``attn2``/``ff`` replaced by a wrapper computing through the rotations."""
        grouped: dict[str, dict[str, dict[str, OFTRotation]]] = {}
        for path, rotation in adapter_set.rotations.items():
            block, module, layer = split_layer_path(path)
            grouped.setdefault(block, {}).setdefault(module, {})[layer] = rotation
        plan = PatchPlan()
        for block, modules in grouped.items():
            plan.child_wrappers[block] = {name: self._wrapper(name, rotations) for name, rotations in modules.items()}
        return plan

    def _wrapper(self, name: str, rotations: dict[str, OFTRotation]) -> ChildWrapper:
        def wrap(child: nn.Module, host: HostOps) -> nn.Module:
            return rotated_module(name, child, rotations, host, self.neumann_terms)

        return wrap

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
