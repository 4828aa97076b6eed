"""A newcomer's first hour, in Debian's Chromium, against the server ``make demo`` starts (issue 20 §6).

The server is ``python -m devtools.demo`` itself (what ``make demo`` runs), over its own base
folder under ``.host/`` (kept between runs like ``.demo/``: the demo's adapters are trained once).
In one page, as a person would:

1. open the Templates browser, pick the CPU variant of the tap-recipe example, press Run;
2. see the trainer's progress advance on the node, a preview image on it during training, and
   the final base | adapted grid in the Save Image node; the time from opening the page to that
   first trained image is printed and recorded in ``.host/artifacts/newcomer.json``;
3. press Run again with another seed, see a numbered mid-run adapter listed while it trains,
   press Cancel and see the prompt stop with the trainer's message (a resumable checkpoint and a
   loadable adapter of the last completed step, both on disk);
4. load that mid-run adapter in a second graph (the CPU *generate_with_adapter* template) and
   get an image.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

from devtools.chromium import CHROMIUM_ARGS, PAGE_READY, chromium, close_dialogs
from devtools.comfy_host import ROOT
from devtools.demo import CPU_TEMPLATES_FOLDER

from .live_server import call, free_port, wait_until_serving

BASE = ROOT / ".host" / "newcomer-demo"
ARTIFACTS = ROOT / ".host" / "artifacts"
TRAINER = "TapTuneDreamBoothTrain"

JS_WATCH = """() => {
  const api = window.comfyAPI.api.api;
  const tt = window.__tt = {progress: [], previews: [], executed: [], interrupted: [], texts: [], errors: []};
  const now = () => performance.now();
  api.addEventListener('progress', e => tt.progress.push({node: String(e.detail.node), value: e.detail.value,
                                                          max: e.detail.max, t: now()}));
  for (const kind of ['b_preview', 'b_preview_with_metadata'])
    api.addEventListener(kind, e => tt.previews.push({t: now()}));
  api.addEventListener('executed', e => tt.executed.push({node: String(e.detail.node), output: e.detail.output, t: now()}));
  api.addEventListener('execution_interrupted', e => tt.interrupted.push(e.detail));
  api.addEventListener('execution_error', e => tt.errors.push(e.detail));
  api.addEventListener('progress_text', e => tt.texts.push(e.detail));
}"""


@pytest.fixture(scope="module")
def demo_server():
    """``python -m devtools.demo`` (make demo's command) on a free port, over its own base folder."""
    BASE.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = BASE / "server.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "devtools.demo", "--base", str(BASE), "--port", str(port)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            wait_until_serving(port, process, log_path, 900)  # the first time, the demo trains its two adapters
            yield port
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture(scope="module")
def newcomer(demo_server):
    from playwright.sync_api import sync_playwright

    url = f"http://127.0.0.1:{demo_server}"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS, headless=True)
        page = browser.new_context(viewport={"width": 1600, "height": 1000}).new_page()
        opened = time.monotonic()
        page.goto(url + "/")
        page.wait_for_function(PAGE_READY, timeout=120_000)
        page.evaluate(JS_WATCH)
        close_dialogs(page)
        yield page, demo_server, opened
        browser.close()


def _open_template(page, stem: str) -> None:
    page.evaluate("() => app.extensionManager.command.execute('Comfy.BrowseTemplates')")
    dialog = page.locator(".p-dialog.global-dialog")
    dialog.wait_for(state="visible", timeout=15_000)
    dialog.get_by_text(CPU_TEMPLATES_FOLDER, exact=True).first.click()
    dialog.get_by_text(stem, exact=True).first.click()
    page.wait_for_function(
        "(stem) => app.graph._nodes.length > 3 && !document.querySelector('.p-dialog.global-dialog')",
        arg=stem,
        timeout=30_000,
    )


def _run(page) -> None:
    run = page.locator('[data-testid="queue-button"] button').or_(page.get_by_role("button", name="Run", exact=True))
    with page.expect_response(lambda r: r.url.endswith("/api/prompt") and r.request.method == "POST") as answer:
        run.first.click()
    assert answer.value.status == 200, answer.value.text()


def _node_id(page, node_type: str) -> str:
    return page.evaluate("(t) => String(app.graph._nodes.find(n => n.type === t).id)", node_type)


