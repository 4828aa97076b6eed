"""A UNet as one model clone sees it: what adapter kinds need to size, check and place their modules.

The host builds it (``patching/model_access.py`` for ComfyUI: ``resolve`` reads through the
clone's own object patches, so another clone's wrappers never leak in); tests and the command
line build it from a plain module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from .errors import ConfigError
from .sites import TapSite, find_tap_sites

#: ``(in_features, out_features)`` of a linear layer.
LayerShape = tuple[int, int]


@dataclass(frozen=True)
class ModelView:
    """``diffusion_model`` plus how to read a module at a path, and the architecture signature (if known)."""

    diffusion_model: nn.Module
    resolve: Callable[[str], nn.Module] | None = None
    architecture: Mapping[str, Any] | None = None

    def module(self, path: str) -> nn.Module:
        """The module at ``path`` as this view sees it; :class:`ConfigError` when there is none."""
        try:
            return self.resolve(path) if self.resolve is not None else self.diffusion_model.get_submodule(path)
        except AttributeError:
            raise ConfigError(f"{path!r} is not a module of this model") from None

    def sites(self) -> list[TapSite]:
        """Every block that can carry a block adapter, in module order."""
        return find_tap_sites(self.diffusion_model, self.resolve)

    def linear_layer_shapes(self, paths: Iterable[str]) -> dict[str, LayerShape]:
        """``{path: (in, out)}`` for linear layers; :class:`ConfigError` naming a path that is none."""
        out: dict[str, LayerShape] = {}
        for path in paths:
            layer = self.module(path)
            if not (
                hasattr(layer, "in_features")
                and hasattr(layer, "out_features")
                and getattr(layer, "weight", None) is not None
            ):
                raise ConfigError(f"{path!r} is not a linear layer ({type(layer).__name__})")
            out[path] = (int(layer.in_features), int(layer.out_features))
        return out
