"""A process that saves files in a loop until it is killed (the subject of test_kill_during_save).

``python -m tests.core.save_loop_child adapter|checkpoint <folder>``, then ``<first generation>`` on stdin.

* ``adapter``: new numbered adapter files, the way TapTuneSaveAdapter writes them
  (``write_numbered`` with ``write_adapter_file`` into a temporary, then a hard link).
* ``checkpoint``: one training checkpoint replaced again and again (``RunState.save``).

Generation ``g`` of a file holds tensors filled with ``g`` (a few MB, so that writing takes
long enough for kills to land inside it) and names ``g`` in its metadata. After each completed
save the child prints ``done <generation> <file name>`` (flushed), so the killer knows what must
be on disk. It prints ``ready`` once its imports are done and then waits for its first generation
on stdin, so that its start-up (importing torch) never counts as part of the random delay before
the kill, and the killer can start the next child while this one runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from devtools.comfy_host import import_pack  # noqa: E402

import_pack()

import torch  # noqa: E402

from taptune.adapter_core.file_format import AdapterFile, write_adapter_file  # noqa: E402
from taptune.adapter_core.safe_write import write_numbered  # noqa: E402
from taptune.training.run_state import RunState  # noqa: E402

#: Elements of the large tensor of each file (float32: 6 MB).
BIG = 3 * 2**19
PREFIX = "kill/adapter"
CHECKPOINT = Path("run") / "step_000001.ckpt"


def adapter_content(generation: int) -> AdapterFile:
    """The adapter file of generation ``generation`` (what the killer compares against)."""
    return AdapterFile(
        kind="tap",
        adapters=[{"generation": generation}],
        tensors={"big": torch.full((BIG,), float(generation)), "small": torch.arange(8.0) + generation},
        info={"generation": generation},
    )


def checkpoint_content(generation: int) -> RunState:
    """The training checkpoint of generation ``generation``."""
    return RunState(
        run_key="kill-test",
        step=1,
        phase="main",
        losses=[float(generation)],
        parameters=[torch.full((BIG,), float(generation)), torch.arange(8.0) + generation],
        optimizer={"state": {}, "param_groups": []},
        scheduler={"last_epoch": generation},
        generator=torch.Generator().manual_seed(generation).get_state(),
        samplers={"instance": [generation % 7]},
    )


def save(mode: str, folder: Path, generation: int) -> str:
    """Save generation ``generation``; returns the file's name relative to ``folder``."""
    if mode == "adapter":
        content = adapter_content(generation)
        path = write_numbered(folder, PREFIX, lambda tmp: write_adapter_file(tmp, content))
    else:
        path = checkpoint_content(generation).save(folder / CHECKPOINT)
    return path.relative_to(folder).as_posix()


def main() -> None:
    mode, folder = sys.argv[1], Path(sys.argv[2])
    print("ready", flush=True)
    line = sys.stdin.readline()
    if not line.strip():  # not needed after all: the killer closed stdin
        return
    generation = int(line)
    while True:
        name = save(mode, folder, generation)
        print(f"done {generation} {name}", flush=True)
        generation += 1


if __name__ == "__main__":
    main()
