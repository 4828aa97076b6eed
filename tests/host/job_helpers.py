"""Shared pieces of the headless, data-parallel and sweep tests: image folders and small job files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .training_helpers import smooth_image

#: A small tap spec in job-file form (spec_to_json of TapConfig attn2o -> ffni, mid_dim 8).
TAP_SPEC = {
    "kind": "tap",
    "groups": [
        {
            "config": {"din": "attn2o", "dout": "ffni", "mid_dim": 8, "method": "relu", "scale": 1.0},
            "blocks": "all",
            "init": "zero_up",
        }
    ],
}


def write_image_folder(folder: Path, count: int, first_seed: int = 0, size: int = 64) -> Path:
    """``count`` smooth PNG pictures (8-bit, as files give them) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        array = (smooth_image(first_seed + i, size).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(array).save(folder / f"img_{i}.png")
    return folder


def write_job(folder: Path, checkpoint: Path, spec: dict[str, Any] | None = None, **settings: Any) -> Path:
    """A job file in ``folder``: two instance images, no prior preservation, its own checkpoint folder."""
    write_image_folder(folder / "instance", 2)
    entry = {
        "format": "taptune-job/1",
        "checkpoint": str(checkpoint),
        "spec": spec or TAP_SPEC,
        "instance": {"folder": "instance", "prompt": "a photo of sks dog"},
        "class": {"prompt": "a photo of dog"},
        "settings": {
            "steps": 3,
            "learning_rate": 3e-3,
            "resolution": 64,
            "batch_size": 2,
            "seed": 1,
            "prior_loss_weight": 0.0,
            "precision": "fp32",
            **settings,
        },
        "output": {"adapter": "adapter.safetensors"},
        "checkpoints": {"folder": "checkpoints", "resume_from": None},
    }
    path = folder / "job.json"
    path.write_text(json.dumps(entry, indent=2))
    return path
