"""The tap-adapter kind: small bottleneck MLPs between two positions of a UNet block.

"A Closer Look at Parameter-Efficient Tuning in Diffusion Models" (Xiang et al., 2023);
specification §1. The registry entry is :data:`TAP_KIND`.
"""

from ..kind import AdapterGroup, AdapterKind
from .tap_adapter import TapAdapter
from .tap_config import INIT_MODES, TapConfig
from .tap_official_import import import_official_tap_dir, official_tap_file, read_official_config
from .tap_points import BEST_PAIR, METHODS, PAPER_PAIRS, TapConfigError, TapPoint, validate_pair
from .tap_set import TapAdapterSet
from .tap_spec import TAP_SPEC_FORM, TapGroupSpec, TapSpec

#: One group of a tap file (a configuration and its blocks).
TapGroup = AdapterGroup

TAP_KIND = AdapterKind(
    name="tap",
    adapter_set=TapAdapterSet,
    spec=TapSpec,
    summary="tap-point adapters: bottleneck MLPs reading at din and adding at dout inside every block",
    spec_form=TAP_SPEC_FORM,
    example_spec=lambda: TapSpec(
        (
            TapGroupSpec(TapConfig("attn2o", "ffni", mid_dim=8), init="paper"),
            TapGroupSpec(TapConfig("resi", "reso", mid_dim=4), init="paper"),
        )
    ),
)

__all__ = [
    "BEST_PAIR",
    "INIT_MODES",
    "METHODS",
    "PAPER_PAIRS",
    "TAP_KIND",
    "TapAdapter",
    "TapAdapterSet",
    "TapConfig",
    "TapConfigError",
    "TapGroup",
    "TapGroupSpec",
    "TapPoint",
    "TapSpec",
    "import_official_tap_dir",
    "official_tap_file",
    "read_official_config",
    "validate_pair",
]
