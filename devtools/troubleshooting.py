"""``python -m devtools.troubleshooting``: docs/troubleshooting.md, every message the pack raises, with what to do.

The list is read from the source (every construction of an error of the pack's family in
``adapter_core/``, ``patching/``, ``training/`` and ``nodes/``), so a new message cannot be
left out: ``tests/packaging/test_troubleshooting.py`` checks that the committed page is
current and that every error class has advice. Parts of a message computed at run time (file
names, values) show as ``…``.

Besides the pack's own family the page lists the plain Python errors (``ValueError`` and the
like) that shipped code raises, ComfyUI's own validation messages for the pack's inputs (the
test checks that each quoted message is in the running ComfyUI's ``execution.py``), and what to
change when a GPU runs out of memory.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

from adapter_core.tap.tap_points import PAPER_PAIRS

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "troubleshooting.md"
ROOMS = ("adapter_core", "patching", "training", "nodes")
#: Rooms whose plain (non-family) errors are listed too: every shipped room with code.
PLAIN_ROOMS = (*ROOMS, "pocket")
FAMILY_ROOT = "TapTuneError"
#: Python's own exception classes shipped code raises with a message.
PLAIN_ERRORS = (
    "ValueError",
    "RuntimeError",
    "TypeError",
    "KeyError",
    "IndexError",
    "OSError",
    "FileNotFoundError",
    "NotImplementedError",
)

#: ComfyUI's own validation messages (its ``execution.py``) that the pack's inputs can cause, with what to do.
COMFY_VALIDATION: tuple[tuple[str, str], ...] = (
    (
        "Value not in list",
        "A list input (adapter_name, folder, ckpt_name, resume_from, a spec's din/dout, a combo) names something "
        "the node does not offer now: a file was moved or deleted, or the workflow was saved on another machine. "
        "Put the file into its folder (`models/adapters/`, `input/<folder>/`), press R in the editor to refresh "
        "the lists, and pick the value again.",
    ),
    (
        "smaller than min of",
        "A number is below the widget's minimum (for example steps 0, or a resolution under 64). The tooltip "
        "gives the range; in an API prompt, send a value inside it.",
    ),
    (
        "bigger than max of",
        "A number is above the widget's maximum (for example batch_size over 64). Lower it to the tooltip's range.",
    ),
    (
        "Required input is missing",
        "A required socket is not connected: the trainer needs model, clip, vae, spec and instance_images; "
        "TapTune Save Adapter needs adapter. Connect it (the help page of the node lists what to connect).",
    ),
    (
        "Return type mismatch between linked nodes",
        "A link joins sockets of different types, for example a TAPTUNE_SPEC into an IMAGE input. TAPTUNE_SPEC "
        "comes from the spec nodes and goes to the trainer's spec; TAPTUNE_ADAPTER comes from the trainer and goes "
        "to TapTune Save Adapter.",
    ),
    (
        "Failed to convert an input value to a",
        "An API prompt sent text where the node wants a number or a boolean. Send the widget's type.",
    ),
    (
        "does not exist.",
        "The prompt names a node class ComfyUI has not loaded: the pack is not installed in `custom_nodes/`, or "
        "it failed to import (the console at startup says why: `IMPORT FAILED`), or the workflow is from a newer "
        "version of the pack.",
    ),
    (
        "Prompt outputs failed validation",
        "The summary above the messages of each node; look at the node messages under it.",
    ),
)

#: What to change when training or sampling runs out of GPU memory (ComfyUI shows its own OOM message).
OUT_OF_MEMORY = (
    "ComfyUI reports it as `torch.OutOfMemoryError` (or `CUDA out of memory`) with its own tip, and unloads "
    "every model. What uses memory in training, and what to change, roughly in order of effect:",
    "",
    "* **batch_size**: 1 (the papers' recipes use 1). Use `gradient_accumulation` for a larger effective batch: "
    "it costs time, not memory.",
    "* **resolution**: 512 for SD 1.x, 768 for SD 2.x 768 models, 1024 for SDXL; each halving of the side "
    "quarters the activations. Class images at the same size.",
    "* **gradient_checkpointing**: on. Block activations are recomputed in the backward pass: much less memory, "
    "about 30 % slower.",
    "* **precision**: `auto` (bf16 where the GPU has it, else fp16 with loss scaling) or `bf16`/`fp16`; `fp32` "
    "doubles the activations. The adapter's own weights stay fp32 either way.",
    "* **the adapter**: OFT on every attention layer trains more parameters than the tap recipe; a smaller "
    "`mid_dim`, fewer blocks (`blocks`), or OFT targets `attention` only keep the optimiser state small.",
    "* **other models**: start ComfyUI with `--lowvram`, or close other programs using the GPU; previews "
    "(`validation_every`) sample with the same model and cost little.",
)

#: What to do, per error class; the headings users see are the first element.
ADVICE: dict[str, tuple[str, str]] = {
    "NodeInputError": (
        "A node input is not what the node accepts",
        "The message names the node and the input. Pick a value from the widget's list, or the range its "
        "tooltip gives; file and folder inputs only accept names inside ComfyUI's folders (`models/adapters/`, "
        "`input/`, `output/taptune/`). An API prompt may send anything: send what the node's help page lists.",
    ),
    "ConfigError": (
        "A setting the method does not allow",
        "A tap-point pair, an OFT block count, a target or a number outside its range. Use the spec nodes' "
        "defaults (the papers' recipes) and change one value at a time; the node's help page lists every "
        "allowed value.",
    ),
    "TapConfigError": (
        "A tap-adapter setting the paper's design space does not allow",
        "Only 20 (din, dout) pairs exist (docs/specification.md §1.3): the output position must come after the "
        "input position inside one block. `attn2o` -> `ffni` is the paper's recipe. The valid pairs: "
        + ", ".join(f"{din} -> {dout}" for din, dout in PAPER_PAIRS)
        + ".",
    ),
    "OFTConfigError": (
        "An OFT setting that does not fit",
        "r must divide every targeted layer's width (4 fits SD 1.x/2.x/SDXL attention layers); eps must be "
        "positive (COFT); block_size, when set, must divide the width.",
    ),
    "LoRAConfigError": (
        "A LoRA setting that does not fit",
        "rank must be a whole number from 1 up (8-32 is usual); alpha a finite number (the change is scaled by "
        "alpha / rank; alpha = rank keeps the scale 1); targets is attention, attention_ff or all_linear, or a list "
        "of linear-layer paths inside transformer blocks, each named once.",
    ),
    "AdapterFileError": (
        "The file is not a readable adapter",
        "It is damaged, truncated, not a TapTune (`taptune/1`) file, or larger than the limits that protect "
        "the server. Re-download or re-save it; files of the papers' official code and of PEFT go through "
        "the import nodes first (TapTune Import Official Adapters, TapTune Import OFT).",
    ),
    "ArchitectureMismatchError": (
        "The adapter was made for another model",
        "Load it on the checkpoint family it was trained on (the message names both); TapTune Adapter Info "
        "shows what a file was made for. An SD 1.5 adapter does not fit SDXL or SD 2.x, and vice versa.",
    ),
    "UnsupportedModelError": (
        "The MODEL is not one the pack can adapt",
        "The pack adapts UNet models of the SD 1.x, SD 2.x and SDXL kind. Flux, SD3, video and other "
        "transformer-only models are not supported.",
    ),
    "UnsupportedOperationError": (
        "The adapter kind cannot do this",
        "For example, tap adapters change activations, not weights, so they cannot be exported as a LoRA; "
        "only OFT files can.",
    ),
    "TrainingInputError": (
        "The training inputs do not fit together",
        "Found before any step runs: no instance images, prompts that do not match the images, class images "
        "missing while prior_loss_weight > 0, a resolution the model cannot use, or a resume checkpoint made "
        "with other inputs. Fix the named input and queue again; nothing was changed.",
    ),
    "TrainingDivergedError": (
        "Training diverged (NaN or infinite loss)",
        "Lower learning_rate (0 = the paper's), use precision `fp32` or `bf16` instead of `fp16`, and keep "
        "gradient_accumulation at 1 while testing. Nothing of the run was saved; the base model is unchanged.",
    ),
    "CheckpointWriteError": (
        "A training checkpoint could not be written",
        "The disk is full or `output/taptune/checkpoints/` is not writable. Free space or set checkpoint_every "
        "to 0; the run stopped, and earlier checkpoints are intact.",
    ),
    "JobFileError": (
        "A training job file is not one the headless runner accepts",
        "The message names the field of `job.json` at fault (docs/distributed.md has the format "
        "`taptune-job/1`). Export the job again with TapTune Export Training Job, or fix the field; paths in a "
        "job are relative to its folder except the checkpoint, the adapter and the checkpoint folder.",
    ),
    "FileReadError": (
        "A named file is not a regular file, or is too large",
        "Job files, plans, captions and pictures are read only as regular files (never a pipe, a device or a "
        "folder) and only up to their stated size (docs/robustness.md lists the budgets). Name the file meant, "
        "or split a large one.",
    ),
    "ImageFolderError": (
        "A folder of training images breaks one of its rules",
        "The message names the file. Replace or remove a damaged picture; resize one over 64 Mpx; keep a folder "
        "within 10,000 pictures, 2^28 pixels and 2 GiB in all (use fewer or smaller pictures); copy files into "
        "the folder instead of linking to files outside it; captions are UTF-8 `.txt` files under 64 KiB.",
    ),
    "PocketModelError": (
        "The pocket model's weights file is missing or damaged",
        "TapTune Pocket Model loads `pocket/weights/pocket_model.safetensors` from the pack's own folder. "
        "Reinstall the pack (ComfyUI Manager, or `git pull` in `custom_nodes/`), or train the file again on "
        "a CPU from a clone of the repository, in two stages (about an hour on 2 cores): "
        "`python -m devtools.train_pocket --out first.safetensors`, then `python -m devtools.train_pocket "
        "--continue-from first.safetensors --steps 2000 --lr 4e-4 --warmup 50` (docs/pocket_world.md).",
    ),
    "TapTuneError": (
        "Other problems",
        "The message says what was found and what was expected.",
    ),
}


@dataclass(frozen=True, order=True)
class RaisedMessage:
    """One message the pack can raise: its class, text (``…`` for run-time parts), input and module."""

    error: str
    text: str
    input_name: str
    module: str


def _python_files() -> list[Path]:
    return sorted(p for room in ROOMS for p in (ROOT / room).rglob("*.py"))


def family_classes(files: list[Path]) -> set[str]:
    """Names of every class deriving (directly or not) from ``TapTuneError`` in ``files``."""
    bases: dict[str, set[str]] = {}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases[node.name] = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases}
    family = {FAMILY_ROOT}
    while True:
        grown = family | {name for name, parents in bases.items() if parents & family}
        if grown == family:
            return family
        family = grown


def _text(node: ast.expr | None) -> str:
    """A message expression as text, run-time parts as ``…``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(_text(part) if isinstance(part, ast.Constant) else "…" for part in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _text(node.left) + _text(node.right)
    return "…"


def _arguments(call: ast.Call, error: str) -> tuple[ast.expr | None, ast.expr | None]:
    """(message, input name) expressions of an error construction."""
    keywords = {k.arg: k.value for k in call.keywords}
    positional = list(call.args)
    if error == "NodeInputError":  # (node, input_name, message, file=None)
        return (positional[2] if len(positional) > 2 else keywords.get("message")), (
            positional[1] if len(positional) > 1 else keywords.get("input_name")
        )
    if error == "TrainingInputError":  # (input_name, message)
        return (positional[1] if len(positional) > 1 else keywords.get("message")), (
            positional[0] if positional else keywords.get("input_name")
        )
    return (positional[0] if positional else keywords.get("message")), keywords.get("input_name")


def raised_messages() -> list[RaisedMessage]:
    """Every message constructed for an error of the pack's family, with literal text (sorted)."""
    files = _python_files()
    family = family_classes(files)
    found: set[RaisedMessage] = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            if name not in family:
                continue
            message, input_name = _arguments(node, name)
            text = " ".join(_text(message).split())
            if not any(c.isalpha() for c in text):
                continue  # a message passed on from elsewhere: listed where it is written
            found.add(
                RaisedMessage(
                    name, text, _text(input_name) if input_name is not None else "", str(path.relative_to(ROOT))
                )
            )
    return sorted(found)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def plain_messages() -> list[RaisedMessage]:
    """Every message of a plain Python error (``PLAIN_ERRORS``) raised in shipped code (sorted)."""
    found: set[RaisedMessage] = set()
    for path in sorted(p for room in PLAIN_ROOMS for p in (ROOT / room).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Raise) or not isinstance(node.exc, ast.Call):
                continue
            func = node.exc.func
            name = func.id if isinstance(func, ast.Name) else ""
            if name not in PLAIN_ERRORS:
                continue
            text = " ".join(_text(node.exc.args[0] if node.exc.args else None).split())
            found.add(
                RaisedMessage(name, text if any(c.isalpha() for c in text) else "…", "", str(path.relative_to(ROOT)))
            )
    return sorted(found)


def render() -> str:
    """The troubleshooting page."""
    messages = raised_messages()
    lines = [
        "# Troubleshooting",
        "",
        "<!-- Generated by `python -m devtools.troubleshooting` from the source; do not edit by hand. -->",
        "",
        "Every error the pack reports appears in ComfyUI as the failed node's message, in this form:",
        "",
        "```",
        "TapTuneLoadAdapter: input 'adapter_name': my_dog.safetensors: was made for SDXL (…) but the MODEL is SD15 (…)",
        "```",
        "",
        "node, input, file (where one is concerned), then what was found and what was expected. Look the part",
        "after the input up below (`…` stands for what the message fills in at run time). ComfyUI keeps",
        "serving after any of these; the MODEL you connected is never changed by a failed node.",
        "",
        f"{len(messages)} messages, grouped by kind:",
        "",
    ]
    for error, (heading, advice) in ADVICE.items():
        group = [m for m in messages if m.error == error]
        if not group:
            continue
        lines += [f"## {heading}", "", f"`{error}`. **What to do:** {advice}", "", "| message | input | raised in |"]
        lines += ["|---|---|---|"]
        for m in group:
            text = m.text.replace("|", "\\|")
            lines.append(f"| {text} | {m.input_name.replace('|', '/') or '(the node’s main input)'} | `{m.module}` |")
        lines.append("")
    plain = plain_messages()
    lines += [
        "## Plain errors",
        "",
        "Checks deep inside the pack that raise Python's own errors. Most mean a file is damaged or is not what "
        "its name says (a pocket model or judge file, a training checkpoint, an optimiser state): reinstall the "
        "pack or pick another checkpoint. ComfyUI shows them with the error class and the message; when one "
        "appears for ordinary inputs, it is a bug: please report it with the message.",
        "",
        "| error | message | raised in |",
        "|---|---|---|",
    ]
    lines += [f"| `{m.error}` | {_cell(m.text)} | `{m.module}` |" for m in plain]
    lines += [
        "",
        "## ComfyUI's own validation messages",
        "",
        "ComfyUI checks every input against the node's definition before anything runs, and shows these under the "
        "node (red outline) with `Prompt outputs failed validation`:",
        "",
        "| message (ComfyUI's) | what to do |",
        "|---|---|",
    ]
    lines += [f"| {message} | {advice} |" for message, advice in COMFY_VALIDATION]
    lines += ["", "## Out of memory on a GPU", "", *OUT_OF_MEMORY, ""]
    return "\n".join(lines)


if __name__ == "__main__":
    PAGE.write_text(render())
    print(f"wrote {PAGE.relative_to(ROOT)}")
