"""TapTuneTapSpec and TapTuneOFTSpec: recipes for the adapters a training run creates."""

from __future__ import annotations

from typing import Any

from comfy_api.v0_0_2 import io

from ..adapter_core.errors import ConfigError
from ..adapter_core.oft.oft_config import MAX_BLOCKS, TARGET_PRESETS, OFTConfig
from ..adapter_core.oft.oft_spec import OFTSpec
from ..adapter_core.positions import ALL_POSITIONS
from ..adapter_core.registry import spec_of_kind
from ..adapter_core.sites import BLOCK_SELECTIONS
from ..adapter_core.tap.tap_config import INIT_MODES, MAX_MID_DIM, TapConfig
from ..adapter_core.tap.tap_points import METHODS
from ..adapter_core.tap.tap_spec import TapGroupSpec, TapSpec
from .common import CATEGORY_TRAIN, TapTuneSpec, bounded_integer, bounded_number, choice, node_errors

#: Widget defaults come from the config dataclasses (the papers' settings), never from literals here.
TAP_DEFAULTS = TapConfig()
TAP_GROUP_DEFAULTS = TapGroupSpec()
OFT_DEFAULTS = OFTConfig()
OFT_SPEC_DEFAULTS = OFTSpec()
#: Longest explicit path list accepted (one path per line).
MAX_LIST_CHARS = 1_000_000


def _paths(text: object, input_name: str) -> tuple[str, ...]:
    if not isinstance(text, str) or len(text) > MAX_LIST_CHARS:
        raise ConfigError(f"must be text of at most {MAX_LIST_CHARS} characters", input_name=input_name)
    return tuple(line.strip() for line in text.replace(",", "\n").splitlines() if line.strip())


