"""Generated hostile adapter files and import folders, and the fuzz loops that feed them to the readers.

Run as a child process, ``python -m tests.core.hostile_inputs files|folders REPORT.json`` with
the working directory a fresh empty folder (``test_hostile_files.py`` does this), so that peak
memory is measured for the loop alone and anything a reader writes lands where it is seen.

Every reader call must either succeed or raise a :class:`TapTuneError` naming the file; it must
write nothing (the working folder is snapshotted around each call), finish within
:data:`CALL_SECONDS`, and the whole loop must stay within :data:`MEMORY_GROWTH_MIB` of the
resident size reached after a warm-up.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import resource
import shutil
import struct
import sys
import time
import traceback
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # as a child process the repository is importable as ``taptune`` only after this
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from devtools.comfy_host import import_pack

    import_pack()

import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taptune.adapter_core import cli
from taptune.adapter_core.errors import TapTuneError
from taptune.adapter_core.oft.oft_import import import_oft
from taptune.adapter_core.registry import load_adapter_set
from taptune.adapter_core.tap.tap_official_import import import_official_tap_dir

#: Longest any one reader call may take (seconds); also the hypothesis deadline per example.
CALL_SECONDS = 2.0
#: Most the resident set may grow over the fuzz loop after the warm-up (MiB).
MEMORY_GROWTH_MIB = 256
#: Generated adapter files / import folders each loop runs (the test asserts at least 2,000 / 500).
FILE_EXAMPLES = 2050
FOLDER_EXAMPLES = 560

# --------------------------------------------------------------------------------------------------
# Writing files byte by byte (safetensors written here, so that headers can lie)
# --------------------------------------------------------------------------------------------------

_ITEM_SIZE = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "C64": 8,
    "F64": 8,
    "I64": 8,
    "U64": 8,
}
_TORCH_NAMES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64"}
_INT_NAMES = {torch.int32: "I32", torch.int64: "I64"}


class Raw(str):
    """JSON (or YAML) text written as it is, e.g. ``1e400``, ``NaN`` or a thousand nested brackets."""


def to_json(value: Any) -> str:
    """JSON text of ``value``, with :class:`Raw` pieces inserted verbatim (no recursion limit worth hitting)."""
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{to_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(to_json(v) for v in value) + "]"
    return json.dumps(value)


@dataclass
class TensorEntry:
    """One tensor as the header declares it; ``data`` is what the file really holds for it."""

    dtype: str
    shape: list[Any]
    data: bytes
    offsets: list[Any] | None = None  # None: the true offsets
    declared_shape: list[Any] | None = None  # None: the true shape


def entry_of(tensor: torch.Tensor) -> TensorEntry:
    """The honest entry of a float tensor."""
    t = tensor.contiguous()
    return TensorEntry(
        (_TORCH_NAMES | _INT_NAMES)[t.dtype], list(t.shape), t.reshape(-1).view(torch.uint8).numpy().tobytes()
    )


@dataclass
class Draft:
    """A safetensors file before it is written: header (``taptune`` object), tensors and container lies."""

    header: Any
    tensors: dict[str, TensorEntry]
    metadata_text: str | None = None  # replaces the JSON of ``header`` when set
    other_metadata: dict[str, Any] = field(default_factory=dict)
    header_prefix: bytes | None = None  # replaces the 8-byte header length
    header_bytes: bytes | None = None  # replaces the header JSON
    trailing: bytes = b""
    changes: list[str] = field(default_factory=list)  # the mutations applied, for reports

    def to_bytes(self) -> bytes:
        """The file content."""
        declared: dict[str, Any] = {}
        metadata = {"taptune": self.metadata_text if self.metadata_text is not None else to_json(self.header)}
        metadata.update(self.other_metadata)
        declared["__metadata__"] = metadata
        data = b""
        for name, entry in self.tensors.items():
            offsets = entry.offsets or [len(data), len(data) + len(entry.data)]
            shape = entry.shape if entry.declared_shape is None else entry.declared_shape
            declared[name] = {"dtype": entry.dtype, "shape": shape, "data_offsets": offsets}
            data += entry.data
        head = (
            self.header_bytes if self.header_bytes is not None else to_json(declared).encode("utf-8", "surrogatepass")
        )
        head += b" " * (-len(head) % 8)
        prefix = self.header_prefix if self.header_prefix is not None else struct.pack("<Q", len(head))
        return prefix + head + data + self.trailing


# --------------------------------------------------------------------------------------------------
# Hostile values
# --------------------------------------------------------------------------------------------------

_DEEP = Raw("[" * 5000 + "]" * 5000)
_HOSTILE_SCALARS: list[Any] = [
    Raw("1e400"),
    Raw("-1e400"),
    Raw("NaN"),
    Raw("Infinity"),
    Raw("-Infinity"),
    Raw("1" + "0" * 5000),
    60.5,
    "60",
    True,
    False,
    None,
    2**70,
    -(2**70),
    -1,
    0,
    10**6,
    2**31,
    1e-320,
    [],
    {},
    [60],
    {"a": 1},
    "",
    "\udc80\ud800",
    "x" * 10_000,
    _DEEP,
    Raw("[" * 30 + "1" + "]" * 30),
]
hostile_value = st.sampled_from(_HOSTILE_SCALARS)
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_BAD_DTYPES = ("I32", "I64", "U8", "I8", "BOOL", "F8_E4M3", "F8_E5M2", "I16", "C64", "U64")


@st.composite
def float_tensor(draw: st.DrawFn, shape: tuple[int, ...], scale: float = 0.1) -> torch.Tensor:
    """A small float tensor of ``shape`` (values from a drawn seed: generating them one by one is slow)."""
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    dtype = draw(st.sampled_from(_FLOAT_DTYPES))
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)


_TRANSFORMER_PATHS = ("input_blocks.1.1.transformer_blocks.0", "middle_block.1.transformer_blocks.0", "x")
_RES_PATHS = ("input_blocks.1.0", "output_blocks.3.0")
_OFT_PATHS = ("input_blocks.1.1.transformer_blocks.0.attn1.to_q", "middle_block.1.transformer_blocks.0.attn2.to_k")


@st.composite
def tap_draft(draw: st.DrawFn) -> Draft:
    """A well-formed tap file (transformer or ResBlock adapters), before mutation."""
    conv = draw(st.booleans())
    mid = draw(st.integers(1, 4))
    paths = draw(
        st.lists(st.sampled_from(_RES_PATHS if conv else _TRANSFORMER_PATHS), min_size=1, max_size=2, unique=True)
    )
    config: dict[str, Any] = {"din": "resi" if conv else "attn2o", "dout": "reso" if conv else "ffni", "mid_dim": mid}
    config |= {"method": draw(st.sampled_from(["relu", "default", "silu"])), "scale": 1.0}
    tensors: dict[str, TensorEntry] = {}
    for path in paths:
        d_in = 32 if conv else draw(st.integers(1, 6))
        d_out = draw(st.sampled_from([32, 64])) if conv else draw(st.integers(1, 6))
        shapes = {"tap.down.weight": (mid, d_in), "tap.down.bias": (mid,), "tap.up.weight": (d_out, mid)}
        shapes["tap.up.bias"] = (d_out,)
        if conv:
            shapes |= {"tap.down.weight": (mid, d_in, 3, 3), "tap.up.weight": (d_out, mid, 3, 3)}
            shapes |= {"tap.norm.weight": (d_in,), "tap.norm.bias": (d_in,)}
        for name, shape in shapes.items():
            tensors[f"{path}.{name}"] = entry_of(draw(float_tensor(shape)))
    header = {"format": "taptune/1", "kind": "tap", "adapters": [{**config, "modules": paths}], "steps": 10}
    return Draft(header, tensors)


@st.composite
def oft_draft(draw: st.DrawFn) -> Draft:
    """A well-formed OFT file (separate or shared blocks, optional magnitude), before mutation."""
    shared = draw(st.booleans())
    r, k = draw(st.integers(1, 4)), draw(st.integers(1, 5))
    paths = draw(st.lists(st.sampled_from(_OFT_PATHS), min_size=1, max_size=2, unique=True))
    config: dict[str, Any] = {"r": r, "block_share": shared, "coft": draw(st.booleans()), "eps": 6e-5}
    tensors: dict[str, TensorEntry] = {}
    for path in paths:
        P = draw(float_tensor((k, k) if shared else (r, k, k), scale=0.3)).double()
        tensors[f"{path}.oft.S"] = entry_of((P - P.transpose(-1, -2)).float())
        if draw(st.booleans()):
            tensors[f"{path}.oft.magnitude"] = entry_of(0.5 + draw(float_tensor((draw(st.integers(1, 6)),))).abs())
    header = {"format": "taptune/1", "kind": "oft", "adapters": [{**config, "modules": paths}], "notes": "n"}
    return Draft(header, tensors)


def _first_group(draft: Draft) -> dict[str, Any] | None:
    adapters = draft.header.get("adapters") if isinstance(draft.header, dict) else None
    if isinstance(adapters, list) and adapters and isinstance(adapters[0], dict):
        return adapters[0]
    return None


@st.composite
def mutate(draw: st.DrawFn, draft: Draft) -> Draft:
    """One hostile change to ``draft`` (in place); returns what it changed."""
    what = draw(
        st.sampled_from(
            [
                "config_field",
                "top_field",
                "modules",
                "duplicate_group",
                "tensor_dtype",
                "tensor_shape",
                "tensor_values",
                "tensor_drop",
                "tensor_stray",
                "declared_shape",
                "offsets",
                "metadata_text",
                "many_groups",
                "text_field",
            ]
        )
    )
    draft.changes.append(what)
    group = _first_group(draft)
    names = sorted(draft.tensors)
    if what == "config_field" and group is not None:
        key = draw(
            st.sampled_from(
                ["mid_dim", "r", "block_size", "eps", "scale", "din", "dout", "method", "block_share", "coft"]
            )
        )
        group[key] = draw(
            st.one_of(hostile_value, st.sampled_from([2**16 + 1, 65536, 1, 3, 1e-30, 1e7, "resi", "zzz"]))
        )
    elif what == "top_field" and isinstance(draft.header, dict):
        key = draw(st.sampled_from(["format", "kind", "adapters", "base", "steps", "notes", "trigger_word", "x"]))
        draft.header[key] = draw(
            st.one_of(hostile_value, st.sampled_from(["taptune/2", "lora", "oft", "tap", [[]], [1]]))
        )
    elif what == "modules" and group is not None:
        modules = group.get("modules") if isinstance(group.get("modules"), list) else ["m"]
        choice = draw(st.sampled_from(["repeat", "empty", "non_string", "many", "hostile", "unknown"]))
        group["modules"] = {
            "repeat": modules + modules[:1],
            "empty": [],
            "non_string": [*modules, 5],
            "many": [f"m{i}" for i in range(20_000)],
            "hostile": draw(hostile_value),
            "unknown": [*modules, "not.there"],
        }[choice]
    elif what == "text_field" and isinstance(draft.header, dict):
        key = draw(st.sampled_from(["notes", "trigger_word", "class_word", "x\udc80", "é"]))
        draft.header[key] = draw(
            st.sampled_from(["\udc80", "a\ud800b", "\x00", "\x1b[31mred", "é中", "\u202e", "\r\n"])
        )
    elif what == "duplicate_group" and group is not None:
        draft.header["adapters"] = [group, dict(group)]
    elif what == "many_groups" and group is not None:
        draft.header["adapters"] = [group] * draw(st.sampled_from([1025, 5000]))
    elif what == "tensor_dtype" and names:
        entry = draft.tensors[draw(st.sampled_from(names))]
        entry.dtype = draw(st.sampled_from(_BAD_DTYPES))
        size = _ITEM_SIZE[entry.dtype] * math.prod(entry.shape)
        entry.data = (entry.data * (size // max(len(entry.data), 1) + 1))[:size]
    elif what == "tensor_shape" and names:
        name = draw(st.sampled_from(names))
        shape = draw(st.sampled_from([(), (1,), (0,), (3, 0), (1, 1, 1), (2, 2, 2), (1, 1, 1, 1, 1), (4, 1), (1, 4)]))
        draft.tensors[name] = entry_of(draw(float_tensor(shape)))
    elif what == "tensor_values" and names:
        name = draw(st.sampled_from(names))
        entry = draft.tensors[name]
        value = draw(st.sampled_from([math.nan, math.inf, -math.inf, 1e38, 3.0e38, 0.0, -1.0]))
        dtype = (
            {v: k for k, v in _TORCH_NAMES.items()}[entry.dtype]
            if entry.dtype in _TORCH_NAMES.values()
            else torch.float32
        )
        entry.dtype = _TORCH_NAMES[dtype]
        entry.data = entry_of(torch.full(entry.shape, value, dtype=torch.float64).to(dtype)).data
    elif what == "tensor_drop" and names:
        del draft.tensors[draw(st.sampled_from(names))]
    elif what == "tensor_stray":
        stray = draw(
            st.sampled_from(
                ["stray.tap.down.weight", "a.oft.S", "x.tap.down.weight", names[0] + ".extra" if names else "e"]
            )
        )
        draft.tensors[stray] = entry_of(draw(float_tensor((2, 2))))
    elif what == "declared_shape" and names:
        entry = draft.tensors[draw(st.sampled_from(names))]
        entry.declared_shape = draw(
            st.sampled_from([[2**40, 2**40], [2**62, 4], [2**64 - 1], [-1], [1.5], ["a"], [0], [2**31, 2**31, 2**31]])
        )
    elif what == "offsets" and names:
        entry = draft.tensors[draw(st.sampled_from(names))]
        n = len(entry.data)
        entry.offsets = draw(
            st.sampled_from([[0, n + 8], [n, 0], [0, 2**63], [2**64 - 8, 2**64 - 1], [1, n + 1], [-1, n]])
        )
    elif what == "metadata_text":
        draft.metadata_text = draw(
            st.sampled_from(
                [
                    "",
                    "{",
                    "[]",
                    "null",
                    '{"format": "taptune/1", "kind": "tap", "adapters": NaN}',
                    '{"format": "taptune/1", "kind": "tap", "adapters": [{"mid_dim": 1e400}]}',
                    str(_DEEP),
                    '{"a":' * 40 + "1" + "}" * 40,
                    "\udc80",
                    '"\\ud800"',
                ]
            )
        )
    return draft


@st.composite
def hostile_file(draw: st.DrawFn) -> tuple[str, bytes | None]:
    """``(label, content)`` of one hostile adapter file; content ``None`` means a directory stands there."""
    family = draw(st.sampled_from(["semantic"] * 7 + ["container"] * 3))
    if family == "semantic":
        draft = draw(st.one_of(tap_draft(), oft_draft()))
        for _ in range(draw(st.integers(0, 3))):
            draw(mutate(draft))
        return "semantic:" + "+".join(draft.changes), draft.to_bytes()
    base = draw(st.one_of(tap_draft(), oft_draft())).to_bytes()
    kind = draw(
        st.sampled_from(
            ["random", "empty", "directory", "truncated", "bitflip", "prefix", "header_bytes", "no_metadata"]
        )
    )
    if kind == "random":
        return kind, draw(st.binary(max_size=512))
    if kind == "empty":
        return kind, b""
    if kind == "directory":
        return kind, None
    if kind == "truncated":
        return kind, base[: draw(st.integers(0, len(base) - 1))]
    if kind == "bitflip":
        data = bytearray(base)
        for _ in range(draw(st.integers(1, 8))):
            position = draw(st.integers(0, len(data) - 1))
            data[position] ^= 1 << draw(st.integers(0, 7))
        return kind, bytes(data)
    if kind == "prefix":
        value = draw(st.sampled_from([0, 1, 7, 2**32, 2**63, 2**64 - 1, len(base), 100_000_001]))
        return kind, struct.pack("<Q", value) + base[8:]
    if kind == "header_bytes":
        head = draw(
            st.sampled_from(
                [b"\xff\xfe{}", b'{"__metadata__": {"taptune": "\xc3\x28"}}', b"{" * 10_000, b"[]", b"null"]
            )
        )
        return kind, struct.pack("<Q", len(head)) + head
    draft = Draft({}, {"a.tap.down.weight": entry_of(torch.ones(2, 2))})
    head = to_json({"a.tap.down.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}).encode()
    draft.header_bytes = head
    return kind, draft.to_bytes()


# --------------------------------------------------------------------------------------------------
# Import folders
# --------------------------------------------------------------------------------------------------


class Trap:
    """A pickled object whose loading would create a directory: weights-only loading must refuse it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (self.marker,))


