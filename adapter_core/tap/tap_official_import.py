"""Convert adapters saved by the paper's official code into a ``taptune/1`` tap set.

The official code (``Xiang-cd/unet-finetune``) writes one ``torch.save``d state dict per
adapter module into a folder, named after the module's path in the UNet:

* transformer blocks: ``<path>.adapter_inout.pt`` with ``adp.0.*`` (down) and
  ``adp.2.*`` (up); the same tensors again in ``<path>.adapter_inout.adp.pt`` as
  ``0.*``/``2.*``;
* ResBlocks: ``<path>.adapter.pt`` with ``0.*`` (GroupNorm), ``2.*`` (down conv),
  ``4.*`` (up conv);

and the configuration lives in its LDM YAML (``<din>-<dout>.yaml``) under
``model.params.unet_config.params.adapter_config``. Pickles are read with
``torch.load(weights_only=True)`` only; the result goes through the same checks as any file
the loader reads.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..bounded_yaml import YamlBoundsError, load_bounded_yaml
from ..errors import AdapterFileError, ConfigError
from ..file_format import AdapterFile, check_adapter_file
from ..foreign_files import read_text_file, read_weights_file
from .tap_config import TapConfig
from .tap_set import TapAdapterSet

_TRANSFORMER_SUFFIX = ".adapter_inout.pt"
_TRANSFORMER_DUPLICATE_SUFFIX = ".adapter_inout.adp.pt"
_RESBLOCK_SUFFIX = ".adapter.pt"
_PATH_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "model.")
_TRANSFORMER_KEYS = {"adp.0": "tap.down", "adp.2": "tap.up"}
_RESBLOCK_KEYS = {"0": "tap.norm", "2": "tap.down", "4": "tap.up"}
#: An official folder holds one file per adapted block (SD 1.5: 16 transformer + 22 ResBlocks);
#: each costs a torch.load (about a millisecond), so this also bounds the time an import takes.
MAX_ADAPTER_FILES = 512
#: Most entries of the folder looked at (its other files are skipped, but each is listed).
MAX_FOLDER_ENTRIES = 20_000
#: Nodes of a YAML document walked while looking for the adapter configuration.
MAX_YAML_NODES = 100_000
#: Largest official YAML read; the official configs are a few KiB.
MAX_YAML_BYTES = 32 * 2**10
#: Deepest nesting of an official YAML read (an LDM config nests about eight levels).
MAX_YAML_DEPTH = 64


def _find_adapter_config(tree: Any) -> Mapping[str, Any] | None:
    """The ``adapter_config`` mapping wherever it sits in an LDM YAML tree.

    Walks each node once (a YAML alias shares a node; a chain of them must not make the walk
    exponential) and without recursion (deep nesting must not overflow the stack).
    """
    stack, seen, visited = [tree], set(), 0
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        visited += 1
        if visited > MAX_YAML_NODES:
            raise AdapterFileError(f"the YAML has more than {MAX_YAML_NODES} nodes; not an official config")
        if isinstance(node, Mapping):
            if isinstance(node.get("adapter_config"), Mapping):
                return node["adapter_config"]
            if "transformer_adp_config" in node or "resblock_adp_config" in node:
                return node
            stack.extend(reversed(list(node.values())))
        elif isinstance(node, list):
            stack.extend(reversed(node))
    return None


def _tap_config(entry: Any, where: str) -> TapConfig:
    if not isinstance(entry, Mapping):
        raise AdapterFileError(f"{where}: an adapter config must be a mapping")
    kind = entry.get("type", "inout")
    if kind != "inout":
        raise AdapterFileError(f"{where}: adapter type {str(kind)[:40]!r} is not supported (only 'inout')")
    fields = {k: entry[k] for k in ("din", "dout", "mid_dim", "method", "scale") if k in entry}
    return TapConfig.from_json(fields, where)


def read_official_config(yaml_path: str | os.PathLike[str]) -> tuple[TapConfig | None, TapConfig | None]:
    """``(transformer config, ResBlock config)`` from an official YAML; either may be ``None``.

    As in the official code, only the last entry of ``transformer_adp_config`` takes effect.
    """
    name = Path(yaml_path).name
    text = read_text_file(yaml_path, MAX_YAML_BYTES)
    try:
        tree = load_bounded_yaml(text, max_depth=MAX_YAML_DEPTH, max_values=MAX_YAML_NODES, aliases=True)
    except YamlBoundsError as exc:
        raise AdapterFileError(f"{exc}; not an official config", file=name) from None
    found = _find_adapter_config(tree)
    if found is None:
        raise AdapterFileError("no adapter_config (transformer_adp_config / resblock_adp_config)", file=name)
    configs = []
    for key in ("transformer_adp_config", "resblock_adp_config"):
        entry = found.get(key)
        if isinstance(entry, list):
            entry = entry[-1] if entry else None
        configs.append(_tap_config(entry, f"{name}: {key}") if entry else None)
    return configs[0], configs[1]


def _strip_prefix(path: str) -> str:
    for prefix in _PATH_PREFIXES:
        if path.startswith(prefix):
            return path[len(prefix) :]
    return path


def _renamed(state: Mapping[str, torch.Tensor], mapping: Mapping[str, str], file: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        head, _, leaf = key.rpartition(".")
        if head not in mapping or leaf not in ("weight", "bias"):
            raise AdapterFileError(
                f"unexpected key {key[:120]!r} (expected {', '.join(sorted(mapping))} weights)", file=file.name
            )
        out[f"{mapping[head]}.{leaf}"] = value
    return out


def _find_yaml(directory: Path) -> Path:
    candidates = sorted(directory.glob("*.yaml")) + sorted(directory.glob("*.yml"))
    if len(candidates) != 1:
        listed = ", ".join(p.name for p in candidates[:5]) or "none"
        raise AdapterFileError(
            f"need exactly one official YAML config (<din>-<dout>.yaml) in the folder, found {listed}; "
            "pass the config path explicitly"
        )
    return candidates[0]


def official_tap_file(
    directory: str | os.PathLike[str], config_path: str | os.PathLike[str] | None = None
) -> AdapterFile:
    """The ``taptune/1`` content of an official adapter folder (not yet checked: see :func:`import_official_tap_dir`).

    Errors name the file at fault, or the folder where no one file is.
    """
    try:
        return _official_tap_file(Path(directory), config_path)
    except AdapterFileError as exc:
        raise exc.concerning(file=Path(directory).name) from None


def _official_tap_file(folder: Path, config_path: str | os.PathLike[str] | None) -> AdapterFile:
    if not folder.is_dir():
        raise AdapterFileError("is not a folder", file=folder.name)
    transformer_config, resblock_config = read_official_config(config_path or _find_yaml(folder))
    found: dict[str, tuple[str, Path]] = {}
    entries = []
    for entry in folder.iterdir():
        entries.append(entry)
        if len(entries) > MAX_FOLDER_ENTRIES:
            raise AdapterFileError(f"holds more than {MAX_FOLDER_ENTRIES} entries; not an official adapter folder")
    for file in sorted(entries):
        name = file.name
        if name.endswith(_TRANSFORMER_DUPLICATE_SUFFIX):
            continue  # the same tensors as <path>.adapter_inout.pt, saved a second time
        for suffix, kind in ((_TRANSFORMER_SUFFIX, "transformer"), (_RESBLOCK_SUFFIX, "resblock")):
            if name.endswith(suffix):
                found[_strip_prefix(name[: -len(suffix)])] = (kind, file)
                if len(found) > MAX_ADAPTER_FILES:
                    raise AdapterFileError(f"more than {MAX_ADAPTER_FILES} adapter files; not an official folder")
                break
    if not found:
        raise AdapterFileError("no official adapter files (*.adapter_inout.pt, *.adapter.pt)", file=folder.name)
    tensors: dict[str, torch.Tensor] = {}
    groups = []
    for kind, config, mapping in (
        ("transformer", transformer_config, _TRANSFORMER_KEYS),
        ("resblock", resblock_config, _RESBLOCK_KEYS),
    ):
        paths = sorted(p for p, (k, _) in found.items() if k == kind)
        if not paths:
            continue
        if config is None:
            raise AdapterFileError(f"{kind} adapter files found but the YAML has no {kind} adapter config")
        for path in paths:
            file = found[path][1]
            for key, value in _renamed(read_weights_file(file), mapping, file).items():
                tensors[f"{path}.{key}"] = value
        groups.append({**config.to_json(), "modules": paths})
    return AdapterFile("tap", groups, tensors, None, {})


def import_official_tap_dir(
    directory: str | os.PathLike[str], config_path: str | os.PathLike[str] | None = None
) -> TapAdapterSet:
    """Read an official adapter folder (plus its YAML) into a :class:`TapAdapterSet`, checked as the loader checks."""
    adapter_file = official_tap_file(directory, config_path)
    try:
        check_adapter_file(adapter_file)
        return TapAdapterSet.from_file(adapter_file)
    except AdapterFileError as exc:
        raise exc.concerning(file=Path(directory).name) from None
    except ConfigError as exc:  # a setting read from the folder: the folder is at fault, not an input
        raise AdapterFileError(exc.message, file=Path(directory).name) from None
