"""The OFT kind: block-diagonal Cayley rotations of linear layers, constrained (COFT) or not.

"Controlling Text-to-Image Diffusion by Orthogonal Finetuning" (Qiu et al., 2023);
specification §2. The registry entry is :data:`OFT_KIND`.
"""

from ..kind import AdapterGroup, AdapterKind
from .cayley import cayley, cayley_neumann, hyperspherical_energy, neumann_error_bound
from .oft_config import TARGET_PRESETS, OFTConfig, OFTConfigError, oft_targets
from .oft_import import diffusers_to_comfy_path, import_oft
from .oft_rotation import OFTRotation, RotationMerge
from .oft_set import OFTAdapterSet
from .oft_spec import OFT_SPEC_FORM, OFTSpec
from .oft_wrappers import RotationMember, rotation_wrappers, split_layer_path

#: One group of an OFT file (a configuration and its layers).
OFTGroup = AdapterGroup

OFT_KIND = AdapterKind(
    name="oft",
    adapter_set=OFTAdapterSet,
    spec=OFTSpec,
    summary="OFT/COFT: block-diagonal Cayley rotations of linear layers, merged into the weights for sampling",
    spec_form=OFT_SPEC_FORM,
    example_spec=lambda: OFTSpec(OFTConfig(r=4, coft=True, eps=1e-3), magnitude_steps=2),
)

__all__ = [
    "OFT_KIND",
    "TARGET_PRESETS",
    "OFTAdapterSet",
    "OFTConfig",
    "OFTConfigError",
    "OFTGroup",
    "OFTRotation",
    "OFTSpec",
    "RotationMember",
    "RotationMerge",
    "cayley",
    "cayley_neumann",
    "diffusers_to_comfy_path",
    "hyperspherical_energy",
    "import_oft",
    "neumann_error_bound",
    "oft_targets",
    "rotation_wrappers",
    "split_layer_path",
]