#: Where a trap pickle would leave its mark (inside the watched working folder).
TRAP_MARKER = "trap-was-unpickled"

# File content: bytes, a directory (None), or a torch state to save (dict), written by write_tree.
Tree = dict[str, Any]


@dataclass
class Saved:
    """A ``torch.save``d object (written when the folder is built)."""

    obj: Any

    def __repr__(self) -> str:  # falsifying examples stay readable
        keys = list(self.obj) if isinstance(self.obj, dict) else type(self.obj).__name__
        return f"Saved({keys})"


def write_tree(root: Path, tree: Tree) -> None:
    """Create ``tree`` under ``root``: bytes are files, ``None`` folders, :class:`Saved` torch pickles."""
    root.mkdir(parents=True)
    for name, content in tree.items():
        path = root / name
        if content is None:
            path.mkdir()
        elif isinstance(content, Saved):
            torch.save(content.obj, path)
        else:
            path.write_bytes(content)


@st.composite
def hostile_weights(draw: st.DrawFn, state: dict[str, torch.Tensor], suffix: str) -> Any:
    """``state`` written as ``suffix`` (``.safetensors`` or a pickle), possibly damaged or replaced."""
    how = draw(
        st.sampled_from(
            ["plain"] * 4 + ["trap", "random", "truncated", "directory", "empty", "int", "legacy", "deflated"]
        )
    )
    if how == "trap":
        return Saved({**state, "x": Trap(TRAP_MARKER)})
    if how == "random":
        return draw(st.binary(max_size=256))
    if how == "directory":
        return None
    if how == "empty":
        return b""
    if how == "int":
        state = {k: v.to(torch.int32) for k, v in state.items()} | {"n": torch.tensor(3)}
    if suffix == ".safetensors":
        draft = Draft({}, {k: entry_of(v) for k, v in state.items()})
        data = draft.to_bytes()
        return data[: draw(st.integers(0, len(data) - 1))] if how == "truncated" else data
    if how == "legacy":
        buffer = io.BytesIO()
        torch.save(state, buffer, _use_new_zipfile_serialization=False)
        return buffer.getvalue()
    if how == "deflated":  # what a zip bomb looks like: entries whose declared size the bytes do not back
        plain, packed = io.BytesIO(), io.BytesIO()
        torch.save(state, plain)
        with zipfile.ZipFile(plain) as source, zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as target:
            for entry in source.infolist():
                target.writestr(entry.filename, source.read(entry.filename))
        return packed.getvalue()
    if how == "truncated":
        buffer = io.BytesIO()
        torch.save(state, buffer)
        data = buffer.getvalue()
        return data[: draw(st.integers(0, len(data) - 1))]
    return Saved(state)


