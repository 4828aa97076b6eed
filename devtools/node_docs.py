"""The nodes' help pages, generated from their own schemas: ``web/docs/<NodeID>/en.md``.

ComfyUI's front end shows ``<WEB_DIRECTORY>/docs/<NodeID>/<locale>.md`` as a node's help page
(the pack's ``WEB_DIRECTORY`` is ``./web``). The pages are written from each node's V3 schema
(description, inputs with their tooltips, defaults and bounds, outputs), so they cannot drift
from the code; ``tests/host/test_node_docs.py`` checks the committed pages are current.

Run ``python -m devtools.node_docs`` (after ``make host``) to regenerate them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "web" / "docs"
#: Combo inputs whose choices are not the pack's: files on the user's disk, or the running
#: ComfyUI's own lists (which grow with every release), so the pages stay the same on any host.
FILE_CHOICES = {
    "adapter_name": "an adapter file in `models/adapters/`",
    "ckpt_name": "a checkpoint file in `models/checkpoints/`",
    "resume_from": "`none` or a checkpoint in `output/taptune/checkpoints/`",
    "folder": "a subfolder of ComfyUI's `input/` folder",
    "sampler_name": "ComfyUI's samplers (as in KSampler)",
    "scheduler": "ComfyUI's schedulers (as in KSampler)",
}


def _value(value: Any) -> str:
    return f"`{value}`" if not isinstance(value, str) or value else "(empty)"


def _input_line(name: str, spec: tuple, optional: bool) -> str:
    kind, options = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
    if isinstance(kind, list) or kind == "COMBO":
        choices = kind if isinstance(kind, list) else options.get("options", [])
        kind_text = (
            "choice of " + FILE_CHOICES[name]
            if name in FILE_CHOICES
            else "one of " + ", ".join(f"`{c}`" for c in choices)
        )
    else:
        kind_text = f"`{kind}`"
    facts = []
    if "default" in options and name not in FILE_CHOICES:
        facts.append(f"default {_value(options['default'])}")
    if "min" in options and "max" in options:
        facts.append(f"{options['min']} to {options['max']}")
    if optional:
        facts.append("optional")
    extra = f" ({', '.join(facts)})" if facts else ""
    tooltip = options.get("tooltip", "").strip()
    return f"- **{name}**: {kind_text}{extra}. {tooltip}".rstrip()


NO_INPUTS = "None: the node needs no input."


def render(node_cls: Any) -> str:
    """The help page of one node class, in Markdown."""
    schema = node_cls.GET_SCHEMA()
    spec = node_cls.INPUT_TYPES()
    lines = [f"# {schema.display_name}", "", f"`{schema.node_id}` in *{schema.category}*", "", schema.description, ""]
    lines += ["## Inputs", ""]
    if not any(spec.get(section) for section in ("required", "optional")):
        lines.append(NO_INPUTS)
    for section, optional in (("required", False), ("optional", True)):
        for name, value in spec.get(section, {}).items():
            lines.append(_input_line(name, value, optional))
    lines += ["", "## Outputs", ""]
    if not schema.outputs:
        lines.append("None: the node shows its result in the graph.")
    for output in schema.outputs:
        name = output.display_name or output.id or output.io_type
        tooltip = (output.tooltip or "").strip()
        lines.append(f"- **{name}**: `{output.io_type}`. {tooltip}".rstrip())
    return "\n".join(lines).rstrip() + "\n"


def expected_pages() -> dict[Path, str]:
    """Every page that should exist, by path."""
    from taptune.nodes.extension import node_classes

    return {DOCS / cls.GET_SCHEMA().node_id / "en.md": render(cls) for cls in node_classes()}


def write_pages() -> list[Path]:
    """Write every node's page; returns their paths."""
    pages = expected_pages()
    for path, text in pages.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return sorted(pages)


if __name__ == "__main__":
    from devtools.comfy_host import init_nodes, prepare_comfy

    prepare_comfy(ROOT / ".host" / "docs-base")
    init_nodes()
    for page in write_pages():
        print(f"wrote {page.relative_to(ROOT)}")
