"""Run one training job file without the ComfyUI server: ``python -m headless.train JOB.json``.

The run is the node's: ComfyUI (imported as a library) loads the job's checkpoint with its
stock loader, and ``training.run.run_dreambooth`` — the function ``TapTuneDreamBoothTrain``
calls — trains; the adapter file is written atomically and never over an existing file.

Under ``torchrun --nproc_per_node N -m headless.train JOB.json`` the same run is data
parallel (``headless/distributed.py``): the job's ``batch_size`` is the global batch, each rank
computes ``batch_size / N`` of every batch, and rank 0 writes checkpoints and the adapter.
A checkpoint resumes under any N (``--resume``).

Exit status: 0 done, 2 the job or an input is at fault (the message names the field),
3 the process group failed (another rank stopped or a collective timed out), 1 anything else.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from devtools.comfy_host import import_pack

#: Test hook: ``"RANK:STEP"`` kills that rank (SIGKILL) right after that step, to test failure handling.
KILL_AT_VARIABLE = "TAPTUNE_HEADLESS_KILL_AT"
EXIT_INPUT, EXIT_GROUP = 2, 3


class Terminated(Exception):
    """The launcher asked this process to stop (SIGTERM: under torchrun, another rank failed)."""


def one_line(text: str) -> str:
    """``text`` as one printable line: line breaks and other control characters escaped, any text encodable."""
    out = "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)
    return out.encode("utf-8", "backslashreplace").decode("utf-8")


def check_checkpoint_file(path: Path, field: str = "checkpoint") -> None:
    """Refuse, before ComfyUI reads it, a checkpoint that is not a regular file or not a safetensors/torch file."""
    import zipfile

    import safetensors

    from taptune.adapter_core.errors import TapTuneError
    from taptune.adapter_core.safe_read import open_regular
    from taptune.training.job_file import JobFileError

    def refuse(why: str) -> JobFileError:
        return JobFileError(
            f"{field}: {path.name} {why}; name an SD 1.x, SD 2.x or SDXL checkpoint file (.safetensors or .ckpt)",
            input_name=field,
        )

    try:
        with open_regular(path) as handle:
            size = os.fstat(handle.fileno()).st_size
            head = handle.read(8)
    except TapTuneError as exc:
        raise refuse(exc.message) from None
    if size < 8:
        raise refuse("is empty or truncated")
    if path.suffix.lower() in (".safetensors", ".sft"):
        try:
            with safetensors.safe_open(str(path), framework="pt", device="cpu") as handle:
                keys = list(handle.keys())
        except (safetensors.SafetensorError, OSError, ValueError):
            raise refuse("is not a readable safetensors file (truncated or corrupt?)") from None
        if not keys:
            raise refuse("holds no tensors")
        return
    if head[:2] != b"PK":
        raise refuse("is neither a safetensors file nor a torch.save archive (older pickles are not read)")
    try:  # torch.save's zip archive: stored entries whose sizes its bytes back
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError):
        raise refuse("is a damaged archive") from None
    declared = sum(entry.file_size for entry in entries)
    if any(entry.compress_type != zipfile.ZIP_STORED for entry in entries) or declared > size:
        raise refuse("is an archive with compressed or oversized entries (torch.save writes neither)")


def load_checkpoint(path: Path) -> tuple[Any, Any, Any]:
    """MODEL, CLIP and VAE of a checkpoint file, as ComfyUI's CheckpointLoaderSimple loads them.

    A file ComfyUI cannot load is the job's ``checkpoint`` error (whatever ComfyUI raised, named in it).
    """
    import comfy.sd
    import folder_paths

    from taptune.training.job_file import JobFileError

    check_checkpoint_file(path)
    try:
        model, clip, vae, *_ = comfy.sd.load_checkpoint_guess_config(
            str(path),
            output_vae=True,
            output_clip=True,
            embedding_directory=folder_paths.get_folder_paths("embeddings"),
        )
    except Exception as exc:  # ComfyUI raises many kinds (RuntimeError, KeyError, unpickling errors...)
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise JobFileError(
            f"checkpoint: ComfyUI cannot load {path.name} ({type(exc).__name__}{': ' + detail if detail else ''}); "
            "name an SD 1.x, SD 2.x or SDXL checkpoint file",
            input_name="checkpoint",
        ) from None
    if model is None or clip is None or vae is None:
        raise JobFileError(
            f"checkpoint: {path.name} lacks a UNet, a text encoder or a VAE; name a full checkpoint file",
            input_name="checkpoint",
        )
    return model, clip, vae


def read_images(folder: Path, field: str, *, decode: bool = True) -> list[torch.Tensor]:
    """The images of a folder in natural name order, read as TapTuneLoadImageFolder reads them.

    With ``decode=False`` only the listing, the links and the budgets are checked (headers read, no pixels).
    """
    from taptune.adapter_core.errors import TapTuneError
    from taptune.training.image_files import check_folder, read_folder
    from taptune.training.job_file import JobFileError

    name = field.split(".")[0]
    if not folder.is_dir():
        raise JobFileError(f"{field}: no folder {folder}; name a folder of images", input_name=name)
    try:
        if not decode:
            if not check_folder(folder):
                raise JobFileError(f"{field}: no images in {folder}", input_name=name)
            return []
        images, _captions, _names = read_folder(folder)
    except JobFileError:
        raise
    except TapTuneError as exc:
        raise JobFileError(f"{field}: {exc.file or ''} {exc.message}".strip(), input_name=name) from None
    if not images:
        raise JobFileError(f"{field}: no images in {folder}", input_name=name)
    return images


def class_images(job: Any, model: Any, clip: Any, vae: Any) -> list[torch.Tensor] | None:
    """The job's class images: its folder, or generated by the base model (cached next to the job)."""
    from taptune.training.class_image_cache import ClassImageSettings, generate_class_images
    from taptune.training.images import flatten_images
    from taptune.training.job_file import GENERATE_DEFAULTS

    if job.settings.prior_loss_weight <= 0:
        return None
    if job.class_folder is not None:
        return read_images(job.class_folder, "class.folder")
    if job.class_generate is None:
        return None  # the trainer's own check names class_images
    g = {**GENERATE_DEFAULTS, **job.class_generate}  # bounds and total size: checked by read_job
    check_sampler(g)
    settings = ClassImageSettings(
        job.class_prompt.strip(),
        g["negative_prompt"],
        g["count"],
        g["seed"],
        g["steps"],
        float(g["cfg"]),
        g["sampler_name"],
        g["scheduler"],
        g["width"],
        g["height"],
    )
    images, _ = generate_class_images(model, clip, vae, settings, job.folder / "class_images")
    return flatten_images(images)


