"""Training job files (``taptune-job/1``): one DreamBooth run, written by the graph, run headless.

A job holds what ``TapTuneDreamBoothTrain``'s inputs hold, in a form that outlives the graph:

* ``checkpoint``: the checkpoint file the MODEL, CLIP and VAE come from (ComfyUI's stock loader
  loads it again);
* ``spec``: the adapter kind and its configuration (:func:`spec_to_json`);
* ``instance``: a folder of images (natural name order) and the instance prompt (one, or one
  line per image);
* ``class``: the class prompt and the class images, as a folder or as the settings to
  generate them with the base model (``generate``), or nothing without prior preservation;
* ``settings``: every :class:`TrainSettings` field but the two paths;
* ``output``: the adapter file to write (never replacing an existing file);
* ``checkpoints``: where checkpoints go and which one to resume from.

Relative paths are taken from the job file's folder, so a job folder (``job.json`` with its
``instance/`` and ``class/`` images) can be moved or copied to another machine as a whole.
Reading checks every type, bound and path before anything runs; a bad value is a
:class:`JobFileError` naming the job file and the field.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..adapter_core.errors import ConfigError, TapTuneError
from ..adapter_core.json_values import parse_json_object
from ..adapter_core.registry import spec_from_json as registry_spec_from_json
from ..adapter_core.registry import spec_to_json as registry_spec_to_json
from ..adapter_core.safe_read import read_regular_text
from .images import MAX_IMAGE_COUNT, MAX_TOTAL_PIXELS
from .prompts import prompt_lines
from .settings import TrainSettings, check_settings

JOB_FORMAT = "taptune-job/1"
JOB_FILE = "job.json"
#: Settings that are paths of the machine the job runs on, kept in their own sections.
PATH_SETTINGS = ("checkpoint_dir", "resume_from")
#: Largest job file read (a job is a few kilobytes; prompts, one line per image, may be long).
MAX_JOB_BYTES = 4 * 2**20
#: Most values (objects, lists, numbers, texts) a job may hold in all; a job holds about fifty.
MAX_JOB_VALUES = 100_000
#: Largest integer (in magnitude) any field takes: seeds are 64-bit.
MAX_JOB_INTEGER = 2**64
#: Longest path text a job may give.
MAX_PATH_CHARS = 4096
#: Keys of a ``class.generate`` section, with the type of each.
GENERATE_FIELDS: dict[str, type] = {
    "count": int,
    "seed": int,
    "steps": int,
    "cfg": float,
    "sampler_name": str,
    "scheduler": str,
    "width": int,
    "height": int,
    "negative_prompt": str,
}
#: What ``class.generate`` uses for a key it does not give.
GENERATE_DEFAULTS: dict[str, Any] = {
    "count": 100,
    "seed": 0,
    "steps": 25,
    "cfg": 7.0,
    "sampler_name": "euler",
    "scheduler": "normal",
    "width": 512,
    "height": 512,
    "negative_prompt": "",
}
#: Bounds of the numbers of ``class.generate`` (TapTuneClassImages' widgets offer the same).
GENERATE_BOUNDS: dict[str, tuple[float, float]] = {
    "count": (1, MAX_IMAGE_COUNT),
    "seed": (0, 2**63 - 1),
    "steps": (1, 200),
    "cfg": (0.0, 30.0),
    "width": (64, 4096),
    "height": (64, 4096),
}


class JobFileError(TapTuneError):
    """A job file that cannot make a run; ``input_name`` is the field at fault."""


@dataclass
class TrainingJob:
    """A job file, read and checked, with its paths resolved."""

    path: Path
    checkpoint: Path
    spec: Any
    instance_folder: Path
    instance_prompt: str
    class_prompt: str
    class_folder: Path | None
    class_generate: dict[str, Any] | None
    settings: TrainSettings
    adapter: Path

    @property
    def folder(self) -> Path:
        """The folder relative paths start from."""
        return self.path.parent


# -- specs ----------------------------------------------------------------------------------------


def spec_to_json(spec: Any) -> dict[str, Any]:
    """A spec of any kind as JSON: the spec's own one JSON form (what :func:`spec_from_json` rebuilds exactly)."""
    return registry_spec_to_json(spec)


