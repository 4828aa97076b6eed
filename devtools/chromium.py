"""Debian's Chromium under Playwright, as the browser test and the thumbnail tool use it.

No browser is downloaded: Playwright is pointed at the ``chromium`` that ``make test``
installs through apt (``devtools/browser.sh``).
"""

from __future__ import annotations

import shutil
import time

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]
PAGE_READY = "() => window.app && app.graph && window.LiteGraph && app.extensionManager"


def chromium() -> str:
    """The path of Debian's chromium; fails with the reason when it is not installed."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "Debian's chromium is not installed: `make test` installs it (apt-get install chromium) as root"
    return found


def close_dialogs(page) -> None:
    """Shut the templates browser that opens on a first visit (its close button; Escape does not)."""
    dialog = page.locator(".p-dialog.global-dialog")
    try:
        dialog.wait_for(state="visible", timeout=4000)
    except Exception:
        return
    dialog.locator("button:has(i.pi-times)").first.click()
    dialog.wait_for(state="hidden", timeout=10_000)


def fit_graph_for_a_picture(page) -> None:
    """Readable at fit-to-view zoom: no low-detail drawing, no minimap, no banner, the graph fitted."""
    page.evaluate(
        """async () => {
            await app.extensionManager.setting.set('LiteGraph.Canvas.MinFontSizeForLOD', 0);
            await app.extensionManager.setting.set('Comfy.Minimap.Visible', false);
        }"""
    )
    banner = page.locator("div.h-10:has-text('Introducing Nodes 2.0') > button")
    if banner.count():
        banner.first.click()
    page.evaluate("() => app.extensionManager.command.execute('Comfy.Canvas.FitView')")
    viewport = page.viewport_size or {"width": 1600, "height": 1000}
    page.mouse.move(viewport["width"] - 10, viewport["height"] // 2)
    time.sleep(1.0)
