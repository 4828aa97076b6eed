"""Personalisation subjects: patterned objects the pocket model has never seen, and their "photos".

A subject is one of the world's shapes covered with a specific two-colour pattern (stripes,
checks, dots, a two-colour split). Its class is its shape: instance prompt ``a sks star``,
class prompt ``a star``. The diffusion model's training set holds plain objects only
(:func:`pocket.world.world_scene`), so no subject is ever in it.

Each subject has 3 to 6 "photos": the same object with small changes of position, size,
rotation (the pattern turns with the object) and background colour, drawn from a fixed seed.
Their backgrounds leave out at least one of the colours the subject does not use, so prompt
alignment (``a sks star on a {colour} background``) is also measured on a background the
photos never show.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .world import COLOUR_NAMES, Fill, Look, Scene, render_many

TOKEN = "sks"


@dataclass(frozen=True)
class Subject:
    """A patterned object and how its photos vary."""

    name: str
    shape: str
    fill: Fill
    #: Background colours of the photos, cycled.
    backgrounds: tuple[str, ...]
    photo_count: int = 5
    seed: int = 0
    token: str = TOKEN

    @property
    def pattern(self) -> str:
        return self.fill.pattern

    @property
    def colours(self) -> tuple[str, ...]:
        return tuple(c for c in (self.fill.colour, self.fill.colour2) if isinstance(c, str))

    def instance_prompt(self, background: str | None = None) -> str:
        """``a sks star`` or ``a sks star on a blue background``."""
        base = f"a {self.token} {self.shape}"
        return base if background is None else f"{base} on a {background} background"

    def class_prompt(self) -> str:
        """``a star``."""
        return f"a {self.shape}"

    def photo_scenes(self) -> list[Scene]:
        """The photos' scenes: deterministic, small variations around a centred object."""
        rng = np.random.default_rng(10_000 + self.seed)
        scenes = []
        for i in range(self.photo_count):
            angle = 0.0 if self.shape == "circle" else float(rng.uniform(-12.0, 12.0))
            radius = float(rng.uniform(14.0, 17.0))
            cx, cy = (float(v) for v in rng.uniform(26.0, 38.0, size=2))
            fill = replace(self.fill, angle=self.fill.angle + angle)
            scenes.append(Scene(self.shape, fill, self.backgrounds[i % len(self.backgrounds)], cx, cy, radius, angle))
        return scenes

    def photos(self) -> np.ndarray:
        """``[photo_count, 64, 64, 3]`` uint8."""
        return render_many(self.photo_scenes())

    def photo_prompts(self) -> list[str]:
        """One prompt per photo naming its background (``a sks star on a blue background``)."""
        return [self.instance_prompt(s.background) for s in self.photo_scenes()]

    def alignment_backgrounds(self) -> tuple[str, ...]:
        """Backgrounds to ask for in prompt alignment: every palette colour the subject does not use."""
        return tuple(c for c in COLOUR_NAMES if c not in self.colours)


#: The shipped subjects (one per pattern kind). Each pattern is coarse enough to survive the
#: pocket VAE (8x8 latents for 64x64 pictures): the judge still sees the subject in what a
#: model that reproduced the photos' latents exactly would draw. Until 2026-12-03 the star's
#: stripes were 14 px and horizontal and the circle's dots 13 px apart: after the VAE's round
#: trip the judge read the star as yellow and white in 9 of 10 photos, so no training could
#: reach a subject rate above about 0.2 on it (tests/host/test_pocket_model.py checks this).
SUBJECTS: dict[str, Subject] = {
    s.name: s
    for s in (
        Subject(
            "striped_star",
            "star",
            Fill("stripes", "red", "white", period=16.0, angle=30.0),
            ("blue", "green", "black"),
            seed=1,
        ),
        Subject(
            "checked_square",
            "square",
            Fill("checks", "black", "yellow", period=10.0, angle=0.0),
            ("red", "blue", "white"),
            seed=2,
        ),
        Subject(
            "dotted_circle",
            "circle",
            Fill("dots", "blue", "white", period=15.0, dot_radius=4.5, angle=0.0, phase=0.5),
            ("yellow", "red", "green"),
            seed=3,
        ),
        Subject(
            "split_triangle",
            "triangle",
            Fill("split", "yellow", "red", angle=0.0),
            ("blue", "black", "white"),
            seed=4,
        ),
    )
}


def subject(name: str) -> Subject:
    if name not in SUBJECTS:
        raise KeyError(f"unknown subject {name!r}; shipped: {', '.join(SUBJECTS)}")
    return SUBJECTS[name]


def subject_looks() -> tuple[Look, ...]:
    """The shipped subjects' looks ``(shape, pattern, colour, colour2)``: the patterned world leaves them out."""
    return tuple((s.shape, s.fill.pattern, str(s.fill.colour), str(s.fill.colour2)) for s in SUBJECTS.values())
