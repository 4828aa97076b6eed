"""Typed, bounded values out of untrusted JSON objects (file metadata, foreign configs).

JSON from a file may hold anything: ``1e400`` where an integer belongs, ``true`` where a
number does, a string where a list does, nesting a thousand levels deep. Every reader here
checks the type and the bounds and raises :class:`AdapterFileError` naming the field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from .errors import AdapterFileError

#: How deeply a JSON document from a file may nest (ours nest three levels).
MAX_JSON_DEPTH = 32
#: The largest JSON text read from a file's metadata or a config file.
MAX_JSON_CHARS = 16 * 2**20

_MISSING = object()


def _depth_ok(text: str, limit: int) -> bool:
    """Whether brackets nest at most ``limit`` deep (strings skipped), without parsing."""
    depth = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > limit:
                return False
        elif char in "]}":
            depth -= 1
    return True


def parse_json_object(text: str, what: str) -> dict[str, Any]:
    """``text`` parsed as a JSON object, refusing deep nesting, huge texts and non-finite numbers."""
    if not isinstance(text, str):
        raise AdapterFileError(f"{what} is not text")
    if len(text) > MAX_JSON_CHARS:
        raise AdapterFileError(f"{what} is larger than {MAX_JSON_CHARS // 2**20} MiB of JSON")
    if not _depth_ok(text, MAX_JSON_DEPTH):
        raise AdapterFileError(f"{what} nests deeper than {MAX_JSON_DEPTH} levels")

    def refuse_constant(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON number")

    try:
        value = json.loads(text, parse_constant=refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise AdapterFileError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise AdapterFileError(f"{what} must be a JSON object")
    try:
        # A ``\\ud800`` escape parses to a lone surrogate, which no UTF-8 output (a terminal, a
        # saved file, the UI) can take; one C-speed pass over the parsed value finds any.
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise AdapterFileError(f"{what} holds text that is not valid Unicode (a lone surrogate)") from None
    return value


def int_field(
    entry: Mapping[str, Any],
    key: str,
    where: str,
    *,
    default: Any = _MISSING,
    minimum: int | None = None,
    maximum: int | None = None,
) -> int:
    """An integer field (``60.0`` is accepted as 60; ``true``, ``1e400``, ``60.5`` and strings are not)."""
    value = entry.get(key, default)
    if value is _MISSING:
        raise AdapterFileError(f"{where} has no '{key}'")
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise AdapterFileError(f"{where}: '{key}' must be an integer, got {value!r}"[:300])
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise AdapterFileError(f"{where}: '{key}' = {value} is outside {minimum}..{maximum}")
    return value


def optional_int_field(entry: Mapping[str, Any], key: str, where: str, **bounds: Any) -> int | None:
    """Like :func:`int_field`, ``None`` when the key is absent or null."""
    if entry.get(key) is None:
        return None
    return int_field(entry, key, where, **bounds)


def float_field(
    entry: Mapping[str, Any],
    key: str,
    where: str,
    *,
    default: Any = _MISSING,
    minimum: float | None = None,
    maximum: float | None = None,
) -> float:
    """A finite number field (integers allowed; booleans, strings, NaN and infinities not)."""
    value = entry.get(key, default)
    if value is _MISSING:
        raise AdapterFileError(f"{where} has no '{key}'")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AdapterFileError(f"{where}: '{key}' must be a number, got {value!r}"[:300])
    try:
        number = float(value)
    except OverflowError:
        raise AdapterFileError(f"{where}: '{key}' is too large") from None
    if not math.isfinite(number):
        raise AdapterFileError(f"{where}: '{key}' must be finite, got {value!r}")
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        raise AdapterFileError(f"{where}: '{key}' = {number:g} is outside {minimum:g}..{maximum:g}")
    return number


def bool_field(entry: Mapping[str, Any], key: str, where: str, *, default: Any = _MISSING) -> bool:
    """A boolean field (JSON ``true``/``false`` only)."""
    value = entry.get(key, default)
    if value is _MISSING:
        raise AdapterFileError(f"{where} has no '{key}'")
    if not isinstance(value, bool):
        raise AdapterFileError(f"{where}: '{key}' must be true or false, got {value!r}"[:300])
    return value


def str_field(
    entry: Mapping[str, Any], key: str, where: str, *, default: Any = _MISSING, max_length: int = 4096
) -> str:
    """A string field of bounded length."""
    value = entry.get(key, default)
    if value is _MISSING:
        raise AdapterFileError(f"{where} has no '{key}'")
    if not isinstance(value, str) or len(value) > max_length:
        raise AdapterFileError(f"{where}: '{key}' must be a string of at most {max_length} characters")
    return value


def str_list_field(entry: Mapping[str, Any], key: str, where: str, *, max_items: int = 100_000) -> list[str]:
    """A list of strings (module paths); empty lists and duplicates are the caller's to judge."""
    value = entry.get(key)
    if not isinstance(value, list) or len(value) > max_items or not all(isinstance(v, str) for v in value):
        raise AdapterFileError(f"{where}: '{key}' must be a list of at most {max_items:,} strings")
    return list(value)
