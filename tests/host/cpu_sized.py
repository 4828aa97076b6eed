"""Example graphs made small enough for a CPU test: the same nodes, tiny images, a few steps."""

from __future__ import annotations

import copy
from typing import Any

#: Inputs that make a graph CPU-sized, by node class (only these change).
CPU_SIZES: dict[str, dict[str, Any]] = {
    "EmptyLatentImage": {"width": 64, "height": 64},
    "KSampler": {"steps": 2},
    "TapTuneClassImages": {"count": 2, "steps": 1, "width": 64, "height": 64},
    "TapTuneDreamBoothTrain": {"steps": 2, "resolution": 64},
    "TapTuneTrainingSettings": {
        "checkpoint_every": 1,
        "save_every": 1,
        "validation_every": 1,
        "validation_steps": 1,
    },
}
#: Trainer inputs of 0.1.0-0.3.0 that now live on TapTune Training Settings (old prompts still give them).
MOVED_SIZES = {"checkpoint_every": 1, "validation_every": 1, "validation_steps": 1}


def cpu_sized(prompt: dict[str, dict], **train: Any) -> dict[str, dict]:
    """A copy of API ``prompt`` with :data:`CPU_SIZES` applied and ``train`` overriding the trainer's inputs.

    A ``train`` value for a setting goes to the settings node connected to the trainer, if there is one.
    """
    small = copy.deepcopy(prompt)
    for node in small.values():
        node["inputs"].update(CPU_SIZES.get(node["class_type"], {}))
    settings_names = set(CPU_SIZES["TapTuneTrainingSettings"]) | {"resume_from", "keep_last", "precision"}
    for node in small.values():
        if node["class_type"] != "TapTuneDreamBoothTrain":
            continue
        link = node["inputs"].get("settings")
        settings = small[link[0]]["inputs"] if isinstance(link, list) else None
        if settings is None:
            node["inputs"].update(MOVED_SIZES)
        for name, value in train.items():
            (settings if settings is not None and name in settings_names else node["inputs"])[name] = value
    return small
