"""Hostile inputs, one test per class of the robustness review (docs/robustness.md).

Each test feeds a node what a stranger's workflow or file could feed it and checks the rule
of its class: paths stay inside ComfyUI's folders and refusals reveal nothing; names never
overwrite; a node's schema never depends on what lies on disk; bad numbers and unknown choices
are the pack's clear errors; the class-image cache checks what it reads and deletes nothing
it did not write.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import folder_paths
import pytest
import torch
from PIL import Image

from taptune.adapter_core.errors import TapTuneError
from taptune.adapter_core.safe_write import atomic_write
from taptune.nodes.common import write_new_output
from taptune.nodes.extension import node_classes
from taptune.nodes.image_folder import TapTuneLoadImageFolder
from taptune.nodes.load_adapter import TapTuneAdapterInfo, TapTuneLoadAdapter
from taptune.nodes.oft_interchange import TapTuneImportOFT
from taptune.nodes.specs import spec_node_named
from taptune.nodes.tap_import import TapTuneImportOfficialAdapters
from taptune.nodes.train import resume_path

TapTuneTapSpec = spec_node_named("TapTuneTapSpec")
TapTuneOFTSpec = spec_node_named("TapTuneOFTSpec")

# -- 3. paths --------------------------------------------------------------------------------------

PATH_INPUTS = [
    ("TapTuneImportOfficialAdapters", "directory", lambda v: TapTuneImportOfficialAdapters.execute(directory=v)),
    (
        "TapTuneImportOfficialAdapters",
        "config",
        lambda v: TapTuneImportOfficialAdapters.execute(directory=folder_paths.get_input_directory(), config=v),
    ),
    ("TapTuneImportOFT", "source", lambda v: TapTuneImportOFT.execute(source=v)),
    ("TapTuneLoadImageFolder", "folder", lambda v: TapTuneLoadImageFolder.execute(folder=v)),
]


@pytest.fixture()
def outside(tmp_path: Path) -> dict[str, str]:
    """Paths outside ComfyUI's folders: an existing folder, a secret file, a missing one, and links to them."""
    secret_dir = tmp_path / "elsewhere"
    secret_dir.mkdir()
    secret = secret_dir / "secret.yaml"
    secret.write_text("password: hunter2\n")
    inside = Path(folder_paths.get_input_directory())
    link = inside / "link_to_elsewhere"
    if link.is_symlink():
        link.unlink()
    link.symlink_to(secret_dir, target_is_directory=True)
    return {
        "existing folder": str(secret_dir),
        "existing file": str(secret),
        "missing": str(secret_dir / "nothing_here"),
        "climbing": "../" * 12 + str(secret).lstrip("/"),
        "symlinked folder": "link_to_elsewhere",
        "symlinked file": "link_to_elsewhere/secret.yaml",
        "NUL": "a\x00b",
        "huge": "x" * 100_000,
    }


@pytest.mark.parametrize("node,input_name,call", PATH_INPUTS, ids=[f"{n}.{i}" for n, i, _ in PATH_INPUTS])
def test_path_inputs_stay_inside_comfyuis_folders_and_reveal_nothing(node, input_name, call, outside):
    messages = {}
    for case, value in outside.items():
        with pytest.raises(TapTuneError) as caught:
            call(value)
        message = str(caught.value)
        assert caught.value.input_name == input_name, (case, message)
        assert f"{node}: input '{input_name}'" in message, (case, message)
        assert "hunter2" not in message and "secret" not in message, (case, message)
        messages[case] = message
    # Existing or not, file or folder, linked or direct: the same words, so nothing is revealed.
    assert len(set(messages.values())) == 1, messages


def test_resume_from_only_inside_the_checkpoint_folder(base_dir: Path, tmp_path: Path):
    from taptune.nodes.train import checkpoint_root

    root = checkpoint_root()
    root.mkdir(parents=True, exist_ok=True)
    foreign = tmp_path / "run.ckpt"
    foreign.write_bytes(b"not yours")
    (root / "escape.ckpt").unlink(missing_ok=True)
    (root / "escape.ckpt").symlink_to(foreign)
    good = root / "mine" / "step_00001.ckpt"
    good.parent.mkdir(exist_ok=True)
    good.write_bytes(b"x")
    assert resume_path("mine/step_00001.ckpt") == str(good.resolve())
    assert resume_path("none") is None
    refused = set()
    for value in (str(foreign), "../../../" + str(foreign).lstrip("/"), "escape.ckpt", "missing.ckpt", "mine", 7):
        with pytest.raises(TapTuneError) as caught:
            resume_path(value)
        assert caught.value.input_name == "resume_from"
        refused.add(str(caught.value))
    assert len(refused) == 1


# -- 4. names that would overwrite ------------------------------------------------------------------


def _write(text: str):
    return lambda tmp: Path(tmp).write_text(text)