def _hostile_number(draw: st.DrawFn, good: Any) -> Any:
    return draw(st.one_of(st.just(good), hostile_value, st.sampled_from([10**9, 65, 64, 2**63, -5, 1e-300])))


@st.composite
def peft_folder(draw: st.DrawFn) -> Tree:
    """A PEFT OFT output folder (adapter_config.json + weights), hostile in one or more places."""
    k = draw(st.integers(2, 5))
    blocks = draw(st.integers(1, 3))
    n = k * (k - 1) // 2
    modules = draw(
        st.lists(
            st.sampled_from(
                [
                    "base_model.model.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
                    "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k",
                    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
                    "up_blocks.9999.attentions.9999.x",
                    "encoder.layer.0",
                ]
            ),
            min_size=1,
            max_size=3,
            unique=True,
        )
    )
    state: dict[str, torch.Tensor] = {}
    for module in modules:
        shape = draw(
            st.sampled_from(
                [(blocks, n)] * 6
                + [(n,), (blocks, n + 1), (blocks, 1, n), (1, 2**17 + 1), (40_000, 1), (300, 45), (1, 400 * 399 // 2)]
            )
        )
        value = draw(float_tensor(shape, scale=draw(st.sampled_from([1e-4, 0.01, 0.3, 1e30]))))
        if draw(st.integers(0, 9)) == 0:
            value = value.clone().fill_(draw(st.sampled_from([math.nan, math.inf])))
        suffix = draw(st.sampled_from([".oft_R.weight"] * 5 + [".oft_r", ".oft_s", ".oft_blocks", ".lora_A.weight"]))
        state[module + suffix] = value
    config: dict[str, Any] = {"peft_type": "OFT", "oft_block_size": k, "r": 0}
    for key, good in (
        ("use_cayley_neumann", draw(st.booleans())),
        ("num_cayley_neumann_terms", 5),
        ("block_share", False),
        ("eps", 6e-5),
        ("coft", False),
        ("peft_version", "0.18.0"),
    ):
        if draw(st.booleans()):
            config[key] = _hostile_number(draw, good) if draw(st.integers(0, 2)) == 0 else good
    if draw(st.integers(0, 5)) == 0:
        config[draw(st.sampled_from(["oft_block_size", "peft_type"]))] = draw(hostile_value)
    if draw(st.integers(0, 9)) == 0:
        config["peft_version"] = "0." + "9" * draw(st.sampled_from([10, 60, 5000]))
    config_file = draw(
        st.sampled_from(["json"] * 6 + ["not_json", "not_utf8", "deep", "list", "directory", "missing", "huge_number"])
    )
    tree: Tree = {}
    tree["adapter_config.json"] = {
        "json": to_json(config).encode("utf-8", "surrogatepass"),
        "not_json": b"{'peft_type': 'OFT'",
        "not_utf8": b'{"peft_type": "\xff\xfe"}',
        "deep": str(_DEEP).encode(),
        "list": b"[1, 2]",
        "directory": None,
        "missing": b"",
        "huge_number": b'{"oft_block_size": 4, "num_cayley_neumann_terms": 1' + b"0" * 5000 + b"}",
    }[config_file]
    if config_file == "missing":
        del tree["adapter_config.json"]
    suffix = draw(st.sampled_from([".safetensors"] * 3 + [".bin"]))
    tree["adapter_model" + suffix] = draw(hostile_weights(state, suffix))
    return tree


@st.composite
def official_oft_file(draw: st.DrawFn) -> Tree:
    """An official OFT DreamBooth output (``...processor.to_q_oft.R``), hostile in shapes, values or container."""
    state: dict[str, torch.Tensor] = {}
    for attention in draw(
        st.lists(
            st.sampled_from(
                ["down_blocks.0.attentions.0", "mid_block.attentions.0", "up_blocks.1.attentions.2", "text.x"]
            ),
            min_size=1,
            max_size=2,
            unique=True,
        )
    ):
        layer = draw(st.sampled_from(["to_q", "to_k", "to_v", "to_out"]))
        shape = draw(st.sampled_from([(4, 3, 3), (3, 3), (2, 3, 4), (5,), (1, 1, 1, 1), (65537, 1, 1), (1, 1)]))
        value = draw(float_tensor(shape, scale=draw(st.sampled_from([0.01, 1.0, 1e30]))))
        if draw(st.integers(0, 9)) == 0:
            value = value.clone().fill_(draw(st.sampled_from([math.nan, math.inf])))
        state[f"{attention}.transformer_blocks.0.attn1.processor.{layer}_oft.R"] = value
    suffix = draw(st.sampled_from([".bin", ".safetensors"]))
    return {"pytorch_lora_weights" + suffix: draw(hostile_weights(state, suffix))}


_OFFICIAL_YAML = {
    "model": {
        "params": {
            "unet_config": {
                "params": {
                    "adapter_config": {
                        "transformer_adp_config": [
                            {
                                "type": "inout",
                                "din": "attn2o",
                                "dout": "ffni",
                                "mid_dim": 2,
                                "method": "default",
                                "scale": 1.0,
                            }
                        ],
                        "resblock_adp_config": {
                            "type": "inout",
                            "din": "resi",
                            "dout": "reso",
                            "mid_dim": 2,
                            "method": "default",
                            "scale": 1.0,
                        },
                    }
                }
            }
        }
    }
}
_ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(9)
)
_HOSTILE_YAML = [
    _ALIAS_BOMB,
    _ALIAS_BOMB + yaml.safe_dump(_OFFICIAL_YAML),
    "[" * 5000 + "]" * 5000,
    "x:\n" + "".join(" " * (i + 1) + "- \n" for i in range(3000)),
    "a: &a [*a]\n",
    "!!python/object/apply:os.mkdir ['" + TRAP_MARKER + "']\n",
    "[" + ", ".join(["0"] * 20_000) + "]",
    "[" + ",".join(["0"] * 16_350) + "]",  # just under the 32 KiB bound: the slowest YAML still read
    "[" + ",".join(["0"] * 16_400) + "]",  # just over it
    "adapter_config: {transformer_adp_config: " + "[" * 900 + "{din: attn2o}" + "]" * 900 + "}",
    "adapter_config: {transformer_adp_config: {type: inout, din: attn2o, dout: ffni, mid_dim: 1.0e+400}}",
    "adapter_config: {transformer_adp_config: {type: inout, din: attn2o, dout: ffni, mid_dim: .nan}}",
    "adapter_config: {transformer_adp_config: {type: inout, din: attn2o, dout: ffni, mid_dim: 99999999999999999999}}",
    "adapter_config: {transformer_adp_config: {type: lora}}",
    "adapter_config: {transformer_adp_config: [[], {}]}",
    "adapter_config: {transformer_adp_config: 5, resblock_adp_config: [x]}",
    "adapter_config: {? [a, b] : 1}",
    "adapter_config: !!set {a, b}",
    "adapter_config: {transformer_adp_config: !!binary aGVsbG8=}",
    "adapter_config: {transformer_adp_config: {type: inout, din: 2020-01-01}}",
    "%YAML 9.9\n--- x",
    "--- a\n--- b\n",
]


@st.composite
def official_tap_folder(draw: st.DrawFn) -> tuple[Tree, str | None]:
    """An official tap folder (``<din>-<dout>.yaml`` + ``<module>.adapter_inout.pt`` / ``.adapter.pt``) and an explicit config name or None."""
    mid = 2
    tree: Tree = {}
    how = draw(st.sampled_from(["good"] * 3 + ["hostile", "field", "not_utf8", "directory", "two", "none"]))
    config = json.loads(json.dumps(_OFFICIAL_YAML))
    if how == "field":
        entry = config["model"]["params"]["unet_config"]["params"]["adapter_config"]["transformer_adp_config"][0]
        entry[draw(st.sampled_from(["mid_dim", "din", "scale", "method", "type"]))] = "RAWVALUE"
        text = yaml.safe_dump(config).replace(
            "RAWVALUE",
            draw(st.sampled_from(["1.0e+400", ".nan", "-.inf", "true", "[1]", "99999999999", "0", "~", "'60'"])),
        )
    else:
        text = yaml.safe_dump(config) if how in ("good", "two", "none") else draw(st.sampled_from(_HOSTILE_YAML))
    if how == "not_utf8":
        tree["attn2o-ffni.yaml"] = b"model: \xff\xfe\n"
    elif how == "directory":
        tree["attn2o-ffni.yaml"] = None
    elif how != "none":
        tree["attn2o-ffni.yaml"] = text.encode()
    if how == "two":
        tree["other.yml"] = text.encode()
    for path in draw(
        st.lists(
            st.sampled_from(
                [
                    "input_blocks.1.1.transformer_blocks.0",
                    "model.diffusion_model.middle_block.1.transformer_blocks.0",
                    "input_blocks.1.0",
                ]
            ),
            min_size=1,
            max_size=2,
            unique=True,
        )
    ):
        conv = not path.endswith("transformer_blocks.0")
        d = draw(st.integers(1, 4))
        if conv:
            state = {"0.weight": torch.ones(32), "0.bias": torch.zeros(32), "2.weight": torch.zeros(mid, 32, 3, 3)}
            state |= {"2.bias": torch.zeros(mid), "4.weight": torch.zeros(32, mid, 3, 3), "4.bias": torch.zeros(32)}
        else:
            state = {"adp.0.weight": draw(float_tensor((mid, d))), "adp.0.bias": torch.zeros(mid)}
            state |= {"adp.2.weight": draw(float_tensor((d, mid))), "adp.2.bias": torch.zeros(d)}
        damage = draw(st.sampled_from(["none"] * 3 + ["key", "shape", "nan", "extra"]))
        key = draw(st.sampled_from(sorted(state)))
        if damage == "key":
            state["zz." + key] = state.pop(key)
        elif damage == "shape":
            state[key] = torch.zeros(draw(st.sampled_from([(), (0,), (1, 1, 1), (3, 3, 3, 3, 3)])))
        elif damage == "nan":
            state[key] = torch.full_like(state[key], math.nan)
        elif damage == "extra":
            state["step"] = torch.tensor(5)
        tree[path + (".adapter.pt" if conv else ".adapter_inout.pt")] = draw(hostile_weights(state, ".pt"))
    explicit = draw(st.sampled_from([None, None, None, "attn2o-ffni.yaml", "missing.yaml"]))
    return tree, explicit


# --------------------------------------------------------------------------------------------------
# The checks
# --------------------------------------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its size and modification time (folders: only that they exist)."""
    out = {}
    for path in root.rglob("*"):
        info = path.lstat()
        out[str(path.relative_to(root))] = (-1, 0) if path.is_dir() else (info.st_size, info.st_mtime_ns)
    return out


@dataclass
class Tally:
    """What a loop saw: examples, outcomes, the slowest call."""

    examples: int = 0
    calls: int = 0
    refused: int = 0
    accepted: int = 0
    slowest_s: float = 0.0
    slowest_what: str = ""
    slow: list[tuple[str, float]] = field(default_factory=list)  # calls over a quarter of the bound
    labels: dict[str, int] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)  # per reader and input family: accepted / refused