def check_sampler(generate: dict[str, Any]) -> None:
    """``class.generate``'s sampler and scheduler must be ComfyUI's (known only with ComfyUI imported)."""
    import comfy.samplers

    from taptune.training.job_file import JobFileError

    if generate.get("sampler_name", "euler") not in comfy.samplers.KSampler.SAMPLERS:
        raise JobFileError(
            f"class.generate.sampler_name: unknown sampler {generate['sampler_name'][:40]!r}; "
            f"use one of ComfyUI's ({', '.join(comfy.samplers.KSampler.SAMPLERS[:6])} ...)",
            input_name="class",
        )
    if generate.get("scheduler", "normal") not in comfy.samplers.KSampler.SCHEDULERS:
        raise JobFileError(
            f"class.generate.scheduler: unknown scheduler {generate['scheduler'][:40]!r}; "
            f"use one of {', '.join(comfy.samplers.KSampler.SCHEDULERS)}",
            input_name="class",
        )


def check_job(job_path: str | os.PathLike[str], resume: str | None = None) -> Any:
    """Read a job and check everything that can be checked without ComfyUI or training: the file, every
    field, the output, the checkpoint file's kind, the image folders (listing, links, budgets). Returns the job.
    """
    from taptune.training.job_file import JobFileError, read_job

    job = read_job(job_path)
    try:
        if resume:
            job.settings.resume_from = str(Path(resume).resolve())
        if job.adapter.exists():
            raise JobFileError(
                f"output.adapter {job.adapter} exists: a job never replaces a file (did this job run already?)",
                input_name="output",
            )
        if not job.checkpoint.exists():
            raise JobFileError(
                f"checkpoint: no file {job.checkpoint}; give the checkpoint's path", input_name="checkpoint"
            )
        check_checkpoint_file(job.checkpoint)
        read_images(job.instance_folder, "instance.folder", decode=False)
        if job.class_folder is not None and job.settings.prior_loss_weight > 0:
            read_images(job.class_folder, "class.folder", decode=False)
    except JobFileError as exc:
        raise exc.concerning(file=str(job.path)) from None
    except (OSError, ValueError, RuntimeError) as exc:  # a path the system cannot take (too long, a loop)
        raise JobFileError(
            f"a path of the job cannot be used ({type(exc).__name__}); check the job's paths",
            input_name="format",
            file=str(job.path),
        ) from None
    return job


