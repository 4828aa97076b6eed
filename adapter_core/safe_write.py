"""Writing files so that nothing is lost: whole or not at all, never over someone's file.

* A file is written to a temporary name in the target folder, flushed to disk, then put in
  place by a rename (replacing, for files that belong to a run, like checkpoints) or by a
  hard link (for new files: the link fails if the name exists, so two writers racing for one
  name can never replace each other's file).
* The temporary file lives in a temporary folder of its own, named with the writer's process
  id: libraries that write through their own temporary next to the file they are given
  (safetensors' ``save_file`` does) leave theirs inside it, not in the user's folder. A writer
  killed mid-write leaves that folder behind, and the next write into the same folder deletes
  those of processes that no longer run.
* Files get the permissions the umask gives (as any program's new files), not ``0600``.
* New numbered files (``<prefix>_00001.safetensors``) take the prefix literally (glob
  characters are just characters) and the next free number.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path

from .errors import ConfigError

TEMP_SUFFIX = ".taptune-tmp"
_TEMP_NAME = re.compile(r"^\..+\.(\d+)\.[0-9a-f]+" + re.escape(TEMP_SUFFIX) + "$")
#: Longest file name component we create (most file systems allow 255 bytes).
MAX_NAME_BYTES = 200
#: How many taken numbers a numbered write skips before giving up (another writer racing forever).
MAX_NUMBER_ATTEMPTS = 1000


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def clean_stale_temporaries(folder: str | os.PathLike[str]) -> list[str]:
    """Delete the temporary folders (and files, of earlier versions) of writers that no longer run; returns their names."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if match is None:
            continue
        pid = int(match[1])
        if pid == os.getpid() or _process_alive(pid):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:  # a temporary file of an earlier version
                os.unlink(entry.path)
            removed.append(entry.name)
        except OSError:
            pass
    return removed


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], object], *, replace: bool = False) -> Path:
    """Write ``path`` through ``write(temporary_path)``; a crash leaves the old file or the new one, never half.

    With ``replace=False`` (new files) an existing ``path`` is never replaced: ``FileExistsError``.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(target.parent)
    tmp_folder = target.parent / f".{target.name}.{os.getpid()}.{secrets.token_hex(6)}{TEMP_SUFFIX}"
    os.mkdir(tmp_folder, 0o700)  # fails if it exists: never someone else's folder
    tmp = tmp_folder / target.name
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # 0o666 & ~umask
        write(str(tmp))
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        if replace:
            os.replace(tmp, target)
        else:
            _link_new(tmp, target)
        _fsync_folder(target.parent)
    finally:
        shutil.rmtree(tmp_folder, ignore_errors=True)
    return target


def _link_new(tmp: Path, target: Path) -> None:
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
            raise
        # A file system without hard links: check, then rename (a narrow race instead of none).
        if target.exists():
            raise FileExistsError(errno.EEXIST, "file exists", str(target)) from None
        os.rename(tmp, target)


def _checked_prefix(root: Path, prefix: str) -> tuple[Path, str]:
    """The folder and the file stem a ``filename_prefix`` names, or :class:`ConfigError`."""
    if not isinstance(prefix, str):
        raise ConfigError("must be text", input_name="filename_prefix")
    cleaned = prefix.strip().replace("\\", "/").strip("/")
    if not cleaned:
        raise ConfigError("is empty", input_name="filename_prefix")
    if "\x00" in cleaned or any(ord(c) < 32 for c in cleaned):
        raise ConfigError("holds control characters", input_name="filename_prefix")
    parts = cleaned.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ConfigError(
            f"{prefix[:100]!r} points outside the output folder ('.', '..' and empty parts are not allowed)",
            input_name="filename_prefix",
        )
    if any(len(part.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES for part in parts):
        raise ConfigError(f"has a part longer than {MAX_NAME_BYTES} bytes", input_name="filename_prefix")
    folder = root
    for part in parts[:-1]:
        folder = folder / part
        if folder.exists() and not folder.is_dir():
            raise ConfigError(
                f"{'/'.join(parts[: parts.index(part) + 1])!r} is a file, not a folder", input_name="filename_prefix"
            )
    existing = folder
    while existing != root and not existing.exists():
        existing = existing.parent
    real, real_root = existing.resolve(), root.resolve()
    if real != real_root and real_root not in real.parents:  # a symlinked subfolder leading elsewhere
        raise ConfigError(f"{prefix!r} points outside the output folder", input_name="filename_prefix")
    return folder, parts[-1]


def next_number(folder: Path, stem: str, suffix: str) -> int:
    """One more than the highest ``<stem>_<digits><suffix>`` in ``folder`` (names compared literally)."""
    highest = 0
    head = f"{stem}_"
    try:
        names = [entry.name for entry in os.scandir(folder)]
    except (FileNotFoundError, NotADirectoryError):
        return 1
    for name in names:
        if name.startswith(head) and name.endswith(suffix):
            number = name[len(head) : len(name) - len(suffix)]
            if number.isdigit() and number.isascii():
                highest = max(highest, int(number))
    return highest + 1


def numbered_path(folder: str | os.PathLike[str], prefix: str, suffix: str = ".safetensors") -> Path:
    """``<folder>/<prefix>_<counter><suffix>`` with the next free 5-digit counter (not yet created).

    ``prefix`` may contain subfolders (``taptune/dog``); it may not leave ``folder``.
    """
    root = Path(folder)
    target_dir, stem = _checked_prefix(root, prefix)
    return target_dir / f"{stem}_{next_number(target_dir, stem, suffix):05d}{suffix}"


def write_numbered(
    folder: str | os.PathLike[str], prefix: str, write: Callable[[str], object], suffix: str = ".safetensors"
) -> Path:
    """Write a new numbered file atomically; a number taken meanwhile by another writer is skipped."""
    root = Path(folder)
    target_dir, stem = _checked_prefix(root, prefix)
    target_dir.mkdir(parents=True, exist_ok=True)
    number = next_number(target_dir, stem, suffix)
    for _ in range(MAX_NUMBER_ATTEMPTS):
        try:
            return atomic_write(target_dir / f"{stem}_{number:05d}{suffix}", write)
        except FileExistsError:
            number = next_number(target_dir, stem, suffix)
    raise ConfigError("no free file number (another process keeps taking them)", input_name="filename_prefix")
