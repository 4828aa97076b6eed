"""Hostile image folders, writers and names (issue 22, classes 2, 3, 4, 5 and 7).

* Generated image folders (hostile sizes, totals, links in and out, FIFOs, broken links) through
  ``TapTuneLoadImageFolder`` and the headless reader: each refused early with the message of its
  rule naming the file, nothing outside the folder read, no hang, resident memory bounded; the
  same through ComfyUI's real server (``/upload/image``, then a prompt), its memory measured.
* Class-image generation sizes (job files and the node) bounded in total.
* Every writer's files get the umask's mode; clean-up never deletes a file or a user's folder
  whose name looks like a temporary; a very deep ``filename_prefix`` is the node's error; a
  wrong-shape adapter file's message names the input and the file.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import stat
import struct
import subprocess
import sys
import time
import urllib.request
import uuid
import zlib
from pathlib import Path

import folder_paths
import pytest
import torch
from PIL import Image

from headless.train import read_images
from taptune.adapter_core.errors import TapTuneError
from taptune.nodes.image_folder import TapTuneLoadImageFolder
from taptune.training.images import MAX_IMAGE_COUNT, MAX_TOTAL_BYTES, MAX_TOTAL_PIXELS

from .hostile_jobs import resident_mib
from .live_server import call, post_prompt, resident_bytes, running_server, server_base, wait_for

SECRET = "hunter2-outside"
#: Generated folder cases, the longest one may take, and the memory the loop may add (MiB).
FOLDER_CASES = 80
CASE_SECONDS = 2.0
MEMORY_GROWTH_MIB = 128


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int) -> bytes:
    """A few hundred bytes whose header announces a ``width x height`` RGB picture (its pixels never come)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + _chunk(b"IEND", b"")
    )


def compressed_png(side: int) -> bytes:
    """A real, fully decodable grey ``side x side`` PNG of a few hundred kilobytes (zeros compress well)."""
    row = b"\0" + b"\0" * side  # filter byte, then grey pixels
    data = zlib.compress(row * side, 9)
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


# --------------------------------------------------------------------------------------------------
# Generated folders through the node and the headless reader
# --------------------------------------------------------------------------------------------------

HAZARDS = (
    "none",
    "link-inside",
    "caption-link-inside",
    "link-outside",
    "caption-link-outside",
    "broken-link",
    "loop-link",
    "fifo-image",
    "fifo-caption",
    "one-too-large",
    "total-pixels",
    "total-bytes",
    "caption-folder",
)
#: What each hazard's refusal says (None: the folder is read).
EXPECTED = {
    "none": None,
    "link-inside": None,
    "caption-link-inside": None,
    "fifo-image": None,  # not a picture: skipped, never opened
    "link-outside": "outside the folder",
    "caption-link-outside": "outside the folder",
    "broken-link": "broken link",
    "loop-link": "broken link",
    "fifo-caption": "must be a text file",
    "one-too-large": "is larger than",
    "total-pixels": "pixels in all",
    "total-bytes": "bytes in all",
    "caption-folder": "must be a text file",
}


