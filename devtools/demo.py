"""``make demo``: a ComfyUI base folder with this pack, demo files and the example workflows, then the server.

Nothing is downloaded. The examples' CPU variants run on the pack's **pocket model** (a small
trained text-to-image model of coloured shapes, shipped in ``pocket/weights/``): the training
examples learn a shipped subject, a striped star, in a few minutes, and show the base and the
adapted model side by side. The demo's adapters are trained on it while the demo is prepared
(a minute or two, once); its LoRA is random. A real checkpoint goes in
``.demo/models/checkpoints/``; the GPU-sized originals (SD 1.5) are in the Templates browser.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from devtools.comfy_host import COMFY_DIR, ROOT, import_pack, init_nodes, prepare_comfy
from devtools.workflows import EXAMPLES, POCKET, write_workflows

DEMO = ROOT / ".demo"
PACK_FOLDER = "ComfyUI-TapTune"
#: A node-less custom-node folder whose ``example_workflows/`` puts the CPU variants in the Templates browser.
CPU_TEMPLATES_FOLDER = "TapTune-CPU-examples"
CPU_TEMPLATES_INIT = (
    '"""make demo: the TapTune examples on the pocket model, for the Templates browser (no nodes of its own)."""\n'
    "\n"
    "NODE_CLASS_MAPPINGS: dict = {}\n"
)


def link_pack(base: Path) -> None:
    """``custom_nodes/ComfyUI-TapTune`` -> this repository."""
    target = base / "custom_nodes" / PACK_FOLDER
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.exists():
        if target.resolve() == ROOT:
            return
        target.unlink() if target.is_symlink() else shutil.rmtree(target)
    target.symlink_to(ROOT, target_is_directory=True)


def demo_inputs(base: Path) -> None:
    """The pocket variants' files: the subject's photos, adapters trained on them, a random LoRA."""
    from devtools.demo_files import write_pocket_demo_files

    import_pack()
    for name in write_pocket_demo_files(base):
        print(f"[demo] made {name}", flush=True)


def copy_workflows(base: Path) -> list[Path]:
    """The CPU-sized variants of the examples, where the editor's Workflows sidebar finds them.

    The committed examples (GPU values) are in the Templates browser, which ComfyUI fills from
    the pack's ``example_workflows/``; these are the same graphs made from the same source on
    the pocket model with its files and sizes, so they run as they open.
    """
    folder = base / "user" / "default" / "workflows"
    for old in folder.glob("TapTune - *.json"):  # earlier demos' copies
        old.unlink()
    init_nodes()  # the UI layout needs every node's definition
    return write_workflows(folder, POCKET, "TapTune CPU - {stem}.json")


def cpu_templates(base: Path) -> list[Path]:
    """The CPU variants, each with its thumbnail, as a template folder ComfyUI lists (Templates browser).

    ComfyUI serves the ``example_workflows/`` of every loaded custom-node folder as templates; this
    folder holds no nodes, only the pocket model's variants under the examples' own names.
    """
    folder = base / "custom_nodes" / CPU_TEMPLATES_FOLDER
    templates = folder / "example_workflows"
    templates.mkdir(parents=True, exist_ok=True)
    (folder / "__init__.py").write_text(CPU_TEMPLATES_INIT)
    written = write_workflows(templates, POCKET)
    for path in written:
        thumbnail = EXAMPLES / f"{path.stem}.jpg"
        if thumbnail.is_file():  # the committed thumbnails are outputs of exactly these graphs
            shutil.copyfile(thumbnail, path.with_suffix(".jpg"))
    return written


def prepare(base: Path, cpu: bool) -> None:
    """Everything `make demo` puts in ``base`` before it starts the server (kept between demos)."""
    prepare_comfy(base, cpu=cpu)
    link_pack(base)
    print("[demo] preparing the pocket model's demo files (the first time: training two adapters, 1-2 minutes)")
    demo_inputs(base)
    copy_workflows(base)
    cpu_templates(base)


def server_command(base: Path, port: int, cpu: bool) -> list[str]:
    """The command line of the demo's ComfyUI server over ``base`` (what `make demo` runs)."""
    return [
        sys.executable,
        str(COMFY_DIR / "main.py"),
        "--listen",
        "127.0.0.1",
        "--port",
        str(port),
        "--base-directory",
        str(base),
        "--database-url",
        f"sqlite:///{base / 'user' / 'comfyui.db'}",
    ] + (["--cpu"] if cpu else [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8188")))
    parser.add_argument("--prepare-only", action="store_true", help="build .demo/ but do not start the server")
    parser.add_argument("--base", type=Path, default=DEMO, help="the demo's base folder (default .demo/)")
    args = parser.parse_args()
    import torch

    cpu = not torch.cuda.is_available()
    base = args.base.resolve()
    prepare(base, cpu)
    command = server_command(base, args.port, cpu)
    print(f"[demo] base folder: {base}")
    print(f"[demo] in the browser: Templates -> {CPU_TEMPLATES_FOLDER} -> dreambooth_tap_attn2o_ffni -> Run")
    print("[demo]   (the same graphs are in the Workflows sidebar (W) as 'TapTune CPU - ...').")
    print("[demo]   It trains the pocket model on a striped star it has never seen ('a sks star', 5 photos in")
    print("[demo]   .demo/input/pocket_striped_star) for 150 steps, then saves a grid: base | adapted, prompt")
    print("[demo]   'a sks star on a yellow background' (a background no photo has). A few minutes on 2 cores.")
    print("[demo]   The grid appears in the Save Image node and in .demo/output/taptune/.")
    print("[demo] every 'TapTune CPU - ...' workflow runs as it opens (pocket model, 64x64 pictures);")
    print("[demo]   TapTune Pocket Model draws captions like 'a red star on a blue background' in any graph.")
    print("[demo] a real checkpoint goes in .demo/models/checkpoints/ (pick it in a Load Checkpoint node).")
    print(f"[demo] the GPU-sized originals: Templates -> ComfyUI-TapTune (also in {EXAMPLES.relative_to(ROOT)}/)")
    if args.prepare_only:
        print("[demo] prepared; start with: " + " ".join(command))
        return
    print(f"[demo] starting ComfyUI at http://127.0.0.1:{args.port}", flush=True)
    os.execv(sys.executable, command)


if __name__ == "__main__":
    main()
