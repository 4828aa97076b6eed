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
from ..adapter_core.oft import OFTConfig, OFTSpec
from ..adapter_core.registry import kind_of_spec
from ..adapter_core.tap import TapConfig, TapGroupSpec, TapSpec
from .settings import TrainSettings

JOB_FORMAT = "taptune-job/1"
JOB_FILE = "job.json"
#: Settings that are paths of the machine the job runs on, kept in their own sections.
PATH_SETTINGS = ("checkpoint_dir", "resume_from")
#: Largest job file read (a job is a few kilobytes; prompts may be long).
MAX_JOB_BYTES = 16 * 2**20
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


# -- specs ------------------------------------------------------------------------------------------


def spec_to_json(spec: Any) -> dict[str, Any]:
    """A spec of any kind as JSON (what :func:`spec_from_json` rebuilds exactly)."""
    kind = kind_of_spec(spec).name
    if kind == "tap":
        return {
            "kind": "tap",
            "learning_rate": spec.learning_rate,
            "groups": [
                {
                    "config": g.config.to_json(),
                    "blocks": g.blocks if isinstance(g.blocks, str) else list(g.blocks),
                    "init": g.init,
                }
                for g in spec.groups
            ],
        }
    if kind != "oft":  # a new kind needs its JSON form here (docs/architecture.md, "Adding an adapter kind")
        raise JobFileError(f"job files cannot hold a {kind} spec yet", input_name="spec")
    return {
        "kind": "oft",
        "learning_rate": spec.learning_rate,
        "config": spec.config.to_json(),
        "targets": spec.targets if isinstance(spec.targets, str) else list(spec.targets),
        "neumann_terms": spec.neumann_terms,
        "magnitude_steps": spec.magnitude_steps,
    }


def _text_or_list(value: Any, where: str) -> str | tuple[str, ...]:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise JobFileError(f"{where} must be text or a list of texts", input_name="spec")


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise JobFileError(f"{where} must be a finite number", input_name="spec")
    return float(value)


def spec_from_json(entry: Any) -> Any:
    """The spec a :func:`spec_to_json` entry describes; :class:`JobFileError` (field ``spec``) if it is unsound."""
    if not isinstance(entry, dict):
        raise JobFileError("spec must be an object with a kind", input_name="spec")
    kind = entry.get("kind")
    try:
        if kind == "tap":
            groups = entry.get("groups")
            if not isinstance(groups, list) or not groups or not all(isinstance(g, dict) for g in groups):
                raise JobFileError("spec.groups must be a non-empty list of objects", input_name="spec")
            return TapSpec(
                tuple(
                    TapGroupSpec(
                        TapConfig.from_json(_object(g.get("config"), f"spec.groups[{i}].config"), "spec"),
                        _text_or_list(g.get("blocks", "all"), f"spec.groups[{i}].blocks"),
                        _text(g.get("init", "zero_up"), f"spec.groups[{i}].init"),
                    )
                    for i, g in enumerate(groups)
                ),
                learning_rate=_number(entry.get("learning_rate", TapSpec.learning_rate), "spec.learning_rate"),
            )
        if kind == "oft":
            terms = entry.get("neumann_terms")
            magnitude = entry.get("magnitude_steps", 0)
            if terms is not None and (isinstance(terms, bool) or not isinstance(terms, int)):
                raise JobFileError("spec.neumann_terms must be an integer or null", input_name="spec")
            if isinstance(magnitude, bool) or not isinstance(magnitude, int):
                raise JobFileError("spec.magnitude_steps must be an integer", input_name="spec")
            return OFTSpec(
                OFTConfig.from_json(_object(entry.get("config"), "spec.config"), "spec"),
                _text_or_list(entry.get("targets", "attention"), "spec.targets"),
                terms,
                magnitude,
                _number(entry.get("learning_rate", OFTSpec.learning_rate), "spec.learning_rate"),
            )
    except JobFileError:
        raise
    except TapTuneError as exc:  # a config's own check: the job's spec is at fault
        raise JobFileError(f"spec: {exc.message}", input_name="spec") from None
    raise JobFileError(f"unknown spec kind {str(kind)[:40]!r}; this version knows tap, oft", input_name="spec")


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
        raise JobFileError(f"unknown settings: {', '.join(unknown)[:200]}", input_name=unknown[0])
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
            raise JobFileError(f"settings.{name} has the wrong type ({type(value).__name__})", input_name=name)
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
    path = Path(text).expanduser()
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


def parse_job(entry: Any, path: Path) -> TrainingJob:
    """A job from its JSON; relative paths are resolved against ``path``'s folder."""
    if not isinstance(entry, dict) or entry.get("format") != JOB_FORMAT:
        raise JobFileError(f"not a TapTune job file (format {JOB_FORMAT})", input_name="format")
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
        generate = _object(generate, "class.generate")
        for key, value in generate.items():
            kind = GENERATE_FIELDS.get(key)
            if kind is None:
                raise JobFileError(f"class.generate: unknown key {key[:40]!r}", input_name="class")
            if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else kind):
                raise JobFileError(f"class.generate.{key} must be {kind.__name__}", input_name="class")
    if "folder" in classes and generate is not None:
        raise JobFileError("class: give a folder or generate, not both", input_name="class")
    return TrainingJob(
        path=path,
        checkpoint=_path(folder, entry.get("checkpoint"), "checkpoint"),
        spec=spec_from_json(entry.get("spec")),
        instance_folder=_path(folder, instance.get("folder"), "instance.folder"),
        instance_prompt=_text(instance.get("prompt"), "instance.prompt", required=False),
        class_prompt=_text(classes.get("prompt", ""), "class.prompt", required=False),
        class_folder=_path(folder, classes["folder"], "class.folder") if "folder" in classes else None,
        class_generate=generate,
        settings=settings,
        adapter=_path(folder, output.get("adapter"), "output.adapter"),
    )


def read_job(path: str | Path) -> TrainingJob:
    """Read and check a job file; :class:`JobFileError` naming the file and the field if it is unsound."""
    job_path = Path(path).resolve()
    try:
        if job_path.stat().st_size > MAX_JOB_BYTES:
            raise JobFileError(f"larger than {MAX_JOB_BYTES} bytes", input_name="format", file=job_path.name)
        text = job_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise JobFileError(f"cannot be read ({type(exc).__name__})", input_name="format", file=job_path.name) from None
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
