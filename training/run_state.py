"""A training run's resumable state: what a checkpoint holds, saving and loading itself.

Written atomically with ``torch.save`` and read back only with ``torch.load(weights_only=True)``
(plain containers of tensors and numbers). A state remembers the key of the run it belongs to
(spec, data, settings), so that resuming with other inputs is refused instead of silently
continuing a different run. Checkpoints written by earlier versions (``fingerprint`` for the
run key, phase ``magnitude`` for the post phase) keep loading.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..adapter_core.kind import Phase
from ..adapter_core.safe_write import atomic_write
from .errors import TrainingInputError

FORMAT = "taptune-train/1"
#: The largest checkpoint file read back (an SD 1.5 OFT run's optimiser state is about 280 MB).
MAX_CHECKPOINT_BYTES = 8 * 2**30
#: Phase names earlier versions wrote (0.1/0.2 called the post phase ``magnitude``).
_LEGACY_PHASES = {"magnitude": Phase.POST}


def run_key(payload: dict[str, Any]) -> str:
    """A short stable hash of the inputs that define a run (what its checkpoints are filed under)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class RunState:
    """Everything needed to continue a run exactly where a checkpoint left it."""

    run_key: str
    step: int
    phase: Phase
    losses: list[float]
    parameters: list[torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    generator: torch.Tensor
    samplers: dict[str, list[int]]
    spec: dict[str, Any] = field(default_factory=dict)
    scaler: dict[str, Any] | None = None
    trigger_word: str = ""
    class_word: str = ""

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the state atomically (a checkpoint of the same run and step is replaced)."""
        payload = {
            "format": FORMAT,
            "fingerprint": self.run_key,  # the name earlier versions read
            "spec": self.spec,
            "step": self.step,
            # Earlier versions read only "main" and "magnitude"; writing that name keeps their checkpoints
            # and ours interchangeable.
            "phase": "magnitude" if self.phase is Phase.POST else Phase(self.phase).value,
            "losses": list(self.losses),
            "parameters": [p.detach().cpu().clone() for p in self.parameters],
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "scaler": self.scaler,
            "generator": self.generator,
            "samplers": self.samplers,
            "trigger_word": self.trigger_word,
            "class_word": self.class_word,
        }
        return atomic_write(path, lambda tmp: torch.save(payload, tmp), replace=True)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> RunState:
        """Read a checkpoint; :class:`TrainingInputError` (input ``resume_from``) if it is not a sound one."""
        name = Path(path).name
        try:
            info = os.stat(path)
        except OSError:
            raise TrainingInputError("resume_from", f"no checkpoint {name}") from None
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_CHECKPOINT_BYTES:
            raise TrainingInputError("resume_from", f"{name} is not a TapTune training checkpoint")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # any unpickling failure is reported the same way
            raise TrainingInputError("resume_from", f"{name} is not a readable TapTune training checkpoint") from None
        try:
            return cls._from_payload(state)
        except (KeyError, TypeError, ValueError, AttributeError):
            raise TrainingInputError("resume_from", f"{name} is not a TapTune training checkpoint ({FORMAT})") from None

    @classmethod
    def _from_payload(cls, state: Any) -> RunState:
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise ValueError("not a checkpoint")
        parameters = state["parameters"]
        generator = state["generator"]
        samplers = state["samplers"]
        if not (
            isinstance(parameters, list)
            and all(isinstance(p, torch.Tensor) and p.is_floating_point() for p in parameters)
            and isinstance(generator, torch.Tensor)
            and generator.dtype == torch.uint8
            and isinstance(samplers, dict)
            and all(isinstance(q, list) and all(isinstance(i, int) for i in q) for q in samplers.values())
            and isinstance(state["optimizer"], dict)
            and isinstance(state["scheduler"], dict)
        ):
            raise ValueError("malformed checkpoint")
        phase = _LEGACY_PHASES.get(state["phase"]) or Phase(state["phase"])  # ValueError: unknown phase
        losses = [float(v) for v in state["losses"]]
        step = int(state["step"])
        if step < 0 or step != len(losses):
            raise ValueError("inconsistent step")
        return cls(
            run_key=str(state["fingerprint"]),
            step=step,
            phase=phase,
            losses=losses,
            parameters=parameters,
            optimizer=state["optimizer"],
            scheduler=state["scheduler"],
            generator=generator,
            samplers=samplers,
            spec=state.get("spec") or {},
            scaler=state.get("scaler"),
            trigger_word=str(state.get("trigger_word", "")),
            class_word=str(state.get("class_word", "")),
        )
