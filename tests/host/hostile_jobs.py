"""Generated hostile job files and sweep plans, and the loop that feeds them to the headless tools (issue 22).

Each case starts from a sound job (or plan) and applies one to three mutations drawn from a seeded
generator: a value anywhere in the document replaced by something hostile (integers far beyond any
float, seeds beyond 64 bits, NaN, ``1e400``, wrong types, deep nesting, NUL, lone surrogates, huge
texts, paths to FIFOs and devices), keys removed or added, or the file itself damaged (truncated,
not UTF-8, a BOM, oversized, empty, random bytes, a folder, a FIFO, a link loop). Plans add YAML's
own hazards: aliases (a billion laughs, anywhere in the plan), tags, dates, several documents, a
``ray.address``. Every job's checkpoint is itself hostile (text, truncated or foreign safetensors,
compressed or code-carrying pickles, a folder, a FIFO, nothing).

The command line runs in process through its own ``main`` with ``--check`` (every check a real run
makes before ComfyUI loads anything), under a per-case alarm so that a hang fails the case instead
of the suite. Each case must end in exit 0 (the job or plan is sound) or exit 2 with exactly one
line on stderr naming a field the mutation touched; it must write nothing.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import random
import shutil
import signal
import struct
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..core.hostile_inputs import Raw

#: Longest one case (writing it, the command line in process) may take, and the alarm that stops a hang.
CASE_SECONDS = 2.0
HANG_SECONDS = 10
#: Most the resident set may grow over a loop, after a warm-up (MiB).
MEMORY_GROWTH_MIB = 128

# --------------------------------------------------------------------------------------------------
# Shared files: an image folder, hostile checkpoints, a FIFO
# --------------------------------------------------------------------------------------------------


@dataclass
class Fixture:
    """Files every case may point at (made once per loop, outside the case folders)."""

    root: Path
    images: Path
    fifo: Path
    checkpoints: dict[str, Path]


def _safetensors(header: dict[str, Any], data: bytes = b"") -> bytes:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


class _Trap:
    """Unpickling this would create a file (no loader may ever do it)."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, ("TRAP-RAN", "w"))


