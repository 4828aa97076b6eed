"""The spec nodes (``TapTuneTapSpec``, ``TapTuneOFTSpec``, ...): one per registered adapter kind.

Each kind declares its node as data (``adapter_core.spec_form.SpecForm``); this module turns a form
into a V3 node: widgets with the form's defaults, bounds and tooltips, and an ``execute`` that
checks every value against its field (API prompts can send anything, and NaN passes ComfyUI's own
min/max checks) before the kind builds its spec from them.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from comfy_api.v0_0_2 import io

from ..adapter_core.errors import ConfigError
from ..adapter_core.registry import KINDS, spec_of_kind
from ..adapter_core.spec_form import SpecField, SpecForm
from .common import TapTuneSpec, bounded_integer, bounded_number, choice, node_errors


def _widget(f: SpecField) -> Any:
    common: dict[str, Any] = {"tooltip": f.tooltip, "optional": f.optional}
    if f.type == "int":
        return io.Int.Input(f.name, default=f.default, min=int(f.minimum), max=int(f.maximum), **common)
    if f.type == "float":
        bounds = {"min": f.minimum, "max": f.maximum, **({"step": f.step} if f.step is not None else {})}
        return io.Float.Input(f.name, default=f.default, **bounds, **common)
    if f.type == "bool":
        return io.Boolean.Input(f.name, default=f.default, **common)
    if f.type == "combo":
        return io.Combo.Input(f.name, options=list(f.options), default=f.default, **common)
    if f.type == "text":
        return io.String.Input(f.name, default=f.default, multiline=f.multiline, **common)
    return TapTuneSpec.Input(f.name, **common)


def _checked(f: SpecField, value: Any, kind: str) -> Any:
    """``value`` if it is what field ``f`` allows, else the input's :class:`ConfigError`."""
    if f.type == "int":
        return bounded_integer(value, f.name, int(f.minimum), int(f.maximum))
    if f.type == "float":
        return bounded_number(value, f.name, f.minimum, f.maximum)
    if f.type == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"must be true or false, got {str(value)[:40]}", input_name=f.name)
        return value
    if f.type == "combo":
        return choice(value, f.name, f.options)
    if f.type == "text":
        if not isinstance(value, str) or len(value) > f.max_length:
            raise ConfigError(f"must be text of at most {f.max_length} characters", input_name=f.name)
        return value
    return None if value is None else spec_of_kind(value, kind)


def spec_node(form: SpecForm, kind: str) -> type[io.ComfyNode]:
    """The V3 node class of one kind's spec form."""

    @classmethod  # type: ignore[misc]
    def define_schema(cls: type[io.ComfyNode]) -> io.Schema:
        return io.Schema(
            node_id=form.node_id,
            display_name=form.display_name,
            category=f"TapTune/{form.category}",
            description=form.description,
            inputs=[_widget(f) for f in form.fields],
            outputs=[TapTuneSpec.Output(display_name="spec", tooltip=form.output_tooltip)],
        )

    @classmethod  # type: ignore[misc]
    def execute(cls: type[io.ComfyNode], *args: Any, **values: Any) -> io.NodeOutput:
        first = form.fields[0].name
        with node_errors(form.node_id, first):
            if len(args) > len(form.fields):
                raise ConfigError(f"takes at most {len(form.fields)} inputs", input_name=first)
            values.update(zip((f.name for f in form.fields), args, strict=False))
            unknown = sorted(set(values) - {f.name for f in form.fields})
            if unknown:
                raise ConfigError(f"this node has no input {unknown[0][:40]!r}", input_name=unknown[0][:40])
            checked = {f.name: _checked(f, values.get(f.name, f.default), kind) for f in form.fields}
            spec = form.build(checked)
        return io.NodeOutput(spec)

    doc = f"{form.display_name}: {form.description}"
    return type(form.node_id, (io.ComfyNode,), {"define_schema": define_schema, "execute": execute, "__doc__": doc})


@cache
def spec_nodes() -> tuple[type[io.ComfyNode], ...]:
    """The spec node of every registered kind that declares one, in registration order (made once)."""
    return tuple(spec_node(kind.spec_form, kind.name) for kind in KINDS.values() if kind.spec_form is not None)


def spec_node_named(node_id: str) -> type[io.ComfyNode]:
    """The spec node with ``node_id`` (for callers that know a node by its contract name)."""
    for node in spec_nodes():
        if node.define_schema().node_id == node_id:
            return node
    raise KeyError(node_id)
