"""Command line for adapter files, with no ComfyUI needed.

Run from the pack's folder::

    python -m adapter_core.cli info FILE
    python -m adapter_core.cli convert-official DIR OUT.safetensors [--config X.yaml]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import AdapterFileError, TapTuneError
from .file_format import check_adapter_file, save_adapter_file
from .registry import load_adapter_set
from .tap.tap_official_import import import_official_tap_dir


def _print(text: str) -> None:
    """Print text from a file on any terminal: what its encoding cannot show is escaped, not fatal."""
    encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
    print(text.encode(encoding, "backslashreplace").decode(encoding, "replace"))


def _info(args: argparse.Namespace) -> int:
    adapter_file, adapter_set = load_adapter_set(args.file)
    _print(f"kind: {adapter_file.kind}")
    for line in adapter_set.describe():
        _print(f"group: {line}")
    _print(f"base: {str(adapter_file.base)[:2000]}")
    for key, value in adapter_file.info.items():
        _print(f"{key[:100]}: {str(value)[:500]}")
    _print(f"tensors: {len(adapter_file.tensors)}, parameters: {adapter_set.num_parameters():,}")
    return 0


def _convert_official(args: argparse.Namespace) -> int:
    tap_set = import_official_tap_dir(args.directory, args.config)
    adapter_file = tap_set.to_file(notes=f"imported from the official code's folder {args.directory}")
    try:
        check_adapter_file(adapter_file)  # what is written must load (the folder path is in it too)
    except AdapterFileError as exc:
        raise exc.concerning(file=Path(args.directory).name) from None
    save_adapter_file(args.output, adapter_file)
    print(f"wrote {args.output}: " + "; ".join(tap_set.describe()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (public so that tests and docs can list the commands)."""
    parser = argparse.ArgumentParser(prog="python -m adapter_core.cli", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="describe a TapTune adapter file")
    info.add_argument("file")
    info.set_defaults(run=_info)
    convert = sub.add_parser("convert-official", help="convert an official Closer-Look adapter folder")
    convert.add_argument("directory", help="folder of <module>.adapter_inout.pt / <module>.adapter.pt files")
    convert.add_argument("output", help="the .safetensors file to write (must not exist yet)")
    convert.add_argument("--config", help="the official YAML (default: the single .yaml in the folder)")
    convert.set_defaults(run=_convert_official)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (2 with a one-line message for bad input)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except TapTuneError as exc:
        message = f"error: {exc}"
        encoding = getattr(sys.stderr, "encoding", None) or "utf-8"
        print(message.encode(encoding, "backslashreplace").decode(encoding, "replace"), file=sys.stderr)
        return 2
    except FileExistsError as exc:
        print(f"error: {exc.filename} exists; choose another output name", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc.strerror or type(exc).__name__}: {exc.filename or ''}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
