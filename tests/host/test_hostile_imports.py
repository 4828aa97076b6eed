"""Hostile files through the nodes (issue 11): the info node and the two import nodes in a real ComfyUI.

The generators are ``tests/core/hostile_inputs.py``'s (the pure-torch loops there run thousands of
examples in a child process, with memory measured); here fewer examples check what only the nodes
add: the message names the node, the input and the file, and an import that fails writes nothing
into ``models/adapters``. Each call must finish within ``CALL_SECONDS``.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taptune.adapter_core.errors import TapTuneError
from taptune.nodes.load_adapter import TapTuneAdapterInfo
from taptune.nodes.oft_interchange import TapTuneImportOFT
from taptune.nodes.tap_import import TapTuneImportOfficialAdapters

from ..core.hostile_inputs import CALL_SECONDS, hostile_file, official_tap_folder, peft_folder, snapshot, write_tree

INFO_EXAMPLES = 300
IMPORT_EXAMPLES = 120
# Hypothesis warns about function-scoped fixtures because they are not reset between examples;
# each example here empties the folders it uses itself.
_SETTINGS = {
    "derandomize": True,
    "database": None,
    "deadline": int(CALL_SECONDS * 3 * 1000),
    "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
}


def _timed(call):
    start = time.perf_counter()
    try:
        return call(), None
    except TapTuneError as exc:
        return None, exc
    finally:
        assert time.perf_counter() - start <= CALL_SECONDS


def test_info_node_on_hostile_files(adapters_dir: Path) -> None:
    """TapTuneAdapterInfo on 300 generated files: text, or a node error naming the input and the file."""
    seen = {"examples": 0, "refused": 0}

    @settings(max_examples=INFO_EXAMPLES, **_SETTINGS)
    @given(case=hostile_file())
    def one(case: tuple[str, bytes | None]) -> None:
        seen["examples"] += 1
        shutil.rmtree(adapters_dir / "h", ignore_errors=True)
        (adapters_dir / "h").mkdir(parents=True)
        path = adapters_dir / "h" / "hostile.safetensors"
        path.mkdir() if case[1] is None else path.write_bytes(case[1])
        before = snapshot(adapters_dir)
        out, error = _timed(lambda: TapTuneAdapterInfo.execute("h/hostile.safetensors"))
        if error is not None:
            seen["refused"] += 1
            assert "TapTuneAdapterInfo" in str(error) and "adapter_name" in str(error)
            assert "hostile.safetensors" in str(error)
            # A folder in place of the file is not listed at all (the node says so by name); a file is read.
            assert case[1] is None or error.file == "h/hostile.safetensors" or error.file == "hostile.safetensors"
        else:
            assert out.args[0].startswith("h/hostile.safetensors: ")
        assert snapshot(adapters_dir) == before

    one()
    assert seen["examples"] == INFO_EXAMPLES
    assert 0 < seen["refused"] < INFO_EXAMPLES


def test_import_nodes_on_hostile_folders(adapters_dir: Path, base_dir: Path) -> None:
    """The OFT and official-tap import nodes on 120 generated folders: a node error naming a file, or one new file."""
    seen = {"examples": 0, "refused": 0}
    root = base_dir / "input" / "hostile"

    @settings(max_examples=IMPORT_EXAMPLES, **_SETTINGS)
    @given(case=st.one_of(peft_folder().map(lambda t: ("oft", t)), official_tap_folder().map(lambda t: ("tap", t[0]))))
    def one(case: tuple[str, dict]) -> None:
        seen["examples"] += 1
        kind, tree = case
        shutil.rmtree(root, ignore_errors=True)
        write_tree(root / "case", tree)
        before = snapshot(adapters_dir)
        if kind == "oft":
            out, error = _timed(lambda: TapTuneImportOFT.execute("hostile/case", "hostile/oft"))
        else:
            out, error = _timed(lambda: TapTuneImportOfficialAdapters.execute("hostile/case", "", "hostile/tap"))
        after = snapshot(adapters_dir)
        if error is not None:
            seen["refused"] += 1
            assert error.file in {"case", *tree} and error.file in str(error)
            assert after == before
        else:
            (name,) = out.args
            assert set(after) - set(before) <= {"hostile", name}
        shutil.rmtree(adapters_dir / "hostile", ignore_errors=True)

    one()
    shutil.rmtree(root, ignore_errors=True)
    assert seen["examples"] == IMPORT_EXAMPLES
    assert 0 < seen["refused"] < IMPORT_EXAMPLES
