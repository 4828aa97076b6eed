"""Hostile files (issue 11): generated malformed adapter files and import folders against the readers.

Each loop runs in a child process (``tests/core/hostile_inputs.py``) whose working folder is a
fresh empty one, so that its peak memory is its own and anything a reader writes is seen. The
generators, the per-call checks and the bounds live there; here the report is judged:

* every generated input was run (at least 2,000 adapter files, at least 500 import folders);
* no reader let anything but a ``TapTuneError`` naming the file escape, wrote nothing, executed
  no pickle, and no call took longer than ``CALL_SECONDS`` (2 s);
* the resident set grew by at most ``MEMORY_GROWTH_MIB`` (256 MiB) over the loop, measured as
  ``ru_maxrss`` after a warm-up that loads every reader once against ``ru_maxrss`` at the end;
* the generators are not degenerate: each family of inputs was both accepted and refused somewhere.
"""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from taptune.adapter_core.errors import TapTuneError
from taptune.adapter_core.file_format import MAX_FILE_TENSORS
from taptune.adapter_core.kind import MAX_MODULES
from taptune.adapter_core.oft.cayley import MAX_NEUMANN_TERMS
from taptune.adapter_core.oft.oft_import import import_oft
from taptune.adapter_core.registry import load_adapter_set
from taptune.adapter_core.tap.tap_official_import import import_official_tap_dir

from .hostile_inputs import (
    CALL_SECONDS,
    FILE_EXAMPLES,
    FOLDER_EXAMPLES,
    MEMORY_GROWTH_MIB,
    Draft,
    TensorEntry,
    entry_of,
    run_cli,
)

ROOT = Path(__file__).resolve().parents[2]