def make_folder(rng: random.Random, root: Path, outside: Path, hazard: str) -> tuple[Path, str | None]:
    """A folder of 1..4 small pictures with captions plus one hazard; returns it and the file the refusal names."""
    folder = root / f"case_{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    count = rng.randint(1, 4)
    for i in range(count):
        Image.new("RGB", (rng.choice([16, 24, 32]), 16), (i * 40, 10, 10)).save(folder / f"img_{i}.png")
        (folder / f"img_{i}.txt").write_text(f"a photo of sks dog {i}")
    named = None
    if hazard == "link-inside":
        (folder / "z_link.png").symlink_to(folder / "img_0.png")
        (folder / "z_link.txt").write_text("a photo of sks dog")
    elif hazard == "caption-link-inside":
        (folder / "captions").mkdir()
        (folder / "captions" / "shared.txt").write_text("a photo of sks dog")
        (folder / "img_0.txt").unlink()
        (folder / "img_0.txt").symlink_to(folder / "captions" / "shared.txt")
    elif hazard == "link-outside":
        named = "z_outside.png"
        (folder / named).symlink_to(outside / "secret.png")
    elif hazard == "caption-link-outside":
        named = "img_0.txt"
        (folder / named).unlink()
        (folder / named).symlink_to(outside / "secret.txt")
    elif hazard == "broken-link":
        named = "z_gone.png"
        (folder / named).symlink_to(folder / "nowhere" / "gone.png")
    elif hazard == "loop-link":
        named = "z_loop.png"
        (folder / named).symlink_to(folder / named)
    elif hazard == "fifo-image":
        os.mkfifo(folder / "z_pipe.png")
    elif hazard == "fifo-caption":
        named = "img_0.txt"
        (folder / named).unlink()
        os.mkfifo(folder / named)
    elif hazard == "one-too-large":
        named = "z_big.png"
        side = rng.choice([8193, 9000, 20_000, 200_000])
        (folder / named).write_bytes(png_claiming(side, side))
    elif hazard == "total-pixels":
        side = 7000  # each 49 Mpx, under the per-picture bound; enough of them pass the total
        for i in range(MAX_TOTAL_PIXELS // (side * side) + 1):
            (folder / f"z_{i}.png").write_bytes(png_claiming(side, side))
    elif hazard == "total-bytes":
        for i in range(MAX_TOTAL_BYTES // 2**30 + 1):  # sparse files: gigabytes on paper, nothing on disk
            with open(folder / f"z_{i}.png", "wb") as handle:
                handle.write(png_claiming(64, 64))
                handle.truncate(2**30 + 4096)
    elif hazard == "caption-folder":
        named = "img_0.txt"
        (folder / named).unlink()
        (folder / named).mkdir()
    return folder, named


def _alarm(signum, frame):
    raise TimeoutError("hang")


def test_generated_image_folders_are_read_or_refused_early_naming_the_file(tmp_path: Path) -> None:
    inside = Path(folder_paths.get_input_directory()) / "hostile_folders"
    shutil.rmtree(inside, ignore_errors=True)
    inside.mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.new("RGB", (16, 16)).save(outside / "secret.png")
    (outside / "secret.txt").write_text(SECRET)
    rng = random.Random("issue-22-folders")
    for _warm in range(3):  # imports and caches into the baseline
        folder, _ = make_folder(rng, inside, outside, "none")
        TapTuneLoadImageFolder.execute(folder=f"hostile_folders/{folder.name}")
    baseline = peak = resident_mib()
    seen: dict[str, int] = {}
    slowest = 0.0
    previous = signal.signal(signal.SIGALRM, _alarm)
    try:
        for index in range(FOLDER_CASES):
            hazard = HAZARDS[index % len(HAZARDS)] if index < len(HAZARDS) else rng.choice(HAZARDS)
            seen[hazard] = seen.get(hazard, 0) + 1
            folder, named = make_folder(rng, inside, outside, hazard)
            for reader in ("node", "headless"):
                start = time.perf_counter()
                signal.alarm(10)
                try:
                    if reader == "node":
                        images, captions = TapTuneLoadImageFolder.execute(folder=f"hostile_folders/{folder.name}").args
                        outcome = None
                    else:
                        images = read_images(folder, "instance.folder")
                        captions = ""
                        outcome = None
                except TapTuneError as exc:
                    outcome = exc
                finally:
                    signal.alarm(0)
                elapsed = time.perf_counter() - start
                slowest = max(slowest, elapsed)
                assert elapsed <= CASE_SECONDS, (hazard, reader, elapsed)
                expected = EXPECTED[hazard]
                if expected is None:
                    assert outcome is None, (hazard, reader, str(outcome))
                    assert len(images) >= 1 and SECRET not in str(captions)
                    continue
                message = str(outcome)
                assert outcome is not None and expected in message, (hazard, reader, message)
                assert SECRET not in message and "secret" not in message, message
                if reader == "node":
                    assert outcome.input_name == "folder" and message.startswith(
                        "TapTuneLoadImageFolder: input 'folder'"
                    ), message
                else:
                    assert outcome.input_name == "instance", message
                if named is not None:
                    assert named in message, (hazard, message)
            peak = max(peak, resident_mib())
            shutil.rmtree(folder)
    finally:
        signal.signal(signal.SIGALRM, previous)
    print(
        json.dumps({"cases": FOLDER_CASES, "slowest_s": round(slowest, 3), "rss_growth_mib": round(peak - baseline, 1)})
    )
    assert set(seen) == set(HAZARDS)
    assert peak - baseline <= MEMORY_GROWTH_MIB


def test_more_pictures_than_the_count_budget_are_refused_before_any_is_opened(tmp_path: Path) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(MAX_IMAGE_COUNT + 1):
        os.close(os.open(folder / f"{i}.png", os.O_CREAT | os.O_WRONLY, 0o644))  # empty: opening any would fail
    start = time.perf_counter()
    with pytest.raises(TapTuneError, match="more than 10,000 images"):
        read_images(folder, "instance.folder")
    assert time.perf_counter() - start <= CASE_SECONDS


# --------------------------------------------------------------------------------------------------
# The real server: uploaded through /upload/image, read by the node, memory measured
# --------------------------------------------------------------------------------------------------


def _upload(port: int, name: str, data: bytes, subfolder: str) -> None:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
        "Content-Type: image/png\r\n\r\n".encode()
        + data
        + b"\r\n",
        f'--{boundary}\r\nContent-Disposition: form-data; name="subfolder"\r\n\r\n{subfolder}\r\n'.encode(),
        f'--{boundary}\r\nContent-Disposition: form-data; name="overwrite"\r\n\r\ntrue\r\n'.encode(),
    ]
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/upload/image",
        data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200


def test_uploaded_pictures_over_the_budget_do_not_grow_the_servers_memory(
    tmp_path_factory, base_dir, sd15_checkpoint_name
) -> None:
    """Six 7000x7000 pictures (49 Mpx each, a few hundred KB as PNG) would be 3.4 GiB of tensors."""
    base = server_base(
        tmp_path_factory.mktemp("upload-base"), base_dir / "models" / "checkpoints" / sd15_checkpoint_name
    )
    picture = compressed_png(7000)
    assert len(picture) < 2**20
    with running_server(base) as (port, process):
        small = Image.new("RGB", (32, 32))
        buffer = __import__("io").BytesIO()
        small.save(buffer, format="PNG")
        _upload(port, "ok.png", buffer.getvalue(), "fine")
        prompt = {
            "1": {"class_type": "TapTuneLoadImageFolder", "inputs": {"folder": "fine"}},
            "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
        }
        done = wait_for(port, post_prompt(port, prompt)["prompt_id"])  # warm: the node and the preview once
        assert done["status"]["status_str"] == "success"
        before = resident_bytes(process.pid)
        for i in range(6):
            _upload(port, f"huge_{i}.png", picture, "bomb")
        uploaded = sorted(p.name for p in (base / "input" / "bomb").iterdir())
        assert uploaded == [f"huge_{i}.png" for i in range(6)]
        for _ in range(3):
            prompt["1"]["inputs"]["folder"] = "bomb"
            failed = wait_for(port, post_prompt(port, prompt)["prompt_id"])
            assert failed["status"]["status_str"] == "error"
            error = next(m[1] for m in failed["status"]["messages"] if m[0] == "execution_error")
            assert "TapTuneLoadImageFolder: input 'folder'" in error["exception_message"]
            assert "pixels in all" in error["exception_message"]
        after = resident_bytes(process.pid)
        assert call(port, "/system_stats")  # the server still answers
    growth = (after - before) / 2**20
    print(
        json.dumps(
            {"server_rss_before_mib": before // 2**20, "after_mib": after // 2**20, "growth_mib": round(growth, 1)}
        )
    )
    assert growth <= 200, growth


# --------------------------------------------------------------------------------------------------
# Class-image generation sizes
# --------------------------------------------------------------------------------------------------


def test_class_image_generation_is_bounded_in_total(tmp_path: Path) -> None:
    from taptune.nodes.class_images import TapTuneClassImages
    from taptune.training.job_file import JobFileError, parse_job

    entry = {
        "format": "taptune-job/1",
        "checkpoint": "m.safetensors",
        "spec": {"kind": "tap", "groups": [{"config": {"din": "attn2o", "dout": "ffni", "mid_dim": 8}}]},
        "instance": {"folder": "i", "prompt": "p"},
        "class": {"prompt": "a dog", "generate": {}},
        "output": {"adapter": "a.safetensors"},
    }
    for generate, words in (
        ({"count": 10_000, "width": 4096, "height": 4096}, "pixels"),
        ({"count": 2000}, "pixels"),  # 2000 of the default 512x512
        ({"width": 100_000}, "within 64..4096"),
        ({"count": 10**6}, "within 1..10000"),
        ({"steps": 10**9}, "within 1..200"),
        ({"width": 100}, "multiples of 8"),
    ):
        entry["class"]["generate"] = generate
        with pytest.raises(JobFileError) as refused:
            parse_job(entry, tmp_path / "job.json")
        assert refused.value.input_name == "class" and words in str(refused.value), str(refused.value)
    entry["class"]["generate"] = {"count": 200, "width": 1024, "height": 1024}
    assert parse_job(entry, tmp_path / "job.json").class_generate["count"] == 200
    with pytest.raises(TapTuneError) as refused:
        TapTuneClassImages.execute(None, None, None, "a dog", 10_000, 0, 1, 7.0, "euler", "normal", 4096, 4096)
    assert refused.value.input_name == "count" and "pixels" in str(refused.value)


# --------------------------------------------------------------------------------------------------
# Writers: the umask's mode; clean-up never deletes what is not its own; names
# --------------------------------------------------------------------------------------------------


def _writers(folder: Path, sd15) -> dict[str, Path]:
    """Every writer of the pack and the headless tools, writing once into ``folder``; their files."""
    from headless import sweep
    from headless.worker import write_result
    from taptune.adapter_core.file_format import AdapterFile, save_adapter_file, write_adapter_file
    from taptune.adapter_core.safe_write import atomic_write
    from taptune.nodes.common import write_new_output
    from taptune.nodes.export_job import _write_images
    from taptune.training.class_image_cache import ClassImageSettings, generate_class_images

    from ..core.save_loop_child import checkpoint_content

    adapter = AdapterFile(kind="tap", adapters=[{}], tensors={"t": torch.zeros(2)}, info={})
    files = {
        "save node (safetensors)": write_new_output(
            "TapTuneSaveAdapter", "modes/a", lambda tmp: write_adapter_file(tmp, adapter), folder=folder
        )[0],
        "save_adapter_file": save_adapter_file(folder / "b.safetensors", adapter),
        "headless adapter": atomic_write(folder / "c.safetensors", lambda tmp: write_adapter_file(tmp, adapter)),
        "checkpoint (torch.save)": checkpoint_content(1).save(folder / "run" / "step_000001.ckpt"),
    }
    _write_images(folder / "export", "instance", [torch.rand(16, 16, 3)])
    files["export node images"] = folder / "export" / "instance_00000.png"
    model, clip, vae = sd15
    settings = ClassImageSettings("a dog", "", 1, 0, 1, 1.0, "euler", "normal", 64, 64)
    generate_class_images(model, clip, vae, settings, folder / "class")
    (cache,) = [p for p in (folder / "class").iterdir() if p.is_dir()]
    for path in cache.iterdir():
        files[f"class image cache {path.suffix}"] = path
    (folder / "job.json").write_text("{}")
    write_result(str(folder / "job.json"), {"status": "done"})
    files["sweep result.json"] = folder / "result.json"
    sweep.collect([sweep.PlannedJob("c", "s", 0, folder / "jobs" / "c__s__s0")], folder / "sweep", lambda _: None)
    files["sweep results.csv"] = folder / "sweep" / "results.csv"
    files["sweep results.md"] = folder / "sweep" / "results.md"
    return files


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_every_writer_gives_its_files_the_umasks_mode(sd15, tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        files = _writers(tmp_path, sd15)
    finally:
        os.umask(old)
    assert len(files) >= 10
    modes = {name: oct(stat.S_IMODE(path.stat().st_mode)) for name, path in files.items()}
    assert set(modes.values()) == {oct(0o666 & ~umask)}, modes


def test_clean_up_deletes_only_the_writers_own_temporary_folders(tmp_path: Path) -> None:
    from taptune.adapter_core.safe_write import TEMP_MARKER, atomic_write, write_numbered

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process that has ended
    looks_like = f".a.{pid}.abc123.taptune-tmp"
    # A file someone saved under a name like a temporary (also through the pack's own writer), and a folder of theirs.
    atomic_write(tmp_path / looks_like, lambda tmp: Path(tmp).write_text("mine, saved by the pack"))
    theirs = tmp_path / f".b.{pid}.def456.taptune-tmp"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("my notes")
    # What a killed writer leaves: its folder with the marker (and half a file), or an empty one.
    stale = tmp_path / f".c.{pid}.0a0a0a.taptune-tmp"
    stale.mkdir()
    (stale / TEMP_MARKER).write_text(stale.name)
    (stale / "c.safetensors").write_bytes(b"half")
    empty = tmp_path / f".d.{pid}.0b0b0b.taptune-tmp"
    empty.mkdir()
    # Killed while naming its marker (CI caught this one): only the marker, holding none or part of the name.
    unnamed = tmp_path / f".e.{pid}.0c0c0c.taptune-tmp"
    unnamed.mkdir()
    (unnamed / TEMP_MARKER).write_bytes(b"")
    half_named = tmp_path / f".f.{pid}.0d0d0d.taptune-tmp"
    half_named.mkdir()
    (half_named / TEMP_MARKER).write_text(half_named.name[:5])
    # A marker that is not the start of the folder's name, or one beside a file of someone's: not a writer's.
    other_marker = tmp_path / f".g.{pid}.0e0e0e.taptune-tmp"
    other_marker.mkdir()
    (other_marker / TEMP_MARKER).write_text("something else")
    beside = tmp_path / f".h.{pid}.0f0f0f.taptune-tmp"
    beside.mkdir()
    (beside / TEMP_MARKER).write_bytes(b"")
    (beside / "notes.txt").write_text("my notes")
    write_numbered(tmp_path, "next", lambda tmp: Path(tmp).write_text("x"))
    assert (tmp_path / looks_like).read_text() == "mine, saved by the pack"
    assert (theirs / "notes.txt").read_text() == "my notes"
    assert not stale.exists() and not empty.exists()
    assert not unnamed.exists() and not half_named.exists()
    assert (other_marker / TEMP_MARKER).read_text() == "something else"
    assert (beside / "notes.txt").read_text() == "my notes"
    assert (tmp_path / "next_00001.safetensors").is_file()


def test_a_dead_writers_folder_is_cleaned_also_when_its_process_id_was_reused(tmp_path: Path) -> None:
    """Process ids come back (CI saw a dead writer's id taken by a new thread): the marker's lock decides."""
    import fcntl

    from taptune.adapter_core.safe_write import TEMP_MARKER, write_numbered

    reused = os.getppid()  # a process that runs, and is no writer of ours
    dead = tmp_path / f".a.{reused}.0c0c0c.taptune-tmp"
    dead.mkdir()
    (dead / TEMP_MARKER).write_text(dead.name)  # complete name, nobody holds its lock
    (dead / "a.safetensors").write_bytes(b"half")
    running = tmp_path / f".b.{reused}.0d0d0d.taptune-tmp"
    running.mkdir()
    with open(running / TEMP_MARKER, "wb") as marker:  # a writer at work: lock held, name written
        fcntl.flock(marker.fileno(), fcntl.LOCK_EX)
        marker.write(running.name.encode())
        marker.flush()
        write_numbered(tmp_path, "next", lambda tmp: Path(tmp).write_text("x"))
        assert not dead.exists()
        assert (running / TEMP_MARKER).is_file()  # a running writer's folder is left alone
    starting = tmp_path / f".c.{reused}.0e0e0e.taptune-tmp"
    starting.mkdir()
    (starting / TEMP_MARKER).write_text(".c")  # its name not yet complete: the writer may be starting
    write_numbered(tmp_path, "next", lambda tmp: Path(tmp).write_text("y"))
    assert starting.exists() and not running.exists()  # the first writer has ended since: cleaned


@pytest.mark.parametrize("depth", [33, 1000, 5000, 100_000])
def test_a_very_deep_prefix_is_the_nodes_filename_prefix_error(tmp_path: Path, depth: int) -> None:
    from taptune.nodes.common import write_new_output

    for prefix in ("a/" * depth + "x", "/".join(["."] * depth), "b" * (depth + 1100)):
        with pytest.raises(TapTuneError) as refused:
            write_new_output("TapTuneSaveAdapter", prefix, lambda tmp: Path(tmp).write_text("x"), folder=tmp_path)
        assert refused.value.input_name == "filename_prefix"
        assert str(refused.value).startswith("TapTuneSaveAdapter: input 'filename_prefix'")
    assert list(tmp_path.iterdir()) == []
    path, _ = write_new_output("TapTuneSaveAdapter", "a/" * 32 + "x", lambda tmp: Path(tmp).write_text("x"), tmp_path)
    assert path.read_text() == "x"


def test_a_wrong_shape_adapter_names_the_input_and_the_file(sd15, adapters_dir: Path) -> None:
    from taptune.adapter_core import TapAdapterSet, TapConfig, save_adapter_file
    from taptune.adapter_core.sites import TapSite
    from taptune.nodes.load_adapter import TapTuneLoadAdapter
    from taptune.patching.model_access import model_sites

    model = sd15[0]
    wider = [TapSite(s.path, s.kind, s.in_width * 2, s.out_width * 2, s.context_dim) for s in model_sites(model)]
    tap_set = TapAdapterSet.create(wider, TapConfig("attn2o", "ffni", mid_dim=4))
    save_adapter_file(adapters_dir / "other_width.safetensors", tap_set.to_file())
    with pytest.raises(TapTuneError) as refused:
        TapTuneLoadAdapter.execute(model, "other_width.safetensors", 1.0)
    message = str(refused.value)
    assert refused.value.input_name == "adapter_name" and ": input 'adapter_name': " in message, message
    assert refused.value.file == "other_width.safetensors" and message.count("other_width.safetensors") == 1, message
    assert "made for width" in message  # what is wrong, and with which file