class Escape(AssertionError):
    """A reader misbehaved on a generated input."""


def timed(tally: Tally, what: str, call: Callable[[], Any]) -> tuple[Any, BaseException | None]:
    """Run ``call``; returns ``(result, pack error)``; anything but a :class:`TapTuneError` is an :class:`Escape`."""
    tally.calls += 1
    start = time.perf_counter()
    try:
        result, error = call(), None
    except TapTuneError as exc:
        result, error = None, exc
    except Exception as exc:
        raise Escape(f"{what}: {type(exc).__name__} escaped: {str(exc)[:300]}") from exc
    finally:
        elapsed = time.perf_counter() - start
        if elapsed > CALL_SECONDS / 4:
            tally.slow.append((what, round(elapsed, 3)))
        if elapsed > tally.slowest_s:
            tally.slowest_s, tally.slowest_what = elapsed, what
    if elapsed > CALL_SECONDS:
        raise Escape(f"{what} took {elapsed:.2f} s (bound {CALL_SECONDS} s)")
    if error is None:
        tally.accepted += 1
    else:
        tally.refused += 1
    key = f"{what.partition(':')[0]} {'ok' if error is None else 'refused'}"
    tally.outcomes[key] = tally.outcomes.get(key, 0) + 1
    return result, error


def check_names(error: BaseException | None, names: str | list[str], what: str) -> None:
    """A pack error must name the file it is about (attribute and message): ``names`` or one of them."""
    if error is None:
        return
    assert isinstance(error, TapTuneError)
    allowed = [names] if isinstance(names, str) else names
    if error.file not in allowed or error.file not in str(error):
        raise Escape(f"{what}: the error names {error.file!r}, not one of {allowed[:4]}: {error!s}"[:400])


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """The command line in process, printing to strict UTF-8 streams as a terminal would."""
    out_bytes, err_bytes = io.BytesIO(), io.BytesIO()
    out = io.TextIOWrapper(out_bytes, encoding="utf-8", errors="strict")
    err = io.TextIOWrapper(err_bytes, encoding="utf-8", errors="strict")
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    out.flush()
    err.flush()
    return code, out_bytes.getvalue().decode(), err_bytes.getvalue().decode()


