"""The LoRA kind: low-rank ``up @ down`` changes of linear layers, in the standard LoRA file format.

"LoRA: Low-Rank Adaptation of Large Language Models" (Hu et al., 2021). Files carry the
standard (kohya) tensor names, so ComfyUI's stock LoRA loaders read them as well as
``TapTuneLoadAdapter``. The registry entry is :data:`LORA_KIND`.
"""

from ..kind import AdapterKind
from .lora_config import INIT_MODES, TARGET_PRESETS, LoRAConfig, LoRAConfigError, lora_targets
from .lora_layer import LoRALayer, LoRAMerge
from .lora_set import LoRAAdapterSet, kohya_name
from .lora_spec import DEFAULT_LEARNING_RATE, LORA_SPEC_FORM, LoRASpec

LORA_KIND = AdapterKind(
    name="lora",
    adapter_set=LoRAAdapterSet,
    spec=LoRASpec,
    summary="LoRA: low-rank up @ down changes of linear layers, merged into the weights; standard LoRA file names",
    spec_form=LORA_SPEC_FORM,
    example_spec=lambda: LoRASpec(LoRAConfig(rank=2, alpha=2.0, targets="attention_ff")),
)

__all__ = [
    "DEFAULT_LEARNING_RATE",
    "INIT_MODES",
    "LORA_KIND",
    "LORA_SPEC_FORM",
    "TARGET_PRESETS",
    "LoRAAdapterSet",
    "LoRAConfig",
    "LoRAConfigError",
    "LoRALayer",
    "LoRAMerge",
    "LoRASpec",
    "kohya_name",
    "lora_targets",
]
