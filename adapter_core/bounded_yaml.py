"""YAML read within stated bounds: nesting, number of values and (optionally) no aliases.

The events are scanned first with libyaml's parser when PyYAML has it (a state machine with its
own stacks, so deep nesting costs no recursion), and the document is built only when the scan
passed. The bounded depth is what makes the C loader safe to use: its composer recurses once per
level, so unbounded nesting could exhaust the C stack, while at a few dozen levels it parses five
to ten times faster than PyYAML's pure-Python loader.
"""

from __future__ import annotations

from typing import Any

import yaml

_LOADER: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class YamlBoundsError(ValueError):
    """The text is not YAML, or breaks one of the bounds; the message says which (no file name: the caller adds it)."""


def _one_line(text: str) -> str:
    return " ".join(text.split())[:200]


def scan_yaml(text: str, *, max_depth: int, max_values: int, aliases: bool) -> None:
    """Refuse deep nesting, too many values and (unless ``aliases``) aliases, from the parser's events."""
    depth = values = 0
    try:
        for event in yaml.parse(text, Loader=_LOADER):
            if isinstance(event, yaml.AliasEvent) and not aliases:
                raise YamlBoundsError(f"YAML aliases (*{str(event.anchor)[:40]}) are not allowed; write the values out")
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > max_depth:
                    raise YamlBoundsError(f"nests deeper than {max_depth} levels")
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
            if isinstance(event, (yaml.ScalarEvent, yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                values += 1
                if values > max_values:
                    raise YamlBoundsError(f"holds more than {max_values:,} values")
    except yaml.YAMLError as exc:
        raise YamlBoundsError(f"not valid YAML ({_one_line(str(exc))})") from None


def load_bounded_yaml(text: str, *, max_depth: int, max_values: int, aliases: bool = False) -> Any:
    """The document in ``text`` with the safe loader, after :func:`scan_yaml` passed.

    Raises :class:`YamlBoundsError` for a bound broken, text that is not YAML, or a value the
    safe constructor cannot build (an integer of thousands of digits, a malformed timestamp).
    """
    scan_yaml(text, max_depth=max_depth, max_values=max_values, aliases=aliases)
    try:
        return yaml.load(text, Loader=_LOADER)  # the safe loader, C or Python
    except yaml.YAMLError as exc:
        raise YamlBoundsError(f"not valid YAML ({_one_line(str(exc))})") from None
    except (ValueError, OverflowError, RecursionError, TypeError) as exc:
        raise YamlBoundsError(f"a value cannot be read ({type(exc).__name__}); check the numbers") from None
