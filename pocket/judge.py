"""The judge: a small CNN that reads a world picture's shape, colours and pattern.

It plays the role of DINO / CLIP in the DreamBooth paper's evaluation: its class readings
(shape, object colour, background colour, pattern, second colour) check that a picture shows
what its caption asks, and its penultimate features (:meth:`Judge.embed`, 128 numbers,
L2-normalised) are the image embedding in which subject fidelity and prior drift are measured.

Trained by ``devtools/train_judge.py`` on world pictures, plain and patterned
(:func:`pocket.world.judge_scene`), with blur, noise and slight colour jitter so that it reads
generated pictures as well as drawn ones. Pure PyTorch; the weights ship as one small
``.safetensors`` file.

Labels of patterned objects: ``colour`` is the object's main colour and ``colour2`` the
pattern's; for the symmetric patterns (stripes, checks, split) the two are ordered as in
:data:`pocket.world.COLOUR_NAMES` (the earlier one is ``colour``), for dots ``colour`` is the
base and ``colour2`` the dots. Plain objects have ``colour2`` = ``none``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .world import COLOUR_NAMES, PATTERNS, SHAPES, Scene

FORMAT = "taptune-pocket-judge/1"
WEIGHTS_FILE = Path(__file__).resolve().parent / "weights" / "pocket_judge.safetensors"
EMBED_DIM = 128

#: The judge's heads and their classes, in output order.
HEADS: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "colour": COLOUR_NAMES,
    "background": COLOUR_NAMES,
    "pattern": PATTERNS,
    "colour2": (*COLOUR_NAMES, "none"),
}


def scene_labels(scene: Scene) -> dict[str, str]:
    """What the judge should read from a world scene (palette colours, vocabulary shape)."""
    fill = scene.fill
    colour, colour2 = fill.colour, fill.colour2
    if not isinstance(colour, str) or not isinstance(scene.background, str):
        raise ValueError("the judge only knows palette colours")
    if fill.pattern == "plain":
        colour2 = "none"
    elif fill.pattern != "dots" and COLOUR_NAMES.index(colour2) < COLOUR_NAMES.index(colour):
        colour, colour2 = colour2, colour
    return {
        "shape": scene.shape,
        "colour": colour,
        "background": scene.background,
        "pattern": fill.pattern,
        "colour2": colour2,
    }


def label_indices(labels: Sequence[dict[str, str]]) -> dict[str, torch.Tensor]:
    """Class indices per head for a list of label dicts."""
    return {
        head: torch.tensor([classes.index(lab[head]) for lab in labels], dtype=torch.long)
        for head, classes in HEADS.items()
    }


def _block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    # BatchNorm, not GroupNorm: with per-sample normalisation the net did not find stripes-vs-checks
    # in hundreds of steps (measured); with batch statistics it does.
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1), nn.BatchNorm2d(c_out), nn.ReLU())


class Judge(nn.Module):
    """Conv net 64x64x3 -> 128-d embedding -> ReLU -> one linear head per attribute.

    Input: ``[N, 3, 64, 64]`` in 0..1 (any size works: global pooling); see :meth:`prepare`.
    """

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _block(3, w, 2),  # 32x32
            _block(w, 3 * w // 2, 2),  # 16x16
            _block(3 * w // 2, 2 * w, 1),
            _block(2 * w, 4 * w, 2),  # 8x8
            _block(4 * w, 4 * w, 1),
        )
        self.project = nn.Linear(8 * w, EMBED_DIM)
        self.heads = nn.ModuleDict({name: nn.Linear(EMBED_DIM, len(classes)) for name, classes in HEADS.items()})

    @staticmethod
    def prepare(images: Any) -> torch.Tensor:
        """uint8 ``[N, H, W, 3]`` arrays or float ``[N, H, W, 3]`` 0..1 tensors (ComfyUI's IMAGE) -> ``[N, 3, H, W]``."""
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(np.ascontiguousarray(images))
        if images.dtype == torch.uint8:
            images = images.float() / 255.0
        if images.dim() == 3:
            images = images.unsqueeze(0)
        return images[..., :3].permute(0, 3, 1, 2).float().contiguous()

    def features_of(self, x: torch.Tensor) -> torch.Tensor:
        """The embedding: the penultimate layer before its ReLU (signed, so cosines span -1..1)."""
        h = self.features(x * 2.0 - 1.0)
        pooled = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
        return self.project(pooled)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(embedding before normalisation, logits per head) for ``[N, 3, H, W]`` input."""
        e = self.features_of(x)
        hidden = F.relu(e)
        return e, {name: head(hidden) for name, head in self.heads.items()}

    @torch.no_grad()
    def embed(self, images: Any, batch: int = 256) -> torch.Tensor:
        """L2-normalised embeddings ``[N, 128]`` of pictures (any layout :meth:`prepare` takes)."""
        x = self.prepare(images)
        out = [F.normalize(self.features_of(x[i : i + batch]), dim=1) for i in range(0, len(x), batch)]
        return torch.cat(out) if out else torch.zeros(0, EMBED_DIM)

    @torch.no_grad()
    def read(self, images: Any, batch: int = 256) -> list[dict[str, str]]:
        """The judge's reading of each picture: ``{"shape": ..., "colour": ..., "background": ..., ...}``."""
        x = self.prepare(images)
        readings: list[dict[str, str]] = []
        for i in range(0, len(x), batch):
            _, logits = self(x[i : i + batch])
            idx = {k: v.argmax(dim=1).tolist() for k, v in logits.items()}
            for j in range(len(idx["shape"])):
                readings.append({k: HEADS[k][idx[k][j]] for k in HEADS})
        return readings


def save_judge(judge: Judge, path: str | Path, info: dict[str, Any] | None = None) -> None:
    """Write the judge (fp16) with its class lists in the metadata."""
    from safetensors.torch import save_file

    meta = {"format": FORMAT, "heads": {k: list(v) for k, v in HEADS.items()}, **(info or {})}
    tensors = {
        k: (v.detach().to(torch.float16) if v.is_floating_point() else v.detach()).contiguous()
        for k, v in judge.state_dict().items()
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"pocket_judge": json.dumps(meta)})


def load_judge(path: str | Path | None = None) -> Judge:
    """The shipped judge (fp32, eval mode); fails if the file's classes differ from this code's."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path) if path is not None else WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no judge at {path}: it ships with the pack in pocket/weights/; reinstall the pack")
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get("pocket_judge", "{}"))
    if meta.get("format") != FORMAT or meta.get("heads") != {k: list(v) for k, v in HEADS.items()}:
        raise ValueError(f"{path} is not a judge for this vocabulary")
    judge = Judge(width=int(meta.get("width", 32)))
    judge.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()})
    return judge.train(False)


def judge_info(path: str | Path | None = None) -> dict[str, Any]:
    """The metadata the judge was saved with (accuracy, training record)."""
    from safetensors import safe_open

    with safe_open(str(Path(path) if path else WEIGHTS_FILE), framework="pt") as f:
        return json.loads((f.metadata() or {}).get("pocket_judge", "{}"))
