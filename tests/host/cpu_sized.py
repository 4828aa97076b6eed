"""Example graphs made small enough for a CPU test: the same nodes, tiny images, a few steps."""

from __future__ import annotations

import copy
from typing import Any

#: Inputs that make a graph CPU-sized, by node class (only these change).
CPU_SIZES: dict[str, dict[str, Any]] = {
    "EmptyLatentImage": {"width": 64, "height": 64},
    "KSampler": {"steps": 2},
    "TapTuneClassImages": {"count": 2, "steps": 1, "width": 64, "height": 64},
    "TapTuneDreamBoothTrain": {
        "steps": 2,
        "resolution": 64,
        "checkpoint_every": 1,
        "validation_every": 1,
        "validation_steps": 1,
    },
}


def cpu_sized(prompt: dict[str, dict], **train: Any) -> dict[str, dict]:
    """A copy of API ``prompt`` with :data:`CPU_SIZES` applied and ``train`` overriding the trainer's inputs."""
    small = copy.deepcopy(prompt)
    for node in small.values():
        node["inputs"].update(CPU_SIZES.get(node["class_type"], {}))
        if node["class_type"] == "TapTuneDreamBoothTrain":
            node["inputs"].update(train)
    return small