def check_cli(tally: Tally, argv: list[str], name: str, accepted: bool, what: str) -> None:
    """The CLI must agree with the library call: exit 0 when it succeeded, 2 naming ``name`` otherwise."""
    (code, _, err), error = timed(tally, what, lambda: run_cli(argv))
    if error is not None:
        raise Escape(f"{what}: {type(error).__name__} escaped the command line: {error}")
    if code != (0 if accepted else 2) or (code == 2 and name not in err):
        raise Escape(f"{what}: exit {code} (library {'accepted' if accepted else 'refused'}); stderr {err[:300]!r}")


def _expect_unchanged(
    work: Path, before: dict[str, tuple[int, int]], what: str, allowed: set[str] = frozenset()
) -> None:
    after = {k: v for k, v in snapshot(work).items() if k not in allowed}
    if after != before:
        changed = sorted(set(after) ^ set(before)) or [k for k in after if after[k] != before.get(k)]
        raise Escape(f"{what}: the working folder changed: {changed[:5]}")


FILE_NAMES = ("adapter.safetensors", "wéird name 1.safetensors", "x")


def file_loop(work: Path, tally: Tally) -> None:
    """``FILE_EXAMPLES`` hostile adapter files through the loader and the ``info`` command."""

    @settings(
        max_examples=FILE_EXAMPLES,
        derandomize=True,
        database=None,
        deadline=int(CALL_SECONDS * 3 * 1000),  # two reader calls plus building the file
        # Building a file draws many values (data_too_large/too_slow would fire on the biggest drafts
        # by design); the generated inputs are meant to be large and slow-ish.
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
        print_blob=True,
    )
    @given(case=hostile_file(), name=st.sampled_from(FILE_NAMES))
    def one(case: tuple[str, bytes | None], name: str) -> None:
        tally.examples += 1
        label, content = case
        family = label.partition(":")[0]
        tally.labels[family] = tally.labels.get(family, 0) + 1
        case_dir = work / "case"
        shutil.rmtree(case_dir, ignore_errors=True)
        case_dir.mkdir()
        path = case_dir / name
        if content is None:
            path.mkdir()
        else:
            path.write_bytes(content)
        before = snapshot(work)
        _, error = timed(tally, f"load {label}", lambda: load_adapter_set(path))
        check_names(error, name, f"load {label}")
        check_cli(tally, ["info", str(path)], name, error is None, f"info {label}")
        _expect_unchanged(work, before, label)
        shutil.rmtree(case_dir)

    one()


