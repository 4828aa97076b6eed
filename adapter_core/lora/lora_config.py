"""One LoRA group's settings, and which linear layers LoRA adapts.

LoRA ("LoRA: Low-Rank Adaptation of Large Language Models", Hu et al., 2021) adds to a linear
layer's weight ``W`` (``out x in``) the product ``(alpha / rank) * up @ down`` of a ``down``
(``rank x in``) and an ``up`` (``out x rank``) matrix. ``down`` starts random (seeded) and
``up`` at zero, so a fresh adapter at any strength is the base model exactly.

Defaults follow common DreamBooth-LoRA practice: rank 8, alpha 8 (a scale of 1), the attention
projections of every transformer block.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import AdapterFileError, ConfigError, TapTuneError
from ..json_values import float_field, int_field, str_field
from ..model_view import LayerShape, ModelView
from ..positions import SiteKind

#: Highest rank a configuration may name (no UNet layer is wider than 10240).
MAX_RANK = 65536
#: ``|alpha|`` bound.
MAX_ALPHA = 1e6
#: Most explicit layer paths a configuration may list (an SDXL UNet has about 2,000 linear layers).
MAX_TARGETS = 100_000
#: Longest explicit layer path.
MAX_PATH_LENGTH = 512

ATTENTION_LAYERS: tuple[str, ...] = tuple(
    f"{attn}.{layer}" for attn in ("attn1", "attn2") for layer in ("to_q", "to_k", "to_v", "to_out.0")
)
FEED_FORWARD_LAYERS: tuple[str, ...] = ("ff.net.0.proj", "ff.net.2")
#: Named layer sets inside every transformer block. ``all_linear`` is found by walking each block
#: (every linear layer of its attention and feed-forward modules, whatever the feed-forward's kind).
TARGET_PRESETS: dict[str, tuple[str, ...] | None] = {
    "attention": ATTENTION_LAYERS,
    "attention_ff": ATTENTION_LAYERS + FEED_FORWARD_LAYERS,
    "all_linear": None,
}
#: How ``down`` starts: ``kaiming`` (uniform, as ``nn.Linear`` and PEFT's default) or ``normal``
#: (Gaussian with standard deviation ``1 / rank``, PEFT's ``gaussian``). ``up`` always starts at zero.
InitMode = Literal["kaiming", "normal"]
INIT_MODES: tuple[str, ...] = ("kaiming", "normal")
#: The children of a transformer block ``all_linear`` looks into.
BLOCK_CHILDREN: tuple[str, ...] = ("attn1", "attn2", "ff")


class LoRAConfigError(ConfigError):
    """A LoRA configuration the method does not allow, or one that does not fit a layer."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class LoRAConfig:
    """Settings shared by every LoRA layer of one group.

    ``targets`` is a preset name (:data:`TARGET_PRESETS`) or an explicit tuple of linear-layer
    paths inside ``diffusion_model``.
    """

    rank: int = 8
    alpha: float = 8.0
    targets: str | tuple[str, ...] = "attention"
    init: InitMode = "kaiming"

    def __post_init__(self) -> None:
        if not _is_int(self.rank) or not 1 <= self.rank <= MAX_RANK:
            raise LoRAConfigError(f"rank must be an integer in 1..{MAX_RANK}, got {self.rank!r}", input_name="rank")
        if (
            isinstance(self.alpha, bool)
            or not isinstance(self.alpha, (int, float))
            or not math.isfinite(self.alpha)
            or abs(self.alpha) > MAX_ALPHA
        ):
            raise LoRAConfigError(
                f"alpha must be a finite number with |alpha| <= {MAX_ALPHA:g}, got {self.alpha!r}", input_name="alpha"
            )
        object.__setattr__(self, "alpha", float(self.alpha))
        if self.init not in INIT_MODES:
            raise LoRAConfigError(
                f"init must be one of {', '.join(INIT_MODES)}, got {str(self.init)[:40]!r}", input_name="init"
            )
        object.__setattr__(self, "targets", _checked_targets(self.targets))

    @property
    def scale(self) -> float:
        """``alpha / rank``: the factor on ``up @ down`` at strength 1."""
        return self.alpha / self.rank

    def to_json(self) -> dict[str, Any]:
        """The metadata form (``rank``, ``alpha``, ``targets``: a name or a list, ``init``)."""
        targets = self.targets if isinstance(self.targets, str) else list(self.targets)
        return {"rank": self.rank, "alpha": self.alpha, "targets": targets, "init": self.init}

    @classmethod
    def from_json(cls, entry: Mapping[str, Any], where: str) -> LoRAConfig:
        """Parse one metadata entry (types and bounds checked); unknown keys are ignored.

        Raises :class:`AdapterFileError` (a bad setting in a file is the file's fault).
        """
        defaults = cls.__dataclass_fields__
        try:
            return cls(
                rank=int_field(entry, "rank", where, minimum=1, maximum=MAX_RANK),
                alpha=float_field(
                    entry, "alpha", where, default=defaults["alpha"].default, minimum=-MAX_ALPHA, maximum=MAX_ALPHA
                ),
                targets=_targets_field(entry, where, defaults["targets"].default),
                init=str_field(entry, "init", where, default=defaults["init"].default, max_length=16),  # type: ignore[arg-type]
            )
        except LoRAConfigError as exc:
            raise AdapterFileError(f"{where}: {exc.message}") from None