def _widget(page, node_type: str, name: str, value) -> None:
    page.evaluate(
        """([t, name, value]) => { const n = app.graph._nodes.find(n => n.type === t);
             n.widgets.find(w => w.name === name).value = value; }""",
        [node_type, name, value],
    )


def _step_adapters(port: int) -> list[str]:
    info = call(port, "/object_info/TapTuneLoadAdapter")["TapTuneLoadAdapter"]["input"]["required"]["adapter_name"]
    names = info[0] if isinstance(info[0], list) else info[1].get("options", [])
    return [n for n in names if re.search(r"_step\d{5}\.safetensors$", n)]


def test_a_newcomer_trains_sees_progress_and_previews_cancels_and_uses_a_mid_run_adapter(newcomer):
    page, port, opened = newcomer
    # 1. The CPU tap-recipe example from the Templates browser, then Run.
    _open_template(page, "dreambooth_tap_attn2o_ffni")
    trainer = _node_id(page, TRAINER)
    _run(page)
    # 2. The final base | adapted grid appears in the Save Image node.
    page.wait_for_function(
        """() => { const n = app.graph._nodes.find(n => n.type === 'SaveImage');
                   return n && n.imgs && n.imgs.length && n.imgs[0].complete && n.imgs[0].naturalWidth > 0; }""",
        timeout=1_200_000,
        polling=1000,
    )
    first_image = time.monotonic() - opened
    tt = page.evaluate("() => window.__tt")
    assert tt["errors"] == [], tt["errors"]
    steps = [p for p in tt["progress"] if p["node"] == trainer]
    assert len(steps) >= 3 and steps[-1]["value"] == steps[-1]["max"]
    assert [p["value"] for p in steps] == sorted(p["value"] for p in steps)  # it advances
    trained_at = (
        next(e["t"] for e in tt["executed"] if e["node"] == trainer)
        if any(e["node"] == trainer for e in tt["executed"])
        else steps[-1]["t"]
    )
    during = [p for p in tt["previews"] if steps[0]["t"] <= p["t"] <= trained_at]
    assert during, "no preview image reached the page while the trainer ran"
    assert page.evaluate("(id) => !!(app.nodePreviewImages && app.nodePreviewImages[id])", trainer) or during
    print(f"\n[newcomer] time from opening the page to the first trained image: {first_image:.1f} s")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    record = {"seconds_to_first_trained_image": round(first_image, 1), "progress_events": len(steps)}
    (ARTIFACTS / "newcomer.json").write_text(json.dumps(record, indent=1))
    page.screenshot(path=str(ARTIFACTS / "newcomer_trained.png"))

    # 3. A second run (another seed), Cancel once a numbered adapter of it is listed.
    before = set(_step_adapters(port))
    page.evaluate("() => { window.__tt.progress = []; window.__tt.texts = []; window.__tt.executed = []; }")
    _widget(page, TRAINER, "seed", 1)
    _run(page)
    deadline = time.time() + 900
    new: list[str] = []
    while not new:
        assert time.time() < deadline, "no numbered adapter was listed while the second run trained"
        new = sorted(set(_step_adapters(port)) - before)
        time.sleep(1)
    page.evaluate("() => app.extensionManager.command.execute('Comfy.Interrupt')")
    page.wait_for_function("() => window.__tt.interrupted.length > 0", timeout=120_000, polling=500)
    tt = page.evaluate("() => window.__tt")
    assert not [e for e in tt["executed"] if e["node"] != trainer and e["output"].get("images")], tt["executed"]
    texts = " ".join(t.get("text", "") for t in tt["texts"] if str(t.get("nodeId")) == trainer)
    assert "cancelled" in texts and ".ckpt" in texts and ".safetensors" in texts, texts
    base = BASE
    checkpoint = re.search(r"(output/taptune/checkpoints/\S+\.ckpt)", texts).group(1)
    adapter = re.search(r"models/adapters/(\S+\.safetensors)", texts).group(1)
    assert (base / checkpoint).is_file() and (base / "models" / "adapters" / adapter).is_file()

    # 4. The mid-run adapter in a second graph.
    _open_template(page, "generate_with_adapter")
    _widget(page, "TapTuneLoadAdapter", "adapter_name", new[-1])
    _run(page)
    page.wait_for_function(
        """() => { const n = app.graph._nodes.find(n => n.type === 'SaveImage');
                   return n && n.imgs && n.imgs.length && n.imgs[0].complete && n.imgs[0].naturalWidth > 0; }""",
        timeout=300_000,
        polling=1000,
    )
