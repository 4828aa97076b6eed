"""The one JSON form of a training spec, made from its dataclass fields.

A spec's JSON is what job files hold, what a run's key is computed from and what a trained
file records. It is built by walking the spec's fields, so a field added to a spec (or to a
config inside it) is in the JSON, and so in the run key, without anyone listing it. Reading
it back is each kind's ``from_json``, with the typed, bounded readers of ``json_values``;
the shared pieces of that reading are here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from enum import Enum
from typing import Any

from .errors import ConfigError, TapTuneError
from .json_values import float_field, str_field

#: Longest list of explicit module paths a spec may hold (an SDXL UNet has about 2,000 linear layers).
MAX_PATHS = 100_000


def json_value(value: Any) -> Any:
    """``value`` as JSON: dataclasses (configs included) field by field, every field; tuples as lists.

    A config's own ``to_json`` (its file-metadata form) may leave out fields it can infer; here
    every field is written, so that none can be missed by a run key.
    """
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: json_value(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (tuple, list)):
        return [json_value(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"{type(value).__name__} has no JSON form")


def spec_to_json(spec: Any) -> dict[str, Any]:
    """``{"kind": ..., <every field>: ...}`` of a spec dataclass."""
    return {"kind": spec.kind, **{f.name: json_value(getattr(spec, f.name)) for f in fields(spec)}}


def check_kind_field(entry: Mapping[str, Any], kind: str, where: str) -> None:
    """Raise unless ``entry`` is an object of ``kind``."""
    if not isinstance(entry, Mapping) or entry.get("kind") != kind:
        raise ConfigError(f"{where} must be an object with kind {kind!r}", input_name="spec")


def object_field(entry: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    """A required JSON object field."""
    value = entry.get(key)
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}.{key} must be an object", input_name="spec")
    return value


def paths_or_preset(entry: Mapping[str, Any], key: str, where: str, default: str) -> str | tuple[str, ...]:
    """A preset name or an explicit list of module paths (stored as a tuple, so specs stay hashable)."""
    value = entry.get(key, default)
    if isinstance(value, str) and len(value) <= 256:
        return value
    if isinstance(value, list) and len(value) <= MAX_PATHS and all(isinstance(v, str) and len(v) <= 512 for v in value):
        return tuple(value)
    raise ConfigError(
        f"{where}.{key} must be a name or a list of at most {MAX_PATHS:,} module paths", input_name="spec"
    )


def learning_rate_field(entry: Mapping[str, Any], where: str, default: float) -> float:
    """The spec's learning rate (a positive finite number; the kind's paper value when absent)."""
    return float_field(entry, "learning_rate", where, default=default, minimum=1e-12, maximum=10.0)


def text_field(entry: Mapping[str, Any], key: str, where: str, default: str) -> str:
    """A short text field."""
    return str_field(entry, key, where, default=default, max_length=64)


def as_config_error(exc: TapTuneError, where: str) -> ConfigError:
    """A reader's or a config's own complaint about a spec, as the spec's :class:`ConfigError`."""
    if isinstance(exc, ConfigError) and exc.input_name == "spec":
        return exc
    message = exc.message
    prefix = "" if message.startswith(where) else f"{where}: "
    return ConfigError(f"{prefix}{message}", input_name="spec")