def run_loop(mode: str, tmp_path: Path) -> dict[str, Any]:
    """Run one fuzz loop in a child process inside an empty folder; returns its report."""
    work = tmp_path / "work"
    work.mkdir()
    report = tmp_path / "report.json"
    # Hypothesis keeps a cache of its own; outside the watched folder.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HYPOTHESIS_STORAGE_DIRECTORY": str(tmp_path / "hypothesis")}
    done = subprocess.run(
        [sys.executable, "-m", "tests.core.hostile_inputs", mode, str(report)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(report.read_text())
    assert not result["error"], result["error"][-6000:]
    # The readers leave nothing behind in the working folder (each case folder is removed by the loop).
    assert sorted(p.name for p in work.iterdir()) == []
    return result


def check_bounds(result: dict[str, Any], examples: int) -> None:
    """The report's counts, time and memory against the stated bounds."""
    assert result["examples"] == examples
    assert result["slowest_s"] <= CALL_SECONDS, result["slowest_what"]
    growth = result["rss_peak_mib"] - result["rss_after_warm_up_mib"]
    assert growth <= MEMORY_GROWTH_MIB, result


@pytest.mark.parametrize("mode", ["files", "folders"])
def test_hostile_inputs_only_raise_pack_errors(mode: str, tmp_path: Path) -> None:
    """At least 2,000 adapter files / 500 import folders: pack errors naming the file, no writes, bounded."""
    result = run_loop(mode, tmp_path)
    print(json.dumps({k: v for k, v in result.items() if k != "error"}))  # the measured numbers, with -s
    if mode == "files":
        assert FILE_EXAMPLES >= 2000
        check_bounds(result, FILE_EXAMPLES)
        families = ("semantic", "random", "empty", "directory", "truncated", "bitflip", "prefix", "header_bytes")
        assert all(result["labels"].get(f, 0) >= 20 for f in families), result["labels"]
        assert result["outcomes"].get("load semantic ok", 0) >= 100
        assert result["outcomes"].get("load semantic refused", 0) >= 500
        assert result["outcomes"].get("info semantic ok", 0) >= 100  # the CLI run, accepted or not
    else:
        assert FOLDER_EXAMPLES >= 500
        check_bounds(result, FOLDER_EXAMPLES)
        assert all(result["labels"].get(f, 0) >= 100 for f in ("peft", "official_oft", "official_tap"))
        for family in ("peft", "official_oft", "official_tap"):
            assert result["outcomes"].get(f"{family} ok", 0) >= 3, result["outcomes"]
            assert result["outcomes"].get(f"{family} refused", 0) >= 100, result["outcomes"]


# --------------------------------------------------------------------------------------------------
# The inputs that broke a bound before (one each, in process): refused, quickly, naming the file
# --------------------------------------------------------------------------------------------------


def _refused_quickly(call: Callable[[], object], name: str, words: str) -> None:
    """``call`` raises a pack error naming ``name`` and saying ``words``, within ``CALL_SECONDS``."""
    start = time.perf_counter()
    with pytest.raises(TapTuneError) as raised:
        call()
    assert time.perf_counter() - start <= CALL_SECONDS
    assert raised.value.file == name and name in str(raised.value) and words in str(raised.value)


def _oft_file(path: Path, modules: int, tensors: int) -> None:
    draft = Draft(
        {"format": "taptune/1", "kind": "oft", "adapters": [{"r": 1, "modules": [f"m{i}" for i in range(modules)]}]},
        {f"m{i}.oft.S": TensorEntry("F32", [1, 1, 1], bytes(4)) for i in range(tensors)},
    )
    path.write_bytes(draft.to_bytes())


def test_counts_from_a_file_are_bounded_before_the_work(tmp_path: Path) -> None:
    """Modules and tensors past the bounds are refused from the header (100k modules took 10 s and 400 MiB)."""
    _oft_file(tmp_path / "modules.safetensors", MAX_MODULES + 1, MAX_MODULES + 1)
    _refused_quickly(lambda: load_adapter_set(tmp_path / "modules.safetensors"), "modules.safetensors", "4,096 strings")
    _oft_file(tmp_path / "tensors.safetensors", 1, MAX_FILE_TENSORS + 1)
    _refused_quickly(lambda: load_adapter_set(tmp_path / "tensors.safetensors"), "tensors.safetensors", "tensors")
    _oft_file(tmp_path / "fits.safetensors", MAX_MODULES, MAX_MODULES)
    start = time.perf_counter()
    _, adapter_set = load_adapter_set(tmp_path / "fits.safetensors")
    assert len(adapter_set.members) == MAX_MODULES and time.perf_counter() - start <= CALL_SECONDS


def _peft_folder(folder: Path, packed: torch.Tensor, terms: int) -> Path:
    folder.mkdir()
    key = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.oft_R.weight"
    (folder / "adapter_model.safetensors").write_bytes(Draft({}, {key: entry_of(packed)}).to_bytes())
    k = round((1 + math.sqrt(1 + 8 * packed.shape[-1])) / 2)
    config = {"peft_type": "OFT", "oft_block_size": k, "use_cayley_neumann": True, "num_cayley_neumann_terms": terms}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


def test_peft_import_work_is_bounded(tmp_path: Path) -> None:
    """PEFT generators: sizes checked from shapes, the Neumann check costs a norm unless it must do more.

    Before: 2M blocks of size 2 in a 4 MiB file took 55 s and 2.4 GiB; one 800-wide block with 64
    Neumann terms took 2 s however small the generator.
    """
    many = _peft_folder(tmp_path / "many", torch.zeros(2_000_000, 1, dtype=torch.float16), 5)
    _refused_quickly(lambda: import_oft(many), "many", "wider than")
    n = 800 * 799 // 2
    g = torch.Generator().manual_seed(0)
    small = _peft_folder(tmp_path / "small", torch.randn(1, n, generator=g) * 1e-6, MAX_NEUMANN_TERMS)
    start = time.perf_counter()
    adapter_file = import_oft(small)
    assert time.perf_counter() - start <= CALL_SECONDS / 4
    assert adapter_file.tensors["input_blocks.1.1.transformer_blocks.0.attn1.to_q.oft.S"].shape == (1, 800, 800)
    large = _peft_folder(tmp_path / "large", torch.randn(1, n, generator=g), MAX_NEUMANN_TERMS)
    _refused_quickly(lambda: import_oft(large), "large", "Cayley-Neumann")


def test_compressed_pickle_is_refused_before_loading(tmp_path: Path) -> None:
    """A deflated torch.save archive (a zip bomb: 64 MiB of zeros in under 1 MiB) is refused; torch.load would inflate it."""
    plain = io.BytesIO()
    torch.save({"4.weight": torch.zeros(16 * 2**20)}, plain)
    folder = tmp_path / "bomb"
    folder.mkdir()
    with zipfile.ZipFile(plain) as source, zipfile.ZipFile(folder / "x.adapter.pt", "w", zipfile.ZIP_DEFLATED) as out:
        for entry in source.infolist():
            out.writestr(entry.filename, source.read(entry.filename))
    assert (folder / "x.adapter.pt").stat().st_size < 2**20
    (folder / "c.yaml").write_text("adapter_config: {resblock_adp_config: {din: resi, dout: reso, mid_dim: 2}}")
    _refused_quickly(lambda: import_official_tap_dir(folder), "x.adapter.pt", "compressed")


def test_large_yaml_is_refused_before_parsing(tmp_path: Path) -> None:
    """PyYAML's safe loader parses ~100 KiB/s: a 4 MiB config took 34 s; past 32 KiB it is not parsed."""
    folder = tmp_path / "official"
    folder.mkdir()
    (folder / "c.yaml").write_text("[" + ",".join(["0"] * 2_000_000) + "]")
    _refused_quickly(lambda: import_official_tap_dir(folder), "c.yaml", "larger than 32 KiB")


def test_info_refuses_text_that_is_not_unicode(tmp_path: Path) -> None:
    """A ``\\ud800`` escape in the metadata made ``info`` crash with UnicodeEncodeError on a UTF-8 terminal."""
    draft = Draft(
        {"format": "taptune/1", "kind": "oft", "adapters": [{"r": 1, "modules": ["a"]}], "notes": "\udc80"},
        {"a.oft.S": entry_of(torch.zeros(1, 2, 2))},
    )
    path = tmp_path / "lone.safetensors"
    path.write_bytes(draft.to_bytes())
    code, out, err = run_cli(["info", str(path)])
    assert code == 2 and out == "" and "lone.safetensors" in err and "not valid Unicode" in err
    draft.header["notes"] = "é中\u202e"  # valid text is shown as it is
    path.write_bytes(draft.to_bytes())
    code, out, _ = run_cli(["info", str(path)])
    assert code == 0 and "notes: é中\u202e" in out
