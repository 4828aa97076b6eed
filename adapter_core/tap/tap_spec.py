"""The training recipe of tap adapters: groups to create, how a run trains them, and their spec node."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..errors import TapTuneError
from ..json_values import str_field
from ..kind import Phase
from ..model_view import ModelView
from ..patch_plan import PatchPlan
from ..positions import ALL_POSITIONS
from ..sites import BLOCK_SELECTIONS
from ..spec_form import SpecField, SpecForm, path_lines
from ..spec_json import (
    as_config_error,
    check_kind_field,
    learning_rate_field,
    object_field,
    paths_or_preset,
    spec_to_json,
)
from .tap_config import INIT_MODES, InitMode, TapConfig
from .tap_points import METHODS
from .tap_set import TapAdapterSet

#: The Closer Look paper's learning rate for adapters (specification §3).
PAPER_LEARNING_RATE = 1e-4
#: Most groups one spec may chain (each is a node in the graph).
MAX_GROUPS = 64


@dataclass(frozen=True)
class TapGroupSpec:
    """One group of tap adapters: a configuration and which blocks get it."""

    config: TapConfig = field(default_factory=TapConfig)
    blocks: str | tuple[str, ...] = "all"
    init: InitMode = "zero_up"


@dataclass(frozen=True)
class TapSpec:
    """Tap-point adapters to train; several groups (e.g. transformer + ResBlock) make one file."""

    groups: tuple[TapGroupSpec, ...] = field(default_factory=lambda: (TapGroupSpec(),))
    learning_rate: float = PAPER_LEARNING_RATE

    kind: ClassVar[str] = "tap"
    #: Tap adapters train in one phase.
    phase_parameters: ClassVar[Mapping[Phase, str | None]] = {Phase.MAIN: "adapter", Phase.POST: None}
    post_steps: ClassVar[int] = 0

    def build(self, view: ModelView, seed: int) -> TapAdapterSet:
        """Fresh adapters for the model in ``view``, initialised from ``seed``."""
        sites = view.sites()
        tap_set = TapAdapterSet()
        for i, group in enumerate(self.groups):
            tap_set.add_group(sites, group.config, group.blocks, group.init, seed + 1000 * i)
        return tap_set

    def training_plan(self, adapter_set: TapAdapterSet, view: ModelView) -> PatchPlan:
        """The adapters as hooks; their parameters are shared, so gradients reach them."""
        return adapter_set.inference_plan(view)

    def after_step(self, adapter_set: TapAdapterSet, phase: Phase) -> None:
        """Nothing: tap adapters are unconstrained."""

    def to_json(self) -> dict[str, Any]:
        """The spec's one JSON form (every field)."""
        return spec_to_json(self)

    @classmethod
    def from_json(cls, entry: Mapping[str, Any], where: str = "spec") -> TapSpec:
        """The spec :meth:`to_json` wrote; :class:`~..errors.ConfigError` (input ``spec``) naming the field."""
        check_kind_field(entry, cls.kind, where)
        try:
            groups = entry.get("groups")
            if not isinstance(groups, list) or not 1 <= len(groups) <= MAX_GROUPS:
                raise TapTuneError(f"{where}.groups must be a list of 1..{MAX_GROUPS} groups")
            parsed = []
            for i, group in enumerate(groups):
                at = f"{where}.groups[{i}]"
                if not isinstance(group, Mapping):
                    raise TapTuneError(f"{at} must be an object")
                init = str_field(group, "init", at, default="zero_up", max_length=16)
                if init not in INIT_MODES:
                    raise TapTuneError(f"{at}.init must be one of {', '.join(INIT_MODES)}")
                parsed.append(
                    TapGroupSpec(
                        TapConfig.from_json(object_field(group, "config", at), f"{at}.config"),
                        paths_or_preset(group, "blocks", at, "all"),
                        init,  # type: ignore[arg-type]
                    )
                )
            return cls(tuple(parsed), learning_rate_field(entry, where, PAPER_LEARNING_RATE))
        except TapTuneError as exc:
            raise as_config_error(exc, where) from None


def _spec_from_inputs(values: Mapping[str, Any]) -> TapSpec:
    config = TapConfig(values["din"], values["dout"], values["mid_dim"], values["method"], values["scale"])
    group = TapGroupSpec(config, path_lines(values["block_list"]) or values["blocks"], values["init"])
    earlier: TapSpec | None = values["spec"]
    return TapSpec((*(earlier.groups if earlier is not None else ()), group))


_CONFIG = TapConfig()
_GROUP = TapGroupSpec()

#: The tap spec node (``TapTuneTapSpec``); its defaults are the dataclasses' (the paper's recipe).
TAP_SPEC_FORM = SpecForm(
    node_id="TapTuneTapSpec",
    display_name="TapTune Tap Adapter Spec",
    description=(
        "Describes tap-point adapters to train: where each adapter reads (din) and adds (dout) inside every "
        "transformer block or ResBlock, its size and activation. The defaults are the paper's best recipe "
        "(attn2o -> ffni, mid_dim 60, relu). Chain a second spec into 'spec' to train two groups in one file "
        "(for example transformer and ResBlock adapters)."
    ),
    fields=(
        SpecField("din", "combo", "Where the adapter reads.", _CONFIG.din, options=ALL_POSITIONS),
        SpecField(
            "dout",
            "combo",
            "Where it adds its output (at or after din, in the same block kind).",
            _CONFIG.dout,
            options=ALL_POSITIONS,
        ),
        SpecField("mid_dim", "int", "Bottleneck width (adapter size).", _CONFIG.mid_dim, minimum=1, maximum=4096),
        SpecField(
            "method",
            "combo",
            "Activation between the two layers.",
            _CONFIG.method,
            options=tuple(m for m in METHODS if m != "default"),
        ),
        SpecField("scale", "float", "Fixed factor on the adapter's output.", _CONFIG.scale, -100.0, 100.0, step=0.01),
        SpecField(
            "blocks",
            "combo",
            "Which blocks get an adapter (UNet region).",
            _GROUP.blocks,
            options=BLOCK_SELECTIONS,
            optional=True,
        ),
        SpecField(
            "block_list",
            "text",
            "Optional: explicit module paths (one per line, e.g. input_blocks.1.1.transformer_blocks.0); "
            "overrides 'blocks'.",
            "",
            optional=True,
            multiline=True,
        ),
        SpecField(
            "init",
            "combo",
            "zero_up: the model starts exactly as the base; paper: PyTorch's default init (the official code).",
            _GROUP.init,
            options=INIT_MODES,
            optional=True,
        ),
        SpecField("spec", "spec", "Optional: another tap spec to train together with this one.", optional=True),
    ),
    build=_spec_from_inputs,
)
