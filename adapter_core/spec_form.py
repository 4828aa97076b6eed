"""The form of a kind's spec node, as plain data: which inputs it shows and how they make a spec.

A kind declares its node here, in the library, without ComfyUI; ``nodes/specs.py`` turns every
registered kind's form into a ComfyUI node (widgets, tooltips, bounds) and checks each value
against its field before calling :attr:`SpecForm.build`. So a new kind gets its node, its
place in the node list and its help page from its registry entry alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

#: ``int``/``float``/``bool``: a number or switch widget; ``combo``: one of ``options``; ``text``: a
#: text box (``multiline`` for lists); ``spec``: another spec of the same kind to extend (chained nodes).
FieldType = Literal["int", "float", "bool", "combo", "text", "spec"]


def path_lines(text: str) -> tuple[str, ...]:
    """The module paths typed into a ``text`` field: one per line or comma-separated, blanks dropped."""
    return tuple(line.strip() for line in text.replace(",", "\n").splitlines() if line.strip())


@dataclass(frozen=True)
class SpecField:
    """One input of a spec node."""

    name: str
    type: FieldType
    tooltip: str
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    options: tuple[str, ...] = ()
    optional: bool = False
    multiline: bool = False
    #: Longest text accepted (``text`` fields).
    max_length: int = 1_000_000


@dataclass(frozen=True)
class SpecForm:
    """A kind's spec node: identity, words, inputs, and the function from checked values to a spec."""

    node_id: str
    display_name: str
    description: str
    fields: tuple[SpecField, ...]
    #: ``build(values)``: every field's checked value by name (defaults filled in) -> the spec.
    #: Raises a :class:`~.errors.ConfigError` naming the input for combinations a field cannot check.
    build: Callable[[Mapping[str, Any]], Any]
    #: Tooltip of the node's one output.
    output_tooltip: str = "The recipe, for TapTune DreamBooth Train."
    #: Category below ``TapTune/``.
    category: str = "train"

    def defaults(self) -> dict[str, Any]:
        """Every field's default by name."""
        return {f.name: f.default for f in self.fields}
