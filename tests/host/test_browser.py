"""The real front end in a real browser: Debian's Chromium driven by Playwright against a real server.

`make test` installs Debian's ``chromium`` through apt when it is missing (no browser download:
Playwright is pointed at ``/usr/bin/chromium``). When the browser cannot be found the test fails
with that reason; it never skips.

Checked, in one page: it loads with no console error that mentions the pack; every ``TapTune``
node is registered and can be added through the node search box; every example workflow loads
with no missing node or widget, and ``app.graphToPrompt()`` gives what the pack's own UI-to-API
conversion gives; the Queue (Run) button runs the adapter example and its image appears in the
page; the Templates browser lists every example with its thumbnail and opens one; a screenshot
of the loaded training workflow is written to ``.host/artifacts/``.
"""

from __future__ import annotations

import json
import time

import pytest

from devtools.chromium import CHROMIUM_ARGS, PAGE_READY, chromium, close_dialogs, fit_graph_for_a_picture
from devtools.comfy_host import ROOT
from devtools.demo_files import DEMO_TAP, write_demo_files
from devtools.thumbnails import THUMBNAIL_WIDTH
from devtools.workflows import CPU, DEMO_CHECKPOINT, EXAMPLES, GPU, ui_to_api
from taptune.patching.model_access import model_architecture

from .live_server import call, running_server, server_base

ARTIFACTS = ROOT / ".host" / "artifacts"
#: Every widget of every node the workflow names exists and holds the saved value.
JS_LOAD_PROBLEMS = """(wf) => {
  const problems = [];
  const byId = new Map(app.graph._nodes.map(n => [String(n.id), n]));
  for (const src of wf.nodes) {
    const node = byId.get(String(src.id));
    if (!node) { problems.push(`node ${src.id} ${src.type} not in the graph`); continue; }
    if (!(src.type in LiteGraph.registered_node_types)) problems.push(`${src.type} is not registered`);
    if (node.has_errors) problems.push(`node ${src.id} ${src.type} has errors`);
    const widgets = node.widgets || [];
    const saved = src.widgets_values || [];
    if (widgets.length !== saved.length)
      problems.push(`${src.type}: ${saved.length} saved widget values for ${widgets.length} widgets`);
    widgets.forEach((w, i) => {
      if (i < saved.length && saved[i] !== null && JSON.stringify(w.value) !== JSON.stringify(saved[i]))
        problems.push(`${src.type}.${w.name}: ${JSON.stringify(w.value)} loaded, ${JSON.stringify(saved[i])} saved`);
    });
    for (const input of (src.inputs || []))
      if (!(node.inputs || []).some(i => i.name === input.name)) problems.push(`${src.type}: no input ${input.name}`);
  }
  return problems;
}"""

JS_WATCH_MISSING = """() => {
  window.__taptuneMissing = null;
  if (window.__taptuneWatch) return;
  window.__taptuneWatch = true;
  app.registerExtension({
    name: 'taptune.test.missingNodes',
    async afterConfigureGraph(missing) { window.__taptuneMissing = missing.map(t => typeof t === 'string' ? t : t.type); }
  });
}"""


@pytest.fixture(scope="module")
def browser_server(tmp_path_factory, sd15, sd15_checkpoint_name, base_dir):
    checkpoint = base_dir / "models" / "checkpoints" / sd15_checkpoint_name
    base = server_base(tmp_path_factory.mktemp("browser-base"), checkpoint)
    (base / "models" / "checkpoints" / DEMO_CHECKPOINT).symlink_to(checkpoint.resolve())
    model = sd15[0]
    write_demo_files(base, model.model.diffusion_model, model_architecture(model), image_size=64)
    _under_the_examples_names(base)
    with running_server(base) as (port, _process):
        yield f"http://127.0.0.1:{port}", port


def _under_the_examples_names(base) -> None:
    """The demo files also under the names the committed (GPU) examples use, as a user's would be.

    Newer front ends mark a node whose file is missing as having errors; with these the
    examples load as they do for a user who has the files.
    """
    folders = {
        "checkpoint": "models/checkpoints",
        "tap_adapter": "models/adapters",
        "oft_adapter": "models/adapters",
        "lora": "models/loras",
        "instance_images": "input",
        "captioned_images": "input",
    }
    for field, folder in folders.items():
        source, target = base / folder / getattr(CPU, field), base / folder / getattr(GPU, field)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(source.resolve(), target_is_directory=source.is_dir())


@pytest.fixture(scope="module")
def page(browser_server):
    from playwright.sync_api import sync_playwright

    url, _port = browser_server
    errors: list[tuple[str, str]] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1600, "height": 1000})
        page = context.new_page()
        page.on("console", lambda m: m.type == "error" and errors.append(_console_error(url, m.text, m.location)))
        page.on("pageerror", lambda e: errors.append(("pageerror", str(e))))
        # Only the server's own answers count: the page also asks outside services, unreachable here.
        page.on("response", lambda r: r.status >= 400 and r.url.startswith(url) and errors.append(("http", r.url)))
        page.goto(url + "/")
        page.wait_for_function(PAGE_READY, timeout=120_000)
        close_dialogs(page)
        page.evaluate(JS_WATCH_MISSING)
        page.taptune_errors = errors  # type: ignore[attr-defined]
        page.taptune_url = url  # type: ignore[attr-defined]
        yield page
        browser.close()


