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

#: Per node: (when to use it, what to connect). Spec nodes of a newly registered adapter kind get
#: ``spec_usage`` from their schema; every other node must have an entry (the docs test checks).
USAGE: dict[str, tuple[str, str]] = {
    "TapTuneDreamBoothTrain": (
        "To teach the model a subject or a style from a few images, inside the graph. The first node to try "
        "after loading a checkpoint: the template *dreambooth_tap_attn2o_ffni* is built around it.",
        "model, clip and vae from Load Checkpoint (or TapTune Pocket Model); spec from TapTune Tap Adapter Spec "
        "or TapTune OFT Spec; instance_images from TapTune Load Image Folder (or Load Image); class_images from "
        "TapTune Class Images; settings (optional) from TapTune Training Settings. MODEL goes to a KSampler (sample "
        "with the trained adapter at once), adapter to TapTune Save Adapter, loss to Preview Image, loss_map to "
        "ComfyUI's Plot Loss Graph.",
    ),
    "TapTuneTrainingSettings": (
        "When a run needs more than the trainer shows: numbered adapter files while it trains (save_every, to try "
        "step 400 in another tab), previews, checkpoints and resume, precision and gradient checkpointing for GPU "
        "memory, schedule and optimiser.",
        "Its settings output to the settings input of TapTune DreamBooth Train (or TapTune Export Training Job). "
        "Without it the trainer uses the defaults shown here.",
    ),
    "TapTuneTapSpec": (
        "To train tap-point adapters (the Closer-Look paper). Its defaults are the paper's best recipe "
        "(attn2o -> ffni, mid_dim 60); change din/dout to explore the 20 valid pairs.",
        "Its spec output to the spec input of TapTune DreamBooth Train (or TapTune Export Training Job). Chain it "
        "into another spec node's spec input to train several groups (transformer blocks and ResBlocks) in one file.",
    ),
    "TapTuneOFTSpec": (
        "To train OFT or COFT rotations (the OFT paper): they keep the angles between neurons, so the model "
        "keeps more of what it knew; COFT (coft on) bounds how far it moves.",
        "Its spec output to the spec input of TapTune DreamBooth Train (or TapTune Export Training Job).",
    ),
    "TapTuneClassImages": (
        "For prior preservation: DreamBooth trains on images of the subject's class too, so the class word keeps "
        "its meaning. Generated once by your own model and cached.",
        "model, clip and vae from the same loader as the trainer; its IMAGE output to the trainer's class_images. "
        "Use the trainer's class_prompt here too.",
    ),
    "TapTuneLoadImageFolder": (
        "To load the subject's photos (or captioned image/text pairs) from a folder in ComfyUI's input/.",
        "IMAGE to the trainer's instance_images; with require_captions on, captions to the trainer's "
        "instance_prompt (one caption per image).",
    ),
    "TapTuneSaveAdapter": (
        "To keep what a training run learned as a small file, to share or to load in any other workflow.",
        "adapter from TapTune DreamBooth Train. The file appears at once in TapTune Load Adapter's list.",
    ),
    "TapTuneLoadAdapter": (
        "To sample with a trained adapter (tap or OFT), like a LoRA loader.",
        "model from Load Checkpoint (or from another loader: adapters and LoRAs stack); MODEL to a KSampler.",
    ),
    "TapTuneAdapterInfo": (
        "To see what an adapter file is: kind, settings, trigger word, steps, how many parameters.",
        "Nothing is needed; connect a MODEL to also see whether the file fits it. STRING to a text display "
        "(the node shows its text itself).",
    ),
    "TapTuneExportTrainingJob": (
        "To train outside the server: on another machine, headless, on several GPUs with torchrun, or as a sweep. "
        "The launcher is in the pack's source repository, not in the published pack.",
        "The same inputs as TapTune DreamBooth Train, and ckpt_name: the checkpoint file the MODEL was loaded "
        "from, without LoRAs or adapters applied.",
    ),
    "TapTuneImportOfficialAdapters": (
        "To use adapters trained with the Closer-Look paper's official code in ComfyUI.",
        "Nothing: pick the folder; the converted file appears in TapTune Load Adapter's list.",
    ),
    "TapTuneImportOFT": (
        "To use OFT adapters trained with Hugging Face PEFT (0.16 or newer) or the OFT paper's DreamBooth code.",
        "Nothing is needed; connect a MODEL to check the file against it. The converted file appears in TapTune "
        "Load Adapter's list.",
    ),
    "TapTuneExportOFTAsLoRA": (
        "To use a TapTune OFT adapter in a tool that only loads LoRAs: writes the exact weight differences.",
        "model: the checkpoint the adapter was trained on. Load the written file with LoraLoaderModelOnly.",
    ),
    "TapTuneImageGrid": (
        "To compare images side by side with labels (base vs adapted, one cell per setting).",
        "images: an image batch (ImageBatch of several VAE Decode outputs); IMAGE to Save Image or Preview Image.",
    ),
    "TapTunePocketModel": (
        "To try everything on a CPU in minutes: a small trained model of coloured shapes at 64x64 that ships "
        "with the pack (captions like `a red star on a blue background`).",
        "Use it where Load Checkpoint would be: MODEL, CLIP and VAE to the trainer, the samplers and CLIP Text "
        "Encode. Sample at 64x64 (EmptyLatentImage), euler, 20 steps, cfg 5.",
    ),
}


def spec_usage(schema: Any) -> tuple[str, str] | None:
    """The usage of a spec node of an adapter kind the pack does not describe by hand (None: not a spec node)."""
    if not any(o.io_type == "TAPTUNE_SPEC" for o in schema.outputs):
        return None
    return (
        f"To train adapters of this kind ({schema.display_name}).",
        "Its spec output to the spec input of TapTune DreamBooth Train (or TapTune Export Training Job).",
    )


def render(node_cls: Any) -> str:
    """The help page of one node class, in Markdown."""
    schema = node_cls.GET_SCHEMA()
    spec = node_cls.INPUT_TYPES()
    lines = [f"# {schema.display_name}", "", f"`{schema.node_id}` in *{schema.category}*", "", schema.description, ""]
    usage = USAGE.get(schema.node_id) or spec_usage(schema)
    if usage is not None:
        lines += ["## When to use it", "", usage[0], "", "## What to connect", "", usage[1], ""]
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