class TapTuneTapSpec(io.ComfyNode):
    """A tap-point adapter recipe (defaults: the paper's attn2o -> ffni, mid_dim 60)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TapTuneTapSpec",
            display_name="TapTune Tap Adapter Spec",
            category=CATEGORY_TRAIN,
            description=(
                "Describes tap-point adapters to train: where each adapter reads (din) and adds (dout) inside every "
                "transformer block or ResBlock, its size and activation. The defaults are the paper's best recipe "
                "(attn2o -> ffni, mid_dim 60, relu). Chain a second spec into 'spec' to train two groups in one file "
                "(for example transformer and ResBlock adapters)."
            ),
            inputs=[
                io.Combo.Input(
                    "din", options=list(ALL_POSITIONS), default=TAP_DEFAULTS.din, tooltip="Where the adapter reads."
                ),
                io.Combo.Input(
                    "dout",
                    options=list(ALL_POSITIONS),
                    default=TAP_DEFAULTS.dout,
                    tooltip="Where it adds its output (at or after din, in the same block kind).",
                ),
                io.Int.Input(
                    "mid_dim",
                    default=TAP_DEFAULTS.mid_dim,
                    min=1,
                    max=4096,
                    tooltip="Bottleneck width (adapter size).",
                ),
                io.Combo.Input(
                    "method",
                    options=[m for m in METHODS if m != "default"],
                    default=TAP_DEFAULTS.method,
                    tooltip="Activation between the two layers.",
                ),
                io.Float.Input(
                    "scale",
                    default=TAP_DEFAULTS.scale,
                    min=-100.0,
                    max=100.0,
                    step=0.01,
                    tooltip="Fixed factor on the adapter's output.",
                ),
                io.Combo.Input(
                    "blocks",
                    options=list(BLOCK_SELECTIONS),
                    default=TAP_GROUP_DEFAULTS.blocks,
                    optional=True,
                    tooltip="Which blocks get an adapter (UNet region).",
                ),
                io.String.Input(
                    "block_list",
                    default="",
                    multiline=True,
                    optional=True,
                    tooltip="Optional: explicit module paths (one per line, e.g. input_blocks.1.1.transformer_blocks.0); "
                    "overrides 'blocks'.",
                ),
                io.Combo.Input(
                    "init",
                    options=list(INIT_MODES),
                    default=TAP_GROUP_DEFAULTS.init,
                    optional=True,
                    tooltip="zero_up: the model starts exactly as the base; paper: PyTorch's default init (the official code).",
                ),
                TapTuneSpec.Input(
                    "spec", optional=True, tooltip="Optional: another tap spec to train together with this one."
                ),
            ],
            outputs=[TapTuneSpec.Output(display_name="spec", tooltip="The recipe, for TapTuneDreamBoothTrain.")],
        )

    @classmethod
    def execute(
        cls,
        din: str,
        dout: str,
        mid_dim: int = TAP_DEFAULTS.mid_dim,
        method: str = TAP_DEFAULTS.method,
        scale: float = TAP_DEFAULTS.scale,
        blocks: str = "all",
        block_list: str = "",
        init: str = "zero_up",
        spec: Any = None,
    ) -> io.NodeOutput:
        with node_errors("TapTuneTapSpec", "din"):
            config = TapConfig(
                choice(din, "din", ALL_POSITIONS),
                choice(dout, "dout", ALL_POSITIONS),
                bounded_integer(mid_dim, "mid_dim", 1, MAX_MID_DIM),
                choice(method, "method", METHODS),
                bounded_number(scale, "scale", -100.0, 100.0),
            )
            chosen = _paths(block_list, "block_list") or choice(blocks, "blocks", BLOCK_SELECTIONS)
            group = TapGroupSpec(config, chosen, choice(init, "init", INIT_MODES))
            earlier = spec_of_kind(spec, "tap").groups if spec is not None else ()
        return io.NodeOutput(TapSpec((*earlier, group)))


class TapTuneOFTSpec(io.ComfyNode):
    """An OFT / COFT recipe (defaults: the paper's DreamBooth setting, r=4, COFT eps 6e-5)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TapTuneOFTSpec",
            display_name="TapTune OFT Spec",
            category=CATEGORY_TRAIN,
            description=(
                "Describes orthogonal finetuning to train: a block-diagonal Cayley rotation of every target layer's "
                "neurons (r blocks), optionally constrained (COFT, radius eps k^2 per block) and shared across blocks. "
                "Defaults are the paper's DreamBooth setting: to_q, to_k, to_v, to_out.0 of every attention layer, "
                "r=4, COFT, eps 6e-5."
            ),
            inputs=[
                io.Int.Input(
                    "r",
                    default=OFT_DEFAULTS.r,
                    min=0,
                    max=4096,
                    tooltip="Number of diagonal blocks per layer (0: use block_size).",
                ),
                io.Float.Input(
                    "eps",
                    default=OFT_DEFAULTS.eps,
                    min=1e-9,
                    max=10.0,
                    step=1e-6,
                    tooltip="COFT radius factor: each block stays within eps*k*k (divided by sqrt(r)).",
                ),
                io.Boolean.Input(
                    "coft",
                    default=OFT_DEFAULTS.coft,
                    tooltip="Constrained OFT: project onto the radius before every step.",
                ),
                io.Boolean.Input(
                    "block_share",
                    default=OFT_DEFAULTS.block_share,
                    tooltip="One rotation block shared by all blocks of a layer.",
                ),
                io.Combo.Input(
                    "targets",
                    options=list(TARGET_PRESETS),
                    default=OFT_SPEC_DEFAULTS.targets,
                    optional=True,
                    tooltip="attention: to_q/to_k/to_v/to_out.0 of self- and cross-attention (the paper); or one kind; "
                    "attention_ff adds the feed-forward layers.",
                ),
                io.String.Input(
                    "target_list",
                    default="",
                    multiline=True,
                    optional=True,
                    tooltip="Optional: explicit layer paths (one per line); overrides 'targets'.",
                ),
                io.Int.Input(
                    "block_size",
                    default=0,
                    min=0,
                    max=4096,
                    optional=True,
                    tooltip="Block size instead of r (used when r is 0).",
                ),
                io.Int.Input(
                    "neumann_terms",
                    default=0,
                    min=0,
                    max=32,
                    optional=True,
                    tooltip="0: exact Cayley transform. n > 0: Cayley-Neumann series with n terms (faster, approximately orthogonal).",
                ),
                io.Int.Input(
                    "magnitude_steps",
                    default=OFT_SPEC_DEFAULTS.magnitude_steps,
                    min=0,
                    max=100000,
                    optional=True,
                    tooltip="Extra steps after training that fit a per-neuron magnitude with the rotation fixed (0: off).",
                ),
            ],
            outputs=[TapTuneSpec.Output(display_name="spec", tooltip="The recipe, for TapTuneDreamBoothTrain.")],
        )

    @classmethod
    def execute(
        cls,
        r: int = OFT_DEFAULTS.r or 4,
        eps: float = OFT_DEFAULTS.eps,
        coft: bool = OFT_DEFAULTS.coft,
        block_share: bool = OFT_DEFAULTS.block_share,
        targets: str = "attention",
        target_list: str = "",
        block_size: int = 0,
        neumann_terms: int = 0,
        magnitude_steps: int = 0,
    ) -> io.NodeOutput:
        with node_errors("TapTuneOFTSpec", "r"):
            blocks = bounded_integer(r, "r", 0, MAX_BLOCKS)
            size = bounded_integer(block_size, "block_size", 0, MAX_BLOCKS)
            config = OFTConfig(
                r=blocks or None,
                block_size=None if blocks else (size or None),
                block_share=bool(block_share),
                coft=bool(coft),
                eps=bounded_number(eps, "eps", 1e-9, 10.0),
            )
            chosen = _paths(target_list, "target_list") or choice(targets, "targets", TARGET_PRESETS)
            spec = OFTSpec(
                config,
                chosen,
                bounded_integer(neumann_terms, "neumann_terms", 0, 32) or None,
                bounded_integer(magnitude_steps, "magnitude_steps", 0, 100000),
            )
        return io.NodeOutput(spec)