def spec_from_json(entry: Any) -> Any:
    """The spec a :func:`spec_to_json` entry describes; :class:`JobFileError` (field ``spec``) if it is unsound."""
    try:
        return registry_spec_from_json(entry, "spec")
    except TapTuneError as exc:
        raise JobFileError(exc.message, input_name="spec") from None


# -- settings ---------------------------------------------------------------------------------------


def settings_to_json(settings: TrainSettings) -> dict[str, Any]:
    """Every setting but the paths (which belong to the ``checkpoints`` section)."""
    return {f.name: getattr(settings, f.name) for f in fields(TrainSettings) if f.name not in PATH_SETTINGS}


def settings_from_json(entry: Any, checkpoint_dir: str | None, resume_from: str | None) -> TrainSettings:
    """Settings from a job's ``settings`` object: each value of its field's type (bounds: the trainer's check)."""
    if not isinstance(entry, dict):
        raise JobFileError("settings must be an object", input_name="settings")
    known = {f.name: f for f in fields(TrainSettings) if f.name not in PATH_SETTINGS}
    unknown = sorted(set(entry) - set(known))
    if unknown:
        raise JobFileError(
            f"unknown settings: {', '.join(map(repr, unknown))[:200]}; remove them (known: {', '.join(known)})",
            input_name="settings",
        )
    values: dict[str, Any] = {}
    for name, value in entry.items():
        default = known[name].default
        if name == "learning_rate":
            ok = value is None or (not isinstance(value, bool) and isinstance(value, (int, float)))
        elif isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        else:
            ok = isinstance(value, str)
        if not ok:
            raise JobFileError(
                f"settings.{name} has the wrong type ({type(value).__name__}); give a value like "
                f"{default if default is not None else '1e-4 (or null for the kind rate)'!r}",
                input_name=name,
            )
        values[name] = float(value) if isinstance(default, float) and value is not None else value
    return TrainSettings(**values, checkpoint_dir=checkpoint_dir, resume_from=resume_from)


# -- the file ---------------------------------------------------------------------------------------


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise JobFileError(f"{where} must be an object", input_name=where.split(".")[0])
    return value


def _text(value: Any, where: str, *, required: bool = True) -> str:
    if not isinstance(value, str) or (required and not value.strip()) or "\x00" in value:
        raise JobFileError(f"{where} must be {'non-empty ' if required else ''}text", input_name=where.split(".")[0])
    return value


def _path(folder: Path, value: Any, where: str) -> Path:
    text = _text(value, where)
    if len(text) > MAX_PATH_CHARS:
        raise JobFileError(
            f"{where} is longer than {MAX_PATH_CHARS} characters; give a shorter path", input_name=where.split(".")[0]
        )
    try:
        path = Path(text).expanduser()
    except RuntimeError:  # '~someone' who is not a user here
        raise JobFileError(
            f"{where}: {text[:60]!r} names no user's home here; give a full path", input_name=where.split(".")[0]
        ) from None
    return path if path.is_absolute() else folder / path


