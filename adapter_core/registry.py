"""The adapter-kind registry: the one place that knows which kinds exist.

Everything outside the kind folders finds a kind here — by a file's ``kind`` field, by the
type of a spec a node received, or by a spec's JSON — and then uses only the protocols of
``kind.py``. Adding a kind is one folder beside ``tap/`` and ``oft/`` and one :func:`register`
line below (``docs/architecture.md``, "Adding an adapter kind"); a kind that breaks the
contract is refused here, at import.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from .errors import AdapterFileError, ConfigError, TapTuneError
from .file_format import AdapterFile, load_adapter_file
from .kind import AdapterKind, AdapterSetBase, AdapterSpec, check_kind
from .lora import LORA_KIND
from .model_view import ModelView
from .oft import OFT_KIND
from .spec_form import SpecForm
from .tap import TAP_KIND

#: Every adapter kind, by the name files record (filled by :func:`register`, in registration order).
KINDS: dict[str, AdapterKind] = {}


def register(kind: AdapterKind) -> AdapterKind:
    """Add ``kind`` after checking it keeps the contract (:func:`~.kind.check_kind`); a name is taken once."""
    check_kind(kind)
    if kind.name in KINDS:
        raise TypeError(f"adapter kind {kind.name!r} is registered twice")
    KINDS[kind.name] = kind
    return kind


register(TAP_KIND)
register(OFT_KIND)
register(LORA_KIND)


def kind_named(name: str) -> AdapterKind:
    """The kind a file names; :class:`AdapterFileError` listing the known ones otherwise."""
    kind = KINDS.get(name) if isinstance(name, str) else None
    if kind is None:
        raise AdapterFileError(f"unknown adapter kind {str(name)[:40]!r}; this version knows {', '.join(KINDS)}")
    return kind


def kind_of_spec(spec: Any) -> AdapterKind:
    """The kind whose spec ``spec`` is; :class:`ConfigError` (input ``spec``) when it is none."""
    for kind in KINDS.values():
        if isinstance(spec, kind.spec):
            return kind
    raise ConfigError(
        f"expected a TapTune spec ({', '.join(k.spec.__name__ for k in KINDS.values())}), got {type(spec).__name__}",
        input_name="spec",
    )


def spec_of_kind(spec: Any, name: str) -> AdapterSpec:
    """``spec`` if it is a spec of kind ``name``; :class:`ConfigError` (input ``spec``) otherwise."""
    if kind_of_spec(spec).name != name:
        raise ConfigError(f"only a {name} spec can be used here, not a {spec.kind} spec", input_name="spec")
    return spec


def spec_to_json(spec: Any) -> dict[str, Any]:
    """A spec of any registered kind in its one JSON form."""
    kind_of_spec(spec)
    return spec.to_json()


def spec_from_json(entry: Any, where: str = "spec") -> AdapterSpec:
    """The spec a :func:`spec_to_json` entry describes, whatever its kind; :class:`ConfigError` (input ``spec``)."""
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where} must be an object with a kind", input_name="spec")
    name = entry.get("kind")
    kind = KINDS.get(name) if isinstance(name, str) else None
    if kind is None:
        raise ConfigError(
            f"unknown spec kind {str(name)[:40]!r} in {where}; this version knows {', '.join(KINDS)}",
            input_name="spec",
        )
    try:
        return kind.spec.from_json(entry, where)
    except ConfigError:
        raise
    except TapTuneError as exc:  # a config's own check of a value read from the JSON
        raise ConfigError(f"{where}: {exc.message}", input_name="spec") from None


def spec_forms() -> list[SpecForm]:
    """The spec node forms of every registered kind that has one, in registration order."""
    return [kind.spec_form for kind in KINDS.values() if kind.spec_form is not None]


def adapter_set_from_file(adapter_file: AdapterFile, view: ModelView | None = None) -> AdapterSetBase[Any]:
    """Rebuild the adapter set a parsed file holds, whatever its kind (checked as the kind checks)."""
    try:
        return kind_named(adapter_file.kind).adapter_set.from_file(adapter_file, view)
    except AdapterFileError as exc:
        raise exc.concerning(file=adapter_file.name or None) from None
    except ConfigError as exc:  # a setting read from the file: the file is at fault, not an input
        raise AdapterFileError(exc.message, file=adapter_file.name or None) from None


def load_adapter_set(
    path: str | os.PathLike[str], view: ModelView | None = None
) -> tuple[AdapterFile, AdapterSetBase[Any]]:
    """Read a file and rebuild its set: ``(file, set)``."""
    adapter_file = load_adapter_file(path)
    return adapter_file, adapter_set_from_file(adapter_file, view)
