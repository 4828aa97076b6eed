"""TapTuneExportTrainingJob: write a training run as a job file, to run headless or on a cluster."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import folder_paths
import torch
from comfy_api.v0_0_2 import io, ui

from ..adapter_core.registry import kind_of_spec
from ..adapter_core.safe_write import atomic_write, next_number, numbered_path
from ..patching.model_source import check_loaded_from, check_unpatched
from ..training.images import flatten_images
from ..training.job_file import JOB_FILE, job_text, job_to_json
from ..training.run_data import check_data
from ..training.settings import check_settings
from ..training.visuals import to_pil
from .common import CATEGORY_TRAIN, NodeInputError, adapters_output_folder, first_input, hidden_input, node_errors
from .train import learning_rate_value, legacy_settings, training_inputs, training_settings

NODE = "TapTuneExportTrainingJob"
CHECKPOINTS = "checkpoints"
#: How many taken numbers the export skips before giving up (another writer racing forever).
MAX_NUMBER_ATTEMPTS = 1000


def job_root() -> Path:
    """Where job folders go: <output>/taptune/jobs/<prefix>_NNNNN/job.json."""
    return Path(folder_paths.get_output_directory()) / "taptune" / "jobs"


def _checkpoint_file(value: object) -> Path:
    """The checkpoint file ``ckpt_name`` names, only one ComfyUI lists in models/checkpoints."""
    names = folder_paths.get_filename_list(CHECKPOINTS)
    full = folder_paths.get_full_path(CHECKPOINTS, value) if isinstance(value, str) and value in names else None
    if full is None or not os.path.isfile(full):
        raise NodeInputError(NODE, "ckpt_name", f"{str(value)[:200]!r} is not a checkpoint in models/checkpoints")
    return Path(full).resolve()


def _write_images(folder: Path, stem: str, images: list[torch.Tensor]) -> int:
    """PNG files ``<stem>_NNNNN.png``; returns how many were not exactly 8-bit (PNG rounds them)."""
    folder.mkdir()
    rounded = 0
    for i, image in enumerate(images):
        picture = image[..., :3].float().cpu().clamp(0, 1).unsqueeze(0)
        if not torch.equal((picture * 255).round() / 255, picture):
            rounded += 1
        atomic_write(folder / f"{stem}_{i:05d}.png", lambda tmp, p=picture: to_pil(p).save(tmp, format="PNG"))
    return rounded


def _new_job_folder(prefix: object) -> tuple[Path, Path]:
    """A new, empty job folder and a free adapter path, both ``<prefix>_<counter>`` (never an existing name)."""
    jobs, adapters = job_root().resolve(), adapters_output_folder().resolve()
    with node_errors(NODE, "filename_prefix"):
        job_dir = numbered_path(jobs, prefix, suffix="").parent  # checks the prefix stays inside
        adapter_dir = numbered_path(adapters, prefix).parent
    stem = str(prefix).strip().replace("\\", "/").strip("/").split("/")[-1]
    job_dir.mkdir(parents=True, exist_ok=True)
    number = max(next_number(job_dir, stem, ""), next_number(adapter_dir, stem, ".safetensors"))
    for _ in range(MAX_NUMBER_ATTEMPTS):
        name = f"{stem}_{number:05d}"
        adapter = adapter_dir / f"{name}.safetensors"
        if not adapter.exists():
            try:
                os.mkdir(job_dir / name)  # fails if it exists: never someone else's folder
                return job_dir / name, adapter
            except FileExistsError:
                pass
        number += 1
    raise NodeInputError(NODE, "filename_prefix", "no free job number (another process keeps taking them)")


class TapTuneExportTrainingJob(io.ComfyNode):
    """Write everything a TapTuneDreamBoothTrain run needs as a job folder, to train headless or on a cluster."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=NODE,
            display_name="TapTune Export Training Job",
            category=CATEGORY_TRAIN,
            description=(
                "Takes the inputs of TapTuneDreamBoothTrain and, instead of training, writes them as a job folder "
                "output/taptune/jobs/<prefix>_<counter>/ (job.json in format taptune-job/1, the instance and class "
                "images copied next to it as PNG). The headless launcher that trains it is not part of the published "
                "pack: it is in the pack's source repository (the Repository link of its Registry page), folder "
                "headless/. In a git clone of that repository, `python -m headless.train job.json` (or torchrun, or a "
                "Ray sweep; its docs/distributed.md) runs exactly the loop of the node without the server and writes "
                "models/adapters/<prefix>_<counter>.safetensors, which TapTuneLoadAdapter then lists. "
                "ckpt_name must be the checkpoint the MODEL, CLIP and VAE come from, without LoRAs or adapters applied."
            ),
            inputs=[
                io.Combo.Input(
                    "ckpt_name",
                    options=folder_paths.get_filename_list(CHECKPOINTS) or [""],
                    tooltip="The checkpoint file the MODEL, CLIP and VAE were loaded from (the job loads it again).",
                ),
                *training_inputs(),
                io.String.Input(
                    "filename_prefix",
                    default="taptune/job",
                    optional=True,
                    tooltip="Names the job folder (output/taptune/jobs) and the adapter (models/adapters); a counter is appended.",
                ),
            ],
            outputs=[
                io.String.Output(display_name="job_file", tooltip="The job file, relative to ComfyUI's output folder."),
            ],
            hidden=[io.Hidden.unique_id, io.Hidden.prompt],
            is_input_list=True,
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, learning_rate: Any = None) -> bool | str:  # type: ignore[override]
        # As the trainer's: a choice of the list, or a number (workflows and prompts before 0.4.0).
        try:
            learning_rate_value(first_input(learning_rate), NODE)
        except NodeInputError as exc:
            return str(exc)
        return True

    @classmethod
    def execute(cls, **inputs: Any) -> io.NodeOutput:
        values = {k: first_input(v) for k, v in inputs.items() if k not in ("instance_images", "class_images")}
        model, clip, spec = (values.get(k) for k in ("model", "clip", "spec"))
        instance = flatten_images(inputs.get("instance_images"))
        classes = flatten_images(inputs.get("class_images")) or None
        with node_errors(NODE, "spec"):
            legacy = legacy_settings(hidden_input(cls, "prompt"), hidden_input(cls, "unique_id"))
            settings, _extra = training_settings(values, NODE, legacy)
            kind_of_spec(spec)
            # The job holds the rate the run would use, so that it does not depend on the spec's default.
            settings.learning_rate = settings.learning_rate or spec.learning_rate
            check_settings(settings, settings.learning_rate)
            check_data(settings, instance, values.get("instance_prompt"), values.get("class_prompt"), classes)
        checkpoint = _checkpoint_file(values.get("ckpt_name"))
        with node_errors(NODE, "model"):
            check_unpatched(model, clip)
            check_loaded_from(model, checkpoint)
        folder, adapter = _new_job_folder(values.get("filename_prefix", "taptune/job"))
        rounded = _write_images(folder / "instance", "instance", instance)
        with_classes = settings.prior_loss_weight > 0 and classes is not None
        if with_classes:
            rounded += _write_images(folder / "class", "class", classes)
        entry = job_to_json(
            checkpoint=str(checkpoint),
            spec=spec,
            instance_folder="instance",
            instance_prompt=values.get("instance_prompt", ""),
            class_prompt=values.get("class_prompt", ""),
            class_folder="class" if with_classes else None,
            settings=settings,
            adapter=str(adapter),
        )
        # The job file last: a folder with job.json is complete.
        atomic_write(folder / JOB_FILE, lambda tmp: Path(tmp).write_text(job_text(entry), encoding="utf-8"))
        output_root = Path(folder_paths.get_output_directory()).resolve()
        job_name = (folder / JOB_FILE).resolve().relative_to(output_root).as_posix()
        adapter_name = adapter.relative_to(adapters_output_folder().resolve()).as_posix()
        summary = (
            f"job written: output/{job_name} ({len(instance)} instance, {len(classes or []) if with_classes else 0} "
            f"class images). Train it with the headless launcher of the pack's source repository (not part of the "
            f"published pack; the Repository link of its Registry page): in a git clone of it, "
            f"`python -m headless.train {folder / JOB_FILE}`; it writes models/adapters/{adapter_name}"
        )
        if rounded:
            summary += f". {rounded} images were not 8-bit exact and were rounded to 8 bits in the PNG copies"
        return io.NodeOutput(job_name, ui=ui.PreviewText(summary))