def job_to_json(
    *,
    checkpoint: str,
    spec: Any,
    instance_folder: str,
    instance_prompt: str,
    class_prompt: str,
    class_folder: str | None,
    settings: TrainSettings,
    adapter: str,
    class_generate: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON of a job (paths as given: absolute, or relative to the job file's folder)."""
    classes: dict[str, Any] = {"prompt": class_prompt}
    if class_folder is not None:
        classes["folder"] = class_folder
    elif class_generate is not None:
        classes["generate"] = dict(class_generate)
    return {
        "format": JOB_FORMAT,
        "checkpoint": checkpoint,
        "spec": spec_to_json(spec),
        "instance": {"folder": instance_folder, "prompt": instance_prompt},
        "class": classes,
        "settings": settings_to_json(settings),
        "output": {"adapter": adapter},
        "checkpoints": {"folder": settings.checkpoint_dir, "resume_from": settings.resume_from},
    }


def _field_of(path: tuple[Any, ...]) -> str:
    """The field a value at ``path`` belongs to: a setting by its own name, anything else by its section."""
    if len(path) >= 2 and path[0] == "settings":
        return str(path[1])[:60] or "settings"
    return (str(path[0])[:60] if path else "") or "format"


def _where(path: tuple[Any, ...]) -> str:
    text = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
    return text[:120] or "the job"


def check_values(entry: Any) -> None:
    """Refuse what no field takes, wherever it is: integers beyond 64 bits, NaN and infinities, keys that are
    not text, text that is not Unicode, and more than :data:`MAX_JOB_VALUES` values. Visits each value once.
    """
    stack: list[tuple[Any, tuple[Any, ...]]] = [(entry, ())]
    seen = 0
    while stack:
        value, path = stack.pop()
        seen += 1
        if seen > MAX_JOB_VALUES:
            raise JobFileError(
                f"holds more than {MAX_JOB_VALUES:,} values; a job holds a few dozen (is this the file meant?)",
                input_name="format",
            )
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise JobFileError(
                        f"{_where(path)}: key {str(key)[:40]!r} is not text; keys are field names",
                        input_name=_field_of(path),
                    )
                stack.append((item, (*path, key)))
        elif isinstance(value, list):
            stack.extend((item, (*path, i)) for i, item in enumerate(value))
        elif isinstance(value, bool) or value is None:
            continue
        elif isinstance(value, int):
            if abs(value) > MAX_JOB_INTEGER:
                raise JobFileError(
                    f"{_where(path)}: an integer of {len(str(abs(value)))} digits is beyond any field's range "
                    "(seeds are 64-bit); give a value within the field's range",
                    input_name=_field_of(path),
                )
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise JobFileError(f"{_where(path)}: must be a finite number, got {value}", input_name=_field_of(path))
        elif isinstance(value, str):
            if not value.isascii():
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    raise JobFileError(
                        f"{_where(path)}: text that is not valid Unicode (a lone surrogate); write the text out",
                        input_name=_field_of(path),
                    ) from None
        else:
            raise JobFileError(
                f"{_where(path)}: a value of type {type(value).__name__} is not JSON; give text, a number or a list",
                input_name=_field_of(path),
            )


def _generate_section(value: Any) -> dict[str, Any]:
    """``class.generate``, checked: known keys of the right types, numbers within their bounds, and the total size."""
    generate = _object(value, "class.generate")
    for key, item in generate.items():
        kind = GENERATE_FIELDS.get(key)
        if kind is None:
            raise JobFileError(
                f"class.generate: unknown key {key[:40]!r}; known: {', '.join(GENERATE_FIELDS)}", input_name="class"
            )
        if isinstance(item, bool) or not isinstance(item, (int, float) if kind is float else kind):
            raise JobFileError(f"class.generate.{key} must be {kind.__name__}", input_name="class")
        if key in GENERATE_BOUNDS:
            low, high = GENERATE_BOUNDS[key]
            if not low <= item <= high:
                raise JobFileError(f"class.generate.{key} must be within {low:g}..{high:g}", input_name="class")
    full = {**GENERATE_DEFAULTS, **generate}
    if full["width"] % 8 or full["height"] % 8:
        raise JobFileError("class.generate: width and height must be multiples of 8", input_name="class")
    pixels = full["count"] * full["width"] * full["height"]
    if pixels > MAX_TOTAL_PIXELS:
        raise JobFileError(
            f"class.generate: {full['count']} images of {full['width']}x{full['height']} are {pixels:,} pixels, "
            f"more than the {MAX_TOTAL_PIXELS:,} a set of images may hold; generate fewer or smaller images",
            input_name="class",
        )
    return generate


def parse_job(entry: Any, path: Path) -> TrainingJob:
    """A job from its JSON; relative paths are resolved against ``path``'s folder.

    Every value is checked (types, bounds, the settings as the trainer checks them) before anything runs.
    """
    if not isinstance(entry, dict) or entry.get("format") != JOB_FORMAT:
        raise JobFileError(f"not a TapTune job file (format {JOB_FORMAT})", input_name="format")
    check_values(entry)
    folder = path.parent
    instance = _object(entry.get("instance"), "instance")
    classes = _object(entry.get("class", {"prompt": ""}), "class")
    checkpoints = _object(entry.get("checkpoints", {}), "checkpoints")
    output = _object(entry.get("output"), "output")
    ckpt_folder = checkpoints.get("folder")
    resume = checkpoints.get("resume_from")
    settings = settings_from_json(
        entry.get("settings", {}),
        str(_path(folder, ckpt_folder, "checkpoints.folder")) if ckpt_folder is not None else None,
        str(_path(folder, resume, "checkpoints.resume_from")) if resume is not None else None,
    )
    generate = classes.get("generate")
    if generate is not None:
        generate = _generate_section(generate)
    if "folder" in classes and generate is not None:
        raise JobFileError("class: give a folder or generate, not both", input_name="class")
    class_prompt = _text(classes.get("prompt", ""), "class.prompt", required=False)
    if generate is not None and len(prompt_lines(class_prompt)) > 1:
        raise JobFileError(
            "class.prompt: generated class images are drawn from one prompt; give one line "
            "(one line per image only goes with a class folder)",
            input_name="class",
        )
    spec = spec_from_json(entry.get("spec"))
    try:
        check_settings(settings, settings.learning_rate if settings.learning_rate is not None else spec.learning_rate)
    except TapTuneError as exc:
        raise JobFileError(f"settings.{exc.input_name}: {exc.message}", input_name=exc.input_name) from None
    return TrainingJob(
        path=path,
        checkpoint=_path(folder, entry.get("checkpoint"), "checkpoint"),
        spec=spec,
        instance_folder=_path(folder, instance.get("folder"), "instance.folder"),
        instance_prompt=_text(instance.get("prompt"), "instance.prompt", required=False),
        class_prompt=class_prompt,
        class_folder=_path(folder, classes["folder"], "class.folder") if "folder" in classes else None,
        class_generate=generate,
        settings=settings,
        adapter=_path(folder, output.get("adapter"), "output.adapter"),
    )


def read_job(path: str | Path) -> TrainingJob:
    """Read and check a job file; :class:`JobFileError` naming the file and the field if it is unsound.

    Only a regular file of at most :data:`MAX_JOB_BYTES` is read (a FIFO or a device is refused, never waited on).
    """
    try:
        job_path = Path(path).resolve()
    except (OSError, RuntimeError, ValueError) as exc:
        raise JobFileError(
            f"the job path cannot be resolved ({type(exc).__name__}); name a job file", input_name="format"
        ) from None
    try:
        text = read_regular_text(job_path, MAX_JOB_BYTES)
    except TapTuneError as exc:
        raise JobFileError(exc.message, input_name="format", file=str(job_path)) from None
    try:
        return parse_job(parse_json_object(text, job_path.name), job_path)
    except JobFileError as exc:
        raise exc.concerning(file=str(job_path)) from None
    except ConfigError as exc:
        raise JobFileError(exc.message, input_name=exc.input_name or "format", file=str(job_path)) from None
    except TapTuneError as exc:  # parse_json_object: not JSON, too deep, non-finite numbers
        raise JobFileError(exc.message, input_name="format", file=str(job_path)) from None


def job_text(entry: dict[str, Any]) -> str:
    """A job's JSON text as written (stable key order, readable)."""
    return json.dumps(entry, indent=2) + "\n"