def make_fixture(root: Path) -> Fixture:
    """The shared image folder, FIFO and hostile checkpoint files under ``root``."""
    images = root / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(images / f"img_{i}.png")
    (images / "img_0.txt").write_text("a photo of sks dog")
    (images / "img_1.txt").write_text("a photo of sks dog")
    fifo = root / "fifo"
    os.mkfifo(fifo)
    ck = root / "checkpoints"
    ck.mkdir()
    foreign = _safetensors({"foo.weight": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(8))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"state_dict": {}}))
        archive.writestr("archive/data/0", bytes(2**20))
    stored = io.BytesIO()
    with zipfile.ZipFile(stored, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", pickle.dumps(_Trap()))
    files = {
        "text.safetensors": b"this is a text file, not a model\n",
        "truncated.safetensors": foreign[:20],
        "lying.safetensors": struct.pack("<Q", 2**40) + b"{}",
        "foreign.safetensors": foreign,
        "compressed.ckpt": buffer.getvalue(),
        "code.ckpt": stored.getvalue(),
        "legacy.ckpt": pickle.dumps(_Trap()),
        "empty.safetensors": b"",
    }
    checkpoints = {}
    for name, data in files.items():
        (ck / name).write_bytes(data)
        checkpoints[name] = ck / name
    (ck / "folder.safetensors").mkdir()
    checkpoints["folder.safetensors"] = ck / "folder.safetensors"
    checkpoints["fifo"] = fifo
    checkpoints["missing.safetensors"] = ck / "missing.safetensors"
    checkpoints["dev-zero"] = Path("/dev/zero")
    return Fixture(root, images, fifo, checkpoints)


def to_json(value: Any) -> str:
    """JSON text of ``value`` with :class:`Raw` pieces inserted verbatim (``1e400``, ``NaN``, YAML-only syntax)."""
    raws: list[str] = []

    def swap(item: Any) -> Any:
        if isinstance(item, Raw):
            raws.append(str(item))
            return f"@@raw{len(raws) - 1}@@"
        if isinstance(item, dict):
            return {k: swap(v) for k, v in item.items()}
        if isinstance(item, list):
            return [swap(v) for v in item]
        return item

    text = json.dumps(swap(value))
    for i, raw in enumerate(raws):
        text = text.replace(f'"@@raw{i}@@"', raw, 1)
    return text


# --------------------------------------------------------------------------------------------------
# Mutations
# --------------------------------------------------------------------------------------------------


def hostile_values(fx: Fixture) -> list[Any]:
    """Values any field may be given."""
    return [
        10**30,
        -(10**30),
        2**64 + 1,
        2**63,
        -1,
        Raw("1" + "0" * 400),  # an integer of 401 digits (beyond any float)
        Raw("9" * 5000),  # beyond Python's integer-parsing limit
        Raw("1e400"),
        Raw("-1e400"),
        Raw("NaN"),
        Raw("Infinity"),
        1e308,
        -0.0,
        5e-324,
        0.5,
        None,
        True,
        False,
        [],
        {},
        [1, 2, 3],
        {"a": 1},
        "",
        " ",
        "x" * 100_000,
        "a\x00b",
        "line\nbreak\r\x1b[31m",
        Raw('"\\ud800 lone"'),
        "é中\u202e",
        "../../../../etc/passwd",
        "/dev/zero",
        str(fx.fifo),
        str(fx.root),
        "~",
        "~nobody_here/x",
        list(range(1000)),
        Raw("[" * 40 + "]" * 40),
        Raw("{" + ",".join(f'"k{i}":{i}' for i in range(3000)) + "}"),
    ]


def paths_of(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path (keys and list indices) inside a JSON-like value."""
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            out += paths_of(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out += paths_of(item, (*prefix, i))
    return out


def _set(document: Any, path: tuple[Any, ...], value: Any, delete: bool = False) -> None:
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value


@dataclass
class Case:
    """One generated file: its bytes (or a kind of non-file), what was done, the fields it may name."""

    label: str
    content: bytes | None  # None: ``special`` says what the path is
    special: str = ""
    touched: set[str] = field(default_factory=set)


def _mutate_values(rng: random.Random, document: dict[str, Any], fx: Fixture, extra: list[Any]) -> tuple[str, set[str]]:
    """One to three value mutations of ``document`` in place; returns the label and the fields touched."""
    labels, touched = [], set()
    for _ in range(rng.randint(1, 3)):
        paths = paths_of(document)
        if not paths:
            break
        path = rng.choice(paths)
        action = rng.random()
        if action < 0.12:
            _set(document, path, None, delete=True)
            labels.append("delete")
        elif action < 0.22:
            parent = document
            for key in path[:-1]:
                parent = parent[key]
            if isinstance(parent, dict):
                key = rng.choice(["extra", "", "\u202e", "x" * 300, "settings", "address"])
                parent[key] = rng.choice(hostile_values(fx))
                touched |= {key[:60], "format"}
                labels.append("add")
            else:
                continue
        else:
            _set(document, path, rng.choice(hostile_values(fx) + extra))
            labels.append("value")
        touched |= {str(p) for p in path if isinstance(p, str)}
    return "value:" + "+".join(labels), touched


def _damage_text(rng: random.Random, text: bytes, fx: Fixture) -> Case:
    """The file itself, damaged."""
    kind = rng.choice(
        ["truncate", "latin1", "bom", "random", "empty", "huge", "folder", "fifo", "loop", "nest", "garbage-tail"]
    )
    if kind == "truncate":
        return Case("file:truncate", text[: rng.randrange(1, max(2, len(text)))])
    if kind == "latin1":
        cut = rng.randrange(len(text))
        return Case("file:not-utf8", text[:cut] + b"\xff\xfe\xe9" + text[cut:])
    if kind == "bom":
        return Case("file:bom", b"\xef\xbb\xbf" + text)
    if kind == "random":
        return Case("file:random", rng.randbytes(rng.randrange(1, 4000)))
    if kind == "empty":
        return Case("file:empty", b"")
    if kind == "huge":
        return Case("file:huge", None, "huge")
    if kind == "folder":
        return Case("file:folder", None, "folder")
    if kind == "fifo":
        return Case("file:fifo", None, "fifo")
    if kind == "loop":
        return Case("file:loop", None, "loop")
    if kind == "nest":
        depth = rng.choice([33, 100, 10_000, 200_000])
        return Case("file:nest", b"[" * depth + b"]" * depth)
    return Case("file:garbage-tail", text + rng.randbytes(rng.randrange(1, 50)))


def job_document(fx: Fixture, checkpoint: Path) -> dict[str, Any]:
    """A sound job whose only fault is its (hostile) checkpoint."""
    return {
        "format": "taptune-job/1",
        "checkpoint": str(checkpoint),
        "spec": {
            "kind": "tap",
            "groups": [
                {
                    "config": {"din": "attn2o", "dout": "ffni", "mid_dim": 8, "method": "relu", "scale": 1.0},
                    "blocks": "all",
                    "init": "zero_up",
                }
            ],
        },
        "instance": {"folder": str(fx.images), "prompt": "a photo of sks dog"},
        "class": {"prompt": "a photo of dog", "generate": {"count": 2, "steps": 2, "width": 64, "height": 64}},
        "settings": {
            "steps": 3,
            "learning_rate": 3e-3,
            "resolution": 64,
            "batch_size": 2,
            "seed": 1,
            "prior_loss_weight": 1.0,
            "precision": "fp32",
        },
        "output": {"adapter": "adapter.safetensors"},
        "checkpoints": {"folder": "checkpoints", "resume_from": None},
    }


def job_case(rng: random.Random, fx: Fixture) -> Case:
    """One hostile job file."""
    checkpoint = fx.checkpoints[rng.choice(sorted(fx.checkpoints))]
    document = job_document(fx, checkpoint)
    if rng.random() < 0.15:
        return _damage_text(rng, to_json(document).encode(), fx)
    extra = [{"count": 10_000, "width": 4096, "height": 4096}, {"count": 0}, {"width": 100}, 2**63 - 1, 2**63]
    label, touched = _mutate_values(rng, document, fx, extra)
    text = to_json(document)
    return Case(label, text.encode("utf-8", "surrogatepass"), touched=touched)


def plan_document(fx: Fixture, checkpoint: Path) -> dict[str, Any]:
    """A sound plan (one configuration, one subject, two seeds) whose jobs' only fault is the checkpoint."""
    job = job_document(fx, checkpoint)
    return {
        "format": "taptune-sweep/1",
        "checkpoint": str(checkpoint),
        "output": "results",
        "settings": {k: v for k, v in job["settings"].items() if k != "seed"},
        "configurations": {"tap8": {"spec": job["spec"]}, "tap8b": {"spec": job["spec"], "settings": {"steps": 2}}},
        "subjects": {"dog": {"instance": job["instance"], "class": job["class"]}},
        "seeds": [0, 1],
        "ray": {"num_gpus": 0, "num_cpus": 1},
    }


def _yaml_hazard(rng: random.Random) -> Raw:
    """A YAML-only value (flow syntax, so it fits inside the JSON-shaped plan)."""
    kind = rng.randrange(9)
    if kind == 0:  # a billion laughs: each level nine aliases of the one before
        levels = ", ".join(
            ["&l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
            + [f"&l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
        )
        return Raw(f"[{levels}]")
    if kind == 1:
        return Raw("&a {steps: 3}")
    if kind == 2:
        return Raw(rng.choice([".inf", "-.inf", ".nan", ".NaN"]))
    if kind == 3:
        return Raw(rng.choice(["2020-01-01", "2001-12-14t21:59:43.10-05:00"]))
    if kind == 4:
        return Raw(rng.choice(["!!binary aGVsbG8=", "!!set {a, b}", "!!python/object:os.system {}", "!!omap [a: 1]"]))
    if kind == 5:
        return Raw("9" * rng.choice([30, 400, 5000]))
    if kind == 6:
        return Raw("0x" + "f" * 40)
    if kind == 7:
        return Raw("[" * 40 + "]" * 40)
    return Raw("{? [1, 2] : x}")  # a key that is a list


def plan_case(rng: random.Random, fx: Fixture) -> Case:
    """One hostile plan."""
    checkpoint = fx.checkpoints[rng.choice(sorted(fx.checkpoints))]
    document = plan_document(fx, checkpoint)
    roll = rng.random()
    if roll < 0.12:
        return _damage_text(rng, to_json(document).encode(), fx)
    if roll < 0.2:
        hazard = rng.choice(
            [
                b"---\n" + to_json(document).encode() + b"\n---\n{}\n",
                to_json(document).encode() + b"\n\t- tab",
                b"format: taptune-sweep/1\n" + b"x: " + b"a" * 300_000,
                to_json({**document, "ray": {"address": "10.0.0.1:6379"}}).encode(),
                to_json({**document, "seeds": list(range(1001))}).encode(),
                to_json({**document, "seeds": [0, 0]}).encode(),
                to_json({**document, "configurations": {f"c{i}": {"spec": {}} for i in range(200)}}).encode(),
            ]
        )
        touched = {"ray", "seeds", "configurations", "spec", "x"}
        return Case("plan:structure", hazard, touched=touched)
    extra = [_yaml_hazard(rng) for _ in range(4)] + [{"address": "auto"}, "ray", [True], [-1], [2**64]]
    label, touched = _mutate_values(rng, document, fx, extra)
    if rng.random() < 0.2:  # a YAML-only value somewhere, not only where values are checked
        path = rng.choice(paths_of(document))
        _set(document, path, _yaml_hazard(rng))
        touched |= {str(p) for p in path if isinstance(p, str)}
        label += "+yaml"
    return Case(label, to_json(document).encode("utf-8", "surrogatepass"), touched=touched)


def write_case(case: Case, path: Path) -> None:
    """Put the case at ``path`` (a file, or the kind of non-file it asks for)."""
    if case.content is not None:
        path.write_bytes(case.content)
    elif case.special == "huge":
        with open(path, "wb") as handle:
            handle.truncate(8 * 2**20)  # sparse: over every reader's bound, costs nothing
    elif case.special == "folder":
        path.mkdir()
    elif case.special == "fifo":
        os.mkfifo(path)
    elif case.special == "loop":
        path.symlink_to(path)


# --------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------


class Hang(Exception):
    """A case ran past the alarm."""


def resident_mib() -> float:
    """This process's resident memory now (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def run_cli(main: Callable[[list[str]], int], argv: list[str]) -> tuple[int, str, str]:
    """``main(argv)`` in process with strict UTF-8 output streams (as a terminal), under the hang alarm."""
    out_bytes, err_bytes = io.BytesIO(), io.BytesIO()
    out = io.TextIOWrapper(out_bytes, encoding="utf-8", errors="strict")
    err = io.TextIOWrapper(err_bytes, encoding="utf-8", errors="strict")

    def alarm(signum: int, frame: Any) -> None:
        raise Hang(f"{argv} ran past {HANG_SECONDS} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(HANG_SECONDS)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    out.flush()
    err.flush()
    return code, out_bytes.getvalue().decode(), err_bytes.getvalue().decode()


@dataclass
class Report:
    """What a loop saw."""

    cases: int = 0
    accepted: int = 0
    refused: int = 0
    slowest_s: float = 0.0
    slowest: str = ""
    rss_start_mib: float = 0.0
    rss_peak_mib: float = 0.0
    labels: dict[str, int] = field(default_factory=dict)
    fields: dict[str, int] = field(default_factory=dict)
    examples: dict[str, str] = field(default_factory=dict)  # one message per field named
    failures: list[str] = field(default_factory=list)


def snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def fuzz(
    kind: str,
    count: int,
    work: Path,
    main: Callable[[list[str]], int],
    make: Callable[[random.Random, Fixture], Case],
    file_name: str,
) -> Report:
    """``count`` generated cases of ``make`` through ``main([path, "--check"])``; the report of what happened."""
    fx = make_fixture(work / "shared")
    rng = random.Random(f"issue-22-{kind}")
    report = Report()
    for warm in range(20):  # imports, caches: the baseline includes them
        case_dir = work / f"warm{warm}"
        case_dir.mkdir()
        write_case(make(rng, fx), case_dir / file_name)
        run_cli(main, [str(case_dir / file_name), "--check"])
        shutil.rmtree(case_dir)
    report.rss_start_mib = report.rss_peak_mib = resident_mib()
    for index in range(count):
        case = make(rng, fx)
        case_dir = work / f"case{index}"
        case_dir.mkdir()
        path = case_dir / file_name
        write_case(case, path)
        before = snapshot(work)
        start = time.perf_counter()
        try:
            code, out, err = run_cli(main, [str(path), "--check"])
        except Hang as exc:
            report.failures.append(f"{case.label}: hang: {exc}")
            continue
        except BaseException as exc:  # anything escaping the command line is a raw error
            report.failures.append(f"{case.label}: {type(exc).__name__} escaped: {str(exc)[:300]}")
            continue
        elapsed = time.perf_counter() - start
        report.cases += 1
        report.labels[case.label.split(":")[0]] = report.labels.get(case.label.split(":")[0], 0) + 1
        if elapsed > report.slowest_s:
            report.slowest_s, report.slowest = elapsed, case.label
        report.rss_peak_mib = max(report.rss_peak_mib, resident_mib())
        problem = judge(case, code, out, err)
        if snapshot(work) != before:
            problem = problem or f"wrote {sorted(snapshot(work) - before)[:3]}"
        if (Path.cwd() / "TRAP-RAN").exists() or (case_dir / "TRAP-RAN").exists():
            problem = problem or "a pickle's code ran"
        if elapsed > CASE_SECONDS:
            problem = problem or f"took {elapsed:.2f} s"
        if problem:
            report.failures.append(f"case {index} {case.label}: {problem}: {err[:300]!r}")
        elif code == 0:
            report.accepted += 1
        else:
            report.refused += 1
            named = err.rsplit("(field '", 1)[1].split("')")[0]
            report.fields[named] = report.fields.get(named, 0) + 1
            report.examples.setdefault(named, err.strip()[:400])
        shutil.rmtree(case_dir)
    return report


def judge(case: Case, code: int, out: str, err: str) -> str:
    """What is wrong with one case's outcome ('' if nothing)."""
    if code == 0:
        return "" if err == "" and out.count("\n") == 1 else f"exit 0 but printed {out[:200]!r} / {err[:200]!r}"
    if code != 2:
        return f"exit {code}"
    if out or err.count("\n") != 1 or not err.endswith("\n"):
        return f"not one line: {err.count(chr(10))} lines"
    if "(field '" not in err:
        return "names no field"
    named = err.rsplit("(field '", 1)[1].split("')")[0]
    from headless.train import one_line

    allowed = {one_line(name) for name in case.touched | {"format", "checkpoint"}}
    if case.label.startswith(("value", "plan")) and named not in allowed:
        return f"names field {named!r}, not one the mutation touched ({sorted(allowed)[:8]})"
    if "Traceback" in err:
        return "a traceback"
    return ""