def folder_loop(work: Path, tally: Tally) -> None:
    """``FOLDER_EXAMPLES`` hostile import folders through the OFT and official-tap importers and the CLI."""

    @settings(
        max_examples=FOLDER_EXAMPLES,
        derandomize=True,
        database=None,
        deadline=int(CALL_SECONDS * 4 * 1000),  # up to three reader calls plus torch.save of the folder
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
        print_blob=True,
    )
    @given(
        case=st.one_of(
            peft_folder().map(lambda t: ("peft", t, None)),
            official_oft_file().map(lambda t: ("official_oft", t, None)),
            official_tap_folder().map(lambda t: ("official_tap", t[0], t[1])),
        )
    )
    def one(case: tuple[str, Tree, str | None]) -> None:
        tally.examples += 1
        label, tree, explicit = case
        tally.labels[label] = tally.labels.get(label, 0) + 1
        case_dir = work / "case"
        shutil.rmtree(case_dir, ignore_errors=True)
        folder = case_dir / "adapter folder"
        write_tree(folder, tree)
        before = snapshot(work)
        if label == "official_tap":
            config = str(folder / explicit) if explicit else None
            _, error = timed(tally, label, lambda: import_official_tap_dir(folder, config))
            check_names(error, [folder.name, *tree, explicit or folder.name], label)
            _expect_unchanged(work, before, label)
            output = case_dir / "out.safetensors"
            argv = ["convert-official", str(folder), str(output)] + (["--config", config] if config else [])
            (code, _, err), cli_error = timed(tally, f"cli {label}", lambda: run_cli(argv))
            if cli_error is not None or code != (0 if error is None else 2):
                raise Escape(f"{label}: convert-official exit {code} ({cli_error}); stderr {err[:300]!r}")
            # Only a successful conversion may write, and only its output file.
            _expect_unchanged(work, before, label, {"case/out.safetensors"} if error is None else set())
            if error is None:
                _, reload_error = timed(tally, "reload", lambda: load_adapter_set(output))
                if reload_error is not None:
                    raise Escape(f"{label}: the converted file does not load: {reload_error}")
        else:
            for source in (folder, *(folder / n for n in tree if label == "official_oft")):
                _, error = timed(tally, label, lambda s=source: import_oft(s))
                check_names(error, [source.name, *tree], label)
                _expect_unchanged(work, before, label)
        if (work / TRAP_MARKER).exists():
            raise Escape(f"{label}: a pickle was executed")
        shutil.rmtree(case_dir)

    one()


