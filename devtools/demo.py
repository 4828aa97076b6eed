"""``make demo``: a ComfyUI base folder with this pack, demo files and the example workflows, then the server.

Everything is generated here (nothing is downloaded): the checkpoint has the exact SD 1.x
layout but **random weights** (it samples noise-like images; it exists so every node can
be run), and the demo adapters are random too. To use a real model, put it in
``.demo/models/checkpoints/`` and pick it in the loader node.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from devtools.comfy_host import COMFY_DIR, ROOT, import_pack, init_nodes, prepare_comfy
from devtools.workflows import CPU, DEMO_CHECKPOINT, EXAMPLES, write_workflows

DEMO = ROOT / ".demo"
PACK_FOLDER = "ComfyUI-TapTune"


def link_pack(base: Path) -> None:
    """``custom_nodes/ComfyUI-TapTune`` -> this repository."""
    target = base / "custom_nodes" / PACK_FOLDER
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.exists():
        if target.resolve() == ROOT:
            return
        target.unlink() if target.is_symlink() else shutil.rmtree(target)
    target.symlink_to(ROOT, target_is_directory=True)


def demo_checkpoint(base: Path) -> Path:
    """The random SD 1.x-layout checkpoint (generated once)."""
    from devtools.checkpoints import write_sd15_checkpoint

    path = base / "models" / "checkpoints" / DEMO_CHECKPOINT
    if not path.exists():
        print(f"[demo] generating {path.name} (random weights, SD 1.x layout)")
        write_sd15_checkpoint(path, seed=1234)
    return path


def demo_inputs(base: Path) -> None:
    """Random demo adapters and LoRA for the demo checkpoint, and a captioned image folder for training."""
    from devtools.checkpoints import SD15_SMALL, build_unet
    from devtools.demo_files import DEMO_LORA, write_demo_files

    import_pack()
    import taptune.adapter_core as core

    if not (base / "models" / "loras" / DEMO_LORA).exists():
        write_demo_files(
            base, build_unet(SD15_SMALL, seed=1234), core.architecture_signature("SD15", SD15_SMALL), image_size=256
        )


def copy_workflows(base: Path) -> list[Path]:
    """The CPU-sized variants of the examples, where the editor's Workflows sidebar finds them.

    The committed examples (GPU values) are in the Templates browser, which ComfyUI fills from
    the pack's ``example_workflows/``; these are the same graphs made from the same source with
    the demo checkpoint's files and CPU sizes, so they run as they open.
    """
    folder = base / "user" / "default" / "workflows"
    for old in folder.glob("TapTune - *.json"):  # earlier demos' copies
        old.unlink()
    init_nodes()  # the UI layout needs every node's definition
    return write_workflows(folder, CPU, "TapTune CPU - {stem}.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8188")))
    parser.add_argument("--prepare-only", action="store_true", help="build .demo/ but do not start the server")
    args = parser.parse_args()
    import torch

    cpu = not torch.cuda.is_available()
    prepare_comfy(DEMO, cpu=cpu)
    link_pack(DEMO)
    demo_checkpoint(DEMO)
    demo_inputs(DEMO)
    copy_workflows(DEMO)
    command = [
        sys.executable,
        str(COMFY_DIR / "main.py"),
        "--listen",
        "127.0.0.1",
        "--port",
        str(args.port),
        "--base-directory",
        str(DEMO),
        "--database-url",
        f"sqlite:///{DEMO / 'user' / 'comfyui.db'}",
    ] + (["--cpu"] if cpu else [])
    print(f"[demo] base folder: {DEMO}")
    print(f"[demo] the checkpoint {DEMO_CHECKPOINT} has RANDOM weights: images will be noise-like.")
    print("[demo] to use a real model, copy it into .demo/models/checkpoints/ and pick it in the loader.")
    print("[demo] in the browser: Workflows sidebar (W) -> 'TapTune CPU - dreambooth_tap_attn2o_ffni' -> Run;")
    print("[demo]   every example runs as it opens there (CPU sizes, demo files); about 5 minutes for a training one.")
    print(f"[demo] the GPU-sized originals: Templates -> ComfyUI-TapTune (also in {EXAMPLES.relative_to(ROOT)}/)")
    if args.prepare_only:
        print("[demo] prepared; start with: " + " ".join(command))
        return
    print(f"[demo] starting ComfyUI at http://127.0.0.1:{args.port}", flush=True)
    os.execv(sys.executable, command)


if __name__ == "__main__":
    main()
