"""TapTuneTapSpec and TapTuneOFTSpec: recipes for the adapters a training run creates."""

from __future__ import annotations

from typing import Any

from comfy_api.v0_0_2 import io

from ..adapter_core.oft import OFTConfig, OFTConfigError
from ..adapter_core.oft_set import TARGET_PRESETS
from ..adapter_core.sites import BLOCK_SELECTIONS
from ..adapter_core.tap_adapter import INIT_MODES, TapConfig
from ..adapter_core.tap_points import ALL_POSITIONS, BEST_PAIR, METHODS, TapConfigError
from ..training.spec import OFTSpec, TapGroupSpec, TapSpec
from .common import CATEGORY_TRAIN, NodeInputError, TapTuneSpec


def _paths(text: str) -> tuple[str, ...]:
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
                    "din", options=list(ALL_POSITIONS), default=BEST_PAIR[0], tooltip="Where the adapter reads."
                ),
                io.Combo.Input(
                    "dout", options=list(ALL_POSITIONS), default=BEST_PAIR[1], tooltip="Where it adds its output."
                ),
                io.Int.Input("mid_dim", default=60, min=1, max=4096, tooltip="Bottleneck width (adapter size)."),
                io.Combo.Input(
                    "method",
                    options=list(METHODS[:1] + METHODS[2:]),
                    default="relu",
                    tooltip="Activation between the two layers.",
                ),
                io.Float.Input(
                    "scale",
                    default=1.0,
                    min=-100.0,
                    max=100.0,
                    step=0.01,
                    tooltip="Fixed factor on the adapter's output.",
                ),
                io.Combo.Input(
                    "blocks",
                    options=list(BLOCK_SELECTIONS),
                    default="all",
                    tooltip="Which blocks get an adapter (UNet region).",
                ),
                io.String.Input(
                    "block_list",
                    default="",
                    multiline=True,
                    tooltip="Optional: explicit module paths (one per line, e.g. input_blocks.1.1.transformer_blocks.0); "
                    "overrides 'blocks'.",
                ),
                io.Combo.Input(
                    "init",
                    options=list(INIT_MODES),
                    default="zero_up",
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
        mid_dim: int = 60,
        method: str = "relu",
        scale: float = 1.0,
        blocks: str = "all",
        block_list: str = "",
        init: str = "zero_up",
        spec: Any = None,
    ) -> io.NodeOutput:
        node = "TapTuneTapSpec"
        try:
            config = TapConfig(din, dout, int(mid_dim), method, float(scale))
        except TapConfigError as exc:
            raise NodeInputError(
                node, "din/dout" if "din" in str(exc) or "dout" in str(exc) else "method", str(exc)
            ) from None
        if init not in INIT_MODES:
            raise NodeInputError(node, "init", f"{init!r} is not one of {', '.join(INIT_MODES)}")
        if blocks not in BLOCK_SELECTIONS:
            raise NodeInputError(node, "blocks", f"{blocks!r} is not one of {', '.join(BLOCK_SELECTIONS)}")
        group = TapGroupSpec(config, _paths(block_list) or blocks, init)
        earlier: tuple[TapGroupSpec, ...] = ()
        if spec is not None:
            if not isinstance(spec, TapSpec):
                raise NodeInputError(node, "spec", "only another tap spec can be chained here (not an OFT spec)")
            earlier = spec.groups
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
                    "r", default=4, min=0, max=4096, tooltip="Number of diagonal blocks per layer (0: use block_size)."
                ),
                io.Float.Input(
                    "eps",
                    default=6e-5,
                    min=1e-9,
                    max=10.0,
                    step=1e-6,
                    tooltip="COFT radius factor: each block stays within eps*k*k (divided by sqrt(r)).",
                ),
                io.Boolean.Input(
                    "coft", default=True, tooltip="Constrained OFT: project onto the radius before every step."
                ),
                io.Boolean.Input(
                    "block_share", default=False, tooltip="One rotation block shared by all blocks of a layer."
                ),
                io.Combo.Input(
                    "targets",
                    options=list(TARGET_PRESETS),
                    default="attention",
                    tooltip="attention: to_q/to_k/to_v/to_out.0 of self- and cross-attention (the paper); or one kind; "
                    "attention_ff adds the feed-forward layers.",
                ),
                io.String.Input(
                    "target_list",
                    default="",
                    multiline=True,
                    tooltip="Optional: explicit layer paths (one per line); overrides 'targets'.",
                ),
                io.Int.Input(
                    "block_size", default=0, min=0, max=4096, tooltip="Block size instead of r (used when r is 0)."
                ),
                io.Int.Input(
                    "neumann_terms",
                    default=0,
                    min=0,
                    max=32,
                    tooltip="0: exact Cayley transform. n > 0: Cayley-Neumann series with n terms (faster, approximately orthogonal).",
                ),
                io.Int.Input(
                    "magnitude_steps",
                    default=0,
                    min=0,
                    max=100000,
                    tooltip="Extra steps after training that fit a per-neuron magnitude with the rotation fixed (0: off).",
                ),
            ],
            outputs=[TapTuneSpec.Output(display_name="spec", tooltip="The recipe, for TapTuneDreamBoothTrain.")],
        )

    @classmethod
    def execute(
        cls,
        r: int = 4,
        eps: float = 6e-5,
        coft: bool = True,
        block_share: bool = False,
        targets: str = "attention",
        target_list: str = "",
        block_size: int = 0,
        neumann_terms: int = 0,
        magnitude_steps: int = 0,
    ) -> io.NodeOutput:
        node = "TapTuneOFTSpec"
        try:
            config = OFTConfig(
                r=int(r) or None,
                block_size=None if r else (int(block_size) or None),
                block_share=bool(block_share),
                coft=bool(coft),
                eps=float(eps),
            )
        except OFTConfigError as exc:
            raise NodeInputError(node, "r/block_size", str(exc)) from None
        if targets not in TARGET_PRESETS and not target_list.strip():
            raise NodeInputError(node, "targets", f"{targets!r} is not one of {', '.join(TARGET_PRESETS)}")
        chosen = _paths(target_list) or targets
        spec = OFTSpec(config, chosen, int(neumann_terms) or None, int(magnitude_steps))
        return io.NodeOutput(spec)