def warm_up(work: Path) -> None:
    """Load each reader once on small valid and invalid inputs, so the memory baseline includes the libraries."""
    tally = Tally()
    folder = work / "warm"
    folder.mkdir()
    good = Draft(
        {"format": "taptune/1", "kind": "oft", "adapters": [{"r": 1, "modules": ["a"]}]},
        {"a.oft.S": entry_of(torch.zeros(1, 2, 2))},
    )
    (folder / "good.safetensors").write_bytes(good.to_bytes())
    (folder / "bad.safetensors").write_bytes(b"junk")
    torch.save({"adp.0.weight": torch.zeros(1, 1)}, folder / "a.adapter_inout.pt")
    (folder / "c.yaml").write_text(yaml.safe_dump(_OFFICIAL_YAML))
    for _ in range(3):
        for call in (
            lambda: load_adapter_set(folder / "good.safetensors"),
            lambda: load_adapter_set(folder / "bad.safetensors"),
            lambda: run_cli(["info", str(folder / "good.safetensors")]),
            lambda: import_oft(folder / "good.safetensors"),
            lambda: import_official_tap_dir(folder),
            lambda: yaml.safe_load("[" * 100 + "]" * 100),
        ):
            with contextlib.suppress(TapTuneError):
                timed(tally, "warm-up", call)
    shutil.rmtree(folder)


