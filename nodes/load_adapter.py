"""TapTuneLoadAdapter and TapTuneAdapterInfo: put a saved adapter on a MODEL, or describe one."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from comfy_api.v0_0_2 import io, ui

from ..adapter_core.architecture import describe_architecture
from ..adapter_core.errors import TapTuneError
from ..adapter_core.file_format import load_adapter_file
from ..patching.apply import adapter_set_for_model, apply_adapter_file
from ..patching.model_access import model_architecture, unet_parameter_count
from .common import CATEGORY_LOAD, adapter_file_stamp, adapter_names, adapter_path, bounded_number, node_errors

#: UNet sizes of the released base models, for the parameter share when no MODEL is connected.
KNOWN_UNET_PARAMETERS = {"SD15": 859_520_964, "SD20": 865_910_724, "SDXL": 2_567_463_684}


class TapTuneLoadAdapter(io.ComfyNode):
    """Apply a TapTune adapter file (tap-point or OFT) to a MODEL at a strength."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TapTuneLoadAdapter",
            display_name="TapTune Load Adapter",
            category=CATEGORY_LOAD,
            description=(
                "Applies a TapTune adapter file from models/adapters to the MODEL: tap-point adapters "
                "(small MLPs inside transformer blocks and ResBlocks) or OFT/COFT rotations (merged into the "
                "attention weights). Chain several to stack them; the input MODEL is never changed."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model to adapt (SD 1.x, SD 2.x or SDXL)."),
                io.Combo.Input(
                    "adapter_name",
                    options=adapter_names(),
                    tooltip="A .safetensors adapter file in models/adapters (subfolders allowed).",
                ),
                io.Float.Input(
                    "strength",
                    default=1.0,
                    min=-10.0,
                    max=10.0,
                    step=0.01,
                    tooltip="0 gives the base model exactly. Tap adapters: scales their output. "
                    "OFT: scales the rotation's generator (1 = trained rotation, -1 = its inverse).",
                ),
            ],
            outputs=[io.Model.Output(display_name="MODEL", tooltip="A patched clone of the input model.")],
        )

    @classmethod
    def fingerprint_inputs(cls, model: Any = None, adapter_name: str = "", strength: float = 1.0) -> Any:
        return adapter_file_stamp(adapter_name), strength

    @classmethod
    def execute(cls, model: Any, adapter_name: str, strength: float = 1.0) -> io.NodeOutput:
        node = "TapTuneLoadAdapter"
        with node_errors(node, "strength"):
            weight = bounded_number(strength, "strength", -10.0, 10.0)
        path = adapter_path(node, "adapter_name", adapter_name)
        with node_errors(node, "adapter_name"), about_file(adapter_name):
            patched = apply_adapter_file(model, path, weight)
        return io.NodeOutput(patched)


@contextlib.contextmanager
def about_file(name: str) -> Iterator[None]:
    """Errors raised inside concern the adapter file ``name`` (a shape that does not fit the MODEL names it too).

    With several loaders in a graph, the file is what tells them apart.
    """
    try:
        yield
    except TapTuneError as exc:
        raise exc.concerning(file=str(name)) from None


def describe_adapter_file(path: Any, name: str, model: Any | None = None) -> str:
    """The text TapTuneAdapterInfo shows: kind, groups, trigger word, size and share of the base."""
    adapter_file = load_adapter_file(path)
    adapter_set = adapter_set_for_model(adapter_file, model)
    count = adapter_set.num_parameters()
    lines = [f"{name}: {adapter_file.kind} adapter, {count:,} parameters"]
    lines += [f"  {line}" for line in adapter_set.describe()]
    base = adapter_file.base
    if model is not None:
        total = unet_parameter_count(model)
        lines.append(f"share of this MODEL's UNet ({total:,} parameters): {100.0 * count / total:.3f} %")
    elif base and isinstance(base.get("family"), str) and base.get("family") in KNOWN_UNET_PARAMETERS:
        total = KNOWN_UNET_PARAMETERS[base["family"]]
        lines.append(f"share of a full {base['family']} UNet ({total:,} parameters): {100.0 * count / total:.3f} %")
    lines.append(f"base: {describe_architecture(base) if base else 'not recorded (only tensor shapes are checked)'}")
    for key in ("trigger_word", "class_word", "steps", "final_loss", "notes"):
        if adapter_file.info.get(key) not in (None, ""):
            lines.append(f"{key}: {str(adapter_file.info[key])[:500]}")
    if model is not None and base:
        lines.append(f"this MODEL: {describe_architecture(model_architecture(model))}")
    return "\n".join(lines)


class TapTuneAdapterInfo(io.ComfyNode):
    """Describe an adapter file: configuration, trigger word, parameter count and share of the base."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TapTuneAdapterInfo",
            display_name="TapTune Adapter Info",
            category=CATEGORY_LOAD,
            description=(
                "Shows what an adapter file holds: its kind and configuration, trigger word, number of "
                "parameters and their share of the base UNet (of the connected MODEL if any)."
            ),
            inputs=[
                io.Combo.Input("adapter_name", options=adapter_names(), tooltip="A file in models/adapters."),
                io.Model.Input(
                    "model", optional=True, tooltip="Optional: measure the share against this MODEL's UNet."
                ),
            ],
            outputs=[io.String.Output(display_name="info", tooltip="The description as text.")],
            is_output_node=True,
        )

    @classmethod
    def fingerprint_inputs(cls, adapter_name: str = "", model: Any = None) -> Any:
        return adapter_file_stamp(adapter_name)

    @classmethod
    def execute(cls, adapter_name: str, model: Any = None) -> io.NodeOutput:
        node = "TapTuneAdapterInfo"
        path = adapter_path(node, "adapter_name", adapter_name)
        with node_errors(node, "adapter_name"), about_file(adapter_name):
            text = describe_adapter_file(path, adapter_name, model)
        return io.NodeOutput(text, ui=ui.PreviewText(text))
