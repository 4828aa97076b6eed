"""Writing files so that nothing is lost: whole or not at all, never over someone's file.

* A file is written to a temporary name in the target folder, flushed to disk, then put in
  place by a rename (replacing, for files that belong to a run, like checkpoints) or by a
  hard link (for new files: the link fails if the name exists, so two writers racing for one
  name can never replace each other's file).
* The temporary file lives in a temporary folder of its own, named with the writer's process
  id: libraries that write through their own temporary next to the file they are given
  (safetensors' ``save_file`` does) leave theirs inside it, not in the user's folder. A writer
  killed mid-write leaves that folder behind, and the next write into the same folder deletes
  those of processes that no longer run (on POSIX also those whose process id a new process
  took: a running writer holds a lock on its marker). Only folders that prove to be a writer's are deleted:
  a folder with the writer's marker file in it, an empty one, or one holding nothing but a
  marker with the start of its name (a writer killed while naming it). A file, or a folder of
  the user's, whose name merely looks like a temporary folder is never touched.
* Files get the permissions the umask gives (as any program's new files), not ``0600``, also
  when the library that writes replaced the temporary with a file of its own (safetensors does).
* New numbered files (``<prefix>_00001.safetensors``) take the prefix literally (glob
  characters are just characters) and the next free number.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

from .errors import ConfigError

try:  # POSIX: a writer holds a lock on its marker while it runs (see _writer_gone)
    import fcntl
except ImportError:  # Windows: the process id alone says whether a writer runs
    fcntl = None  # type: ignore[assignment]

TEMP_SUFFIX = ".taptune-tmp"
_TEMP_NAME = re.compile(r"^\..+\.(\d+)\.[0-9a-f]+" + re.escape(TEMP_SUFFIX) + "$")
#: Longest file name component we create (most file systems allow 255 bytes).
MAX_NAME_BYTES = 200
#: How many taken numbers a numbered write skips before giving up (another writer racing forever).
MAX_NUMBER_ATTEMPTS = 1000
#: Most subfolders a ``filename_prefix`` may name, and its longest text.
MAX_PREFIX_DEPTH = 32
MAX_PREFIX_CHARS = 1024
#: The file every temporary folder holds from its creation on: what makes a folder the writer's.
TEMP_MARKER = ".taptune-writer"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def _marker_text(name: str) -> bytes:
    """What a writer's marker holds: its folder's name."""
    return name.encode("utf-8", "surrogateescape")


def _writer_gone(path: str, name: str) -> bool:
    """Whether the writer of the temporary folder ``path`` has ended although its process id is in use.

    Process ids are reused (32,768 of them by default on Linux, and threads take from the same
    numbers), so a dead writer's id may belong to a new process or thread by the time the next
    write cleans up. A running writer holds an exclusive ``flock`` on its marker from before it
    writes its name into it until its folder is gone; the kernel drops the lock when the
    process dies. So: the lock is free and the name complete means the writer has ended.
    """
    if fcntl is None:
        return False
    try:
        fd = os.open(os.path.join(path, TEMP_MARKER), os.O_RDONLY)
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # held: the writer runs
        return os.read(fd, len(name) + 1) == _marker_text(name)
    finally:
        os.close(fd)


def _is_writers_folder(path: str, name: str) -> bool:
    """Whether the folder ``path`` is a writer's temporary folder.

    It is when its marker names it, when it holds nothing (the writer was killed between creating
    the folder and its marker), or when it holds only a marker with the start of its name (killed
    while writing the marker: the marker is created before anything else goes in).
    """
    expected = _marker_text(name)
    try:
        with open(os.path.join(path, TEMP_MARKER), "rb") as marker:
            text = marker.read(len(expected) + 1)
    except OSError:
        text = None
    if text == expected:
        return True
    try:
        entries = os.listdir(path)
    except OSError:
        return False
    if not entries:
        return True
    return text is not None and expected.startswith(text) and entries == [TEMP_MARKER]


def clean_stale_temporaries(folder: str | os.PathLike[str]) -> list[str]:
    """Delete the temporary folders of writers that no longer run; returns their names.

    A folder is deleted only if it is a real folder (not a link) holding the writer's marker, or empty;
    files are never deleted, whatever their name.
    """
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
        if pid == os.getpid():
            continue
        try:
            if not entry.is_dir(follow_symlinks=False):
                continue
            if _process_alive(pid) and not _writer_gone(entry.path, entry.name):
                continue
            if not _is_writers_folder(entry.path, entry.name):
                continue
            shutil.rmtree(entry.path)
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
    marker = None
    try:
        # Opened first and locked before the name goes in, held until the folder is gone: a
        # cleaner that finds it unlocked with the name complete knows this writer has ended.
        marker = open(tmp_folder / TEMP_MARKER, "xb")  # noqa: SIM115 (held open for the whole write)
        if fcntl is not None:
            fcntl.flock(marker.fileno(), fcntl.LOCK_EX)
        marker.write(_marker_text(tmp_folder.name))
        marker.flush()
        if fcntl is None:  # nothing to hold, and Windows cannot delete a file that is open
            marker.close()
            marker = None
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0o666 & ~umask
        try:
            mode = stat.S_IMODE(os.fstat(fd).st_mode)
        finally:
            os.close(fd)
        write(str(tmp))
        if stat.S_IMODE(os.stat(tmp).st_mode) != mode:  # the library put a file of its own (0600) in place
            os.chmod(tmp, mode)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        if replace:
            os.replace(tmp, target)
        else:
            _link_new(tmp, target)
        _fsync_folder(target.parent)
    finally:
        shutil.rmtree(tmp_folder, ignore_errors=True)
        if marker is not None:
            marker.close()
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
    if len(prefix) > MAX_PREFIX_CHARS:
        raise ConfigError(
            f"is longer than {MAX_PREFIX_CHARS} characters; use a short name like 'taptune/dog'",
            input_name="filename_prefix",
        )
    cleaned = prefix.strip().replace("\\", "/").strip("/")
    if not cleaned:
        raise ConfigError("is empty; give a name like 'taptune/dog'", input_name="filename_prefix")
    if "\x00" in cleaned or any(ord(c) < 32 for c in cleaned):
        raise ConfigError("holds control characters", input_name="filename_prefix")
    parts = cleaned.split("/")
    if len(parts) > MAX_PREFIX_DEPTH + 1:
        raise ConfigError(
            f"names {len(parts) - 1} subfolders, more than {MAX_PREFIX_DEPTH}; use a shallower name like 'taptune/dog'",
            input_name="filename_prefix",
        )
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
