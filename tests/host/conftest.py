"""Host tests: a real ComfyUI 0.3.75 (from .host/ComfyUI), its stock loaders and executor."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from devtools.comfy_host import ROOT, Host, init_nodes, prepare_comfy

BASES = ROOT / ".host" / "test-bases"
#: This session's own base folder: two pytest sessions in one checkout never share (or wipe) one.
BASE = BASES / str(os.getpid())
CHECKPOINT_CACHE = ROOT / ".host" / "test-checkpoints"


def _clear_stale_bases() -> None:
    """Remove the base folders of earlier sessions whose process has ended."""
    for folder in BASES.glob("*"):
        if folder.name.isdigit() and folder != BASE:
            try:
                os.kill(int(folder.name), 0)
            except ProcessLookupError:
                shutil.rmtree(folder, ignore_errors=True)
            except PermissionError:
                pass


BASES.mkdir(parents=True, exist_ok=True)
_clear_stale_bases()
shutil.rmtree(BASE, ignore_errors=True)
BASE.mkdir(parents=True)
prepare_comfy(BASE)
init_nodes()


@pytest.fixture(scope="session")
def base_dir() -> Path:
    """ComfyUI's base directory for this test session (models/, input/, output/...)."""
    return BASE


@pytest.fixture(scope="session")
def sd15_checkpoint_name(base_dir: Path) -> str:
    """A generated random SD 1.x-layout checkpoint, placed in models/checkpoints."""
    from devtools.checkpoints import cached_sd15_checkpoint

    source = cached_sd15_checkpoint(CHECKPOINT_CACHE)
    target = base_dir / "models" / "checkpoints" / source.name
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        target.symlink_to(source)
    return source.name


@pytest.fixture(scope="session")
def sd15(sd15_checkpoint_name: str, base_dir: Path):
    """(MODEL, CLIP, VAE) of the generated checkpoint, loaded by ComfyUI's stock loader."""
    import comfy.sd

    path = base_dir / "models" / "checkpoints" / sd15_checkpoint_name
    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(path))
    return model, clip, vae


@pytest.fixture(scope="session")
def host() -> Host:
    """ComfyUI's PromptExecutor with a recording stand-in for the websocket server."""
    return Host()


@pytest.fixture()
def adapters_dir(base_dir: Path) -> Path:
    """models/adapters of the test base directory (emptied for each test)."""
    folder = base_dir / "models" / "adapters"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


@pytest.fixture()
def demo_files(sd15, adapters_dir: Path, base_dir: Path) -> Path:
    """The adapter files and image folder the example workflows name, made for the test checkpoint."""
    import comfy.model_management

    from devtools.demo_files import write_demo_files
    from taptune.patching.model_access import model_architecture

    model = sd15[0]
    comfy.model_management.load_models_gpu([model])
    write_demo_files(base_dir, model.model.diffusion_model, model_architecture(model), image_size=64)
    return adapters_dir
