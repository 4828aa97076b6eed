"""``python -m devtools.thumbnails``: the ``.jpg`` beside each example workflow, an image the example makes.

The Templates browser shows each example's ``.jpg``; ComfyUI's own templates show an output
there, so ours do too. Each thumbnail is what the example's CPU variant (the graph ``make demo``
puts in the Workflows sidebar: the same graph on the pack's pocket model) saves when it runs on
a real server: the base/adapted grid of the training examples, the tap-pair grid, the sampled
image of the others. The JPEG's comment records the example and a digest of the prompt that
made it, so ``tests/host/test_examples.py`` can tell when a thumbnail no longer comes from the
current graph. Run it after changing the examples (``python -m devtools.workflows``).
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path
from typing import Any

from PIL import Image

from devtools.comfy_host import ROOT
from devtools.workflows import EXAMPLES, POCKET, example_prompts

THUMBNAIL_WIDTH = 640
#: The base folder of the server that makes them (under .host/, kept between runs).
BASE = ROOT / ".host" / "thumbnails-base"
#: The JPEG comment of a thumbnail: ``taptune-thumbnail <stem> <prompt digest>``.
COMMENT_PREFIX = "taptune-thumbnail"


def prompt_digest(prompt: dict[str, Any]) -> str:
    """A short digest of an API prompt (sorted JSON), to tie a thumbnail to the graph that made it."""
    return hashlib.sha256(json.dumps(prompt, sort_keys=True).encode()).hexdigest()[:16]


def thumbnail_comment(stem: str) -> str:
    """The comment the thumbnail of example ``stem`` carries when it comes from the current CPU variant."""
    return f"{COMMENT_PREFIX} {stem} {prompt_digest(example_prompts(POCKET)[stem])}"


def read_comment(path: Path) -> str:
    """The JPEG comment of ``path`` ('' when it has none)."""
    with Image.open(path) as image:
        comment = image.info.get("comment", b"")
    return comment.decode("utf-8", "replace") if isinstance(comment, bytes) else str(comment)


def as_thumbnail(images: list[Image.Image], comment: str) -> bytes:
    """``images`` side by side, scaled to :data:`THUMBNAIL_WIDTH` (sharp pixels), as a commented JPEG."""
    height = max(i.height for i in images)
    row = Image.new("RGB", (sum(i.width for i in images), height), "white")
    x = 0
    for image in images:
        row.paste(image.convert("RGB"), (x, 0))
        x += image.width
    scaled_height = round(row.height * THUMBNAIL_WIDTH / row.width)
    # Nearest neighbour first (the pocket model's 64x64 pixels stay crisp), then a gentle filter to width.
    factor = max(1, THUMBNAIL_WIDTH // row.width)
    row = row.resize((row.width * factor, row.height * factor), Image.NEAREST)
    out = io.BytesIO()
    row.resize((THUMBNAIL_WIDTH, scaled_height), Image.LANCZOS).save(
        out, "JPEG", quality=88, optimize=True, comment=comment.encode()
    )
    return out.getvalue()


def saved_images(base: Path, prompt: dict[str, Any], outputs: dict[str, Any]) -> list[Image.Image]:
    """The images the prompt's SaveImage nodes wrote (the example's results; previews such as the loss left out)."""
    found = []
    for node_id, output in sorted(outputs.items()):
        if prompt.get(node_id, {}).get("class_type") != "SaveImage":
            continue
        for entry in output.get("images", []):
            with Image.open(base / entry["type"] / entry["subfolder"] / entry["filename"]) as image:
                found.append(image.copy())
    return found


def main() -> None:
    from devtools.comfy_host import init_nodes, prepare_comfy
    from devtools.demo_files import write_pocket_demo_files
    from tests.host.live_server import post_prompt, running_server, wait_for

    # Kept between runs, like .demo/: the demo's adapters are trained once; outputs start empty.
    base = BASE
    shutil.rmtree(base / "output", ignore_errors=True)
    (base / "models" / "adapters").mkdir(parents=True, exist_ok=True)
    pack = base / "custom_nodes" / "ComfyUI-TapTune"
    if not pack.is_symlink():
        pack.parent.mkdir(parents=True, exist_ok=True)
        pack.symlink_to(ROOT, target_is_directory=True)
    prepare_comfy(base, cpu=True)  # the demo files are made in this process, as `make demo` makes them
    init_nodes()  # the examples are built from the registered node definitions
    write_pocket_demo_files(base)
    with running_server(base) as (port, _process):
        for stem, prompt in example_prompts(POCKET).items():
            queued = post_prompt(port, prompt)
            if "prompt_id" not in queued:
                raise SystemExit(f"{stem}: the server refused the prompt: {queued}")
            done = wait_for(port, queued["prompt_id"], limit=1800)
            if done["status"]["status_str"] != "success":
                raise SystemExit(f"{stem}: {done['status']['messages']}")
            images = saved_images(base, prompt, done["outputs"])
            path = EXAMPLES / f"{stem}.jpg"
            path.write_bytes(as_thumbnail(images, thumbnail_comment(stem)))
            print(f"wrote {path.relative_to(ROOT)} ({len(images)} image(s))", flush=True)


if __name__ == "__main__":
    main()
