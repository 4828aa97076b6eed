"""The training recipe of OFT/COFT rotations, with the magnitude post-stage (specification §2.3-§2.5)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..errors import TapTuneError
from ..json_values import int_field, optional_int_field
from ..kind import Phase
from ..model_view import ModelView
from ..patch_plan import PatchPlan
from ..spec_form import SpecField, SpecForm, path_lines
from ..spec_json import (
    as_config_error,
    check_kind_field,
    learning_rate_field,
    object_field,
    paths_or_preset,
    spec_to_json,
)
from .cayley import MAX_NEUMANN_TERMS
from .oft_config import MAX_BLOCKS, TARGET_PRESETS, OFTConfig, OFTConfigError, oft_targets
from .oft_set import OFTAdapterSet
from .oft_wrappers import rotation_wrappers, split_layer_path

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
    #: The rotations train first; the magnitude post-stage fits only the magnitudes, rotations fixed.
    phase_parameters: ClassVar[Mapping[Phase, str | None]] = {Phase.MAIN: "rotation", Phase.POST: "magnitude"}

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
        return PatchPlan(child_wrappers=rotation_wrappers(adapter_set.rotations, self.neumann_terms))

    def after_step(self, adapter_set: OFTAdapterSet, phase: Phase) -> None:
        """COFT: project ``P`` back into its radius after every step, without gradient (the paper's projection).

        Projecting after each step rather than before each forward pass keeps the constraint on
        every state a run can show: checkpoints, previews and the returned adapter. Only a phase
        that trains the rotations can move them out (projecting again would only add rounding).
        """
        if self.phase_parameters[phase] == "rotation":
            adapter_set.project_()

    def to_json(self) -> dict[str, Any]:
        """The spec's one JSON form (every field)."""
        return spec_to_json(self)

    @classmethod
    def from_json(cls, entry: Mapping[str, Any], where: str = "spec") -> OFTSpec:
        """The spec :meth:`to_json` wrote; :class:`~..errors.ConfigError` (input ``spec``) naming the field."""
        check_kind_field(entry, cls.kind, where)
        try:
            return cls(
                OFTConfig.from_json(object_field(entry, "config", where), f"{where}.config"),
                paths_or_preset(entry, "targets", where, "attention"),
                optional_int_field(entry, "neumann_terms", where, minimum=1, maximum=MAX_NEUMANN_TERMS),
                int_field(entry, "magnitude_steps", where, default=0, minimum=0, maximum=MAX_MAGNITUDE_STEPS),
                learning_rate_field(entry, where, PAPER_LEARNING_RATE),
            )
        except TapTuneError as exc:
            raise as_config_error(exc, where) from None


def _spec_from_inputs(values: Mapping[str, Any]) -> OFTSpec:
    blocks, size = values["r"], values["block_size"]
    config = OFTConfig(
        r=blocks or None,
        block_size=None if blocks else (size or None),
        block_share=values["block_share"],
        coft=values["coft"],
        eps=values["eps"],
    )
    return OFTSpec(
        config,
        path_lines(values["target_list"]) or values["targets"],
        values["neumann_terms"] or None,
        values["magnitude_steps"],
    )


_CONFIG = OFTConfig()
_SPEC = OFTSpec()

#: The OFT spec node (``TapTuneOFTSpec``); its defaults are the dataclasses' (the paper's DreamBooth setting).
OFT_SPEC_FORM = SpecForm(
    node_id="TapTuneOFTSpec",
    display_name="TapTune OFT Spec",
    description=(
        "Describes orthogonal finetuning to train: a block-diagonal Cayley rotation of every target layer's "
        "neurons (r blocks), optionally constrained (COFT, radius eps k^2 per block) and shared across blocks. "
        "Defaults are the paper's DreamBooth setting: to_q, to_k, to_v, to_out.0 of every attention layer, "
        "r=4, COFT, eps 6e-5."
    ),
    fields=(
        SpecField("r", "int", "Number of diagonal blocks per layer (0: use block_size).", _CONFIG.r, 0, 4096),
        SpecField(
            "eps",
            "float",
            "COFT radius factor: each block stays within eps*k*k (divided by sqrt(r)).",
            _CONFIG.eps,
            1e-9,
            10.0,
            step=1e-6,
        ),
        SpecField(
            "coft", "bool", "Constrained OFT: keep each rotation within the radius during training.", _CONFIG.coft
        ),
        SpecField("block_share", "bool", "One rotation block shared by all blocks of a layer.", _CONFIG.block_share),
        SpecField(
            "targets",
            "combo",
            "attention: to_q/to_k/to_v/to_out.0 of self- and cross-attention (the paper); or one kind; "
            "attention_ff adds the feed-forward layers.",
            _SPEC.targets,
            options=tuple(TARGET_PRESETS),
            optional=True,
        ),
        SpecField(
            "target_list",
            "text",
            "Optional: explicit layer paths (one per line); overrides 'targets'.",
            "",
            optional=True,
            multiline=True,
        ),
        SpecField(
            "block_size",
            "int",
            "Block size instead of r (used when r is 0).",
            0,
            0,
            min(4096, MAX_BLOCKS),
            optional=True,
        ),
        SpecField(
            "neumann_terms",
            "int",
            "0: exact Cayley transform. n > 0: Cayley-Neumann series with n terms (faster, approximately orthogonal).",
            0,
            0,
            32,
            optional=True,
        ),
        SpecField(
            "magnitude_steps",
            "int",
            "Extra steps after training that fit a per-neuron magnitude with the rotation fixed (0: off).",
            _SPEC.magnitude_steps,
            0,
            100000,
            optional=True,
        ),
    ),
    build=_spec_from_inputs,
)
