"""TapTune's adapter library: tap-point adapters, OFT/COFT rotations and the adapter file format.

Pure PyTorch; nothing here imports ComfyUI. The ComfyUI side lives in ``patching/``
(installing adapters on a MODEL), ``nodes/`` and ``training/``.
"""

from .base_fingerprint import BaseMismatchError, base_fingerprint, check_base
from .file_format import AdapterFile, AdapterFileError, load_adapter_file, read_header, save_adapter_file
from .oft import OFTConfig, OFTConfigError, OFTRotation, cayley, cayley_neumann, hyperspherical_energy
from .oft_layer import OFTCrossAttention, OFTFeedForward, split_layer_path
from .oft_set import OFTAdapterSet, OFTGroup, find_oft_targets
from .sites import TapSite, find_tap_sites, select_sites
from .tap_adapter import TapAdapter, TapConfig, TapGroup
from .tap_points import PAPER_PAIRS, TapConfigError, TapPoint, validate_pair
from .tap_set import TapAdapterSet
from .tapped_blocks import TappedResBlock, TappedTransformerBlock

__all__ = [
    "PAPER_PAIRS",
    "AdapterFile",
    "AdapterFileError",
    "BaseMismatchError",
    "OFTAdapterSet",
    "OFTConfig",
    "OFTConfigError",
    "OFTCrossAttention",
    "OFTFeedForward",
    "OFTGroup",
    "OFTRotation",
    "TapAdapter",
    "TapAdapterSet",
    "TapConfig",
    "TapConfigError",
    "TapGroup",
    "TapPoint",
    "TapSite",
    "TappedResBlock",
    "TappedTransformerBlock",
    "base_fingerprint",
    "cayley",
    "cayley_neumann",
    "check_base",
    "find_oft_targets",
    "find_tap_sites",
    "hyperspherical_energy",
    "load_adapter_file",
    "read_header",
    "save_adapter_file",
    "select_sites",
    "split_layer_path",
    "validate_pair",
]
