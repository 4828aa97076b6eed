"""Convert adapters saved by the paper's official code into a ``taptune/1`` set.

The official code (``Xiang-cd/unet-finetune``) writes one ``torch.save``d state dict per
adapter module into a folder, named after the module's path in the UNet:

* transformer blocks: ``<path>.adapter_inout.pt`` with ``adp.0.*`` (down) and
  ``adp.2.*`` (up); the same tensors again in ``<path>.adapter_inout.adp.pt`` as
  ``0.*``/``2.*``;
* ResBlocks: ``<path>.adapter.pt`` with ``0.*`` (GroupNorm), ``2.*`` (down conv),
  ``4.*`` (up conv);

and the configuration lives in its LDM YAML (``<din>-<dout>.yaml``) under
``model.params.unet_config.params.adapter_config``. Files are read with
``torch.load(weights_only=True)`` only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml

from .file_format import AdapterFileError
from .tap_adapter import TapAdapter, TapConfig, TapGroup
from .tap_points import TapConfigError
from .tap_set import TapAdapterSet

_TRANSFORMER_SUFFIX = ".adapter_inout.pt"
_TRANSFORMER_DUPLICATE_SUFFIX = ".adapter_inout.adp.pt"
_RESBLOCK_SUFFIX = ".adapter.pt"
_PATH_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "model.")
_TRANSFORMER_KEYS = {"adp.0": "tap.down", "adp.2": "tap.up"}
_RESBLOCK_KEYS = {"0": "tap.norm", "2": "tap.down", "4": "tap.up"}


def _find_adapter_config(node: Any) -> Mapping[str, Any] | None:
    """The ``adapter_config`` mapping wherever it sits in an LDM YAML tree."""
    if isinstance(node, Mapping):
        if "adapter_config" in node and isinstance(node["adapter_config"], Mapping):
            return node["adapter_config"]
        if "transformer_adp_config" in node or "resblock_adp_config" in node:
            return node
        for value in node.values():
            found = _find_adapter_config(value)
            if found is not None:
                return found
    elif isinstance(node, list):
        for value in node:
            found = _find_adapter_config(value)
            if found is not None:
                return found
    return None


def _tap_config(entry: Mapping[str, Any], where: str) -> TapConfig:
    kind = entry.get("type", "inout")
    if kind != "inout":
        raise AdapterFileError(f"{where}: adapter type {kind!r} is not supported (only 'inout')")
    try:
        return TapConfig(
            din=str(entry["din"]),
            dout=str(entry["dout"]),
            mid_dim=int(entry.get("mid_dim", 60)),
            method=str(entry.get("method", "default")),
            scale=float(entry.get("scale", 1.0)),
        )
    except KeyError as missing:
        raise AdapterFileError(f"{where}: adapter config is missing {missing}") from None
    except (TypeError, ValueError) as exc:
        if isinstance(exc, TapConfigError):
            raise
        raise AdapterFileError(f"{where}: adapter config has a value of the wrong type: {exc}") from None


def read_official_config(yaml_path: str | os.PathLike[str]) -> tuple[TapConfig | None, TapConfig | None]:
    """``(transformer config, ResBlock config)`` from an official YAML; either may be ``None``.

    As in the official code, only the last entry of ``transformer_adp_config`` takes effect.
    """
    try:
        with open(yaml_path, encoding="utf-8") as handle:
            tree = yaml.safe_load(handle)
    except yaml.YAMLError as exc:
        raise AdapterFileError(f"{Path(yaml_path).name} is not valid YAML: {exc}") from None
    found = _find_adapter_config(tree)
    if found is None:
        raise AdapterFileError(
            f"{Path(yaml_path).name}: no adapter_config (transformer_adp_config / resblock_adp_config)"
        )
    transformer = found.get("transformer_adp_config")
    if isinstance(transformer, list):
        transformer = transformer[-1] if transformer else None
    resblock = found.get("resblock_adp_config")
    if isinstance(resblock, list):
        resblock = resblock[-1] if resblock else None
    name = Path(yaml_path).name
    return (
        _tap_config(transformer, name) if transformer else None,
        _tap_config(resblock, name) if resblock else None,
    )


def _strip_prefix(path: str) -> str:
    for prefix in _PATH_PREFIXES:
        if path.startswith(prefix):
            return path[len(prefix) :]
    return path


def _load_state_dict(file: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise AdapterFileError(f"{file.name}: cannot be read as a weights-only state dict: {exc}") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise AdapterFileError(f"{file.name}: expected a state dict of tensors")
    return dict(state)


def _renamed(state: Mapping[str, torch.Tensor], mapping: Mapping[str, str], file: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        head, _, leaf = key.rpartition(".")
        if head not in mapping or leaf not in ("weight", "bias"):
            raise AdapterFileError(
                f"{file.name}: unexpected key {key!r} (expected {', '.join(sorted(mapping))} weights)"
            )
        out[f"{mapping[head]}.{leaf}"] = value.to(torch.float32)
    return out


def _find_yaml(directory: Path) -> Path:
    candidates = sorted(directory.glob("*.yaml")) + sorted(directory.glob("*.yml"))
    if len(candidates) != 1:
        listed = ", ".join(p.name for p in candidates) or "none"
        raise AdapterFileError(
            f"{directory}: need exactly one official YAML config (<din>-<dout>.yaml) in the folder, found {listed}; "
            "pass the config path explicitly"
        )
    return candidates[0]


def import_official_tap_dir(
    directory: str | os.PathLike[str], config_path: str | os.PathLike[str] | None = None
) -> TapAdapterSet:
    """Read an official adapter folder (plus its YAML) into a :class:`TapAdapterSet`."""
    folder = Path(directory)
    if not folder.is_dir():
        raise AdapterFileError(f"{folder} is not a folder")
    transformer_config, resblock_config = read_official_config(config_path or _find_yaml(folder))
    transformer: dict[str, dict[str, torch.Tensor]] = {}
    resblock: dict[str, dict[str, torch.Tensor]] = {}
    for file in sorted(folder.iterdir()):
        name = file.name
        if name.endswith(_TRANSFORMER_DUPLICATE_SUFFIX):
            continue  # the same tensors as <path>.adapter_inout.pt, saved a second time
        if name.endswith(_TRANSFORMER_SUFFIX):
            path = _strip_prefix(name[: -len(_TRANSFORMER_SUFFIX)])
            transformer[path] = _renamed(_load_state_dict(file), _TRANSFORMER_KEYS, file)
        elif name.endswith(_RESBLOCK_SUFFIX):
            path = _strip_prefix(name[: -len(_RESBLOCK_SUFFIX)])
            resblock[path] = _renamed(_load_state_dict(file), _RESBLOCK_KEYS, file)
    if not transformer and not resblock:
        raise AdapterFileError(f"{folder}: no official adapter files (*.adapter_inout.pt, *.adapter.pt)")
    out = TapAdapterSet()
    for tensors_by_path, config, what in (
        (transformer, transformer_config, "transformer"),
        (resblock, resblock_config, "ResBlock"),
    ):
        if not tensors_by_path:
            continue
        if config is None:
            raise AdapterFileError(f"{folder}: {what} adapter files found but the YAML has no {what} adapter config")
        for path, tensors in tensors_by_path.items():
            down, up = tensors.get("tap.down.weight"), tensors.get("tap.up.weight")
            if down is None or up is None:
                raise AdapterFileError(f"{path}: official file lacks the down or up layer")
            adapter = TapAdapter(config, int(down.shape[1]), int(up.shape[0]))
            adapter.load_tensors(tensors, path)
            out.adapters[path] = adapter
        out.groups.append(TapGroup(config, sorted(tensors_by_path)))
    return out
