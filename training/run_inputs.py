"""What one DreamBooth run is given: the subject's images and prompts, the class's, and the settings.

The node, the headless runner, the benchmarks and the tests all hand a run one :class:`RunInputs`
instead of a row of positional arguments, so instance and class data cannot be swapped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .settings import TrainSettings


@dataclass(frozen=True)
class ImageSet:
    """Images (``[1, H, W, 3]`` tensors in 0..1, ComfyUI's IMAGE rows) and their prompt.

    For the subject, ``prompt`` is one prompt or one line per image; for the class, one prompt,
    and ``images`` may be empty (no prior preservation, or class images made by the run).
    """

    images: list[torch.Tensor] = field(default_factory=list)
    prompt: str = ""


@dataclass(frozen=True)
class RunInputs:
    """Everything a run trains on and how: instance data, class data, settings (the seed among them)."""

    instance: ImageSet
    classes: ImageSet = field(default_factory=ImageSet)
    settings: TrainSettings = field(default_factory=TrainSettings)

    @property
    def seed(self) -> int:
        """The run's seed (adapter initialisation, data order, noise, previews)."""
        return self.settings.seed
