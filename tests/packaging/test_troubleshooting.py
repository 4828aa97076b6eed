"""docs/troubleshooting.md lists every message the pack raises, with advice for every kind of error."""

from __future__ import annotations

import pytest

from devtools.troubleshooting import ADVICE, PAGE, ROOMS, ROOT, family_classes, raised_messages, render
from taptune.adapter_core.errors import ConfigError
from taptune.adapter_core.tap.tap_config import TapConfig


def test_the_committed_page_is_current():
    assert PAGE.read_text() == render(), "docs/troubleshooting.md is stale: run python -m devtools.troubleshooting"


def test_every_error_class_of_the_family_has_advice():
    family = family_classes(sorted(p for room in ROOMS for p in (ROOT / room).rglob("*.py")))
    assert {"TapTuneError", "NodeInputError", "TrainingInputError", "AdapterFileError"} <= family
    assert family <= set(ADVICE), family - set(ADVICE)


def _listed(message: str) -> bool:
    """Whether some listed message's literal parts all occur, in order, in ``message``."""
    for entry in raised_messages():
        position = 0
        for part in entry.text.split("…"):
            found = message.find(part.strip(), position)
            if found < 0:
                break
            position = found + len(part.strip())
        else:
            return True
    return False


def test_a_real_error_is_found_on_the_page():
    with pytest.raises(ConfigError) as caught:
        TapConfig("ffni", "attn1i")
    assert _listed(str(caught.value)), str(caught.value)
    assert not _listed("a message the pack never raises, zebra quartz")


def test_plain_errors_of_shipped_code_are_listed():
    from devtools.troubleshooting import plain_messages

    texts = {(m.error, m.text) for m in plain_messages()}
    assert ("ValueError", "optimiser state does not match the adapter") in texts
    assert "## Plain errors" in PAGE.read_text()


def test_the_comfyui_messages_quoted_are_comfyuis_own():
    from devtools.comfy_host import COMFY_DIR
    from devtools.troubleshooting import COMFY_VALIDATION

    source = (COMFY_DIR / "execution.py").read_text()
    for message, _ in COMFY_VALIDATION:
        assert message in source, message
    assert "## ComfyUI's own validation messages" in PAGE.read_text()


def test_out_of_memory_advice_names_what_to_change():
    page = PAGE.read_text()
    section = page.split("## Out of memory on a GPU", 1)[1]
    for setting in ("batch_size", "resolution", "gradient_checkpointing", "precision"):
        assert f"**{setting}**" in section, setting