def test_glob_characters_in_a_prefix_are_literal_and_never_overwrite(tmp_path: Path):
    prefix = "run[1]*?"
    first, _ = write_new_output("TapTuneSaveAdapter", prefix, _write("first"), folder=tmp_path)
    second, _ = write_new_output("TapTuneSaveAdapter", prefix, _write("second"), folder=tmp_path)
    assert first != second
    assert first.name == "run[1]*?_00001.safetensors" and second.name == "run[1]*?_00002.safetensors"
    assert first.read_text() == "first" and second.read_text() == "second"


def test_a_new_file_never_replaces_an_existing_one(tmp_path: Path):
    target = tmp_path / "taken.safetensors"
    target.write_text("the user's")
    with pytest.raises(FileExistsError):
        atomic_write(target, _write("ours"))
    assert target.read_text() == "the user's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.safetensors"]  # no temporary left


@pytest.mark.parametrize(
    "prefix,expected",
    [
        ("a\x00b", "control characters"),
        ("x" * 300, "longer than"),
        ("blocker/adapter", "is a file, not a folder"),
        ("../outside", "outside the output folder"),
        ("", "is empty"),
    ],
    ids=["NUL", "too long", "through a file", "climbing", "empty"],
)
def test_bad_prefixes_are_the_nodes_clear_error(tmp_path: Path, prefix, expected):
    (tmp_path / "blocker").write_text("a file")
    with pytest.raises(TapTuneError) as caught:
        write_new_output("TapTuneSaveAdapter", prefix, _write("x"), folder=tmp_path)
    assert caught.value.input_name == "filename_prefix"
    assert "TapTuneSaveAdapter: input 'filename_prefix'" in str(caught.value)
    assert expected in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]


def test_written_files_get_the_umasks_permissions(tmp_path: Path):
    old = os.umask(0o022)
    try:
        written, _ = write_new_output("TapTuneSaveAdapter", "perm", _write("x"), folder=tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(written.stat().st_mode) == 0o644


# -- 5. node registration never depends on the disk -------------------------------------------------


def test_every_schema_builds_with_dangling_links_and_unreadable_entries(base_dir: Path):
    from taptune.nodes.train import checkpoint_root

    planted = []
    for folder in (Path(folder_paths.get_folder_paths("adapters")[0]), checkpoint_root()):
        folder.mkdir(parents=True, exist_ok=True)
        dangling = folder / "dangling.safetensors"
        dangling.unlink(missing_ok=True)
        dangling.symlink_to(folder / "gone" / "nowhere.safetensors")
        loop = folder / "loop.ckpt"
        loop.unlink(missing_ok=True)
        loop.symlink_to(loop)
        planted += [dangling, loop]
    try:
        for cls in node_classes():
            schema = cls.GET_SCHEMA()
            assert schema.node_id.startswith("TapTune")
            assert cls.INPUT_TYPES()  # what /object_info serialises
    finally:
        for path in planted:
            path.unlink(missing_ok=True)


# -- 6. numbers and choices ComfyUI lets through ----------------------------------------------------


@pytest.mark.parametrize(
    "call,input_name",
    [
        (lambda m: TapTuneLoadAdapter.execute(m, "any.safetensors", float("nan")), "strength"),
        (lambda m: TapTuneLoadAdapter.execute(m, "any.safetensors", float("inf")), "strength"),
        (lambda m: TapTuneTapSpec.execute("attn2o", "ffni", 60, "relu", float("nan")), "scale"),
        (lambda m: TapTuneTapSpec.execute("attn2o", "ffni", 10**12, "relu", 1.0), "mid_dim"),
        (lambda m: TapTuneTapSpec.execute("attn9o", "ffni", 60, "relu", 1.0), "din"),
        (lambda m: TapTuneTapSpec.execute("attn2o", "ffni", 60, "softmax?", 1.0), "method"),
        (lambda m: TapTuneOFTSpec.execute(4, float("nan"), True, False), "eps"),
        (lambda m: TapTuneOFTSpec.execute(10**9, 6e-5, True, False), "r"),
        (lambda m: TapTuneOFTSpec.execute(4.5, 6e-5, True, False), "r"),
        (lambda m: TapTuneLoadImageFolder.execute(".", resize_mode="sideways"), "resize_mode"),
        (lambda m: TapTuneLoadImageFolder.execute(".", resize_mode="center_crop", resolution=1e400), "resolution"),
    ],
    ids=[
        "strength NaN",
        "strength inf",
        "scale NaN",
        "mid_dim huge",
        "unknown din",
        "unknown method",
        "eps NaN",
        "r huge",
        "r fractional",
        "unknown resize_mode",
        "resolution 1e400",
    ],
)
def test_bad_numbers_and_unknown_choices_are_the_pack_errors(sd15, call, input_name, tmp_path):
    (Path(folder_paths.get_input_directory()) / "one.png").parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 64)).save(Path(folder_paths.get_input_directory()) / "one.png")
    with pytest.raises(TapTuneError) as caught:
        call(sd15[0])
    assert caught.value.input_name == input_name, str(caught.value)
    assert f": input '{input_name}'" in str(caught.value)


