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
