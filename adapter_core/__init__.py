"""TapTune's adapter library: adapter kinds (tap-point adapters, OFT/COFT), their file format and registry.

Pure PyTorch; nothing here imports ComfyUI. The ComfyUI side lives in ``patching/``
(carrying out an adapter set's :class:`PatchPlan` on a MODEL), ``training/`` and ``nodes/``.
Kinds live in ``tap/`` and ``oft/``; ``registry.py`` lists them.
"""

from .architecture import architecture_signature, check_architecture, describe_architecture
from .blocks import TappedResBlock, TappedTransformerBlock
from .errors import (
    AdapterFileError,
    ArchitectureMismatchError,
    ConfigError,
    TapTuneError,
    UnsupportedModelError,
    UnsupportedOperationError,
)
from .file_format import AdapterFile, load_adapter_file, read_header, save_adapter_file
from .kind import AdapterGroup, AdapterKind, AdapterSetBase, AdapterSpec
from .model_view import ModelView
from .oft import (
    OFTAdapterSet,
    OFTConfig,
    OFTConfigError,
    OFTGroup,
    OFTRotation,
    OFTSpec,
    cayley,
    cayley_neumann,
    hyperspherical_energy,
    oft_targets,
    split_layer_path,
)
from .patch_plan import HostOps, PatchPlan
from .positions import SiteKind
from .registry import KINDS, adapter_set_from_file, kind_named, kind_of_spec, load_adapter_set
from .sites import TapSite, find_tap_sites, select_sites
from .tap import (
    PAPER_PAIRS,
    TapAdapter,
    TapAdapterSet,
    TapConfig,
    TapConfigError,
    TapGroup,
    TapGroupSpec,
    TapPoint,
    TapSpec,
    validate_pair,
)

__all__ = [
    "KINDS",
    "PAPER_PAIRS",
    "AdapterFile",
    "AdapterFileError",
    "AdapterGroup",
    "AdapterKind",
    "AdapterSetBase",
    "AdapterSpec",
    "ArchitectureMismatchError",
    "ConfigError",
    "HostOps",
    "ModelView",
    "OFTAdapterSet",
    "OFTConfig",
    "OFTConfigError",
    "OFTGroup",
    "OFTRotation",
    "OFTSpec",
    "PatchPlan",
    "SiteKind",
    "TapAdapter",
    "TapAdapterSet",
    "TapConfig",
    "TapConfigError",
    "TapGroup",
    "TapGroupSpec",
    "TapPoint",
    "TapSite",
    "TapSpec",
    "TapTuneError",
    "TappedResBlock",
    "TappedTransformerBlock",
    "UnsupportedModelError",
    "UnsupportedOperationError",
    "adapter_set_from_file",
    "architecture_signature",
    "cayley",
    "cayley_neumann",
    "check_architecture",
    "describe_architecture",
    "find_tap_sites",
    "hyperspherical_energy",
    "kind_named",
    "kind_of_spec",
    "load_adapter_file",
    "load_adapter_set",
    "oft_targets",
    "read_header",
    "save_adapter_file",
    "select_sites",
    "split_layer_path",
    "validate_pair",
]
