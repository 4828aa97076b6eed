"""Resumable training checkpoints: adapter, optimiser, scheduler, step, RNG and data order.

Written atomically with ``torch.save`` and read back only with ``torch.load(weights_only=True)``
(plain containers of tensors and numbers). A checkpoint remembers what it was made from
(spec, data, settings) so that resuming with other inputs is refused instead of silently
continuing a different run.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from ..adapter_core.file_format import atomic_write

FORMAT = "taptune-train/1"


def run_fingerprint(payload: dict[str, Any]) -> str:
    """A short stable hash of the inputs that define a run."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write ``state`` atomically (temp file, then rename)."""
    return atomic_write(path, lambda tmp: torch.save({"format": FORMAT, **state}, tmp))


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; a clear error if it is not one of ours."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure is reported the same way
        raise ValueError(f"{Path(path).name} is not a readable TapTune training checkpoint: {exc}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{Path(path).name} is not a TapTune training checkpoint ({FORMAT})")
    return state