def _checked_targets(targets: Any) -> str | tuple[str, ...]:
    if isinstance(targets, str):
        if targets not in TARGET_PRESETS:
            raise LoRAConfigError(
                f"unknown targets {targets[:40]!r}; allowed: {', '.join(TARGET_PRESETS)} or a list of layer paths",
                input_name="targets",
            )
        return targets
    if not isinstance(targets, (list, tuple)):
        raise LoRAConfigError("targets must be a preset name or a list of layer paths", input_name="targets")
    paths = tuple(targets)
    if not paths or len(paths) > MAX_TARGETS:
        raise LoRAConfigError(f"targets must list 1..{MAX_TARGETS:,} layer paths", input_name="targets")
    for path in paths:
        if not isinstance(path, str) or not path.strip() or len(path) > MAX_PATH_LENGTH:
            raise LoRAConfigError(
                f"every target must be a layer path of at most {MAX_PATH_LENGTH} characters, got {str(path)[:60]!r}",
                input_name="targets",
            )
    paths = tuple(p.strip().removeprefix("diffusion_model.") for p in paths)
    if len(set(paths)) != len(paths):
        raise LoRAConfigError("targets lists a layer twice", input_name="targets")
    return paths


def _targets_field(entry: Mapping[str, Any], where: str, default: str) -> str | tuple[str, ...]:
    value = entry.get("targets", default)
    if isinstance(value, str):
        return str_field(entry, "targets", where, default=default, max_length=64)
    if isinstance(value, list) and len(value) <= MAX_TARGETS:
        return tuple(value)
    raise AdapterFileError(f"{where}: 'targets' must be a preset name or a list of at most {MAX_TARGETS:,} paths")


def _block_linear_layers(view: ModelView, block: str) -> list[str]:
    """Every linear layer inside a transformer block's attention and feed-forward modules."""
    found = []
    for child in BLOCK_CHILDREN:
        try:
            module = view.module(f"{block}.{child}")
        except ConfigError:
            continue
        if module is None:
            continue
        for name, layer in module.named_modules():
            if name and hasattr(layer, "in_features") and getattr(layer, "weight", None) is not None:
                found.append(f"{block}.{child}.{name}")
    return found


def lora_targets(view: ModelView, targets: str | Iterable[str] = "attention") -> dict[str, LayerShape]:
    """The linear layers LoRA adapts, with their ``(in, out)`` shapes, in module order.

    ``targets`` is a preset (``attention``, ``attention_ff``, ``all_linear``) applied to every
    transformer block of the model, or an explicit list of layer paths.
    """
    if isinstance(targets, str):
        if targets not in TARGET_PRESETS:
            raise LoRAConfigError(
                f"unknown targets {targets[:40]!r}; allowed: {', '.join(TARGET_PRESETS)} or a list of layer paths",
                input_name="targets",
            )
        blocks = [s.path for s in view.sites() if s.kind is SiteKind.TRANSFORMER]
        suffixes = TARGET_PRESETS[targets]
        if suffixes is None:
            paths = [p for b in blocks for p in _block_linear_layers(view, b)]
        else:
            paths = [f"{b}.{suffix}" for b in blocks for suffix in suffixes]
    else:
        paths = [p.strip().removeprefix("diffusion_model.") for p in targets]
    try:
        out = view.linear_layer_shapes(paths)
    except TapTuneError as exc:
        raise LoRAConfigError(exc.message, input_name="targets") from None
    if not out:
        raise LoRAConfigError(f"no layers selected by targets {str(targets)[:60]!r}", input_name="targets")
    return out
