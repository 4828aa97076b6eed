"""Folders of training images with kohya-style captions (same-name ``.txt`` files), read within budgets.

What ``TapTuneLoadImageFolder`` and the headless runner (``instance.folder``, ``class.folder``)
both read. A folder is checked as a whole before any picture is decoded:

* only regular files are opened (a FIFO or a device named like a picture is never waited on);
* a symbolic link inside the folder (a picture or a caption) is followed only when it resolves
  to a file inside the same folder: a link elsewhere is refused, so a folder someone shares or
  uploads cannot make the pack read (and return as a caption) a file outside it;
* the budgets of :mod:`training.images` hold: at most ``MAX_IMAGE_COUNT`` pictures, each at most
  ``MAX_IMAGE_PIXELS``, together at most ``MAX_TOTAL_PIXELS`` (sizes read from the files'
  headers, which cost a few hundred bytes each) and ``MAX_TOTAL_BYTES`` on disk.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..adapter_core.errors import TapTuneError
from ..adapter_core.safe_read import FileReadError, open_regular, read_regular
from .images import MAX_IMAGE_COUNT, MAX_IMAGE_PIXELS, MAX_TOTAL_BYTES, MAX_TOTAL_PIXELS, check_image_budget

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
MAX_CAPTION_BYTES = 64 * 1024
#: Entries of a folder looked at (pictures, captions and anything else) before giving up.
MAX_FOLDER_ENTRIES = 4 * MAX_IMAGE_COUNT


class ImageFolderError(TapTuneError):
    """A folder of images (or one of its files) that cannot be read within the rules; ``input_name`` is ``folder``."""

    def __init__(self, message: str, file: str | None = None) -> None:
        super().__init__(message, input_name="folder", file=file)


def natural_key(name: str) -> list[object]:
    """Sort key: numbers inside names compare as numbers (``img_2`` before ``img_10``)."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _inside(path: Path, folder: Path) -> Path:
    """``path``'s real location if it is inside ``folder`` (already resolved); a link leading out is refused."""
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):
        raise ImageFolderError("is a broken link or a link loop; remove it or copy the file in", path.name) from None
    if folder not in real.parents:
        raise ImageFolderError(
            "is a link to a file outside the folder, which is not read; copy the file into the folder instead",
            path.name,
        )
    return real


def image_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The pictures of ``folder`` (regular files, links only within it) in natural name order."""
    root = Path(folder).resolve()
    files = []
    try:
        with os.scandir(root) as entries:
            for count, entry in enumerate(entries):
                if count >= MAX_FOLDER_ENTRIES:
                    raise ImageFolderError(
                        f"holds more than {MAX_FOLDER_ENTRIES:,} entries; a folder of training images holds at most "
                        f"{MAX_IMAGE_COUNT:,} pictures (and their captions)"
                    )
                path = root / entry.name
                if path.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                if entry.is_symlink():
                    path = root / entry.name
                    if not _inside(path, root).is_file():
                        continue
                elif not entry.is_file(follow_symlinks=False):
                    continue  # folders, FIFOs, devices named like pictures are not pictures
                files.append(path)
    except OSError as exc:
        raise ImageFolderError(f"cannot be listed ({exc.strerror or type(exc).__name__}); check the folder") from None
    if len(files) > MAX_IMAGE_COUNT:
        raise ImageFolderError(f"holds more than {MAX_IMAGE_COUNT:,} images; use fewer images (or split the folder)")
    return sorted(files, key=lambda p: natural_key(p.name))


def _too_large(name: str) -> ImageFolderError:
    return ImageFolderError(f"is larger than {MAX_IMAGE_PIXELS} pixels; resize it", name)


def _unreadable(name: str) -> ImageFolderError:
    return ImageFolderError("is not a readable image (truncated or corrupt?); replace or remove it", name)


def image_size(file: Path) -> tuple[int, int, int]:
    """``(width, height, bytes)`` of a picture from its header, without decoding it."""
    try:
        with open_regular(file) as handle:
            size = os.fstat(handle.fileno()).st_size
            with Image.open(handle) as opened:
                return opened.width, opened.height, size
    except FileReadError as exc:
        raise ImageFolderError(exc.message, file.name) from None
    except Image.DecompressionBombError:
        raise _too_large(file.name) from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError):
        raise _unreadable(file.name) from None


def read_image(file: Path) -> torch.Tensor:
    """One picture as ``[H, W, 3]`` float32 in 0..1 (EXIF orientation applied)."""
    try:
        with open_regular(file) as handle, Image.open(handle) as opened:
            if opened.width * opened.height > MAX_IMAGE_PIXELS:
                raise _too_large(file.name)
            rgb = ImageOps.exif_transpose(opened).convert("RGB")
    except ImageFolderError:
        raise
    except FileReadError as exc:
        raise ImageFolderError(exc.message, file.name) from None
    except Image.DecompressionBombError:
        # Pillow refuses pictures far over its own limit before the header size reaches our check.
        raise _too_large(file.name) from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError):
        raise _unreadable(file.name) from None
    return torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0)


def read_caption(file: Path) -> str:
    """The caption of a picture (its ``.txt`` of the same name, whitespace folded), '' when there is none."""
    caption = file.with_suffix(".txt")
    if not caption.exists() and not caption.is_symlink():
        return ""
    if caption.is_symlink():
        _inside(caption, file.parent.resolve())
    try:
        data = read_regular(caption, MAX_CAPTION_BYTES)
        text = data.decode("utf-8")
    except FileReadError:
        raise ImageFolderError(f"must be a text file under {MAX_CAPTION_BYTES} bytes", caption.name) from None
    except UnicodeDecodeError:
        raise ImageFolderError("is not UTF-8 text; save it as UTF-8", caption.name) from None
    return " ".join(text.split())


def check_folder(folder: str | os.PathLike[str]) -> list[Path]:
    """The pictures of ``folder``, with every budget checked from their headers (nothing decoded)."""
    files = image_files(folder)
    pixels = size = 0
    for file in files:
        width, height, stored = image_size(file)
        if width * height > MAX_IMAGE_PIXELS:
            raise _too_large(file.name)
        pixels += width * height
        size += stored
        if pixels > MAX_TOTAL_PIXELS or size > MAX_TOTAL_BYTES:
            break  # the budget's own message says by how much
    check_image_budget(len(files), pixels, "folder", size)
    for file in files:
        read_caption(file)
    return files


def read_folder(folder: str | os.PathLike[str]) -> tuple[list[torch.Tensor], list[str], list[str]]:
    """Images (``[H, W, 3]``, 0..1) in natural name order, their captions ('' where none), file names.

    Every budget, link and caption is checked before the first picture is decoded.
    """
    files = check_folder(folder)
    captions = [read_caption(file) for file in files]
    images, pixels = [], 0
    for file in files:
        image = read_image(file)
        pixels += image.shape[0] * image.shape[1]
        check_image_budget(len(files), pixels, "folder")  # a file replaced after the check
        images.append(image)
    return images, captions, [f.name for f in files]
