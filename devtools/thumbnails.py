"""``python -m devtools.thumbnails``: the ``.jpg`` beside each example workflow, drawn by the real front end.

Starts ComfyUI with this pack on an empty base folder, opens every example in Debian's Chromium
(Playwright, no browser download), fits the graph to the view and saves a screenshot as the
thumbnail the Templates browser shows. Run it after changing the examples
(``python -m devtools.workflows``); ``tests/host/test_examples.py`` checks that each has one.
"""

from __future__ import annotations

import io
import json
import tempfile
import time
from pathlib import Path

from PIL import Image

from devtools.chromium import CHROMIUM_ARGS, PAGE_READY, chromium, close_dialogs, fit_graph_for_a_picture
from devtools.comfy_host import ROOT
from devtools.workflows import EXAMPLES

THUMBNAIL_WIDTH = 640
VIEWPORT = {"width": 1600, "height": 1000}


def screenshot_workflow(page, workflow: dict, name: str) -> bytes:
    """A PNG of ``workflow`` loaded in ``page`` and fitted to the view."""
    page.evaluate("([wf, name]) => app.loadGraphData(wf, true, true, name)", [workflow, name])
    time.sleep(1.0)
    fit_graph_for_a_picture(page)
    # The canvas only: without the side bar and the tab strip.
    return page.screenshot(clip={"x": 64, "y": 44, "width": VIEWPORT["width"] - 64, "height": VIEWPORT["height"] - 44})


def as_thumbnail(png: bytes) -> bytes:
    """``png`` scaled to :data:`THUMBNAIL_WIDTH` as a JPEG (what the Templates browser loads)."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    height = round(image.height * THUMBNAIL_WIDTH / image.width)
    out = io.BytesIO()
    image.resize((THUMBNAIL_WIDTH, height), Image.LANCZOS).save(out, "JPEG", quality=82, optimize=True)
    return out.getvalue()


def main() -> None:
    from playwright.sync_api import sync_playwright

    from tests.host.live_server import running_server

    with tempfile.TemporaryDirectory(prefix="taptune-thumbnails-") as tmp:
        base = Path(tmp)
        (base / "custom_nodes").mkdir()
        (base / "custom_nodes" / "ComfyUI-TapTune").symlink_to(ROOT, target_is_directory=True)
        with running_server(base) as (port, _process), sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS, headless=True)
            page = browser.new_context(viewport=VIEWPORT).new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_function(PAGE_READY, timeout=120_000)
            close_dialogs(page)
            for path in sorted(EXAMPLES.glob("*.json")):
                png = screenshot_workflow(page, json.loads(path.read_text()), path.stem)
                path.with_suffix(".jpg").write_bytes(as_thumbnail(png))
                print(f"wrote {path.with_suffix('.jpg').relative_to(ROOT)}")
            browser.close()


if __name__ == "__main__":
    main()