def _kill_hook(rank: int) -> int | None:
    value = os.environ.get(KILL_AT_VARIABLE, "")
    if ":" not in value:
        return None
    kill_rank, step = value.split(":", 1)
    return int(step) if int(kill_rank) == rank else None


def run_job(
    job_path: str | os.PathLike[str],
    *,
    resume: str | None = None,
    sync: Any = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Train the job in this process (ComfyUI already prepared); returns its result row.

    Raises the pack's errors (a :class:`~taptune.training.job_file.JobFileError` names the field).
    """
    from taptune.adapter_core.file_format import write_adapter_file
    from taptune.adapter_core.safe_write import atomic_write
    from taptune.training.job_file import JobFileError
    from taptune.training.run import run_dreambooth
    from taptune.training.run_inputs import ImageSet, RunInputs

    job = check_job(job_path, resume)
    rank = getattr(sync, "rank", 0)
    world = getattr(sync, "world_size", 1)
    writes = sync is None or sync.writes_files
    kill_at = _kill_hook(rank)
    times: list[float] = []

    def report(step: int, total: int, loss: float, preview: Any) -> None:
        times.append(time.perf_counter())
        if writes and not quiet:
            print(f"step {step}/{total}  loss {loss:.5f}", flush=True)
        if kill_at is not None and step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    # The executor runs every node under inference mode (and the trainer is written for it): so does this.
    with torch.inference_mode():
        try:
            model, clip, vae = load_checkpoint(job.checkpoint)
            instance = read_images(job.instance_folder, "instance.folder")
            classes = class_images(job, model, clip, vae)
        except JobFileError as exc:
            raise exc.concerning(file=str(job.path)) from None
        start = time.perf_counter()
        result, trained = run_dreambooth(
            model,
            clip,
            vae,
            job.spec,
            RunInputs(ImageSet(instance, job.instance_prompt), ImageSet(classes or [], job.class_prompt), job.settings),
            report,
            sync,
        )
    seconds = time.perf_counter() - start
    per_step = (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else seconds
    if writes:
        adapter_file = trained.to_file()
        try:
            atomic_write(job.adapter, lambda tmp: write_adapter_file(tmp, adapter_file))
        except FileExistsError:  # appeared while training: never replaced
            raise JobFileError(
                f"output.adapter {job.adapter} appeared during the run and was kept; this run's adapter was not written",
                input_name="output",
                file=str(job.path),
            ) from None
    return {
        "job": str(job.path),
        "status": "done",
        "steps": result.steps_done,
        "final_loss": result.final_loss,
        "trainable_parameters": result.adapter_set.num_parameters(),
        "seconds_per_step": per_step,
        "seconds": seconds,
        "processes": world,
        "adapter": str(job.adapter),
        "checkpoints": list(result.checkpoints),
    }


def latest_checkpoint(job_path: str | os.PathLike[str], since: float) -> str | None:
    """The newest checkpoint this run wrote (modified after ``since``) under the job's folder, for the failure message.

    The folder may be shared with other runs (output/taptune/checkpoints): older files are theirs.
    """
    from taptune.training.job_file import read_job

    folder = read_job(job_path).settings.checkpoint_dir
    if not folder or not Path(folder).is_dir():
        return None
    found = [(p.stat().st_mtime, str(p)) for p in Path(folder).glob("*/step_*.ckpt")]
    found = sorted(item for item in found if item[0] >= since)
    return found[-1][1] if found else None


def prepare(base_directory: str | None, device: str) -> torch.device:
    """Import ComfyUI as a library for ``device`` (auto: a GPU when there is one); returns the training device."""
    from devtools.comfy_host import prepare_comfy, prepared_base

    from .distributed import launched_distributed, local_rank

    if prepared_base() is not None:  # ComfyUI is imported once per process (a test, a sweep's next job)
        import comfy.model_management

        return comfy.model_management.get_torch_device()
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda and launched_distributed():
        # Before ComfyUI's model management picks "the" GPU: each rank its own.
        torch.cuda.set_device(local_rank())
    if base_directory is None:
        base_directory = tempfile.mkdtemp(prefix="taptune-headless-")
        atexit.register(shutil.rmtree, base_directory, True)
    prepare_comfy(base_directory, cpu=not use_cuda)
    import_pack()
    return torch.device("cuda", torch.cuda.current_device()) if use_cuda else torch.device("cpu")


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m headless.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("job", help="the job file (taptune-job/1), e.g. output/taptune/jobs/dog_00001/job.json")
    parser.add_argument("--resume", help="a checkpoint (step_NNNNNN.ckpt) of this job to continue from")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--base-directory", help="ComfyUI's base folder (default: a temporary one)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds a collective waits for the other ranks")
    parser.add_argument("--result", help="also write the result row as JSON to this file (rank 0)")
    parser.add_argument(
        "--check", action="store_true", help="only read and check the job (fields, files, image folders); train nothing"
    )
    args = parser.parse_args(argv)

    import_pack()  # the pack alone (no ComfyUI yet): enough to read and check the job
    from taptune.adapter_core.errors import TapTuneError

    from .distributed import launched_distributed, start_process_group, stop_process_group

    def refused(exc: TapTuneError) -> int:
        field = f" (field '{exc.input_name}')" if exc.input_name else ""
        print(one_line(f"TapTune headless: {exc}{field}"), file=sys.stderr, flush=True)
        return EXIT_INPUT

    try:  # the job's own faults, before ComfyUI is imported (seconds) or any rank waits for another
        job = check_job(args.job, args.resume)
    except TapTuneError as exc:
        return refused(exc)
    if args.check:
        print(one_line(f"{job.path}: the job reads and checks cleanly (nothing was trained)"))
        return 0
    device = prepare(args.base_directory, args.device)
    sync = None
    rank, world = 0, 1

    def terminated(signum: int, frame: Any) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminated)
    started = time.time()
    try:
        if launched_distributed():
            sync = start_process_group(device, args.timeout)
            rank, world = sync.rank, sync.world_size
        row = run_job(args.job, resume=args.resume, sync=sync)
    except TapTuneError as exc:
        return refused(exc)
    except (Terminated, RuntimeError) as exc:
        if sync is None and not isinstance(exc, Terminated):
            raise
        reason = (
            "stopped by the launcher (another rank failed)"
            if isinstance(exc, Terminated)
            else f"the process group failed ({type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}): "
            f"another rank stopped, or a collective waited longer than --timeout {args.timeout:g} s"
        )
        last = latest_checkpoint(args.job, started)
        print(
            f"TapTune headless: rank {rank} of {world}: {reason}. The run stopped without writing the adapter; "
            + (
                f"the last checkpoint {last} is intact: continue with --resume {last} (under any number of processes)."
                if last
                else "it wrote no checkpoint to resume (set checkpoint_every in the job's settings)."
            ),
            file=sys.stderr,
            flush=True,
        )
        return EXIT_GROUP
    finally:
        signal.signal(signal.SIGTERM, previous)
        if sync is not None:
            with contextlib.suppress(RuntimeError):  # a broken group may not close cleanly
                stop_process_group()
    if rank == 0:
        print(json.dumps(row, indent=2))
        if args.result:
            Path(args.result).write_text(json.dumps(row, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
