"""The training recipe of LoRA: layers to adapt, how a run trains them, its JSON form and its spec node.

One phase: ``down`` and ``up`` of every layer train together; there is no post-stage and
nothing runs after an optimiser step. While training, each adapted layer's parent
(``attn1``/``attn2``/``ff`` of a transformer block) is wrapped (``adapter_core.linear_wrappers``)
so that the frozen weight comes from the host and gradients reach ``down`` and ``up``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..errors import TapTuneError
from ..kind import Phase
from ..linear_wrappers import child_wrapper_factory, group_by_block
from ..model_view import ModelView
from ..patch_plan import PatchPlan
from ..spec_form import SpecField, SpecForm, path_lines
from ..spec_json import as_config_error, check_kind_field, learning_rate_field, object_field, spec_to_json
from .lora_config import INIT_MODES, MAX_ALPHA, MAX_RANK, TARGET_PRESETS, LoRAConfig, LoRAConfigError, lora_targets
from .lora_set import MARKER, LoRAAdapterSet

#: The usual DreamBooth-LoRA learning rate (AdamW).
DEFAULT_LEARNING_RATE = 1e-4


def _not_trainable(path: str) -> LoRAConfigError:
    return LoRAConfigError(
        f"{path!r} cannot be trained with LoRA: training supports the linear layers of a transformer block's "
        "attention (attn1/attn2 to_q, to_k, to_v, to_out.0) and feed-forward (ff.net.0.proj or ff.net.0.0, "
        "ff.net.2); a file for any linear layer can still be loaded",
        input_name="targets",
    )


@dataclass(frozen=True)
class LoRASpec:
    """LoRA layers to train (one group) and the run's learning rate."""

    config: LoRAConfig = field(default_factory=LoRAConfig)
    learning_rate: float = DEFAULT_LEARNING_RATE

    kind: ClassVar[str] = "lora"
    #: One phase, training every ``down`` and ``up``; no post-stage.
    phase_parameters: ClassVar[Mapping[Phase, str | None]] = {Phase.MAIN: "adapter", Phase.POST: None}
    post_steps: ClassVar[int] = 0

    def __post_init__(self) -> None:
        if not isinstance(self.config, LoRAConfig):
            raise LoRAConfigError("config must be a LoRAConfig", input_name="spec")
        lr = self.learning_rate
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr <= 10:
            raise LoRAConfigError(f"learning_rate must be in (0, 10], got {lr!r}", input_name="learning_rate")

    def build(self, view: ModelView, seed: int) -> LoRAAdapterSet:
        """Fresh layers on the targets (``down`` from ``seed``, ``up`` zero); every layer must be trainable."""
        layers = lora_targets(view, self.config.targets)
        group_by_block(layers, _not_trainable)  # raises for a layer the wrappers cannot train
        return LoRAAdapterSet.create(layers, self.config, seed)

    def training_plan(self, adapter_set: LoRAAdapterSet, view: ModelView) -> PatchPlan:
        """Each block's ``attn1``/``attn2``/``ff`` replaced by a wrapper computing its adapted layers."""
        plan = PatchPlan()
        for block, children in group_by_block(adapter_set.layers, _not_trainable).items():
            plan.child_wrappers[block] = {
                name: child_wrapper_factory(name, members, MARKER) for name, members in children.items()
            }
        return plan

    def after_step(self, adapter_set: LoRAAdapterSet, phase: Phase) -> None:
        """Nothing: LoRA is unconstrained."""

    def to_json(self) -> dict[str, Any]:
        """``{"kind": "lora", "config": {...}, "learning_rate": ...}``, every field included."""
        return spec_to_json(self)

    @classmethod
    def from_json(cls, entry: Mapping[str, Any], where: str = "spec") -> LoRASpec:
        """The spec :meth:`to_json` wrote (types and bounds checked); :class:`ConfigError` naming the field."""
        check_kind_field(entry, cls.kind, where)
        try:
            config = LoRAConfig.from_json(object_field(entry, "config", where), f"{where}.config")
            learning_rate = learning_rate_field(entry, where, DEFAULT_LEARNING_RATE)
            return cls(config, learning_rate)
        except TapTuneError as exc:
            raise as_config_error(exc, where) from None


def _build_from_form(values: Mapping[str, Any]) -> LoRASpec:
    targets: str | tuple[str, ...] = path_lines(str(values.get("target_list") or "")) or values["targets"]
    config = LoRAConfig(rank=int(values["rank"]), alpha=float(values["alpha"]), targets=targets, init=values["init"])
    return LoRASpec(config, float(values["learning_rate"]))


_DEFAULTS = LoRAConfig()

LORA_SPEC_FORM = SpecForm(
    node_id="TapTuneLoRASpec",
    display_name="TapTune LoRA Spec",
    description=(
        "A LoRA recipe for TapTune DreamBooth Train: low-rank down/up matrices on the linear layers of every "
        "transformer block, merged into the weights for sampling. The saved file uses the standard LoRA tensor "
        "names, so ComfyUI's stock LoRA loaders (and other tools) read it too."
    ),
    fields=(
        SpecField(
            "rank",
            "int",
            "Rank of each down/up pair: trainable parameters grow with it (rank x (inputs + outputs) per layer).",
            default=_DEFAULTS.rank,
            minimum=1,
            maximum=min(MAX_RANK, 1024),
            step=1,
        ),
        SpecField(
            "alpha",
            "float",
            "Scale numerator: the weight changes by strength x alpha / rank x up @ down. alpha = rank gives scale 1.",
            default=_DEFAULTS.alpha,
            minimum=-min(MAX_ALPHA, 10000.0),
            maximum=min(MAX_ALPHA, 10000.0),
            step=0.5,
        ),
        SpecField(
            "targets",
            "combo",
            "Which layers of every transformer block: attention = attn1/attn2 q, k, v, out; attention_ff adds the "
            "feed-forward layers; all_linear = every linear layer of the block's attention and feed-forward modules. "
            "A non-empty target_list overrides it.",
            default=_DEFAULTS.targets,
            options=tuple(TARGET_PRESETS),
        ),
        SpecField(
            "init",
            "combo",
            "How down starts (seeded by the run's seed): kaiming uniform or normal (std 1/rank). up starts at zero, so "
            "the untrained adapter is the base model at any strength.",
            default=_DEFAULTS.init,
            options=INIT_MODES,
        ),
        SpecField(
            "learning_rate",
            "float",
            "AdamW learning rate for down and up (1e-4 is the usual DreamBooth-LoRA rate).",
            default=DEFAULT_LEARNING_RATE,
            minimum=1e-8,
            maximum=1.0,
            step=1e-5,
        ),
        SpecField(
            "target_list",
            "text",
            "Optional: explicit linear-layer paths inside diffusion_model, one per line (or comma-separated); "
            "overrides targets (e.g. input_blocks.1.1.transformer_blocks.0.attn2.to_k).",
            default="",
            optional=True,
            multiline=True,
        ),
    ),
    build=_build_from_form,
    category="train",
)
