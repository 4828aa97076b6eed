"""A set of LoRA layers: which linear layers, with which configuration, and the file form.

This is what a ``kind: "lora"`` file holds. Its tensors carry the standard (kohya) LoRA names
that ComfyUI's stock ``LoraLoader``/``LoraLoaderModelOnly`` and other tools read, so a file
can be shared with people who do not have TapTune; for the layer at ``path`` inside
``diffusion_model`` (dots become underscores):

* ``lora_unet_<path>.lora_down.weight``: ``(rank, in)``;
* ``lora_unet_<path>.lora_up.weight``: ``(out, rank)``;
* ``lora_unet_<path>.alpha``: a scalar; the weight changes by ``strength * alpha / rank * up @ down``.

For sampling every layer is merged into its weight (a weight function, as OFT).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from ..errors import AdapterFileError
from ..file_format import AdapterFile
from ..kind import AdapterGroup, AdapterSetBase
from ..model_view import LayerShape, ModelView
from ..patch_plan import PatchPlan
from .lora_config import LoRAConfig, LoRAConfigError
from .lora_layer import LoRALayer, LoRAMerge, fp32_value

MARKER = "lora"
#: What every UNet tensor name starts with in the standard LoRA format.
UNET_PREFIX = "lora_unet_"
DOWN = "lora_down.weight"
UP = "lora_up.weight"
ALPHA = "alpha"


def kohya_name(path: str) -> str:
    """The standard LoRA name of a layer inside ``diffusion_model`` (``lora_unet_`` + path, dots as ``_``)."""
    return UNET_PREFIX + path.replace(".", "_")


class LoRAAdapterSet(AdapterSetBase[LoRAConfig]):
    """LoRA layers keyed by linear-layer path inside ``diffusion_model``."""

    kind = "lora"
    marker = MARKER
    config_type = LoRAConfig

    @property
    def layers(self) -> dict[str, LoRALayer]:
        """The LoRA layers by layer path (the set's members)."""
        return self.members  # type: ignore[return-value]

    @classmethod
    def create(cls, layers: Mapping[str, LayerShape], config: LoRAConfig, seed: int) -> LoRAAdapterSet:
        """Fresh layers for ``layers`` (``{path: (in, out)}``): ``down`` drawn from ``seed`` in order, ``up`` zero."""
        generator = torch.Generator().manual_seed(int(seed))
        out = cls()
        for path, (in_features, out_features) in layers.items():
            layer = LoRALayer(in_features, out_features, config.rank, config.alpha, where=path)
            out.members[path] = layer.initialise_(config.init, generator)
        out.groups.append(AdapterGroup(config, list(layers)))
        return out

    # -- the file form ------------------------------------------------------------------------------

    @classmethod
    def tensor_prefix(cls, path: str) -> str:
        """The standard LoRA name of the layer (``lora_unet_<path with _>``)."""
        return kohya_name(path)

    @classmethod
    def from_file(cls, adapter_file: AdapterFile, view: ModelView | None = None) -> LoRAAdapterSet:
        """As the base class, first refusing two listed layers whose standard names coincide."""
        seen: dict[str, str] = {}
        for entry in adapter_file.adapters if isinstance(adapter_file.adapters, list) else []:
            modules = entry.get("modules") if isinstance(entry, dict) else None
            for path in modules if isinstance(modules, list) else []:
                if not isinstance(path, str):
                    continue
                name = kohya_name(path)
                if seen.setdefault(name, path) != path:
                    raise AdapterFileError(
                        f"layers {seen[name][:120]} and {path[:120]} have the same LoRA tensor name {name[:160]}"
                    )
        return super().from_file(adapter_file, view)  # type: ignore[return-value]

    def member_tensors(self, member: nn.Module) -> dict[str, torch.Tensor]:
        assert isinstance(member, LoRALayer)
        return {
            DOWN: member.down.detach().contiguous(),
            UP: member.up.detach().contiguous(),
            ALPHA: torch.tensor(member.alpha, dtype=torch.float32),
        }

    @classmethod
    def member_from_tensors(
        cls, path: str, tensors: Mapping[str, torch.Tensor], config: LoRAConfig, view: ModelView | None
    ) -> LoRALayer:
        name = kohya_name(path)
        missing = [k for k in (DOWN, UP, ALPHA) if k not in tensors]
        if missing:
            raise AdapterFileError(f"{path}: missing {name}.{missing[0]}")
        extra = sorted(set(tensors) - {DOWN, UP, ALPHA})
        if extra:
            raise AdapterFileError(f"{path}: unexpected tensor {name}.{extra[0]}")
        down, up, alpha = tensors[DOWN], tensors[UP], tensors[ALPHA]
        if down.dim() != 2 or up.dim() != 2:
            raise AdapterFileError(
                f"{path}: lora_down and lora_up must be matrices, got {tuple(down.shape)} and {tuple(up.shape)}"
            )
        if down.shape[0] != config.rank or up.shape[1] != config.rank:
            raise AdapterFileError(
                f"{path}: lora_down {tuple(down.shape)} and lora_up {tuple(up.shape)} disagree with the group's "
                f"rank {config.rank}"
            )
        if alpha.dim() != 0:
            raise AdapterFileError(f"{path}: alpha must be a scalar (shape ()), got shape {tuple(alpha.shape)}")
        for label, t in ((DOWN, down), (UP, up), (ALPHA, alpha)):
            if not bool(torch.isfinite(t).all()):
                raise AdapterFileError(f"{name}.{label} holds NaN or infinite values")
        value = float(alpha.to(torch.float32))
        if value != fp32_value(config.alpha):
            raise AdapterFileError(f"{path}: alpha {value:g} disagrees with the group's alpha {config.alpha:g}")
        layer = LoRALayer(int(down.shape[1]), int(up.shape[0]), config.rank, value, where=path)
        with torch.no_grad():
            layer.down.copy_(down.to(torch.float32))
            layer.up.copy_(up.to(torch.float32))
        layer.requires_grad_(False)
        return layer

    # -- on a model ---------------------------------------------------------------------------------

    def check_fits(self, view: ModelView) -> None:
        """Raise unless every layer matches a linear layer of the model in both widths."""
        shapes = view.linear_layer_shapes(self.layers)
        for path, layer in self.layers.items():
            in_features, out_features = shapes[path]
            if (layer.in_features, layer.out_features) != (in_features, out_features):
                raise LoRAConfigError(
                    f"{path}: the LoRA is for a layer of {layer.in_features} inputs and {layer.out_features} outputs, "
                    f"the model's has {in_features} and {out_features}"
                )

    def inference_plan(self, view: ModelView) -> PatchPlan:
        """Every layer merged into its weight (once per load; sampling then costs what the base costs)."""
        return PatchPlan(weight_functions={path: LoRAMerge(layer) for path, layer in self.layers.items()})

    def weight_differences(
        self, weight_of: Callable[[str], torch.Tensor], strength: float, dtype: torch.dtype
    ) -> dict[str, torch.Tensor]:
        """``{layer path: strength * alpha / rank * up @ down}`` (the weights themselves are not needed)."""
        with torch.no_grad():
            return {path: layer.delta(strength).to(dtype).contiguous() for path, layer in self.layers.items()}

    def describe(self) -> list[str]:
        """One line per group."""
        lines = []
        for g in self.groups:
            c = g.config
            targets = c.targets if isinstance(c.targets, str) else f"{len(c.targets)} listed layers"
            lines.append(f"LoRA rank {c.rank}, alpha {c.alpha:g} ({targets}): {len(g.modules)} layers")
        return lines