def _console_error(origin: str, text: str, location: dict) -> tuple[str, str]:
    """A console error, unless it is a failed request to a service outside this machine.

    The front end asks the Comfy Registry (api.comfy.org) about every custom node type; with no
    internet those requests fail whatever the pack does, so they are not the pack's errors.
    """
    source = location.get("url", "")
    if text.startswith("Failed to load resource") and source and not source.startswith(origin):
        return ("offline", f"{text} {source}")
    return ("console", f"{text} {source}")


def _load(page, workflow: dict, name: str) -> tuple[list[str], list[str]]:
    page.evaluate("() => { window.__taptuneMissing = null; }")
    page.evaluate("([wf, name]) => app.loadGraphData(wf, true, true, name)", [workflow, name])
    page.wait_for_function("() => window.__taptuneMissing !== null", timeout=30_000)
    return page.evaluate("() => window.__taptuneMissing"), page.evaluate(JS_LOAD_PROBLEMS, workflow)


def _ours(url: str) -> dict[str, dict]:
    port = int(url.rsplit(":", 1)[1])
    return {k: v for k, v in call(port, "/object_info").items() if k.startswith("TapTune")}


def test_every_pack_node_is_registered_in_the_page(page):
    registered = page.evaluate(
        "() => Object.keys(LiteGraph.registered_node_types).filter(k => k.startsWith('TapTune'))"
    )
    assert set(registered) == set(_ours(page.taptune_url))
    assert len(registered) >= 11


def test_the_node_search_box_adds_every_pack_node(page):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.evaluate("() => app.extensionManager.command.execute('Comfy.NewBlankWorkflow')")
    # Newer front ends put a node in a "blank" workflow; the double-clicks need empty canvas.
    time.sleep(0.5)
    page.evaluate("() => { app.graph.clear(); app.graph.setDirtyCanvas(true, true); }")
    page.wait_for_function("() => app.graph._nodes.length === 0", timeout=10_000)
    # The search box of front ends 1.3x (PrimeVue autocomplete) and of later ones ("Add a node...").
    box = page.locator('.comfy-vue-node-search-container input, input[placeholder*="node" i]').first
    for node_id, info in sorted(_ours(page.taptune_url).items()):
        before = page.evaluate("() => app.graph._nodes.map(n => n.id)")
        page.locator(".node-search-box-dialog-mask").wait_for(state="detached", timeout=5000)
        for attempt in range(4):  # a double-click that lands while the canvas redraws is sometimes lost
            time.sleep(0.3)
            # Low on the canvas: clear of the centre, where newer front ends place a starter node.
            page.mouse.move(360, 760)
            page.mouse.dblclick(400, 800)
            try:
                box.wait_for(state="visible", timeout=3000)
                break
            except Exception:
                page.screenshot(path=str(ARTIFACTS / f"search_{node_id}_{attempt}.png"))
        else:
            raise AssertionError(f"the node search box did not open for {node_id} (see {ARTIFACTS})")
        box.fill(info["display_name"])
        _search_result(page, info["display_name"]).click()
        page.wait_for_function("(before) => app.graph._nodes.length > before.length", arg=before, timeout=10_000)
        time.sleep(0.3)
        added = page.evaluate(
            "(before) => app.graph._nodes.filter(n => !before.includes(n.id)).map(n => [n.id, n.type])", before
        )
        assert [t for _, t in added] == [node_id], (node_id, added)
        # Off the canvas again, so that the next double-click lands on empty canvas.
        page.evaluate("(id) => app.graph.remove(app.graph.getNodeById(id))", added[0][0])


def _search_result(page, display_name: str):
    """The search result naming ``display_name``: a PrimeVue option in front ends 1.3x, an entry
    of the search dialog's list in later ones."""
    deadline = time.time() + 10
    while time.time() < deadline:
        for candidate in (
            page.locator("li.p-autocomplete-option").filter(has_text=display_name),
            page.get_by_role("dialog").get_by_text(display_name, exact=True),
        ):
            if candidate.count() and candidate.first.is_visible():
                return candidate.first
        time.sleep(0.2)
    raise AssertionError(f"the node search lists no {display_name!r}")


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.json")), ids=lambda p: p.stem)
def test_each_example_loads_whole_and_converts_like_the_pack(page, path):
    workflow = json.loads(path.read_text())
    missing, problems = _load(page, workflow, path.stem)
    assert missing == [] and problems == [], (missing, problems)
    front = page.evaluate("async () => (await app.graphToPrompt()).output")
    front = {key: {k: v for k, v in node.items() if k != "_meta"} for key, node in front.items()}
    # JSON numbers: the page writes 6 where Python wrote 6.0; compare as parsed JSON values.
    assert json.loads(json.dumps(front)) == json.loads(json.dumps(ui_to_api(workflow)))