def test_info_of_a_missing_or_odd_name_is_a_clear_error():
    for name in ("missing.safetensors", "../../etc/passwd", "a\x00b", 12):
        with pytest.raises(TapTuneError) as caught:
            TapTuneAdapterInfo.execute(name)
        assert caught.value.input_name == "adapter_name"
        assert "TapTuneAdapterInfo: input 'adapter_name'" in str(caught.value)
        assert "root:" not in str(caught.value)  # nothing of /etc/passwd's content


# -- 7. the class-image cache ------------------------------------------------------------------------


def test_the_class_image_cache_checks_what_it_reads_and_deletes_nothing_it_did_not_write(sd15, tmp_path: Path):
    from taptune.training.class_image_cache import ClassImageSettings, generate_class_images, image_name

    model, clip, vae = sd15
    settings = ClassImageSettings("a photo of a dog", "", 3, 5, 1, 1.0, "euler", "normal", 64, 64)
    first, cached = generate_class_images(model, clip, vae, settings, tmp_path)
    assert not cached and first.shape == (3, 64, 64, 3)
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    mine = {folder / "my_notes.txt": b"notes", folder / "my_dog.png": b"\x89PNG not really"}
    for path, data in mine.items():
        path.write_bytes(data)
    again, cached = generate_class_images(model, clip, vae, settings, tmp_path)
    assert cached and torch.equal(again, first)

    # An image of another size, a truncated one and a missing one: each regenerated alone.
    Image.new("RGB", (32, 48)).save(folder / image_name(0))
    (folder / image_name(1)).write_bytes((folder / image_name(1)).read_bytes()[:40])
    (folder / image_name(2)).unlink()
    repaired, cached = generate_class_images(model, clip, vae, settings, tmp_path)
    assert not cached
    assert torch.equal(repaired, first)  # each image comes from its own seed
    for path, data in mine.items():
        assert path.read_bytes() == data
    names = {p.name for p in folder.iterdir()}
    assert {"my_notes.txt", "my_dog.png", image_name(0), image_name(1), image_name(2)} <= names


# -- 6 (continued). the image folder ------------------------------------------------------------------


def _png_header_claiming(width: int, height: int) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    # A few kilobytes that announce a picture of width x height (the pixel data never comes).
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    "case,file,expected",
    [
        ("truncated image", "b.png", "is not a readable image"),
        ("not an image", "b.jpg", "is not a readable image"),
        ("huge declared size", "b.png", "is larger than"),
        ("bomb-sized declared size", "b.png", "is larger than"),
        ("caption not UTF-8", "a.txt", "is not UTF-8 text"),
        ("caption is a folder", "a.txt", "must be a text file"),
        ("caption too large", "a.txt", "must be a text file"),
    ],
)
def test_a_damaged_image_folder_is_the_nodes_clear_error_naming_the_file(case, file, expected):
    import shutil

    folder = Path(folder_paths.get_input_directory()) / "damaged_folder"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    Image.new("RGB", (64, 64), (200, 10, 10)).save(folder / "a.png")
    (folder / "a.txt").write_text("a photo of sks dog")
    Image.new("RGB", (64, 64), (10, 200, 10)).save(folder / "b.png")
    (folder / "b.txt").write_text("a photo of sks dog")
    if case == "truncated image":
        (folder / "b.png").write_bytes((folder / "b.png").read_bytes()[:60])
    elif case == "not an image":
        (folder / "b.jpg").write_bytes(b"GIF89a but not really" * 10)
    elif case == "huge declared size":
        (folder / "b.png").write_bytes(_png_header_claiming(9_000, 9_000))
    elif case == "bomb-sized declared size":
        (folder / "b.png").write_bytes(_png_header_claiming(200_000, 200_000))
    elif case == "caption not UTF-8":
        (folder / "a.txt").write_bytes(b"\xff\xfe\xfa sks")
    elif case == "caption is a folder":
        (folder / "a.txt").unlink()
        (folder / "a.txt").mkdir()
    elif case == "caption too large":
        (folder / "a.txt").write_text("word " * 20_000)
    with pytest.raises(TapTuneError) as caught:
        TapTuneLoadImageFolder.execute(folder="damaged_folder")
    message = str(caught.value)
    assert caught.value.input_name == "folder"
    assert message.startswith("TapTuneLoadImageFolder: input 'folder'"), message
    assert file in message and expected in message, message
    assert message.count(file) == 1, message


# -- 4 (continued). racing writers ------------------------------------------------------------------


def test_writers_racing_for_one_prefix_never_replace_each_others_files(tmp_path: Path):
    from concurrent.futures import ThreadPoolExecutor

    def save(i: int) -> Path:
        return write_new_output("TapTuneSaveAdapter", "race", _write(f"writer {i}"), folder=tmp_path)[0]

    with ThreadPoolExecutor(max_workers=8) as pool:
        written = list(pool.map(save, range(40)))
    assert len(set(written)) == 40
    assert sorted(p.read_text() for p in written) == sorted(f"writer {i}" for i in range(40))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written)  # no temporaries
