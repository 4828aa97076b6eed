"""Test-wide setup: the repository is importable as the package ``taptune``.

ComfyUI is *not* imported here; only tests under ``tests/host`` bring it in (their own
conftest), so the pure-torch ``adapter_core`` tests run without it.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from devtools.comfy_host import import_pack  # noqa: E402

import_pack()