def test_a_broken_workflow_is_reported_as_missing(page):
    """The check above can fail: an unknown node type and a foreign widget value are seen."""
    workflow = json.loads((EXAMPLES / "generate_with_adapter.json").read_text())
    workflow["nodes"][0]["type"] = "TapTuneNoSuchNode"
    missing, problems = _load(page, workflow, "broken")
    assert "TapTuneNoSuchNode" in missing
    assert problems
    page.keyboard.press("Escape")


def test_the_queue_button_runs_the_adapter_example_and_shows_its_image(page):
    workflow = json.loads((EXAMPLES / "generate_with_adapter.json").read_text())
    missing, problems = _load(page, workflow, "generate_with_adapter")
    assert missing == [] and problems == []
    # What a user does first: pick their checkpoint and adapter (here the demo's), then Run.
    page.evaluate(
        """([checkpoint, adapter]) => {
          for (const n of app.graph._nodes) {
            const w = (name) => (n.widgets || []).find(x => x.name === name);
            if (w('ckpt_name')) w('ckpt_name').value = checkpoint;
            if (w('adapter_name')) w('adapter_name').value = adapter;
            if (n.type === 'KSampler') w('steps').value = 2;
            if (n.type === 'EmptyLatentImage') { w('width').value = 64; w('height').value = 64; }
            if (n.type === 'SaveImage') w('filename_prefix').value = 'browser/queued';
          }
        }""",
        [DEMO_CHECKPOINT, DEMO_TAP],
    )
    # The Run button: front ends up to 1.3x mark it with a test id; later ones only by its label.
    run = (
        page.locator('[data-testid="queue-button"] button')
        .or_(page.get_by_role("button", name="Run", exact=True))
        .first
    )
    with page.expect_response(lambda r: r.url.endswith("/api/prompt") and r.request.method == "POST") as answer:
        run.click()
    assert answer.value.status == 200, answer.value.text()
    page.wait_for_function(
        """() => { const n = app.graph._nodes.find(n => n.type === 'SaveImage');
                   return n && n.imgs && n.imgs.length && n.imgs[0].complete && n.imgs[0].naturalWidth > 0; }""",
        timeout=300_000,
        polling=500,
    )
    src = page.evaluate("() => app.graph._nodes.find(n => n.type === 'SaveImage').imgs[0].src")
    assert "/view" in src and "queued" in src, src


def test_a_screenshot_of_the_training_workflow(page):
    workflow = json.loads((EXAMPLES / "dreambooth_tap_attn2o_ffni.json").read_text())
    missing, problems = _load(page, workflow, "dreambooth_tap_attn2o_ffni")
    assert missing == [] and problems == []
    fit_graph_for_a_picture(page)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "dreambooth_tap_attn2o_ffni.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 20_000  # a drawn graph, not an empty canvas


def test_the_templates_browser_lists_every_example_with_its_thumbnail_and_opens_one(page):
    stems = sorted(p.stem for p in EXAMPLES.glob("*.json"))
    page.evaluate("() => app.extensionManager.command.execute('Comfy.BrowseTemplates')")
    dialog = page.locator(".p-dialog.global-dialog")
    dialog.wait_for(state="visible", timeout=15_000)
    # ComfyUI lists a pack's example_workflows/ under the pack's folder name.
    dialog.get_by_text("ComfyUI-TapTune", exact=True).first.click()
    for stem in stems:
        dialog.get_by_text(stem, exact=True).first.wait_for(state="visible", timeout=15_000)
    page.wait_for_function(
        """([count, width]) => [...document.querySelectorAll('.p-dialog.global-dialog img')]
             .filter(i => i.complete && i.naturalWidth === width).length >= count""",
        arg=[len(stems), THUMBNAIL_WIDTH],
        timeout=30_000,
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "templates_browser.png"))
    page.evaluate("() => { window.__taptuneMissing = null; }")
    dialog.get_by_text("generate_with_adapter", exact=True).first.click()
    page.wait_for_function(
        "() => app.graph._nodes.some(n => n.type === 'TapTuneLoadAdapter')", timeout=30_000, polling=300
    )
    types = set(page.evaluate("() => app.graph._nodes.map(n => n.type)"))
    expected = {n["type"] for n in json.loads((EXAMPLES / "generate_with_adapter.json").read_text())["nodes"]}
    assert types == expected
    close_dialogs(page)


def test_no_console_error_mentions_the_pack(page):
    pack_errors = [e for e in page.taptune_errors if e[0] != "offline" and "taptune" in e[1].lower()]
    assert pack_errors == [], pack_errors