def main(argv: list[str]) -> int:
    """``files|folders REPORT.json [EXAMPLES]``: run one loop in the current (empty) folder and write its report."""
    global FILE_EXAMPLES, FOLDER_EXAMPLES
    mode, report, *count = argv
    if count:  # a shorter run, for working on a reader
        FILE_EXAMPLES = FOLDER_EXAMPLES = int(count[0])
    work = Path.cwd()
    torch.set_num_threads(1)
    warm_up(work)
    start_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    tally = Tally()
    start = time.perf_counter()
    error = ""
    try:
        (file_loop if mode == "files" else folder_loop)(work, tally)
    except BaseException:  # reported to the test, which fails with it
        error = traceback.format_exc()[-20_000:]
    end_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "mode": mode,
        "examples": tally.examples,
        "calls": tally.calls,
        "accepted": tally.accepted,
        "refused": tally.refused,
        "labels": tally.labels,
        "outcomes": tally.outcomes,
        "slowest_s": round(tally.slowest_s, 4),
        "slowest_what": tally.slowest_what,
        "slow": tally.slow[:50],
        "seconds": round(time.perf_counter() - start, 1),
        "rss_after_warm_up_mib": round(start_rss, 1),
        "rss_peak_mib": round(end_rss, 1),
        "error": error,
    }
    Path(report).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
