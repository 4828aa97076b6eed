"""The pocket world: captioned 64x64 pictures of one shape on a plain background, generated from a seed.

Everything here is plain numpy + Pillow and deterministic: the same seed gives the same
pictures, bit for bit, on every machine.

* Captions are exactly ``a {colour} {shape} on a {colour} background`` with
  :data:`COLOURS` and :data:`SHAPES`; the object's colour is never the background's.
* A :class:`Scene` says what to draw: the shape, its centre, size and rotation, its
  fill (a :class:`Fill`: one colour, or a pattern of two colours) and the background.
* Drawing is anti-aliased: the scene is drawn :data:`SUPERSAMPLE` times larger with hard
  edges and box-filtered down (each output pixel is the mean of a 4x4 block).

Four distributions are drawn from the same renderer:

* :func:`world_scene` -- the diffusion model's training set: plain, one palette colour on
  another. It never produces a patterned object, so the personalisation subjects
  (:mod:`pocket.subjects`, always patterned) are never in it.
* :func:`patterned_world_set` -- patterned objects with captions that name the pattern
  (``a red star with white stripes on a blue background``), every look but the subjects'
  (``devtools.train_pocket --patterned-images``; see docs/decisions.md on issue 21).
* :func:`judge_scene` -- the judge's training set: palette colours, plain *or* patterned.
* :func:`codec_scene` -- the VAE's training set: a broader distribution (any RGB colour,
  any pattern, extra shapes, sometimes a second object or a two-tone background). The VAE is
  the generic image codec: it must represent subjects the diffusion model has never seen,
  including ones an outside user brings, so it is not restricted to the world's palette.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Union

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64
SUPERSAMPLE = 4

#: The vocabulary's colours: clean, saturated and far apart from each other (RGB 0-255).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 230),
    "yellow": (250, 220, 30),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
#: Shapes the codec (VAE) also sees, beyond the vocabulary.
EXTRA_SHAPES: tuple[str, ...] = ("hexagon", "diamond", "ring", "cross")
#: Fills: ``plain`` (one colour) and the two-colour patterns.
PATTERNS: tuple[str, ...] = ("plain", "stripes", "checks", "dots", "split")

#: How far each shape reaches from its centre, in units of its size ``radius``.
EXTENT: dict[str, float] = {
    "circle": 1.0,
    "square": 0.9 * math.sqrt(2.0),
    "triangle": 1.2,
    "star": 1.2,
    "hexagon": 1.0,
    "diamond": 1.15,
    "ring": 1.0,
    "cross": 1.05,
}
#: Sizes (the shape's radius in output pixels) and rotations (degrees) of world scenes.
RADIUS_RANGE = (11.0, 19.0)
ANGLE_RANGE = (-10.0, 10.0)
MARGIN = 2.0

Colour = Union[str, tuple[int, int, int]]


def rgb(colour: Colour) -> tuple[int, int, int]:
    """The RGB triple of a palette name or an RGB triple."""
    if isinstance(colour, str):
        return COLOURS[colour]
    return (int(colour[0]), int(colour[1]), int(colour[2]))


def caption(colour: str, shape: str, background: str) -> str:
    """The world's caption: ``a {colour} {shape} on a {colour} background``."""
    return f"a {colour} {shape} on a {background} background"


def pattern_phrase(pattern: str, colour2: str) -> str:
    """How a caption names a pattern: ``with white stripes`` (checks, dots alike), ``with a red half``."""
    if pattern == "split":
        return f"with a {colour2} half"
    return f"with {colour2} {pattern}"


def patterned_caption(colour: str, shape: str, pattern: str, colour2: str, background: str | None = None) -> str:
    """``a red star with white stripes on a blue background`` (without ``on ...`` when ``background`` is None)."""
    text = f"a {colour} {shape} {pattern_phrase(pattern, colour2)}"
    return text if background is None else f"{text} on a {background} background"


def all_captions() -> list[str]:
    """Every caption of the vocabulary (object colour != background colour), in a fixed order."""
    return [caption(c, s, b) for s in SHAPES for c in COLOUR_NAMES for b in COLOUR_NAMES if b != c]


@dataclass(frozen=True)
class Fill:
    """What covers the object: ``plain`` (``colour``) or a two-colour pattern.

    ``period`` is the stripe period, check cell or dot spacing in output pixels; ``angle``
    the pattern's orientation in degrees (for ``split`` the direction of the dividing line);
    ``dot_radius`` the dots' radius; ``phase`` shifts the pattern (0..1 of a period).
    """

    pattern: str = "plain"
    colour: Colour = "red"
    colour2: Colour | None = None
    period: float = 12.0
    angle: float = 0.0
    dot_radius: float = 3.0
    phase: float = 0.0

    def __post_init__(self) -> None:
        if self.pattern not in PATTERNS:
            raise ValueError(f"unknown pattern {self.pattern!r}; allowed: {', '.join(PATTERNS)}")
        if self.pattern != "plain" and self.colour2 is None:
            raise ValueError(f"pattern {self.pattern!r} needs colour2")


@dataclass(frozen=True)
class Scene:
    """One object on a background. Coordinates and sizes are in output pixels (0..SIZE)."""

    shape: str
    fill: Fill
    background: Colour
    cx: float = 32.0
    cy: float = 32.0
    radius: float = 14.0
    angle: float = 0.0
    #: Extra objects (codec scenes only); drawn first, under the main object.
    others: tuple[Scene, ...] = field(default=())
    #: A second background colour covering the half-plane below a line (codec scenes only).
    background2: Colour | None = None
    background_angle: float = 0.0

    @property
    def colour(self) -> Colour:
        return self.fill.colour

    def caption(self) -> str:
        """The world caption (palette names and vocabulary shapes only); patterned fills name their pattern."""
        if not (isinstance(self.colour, str) and isinstance(self.background, str) and self.shape in SHAPES):
            raise ValueError("only world scenes (palette colours, vocabulary shapes) have a caption")
        if self.fill.pattern == "plain":
            return caption(self.colour, self.shape, self.background)
        if not isinstance(self.fill.colour2, str):
            raise ValueError("only patterns in palette colours have a caption")
        return patterned_caption(self.colour, self.shape, self.fill.pattern, self.fill.colour2, self.background)


# ----------------------------------------------------------------------------------------------
# Drawing


def _polygon(shape: str, cx: float, cy: float, r: float, angle_deg: float) -> list[tuple[float, float]]:
    """Vertices (output pixels) of a polygonal shape, pointing up at angle 0, rotated clockwise."""
    a0 = math.radians(angle_deg)
    if shape == "square":
        radii, count, start = [0.9 * math.sqrt(2.0) * r], 4, math.pi / 4
    elif shape == "triangle":
        radii, count, start = [1.2 * r], 3, -math.pi / 2
    elif shape == "star":
        radii, count, start = [1.2 * r, 0.48 * r], 5, -math.pi / 2
    elif shape == "hexagon":
        radii, count, start = [r], 6, 0.0
    elif shape == "diamond":
        radii, count, start = [1.15 * r, 0.75 * r], 2, -math.pi / 2
    else:
        raise ValueError(f"{shape!r} is not a polygon")
    points = []
    steps = count * len(radii)
    for i in range(steps):
        t = start + a0 + 2.0 * math.pi * i / steps
        rad = radii[i % len(radii)]
        points.append((cx + rad * math.cos(t), cy + rad * math.sin(t)))
    return points


def shape_mask(shape: str, cx: float, cy: float, r: float, angle: float, size: int = SIZE) -> np.ndarray:
    """A hard-edged boolean mask of the shape at ``SUPERSAMPLE`` times the output size."""
    s = SUPERSAMPLE
    big = size * s
    img = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(img)
    # Pixel centres sit at (i + 0.5) / s in output units: shift by -0.5 so shapes stay centred.
    X, Y, R = cx * s - 0.5, cy * s - 0.5, r * s
    if shape == "circle":
        draw.ellipse((X - R, Y - R, X + R, Y + R), fill=255)
    elif shape == "ring":
        draw.ellipse((X - R, Y - R, X + R, Y + R), fill=255)
        draw.ellipse((X - 0.55 * R, Y - 0.55 * R, X + 0.55 * R, Y + 0.55 * R), fill=0)
    elif shape == "cross":
        arm, half = 1.05 * r, 0.36 * r
        for w, h in ((arm, half), (half, arm)):
            corners = [(-w, -h), (w, -h), (w, h), (-w, h)]
            a = math.radians(angle)
            pts = [
                ((cx + x * math.cos(a) - y * math.sin(a)) * s - 0.5, (cy + x * math.sin(a) + y * math.cos(a)) * s - 0.5)
                for x, y in corners
            ]
            draw.polygon(pts, fill=255)
    else:
        pts = [(x * s - 0.5, y * s - 0.5) for x, y in _polygon(shape, cx, cy, r, angle)]
        draw.polygon(pts, fill=255)
    return np.asarray(img) > 127


_GRIDS: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates (output pixels) of the supersampled pixel centres."""
    if size not in _GRIDS:
        c = (np.arange(size * SUPERSAMPLE, dtype=np.float64) + 0.5) / SUPERSAMPLE
        _GRIDS[size] = np.meshgrid(c, c)  # X varies along columns, Y along rows
    return _GRIDS[size]


def pattern_mask(fill: Fill, cx: float, cy: float, size: int = SIZE) -> np.ndarray:
    """Where the pattern shows ``colour2`` (supersampled boolean mask); all False for plain."""
    X, Y = _grid(size)
    if fill.pattern == "plain":
        return np.zeros(X.shape, dtype=bool)
    a = math.radians(fill.angle)
    u = (X - cx) * math.cos(a) + (Y - cy) * math.sin(a)
    v = -(X - cx) * math.sin(a) + (Y - cy) * math.cos(a)
    p = fill.period
    if fill.pattern == "stripes":
        return np.mod(u / p + fill.phase, 1.0) >= 0.5
    if fill.pattern == "checks":
        return (np.floor(u / p + fill.phase) + np.floor(v / p + fill.phase)) % 2 == 1
    if fill.pattern == "dots":
        du = np.mod(u / p + fill.phase, 1.0) - 0.5
        dv = np.mod(v / p + fill.phase, 1.0) - 0.5
        return (du * du + dv * dv) * p * p <= fill.dot_radius**2
    if fill.pattern == "split":
        return v >= 0.0
    raise ValueError(fill.pattern)


def _paint(canvas: np.ndarray, scene: Scene, size: int) -> None:
    mask = shape_mask(scene.shape, scene.cx, scene.cy, scene.radius, scene.angle, size)
    second = pattern_mask(scene.fill, scene.cx, scene.cy, size)
    canvas[mask & ~second] = rgb(scene.fill.colour)
    if scene.fill.pattern != "plain":
        canvas[mask & second] = rgb(scene.fill.colour2)


def render(scene: Scene, size: int = SIZE) -> np.ndarray:
    """The scene as an ``[size, size, 3]`` uint8 RGB array (anti-aliased)."""
    big = size * SUPERSAMPLE
    canvas = np.empty((big, big, 3), dtype=np.float32)
    canvas[:] = rgb(scene.background)
    if scene.background2 is not None:
        X, Y = _grid(size)
        a = math.radians(scene.background_angle)
        below = (X - size / 2) * math.sin(a) + (Y - size / 2) * math.cos(a) > 0
        canvas[below] = rgb(scene.background2)
    for other in scene.others:
        _paint(canvas, other, size)
    _paint(canvas, scene, size)
    small = canvas.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE, 3).mean(axis=(1, 3))
    return np.clip(np.rint(small), 0, 255).astype(np.uint8)


def render_many(scenes: list[Scene], size: int = SIZE) -> np.ndarray:
    """``[N, size, size, 3]`` uint8."""
    return np.stack([render(s, size) for s in scenes]) if scenes else np.zeros((0, size, size, 3), np.uint8)


def to_tensor_images(images: np.ndarray):
    """uint8 ``[N, H, W, 3]`` -> float ``[N, H, W, 3]`` in 0..1 (ComfyUI's IMAGE layout)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(images)).float() / 255.0


# ----------------------------------------------------------------------------------------------
# Distributions


def _place(rng: np.random.Generator, shape: str, radius_range=RADIUS_RANGE, size: int = SIZE):
    """A radius and a centre for ``shape`` such that it lies wholly inside the picture."""
    radius = float(rng.uniform(*radius_range))
    reach = EXTENT[shape] * radius + MARGIN
    cx = float(rng.uniform(reach, size - reach))
    cy = float(rng.uniform(reach, size - reach))
    return radius, cx, cy


def _angle(rng: np.random.Generator, shape: str, angle_range=ANGLE_RANGE) -> float:
    return 0.0 if shape == "circle" else float(rng.uniform(*angle_range))


def world_scene(
    rng: np.random.Generator, shape: str | None = None, colour: str | None = None, background: str | None = None
) -> Scene:
    """A scene of the world's training distribution: a plain vocabulary shape in a palette colour.

    Unspecified attributes are drawn uniformly; the background is never the object's colour.
    """
    shape = shape or SHAPES[int(rng.integers(len(SHAPES)))]
    colour = colour or COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))]
    if background is None:
        choices = [c for c in COLOUR_NAMES if c != colour]
        background = choices[int(rng.integers(len(choices)))]
    if background == colour:
        raise ValueError("the background colour must differ from the object's")
    radius, cx, cy = _place(rng, shape)
    return Scene(shape, Fill("plain", colour), background, cx, cy, radius, _angle(rng, shape))


#: Period ranges (px) of the judge's patterns, per pattern; a dot's radius is 0.3 of its period.
JUDGE_PERIODS: dict[str, tuple[float, float]] = {"stripes": (11.0, 17.0), "checks": (8.0, 12.0), "dots": (11.0, 15.0)}
#: The diffusion model's patterned pictures: coarser (see :func:`world_fill`).
WORLD_PERIODS: dict[str, tuple[float, float]] = {"stripes": (15.0, 19.0), "checks": (9.0, 12.0), "dots": (13.0, 17.0)}


def random_fill(
    rng: np.random.Generator,
    pattern: str,
    colour: Colour,
    colour2: Colour | None,
    periods: dict[str, tuple[float, float]] = JUDGE_PERIODS,
) -> Fill:
    """A fill of ``pattern`` with random geometry, its period drawn from ``periods``.

    Coarse on purpose: a latent pixel covers 8x8 picture pixels, so patterns much finer than
    that cannot pass through a 4-channel VAE of this size (the judge's stripes 11-17 px per
    period, check cells 8-12 px, dots 11-15 px apart).
    """
    if pattern == "plain":
        return Fill("plain", colour)
    angle = float(rng.uniform(0.0, 180.0))
    phase = float(rng.uniform(0.0, 1.0))
    if pattern in periods:
        period = float(rng.uniform(*periods[pattern]))
        dots = {"dot_radius": period * 0.3} if pattern == "dots" else {}
        return Fill(pattern, colour, colour2, period=period, angle=angle, phase=phase, **dots)
    if pattern == "split":
        return Fill("split", colour, colour2, angle=angle)
    raise ValueError(pattern)


def judge_scene(rng: np.random.Generator, pattern_probability: float = 0.5) -> Scene:
    """A scene for the judge: a vocabulary shape in palette colours, plain or patterned.

    For patterned fills ``colour2`` differs from both the object's colour and the background,
    so the object stays visible as a whole.
    """
    scene = world_scene(rng)
    if rng.uniform() >= pattern_probability:
        return scene
    pattern = PATTERNS[1 + int(rng.integers(len(PATTERNS) - 1))]
    others = [c for c in COLOUR_NAMES if c not in (scene.colour, scene.background)]
    colour2 = others[int(rng.integers(len(others)))]
    return replace(scene, fill=random_fill(rng, pattern, scene.colour, colour2))


def _random_rgb(rng: np.random.Generator) -> tuple[int, int, int]:
    if rng.uniform() < 0.5:  # a saturated hue at random brightness
        h = rng.uniform()
        s = rng.uniform(0.5, 1.0)
        v = rng.uniform(0.35, 1.0)
        i = int(h * 6) % 6
        f = h * 6 - int(h * 6)
        p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
        r, g, b = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
        return (int(r * 255), int(g * 255), int(b * 255))
    return tuple(int(x) for x in rng.integers(0, 256, size=3))


def codec_scene(rng: np.random.Generator) -> Scene:
    """A scene for the VAE: broader than the world (any colour, any pattern, more shapes).

    60 % are world-like (palette colours, vocabulary shapes, plain or patterned); the other
    40 % use random RGB colours, the extra shapes too, sometimes a second object and a
    two-tone background.
    """
    if rng.uniform() < 0.6:
        return judge_scene(rng, pattern_probability=0.5)
    shapes = SHAPES + EXTRA_SHAPES

    def colour() -> Colour:
        return COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))] if rng.uniform() < 0.3 else _random_rgb(rng)

    def one(radius_range) -> Scene:
        shape = shapes[int(rng.integers(len(shapes)))]
        radius, cx, cy = _place(rng, shape, radius_range)
        pattern = "plain" if rng.uniform() < 0.35 else PATTERNS[1 + int(rng.integers(len(PATTERNS) - 1))]
        fill = random_fill(rng, pattern, colour(), colour())
        return Scene(shape, fill, "white", cx, cy, radius, float(rng.uniform(-45.0, 45.0)))

    main = one((8.0, 20.0))
    others = (one((6.0, 12.0)),) if rng.uniform() < 0.25 else ()
    background2 = colour() if rng.uniform() < 0.2 else None
    return replace(
        main,
        background=colour(),
        others=others,
        background2=background2,
        background_angle=float(rng.uniform(0.0, 360.0)),
    )


# ----------------------------------------------------------------------------------------------
# Seeded sets


def world_set(seed: int, count: int) -> tuple[np.ndarray, list[str], list[Scene]]:
    """``count`` world pictures with their captions, deterministic from ``seed``.

    Balanced: the vocabulary's captions are cycled in a seeded random order, so every caption
    appears ``count / len(all_captions())`` times (+-1).
    """
    rng = np.random.default_rng(seed)
    captions = all_captions()
    scenes: list[Scene] = []
    while len(scenes) < count:
        for i in rng.permutation(len(captions)):
            colour, shape, background = _parse(captions[int(i)])
            scenes.append(world_scene(rng, shape, colour, background))
            if len(scenes) == count:
                break
    return render_many(scenes), [s.caption() for s in scenes], scenes


#: Patterns that look the same with their two colours swapped (a red star with white stripes is
#: a white star with red stripes): holding out one look holds out both.
SYMMETRIC_PATTERNS = frozenset({"stripes", "checks", "split"})

#: One patterned look: ``(shape, pattern, colour, colour2)``.
Look = tuple[str, str, str, str]


def same_look(a: Look, b: Look) -> bool:
    """Whether two looks draw the same object (colours in either order for symmetric patterns)."""
    if a[:2] != b[:2]:
        return False
    if a[1] in SYMMETRIC_PATTERNS:
        return {a[2], a[3]} == {b[2], b[3]}
    return a[2:] == b[2:]


def patterned_combinations(held_out: tuple[Look, ...] = ()) -> list[tuple[str, str, str, str, str]]:
    """Every ``(colour, shape, pattern, colour2, background)`` of the patterned world, fixed order.

    Three different palette colours (object, pattern, background); looks that match one in
    ``held_out`` (the personalisation subjects') are left out on every background.
    """
    combos = []
    for shape in SHAPES:
        for pattern in PATTERNS[1:]:
            for colour in COLOUR_NAMES:
                for colour2 in COLOUR_NAMES:
                    if colour2 == colour or any(same_look((shape, pattern, colour, colour2), h) for h in held_out):
                        continue
                    combos.extend(
                        (colour, shape, pattern, colour2, b) for b in COLOUR_NAMES if b not in (colour, colour2)
                    )
    return combos


def world_fill(rng: np.random.Generator, pattern: str, colour: str, colour2: str) -> Fill:
    """A pattern for the diffusion model's patterned pictures: coarser than the judge's.

    Stripes 15-19 px per period, check cells 9-12 px, dots 13-17 px apart (:data:`WORLD_PERIODS`):
    finer stripes come back from the pocket VAE as a blur of their two colours (14 px horizontal
    ones did in 9 of 10 round trips), and a model trained on blurs would draw blurs.
    """
    return random_fill(rng, pattern, colour, colour2, WORLD_PERIODS)


def patterned_world_set(
    seed: int, count: int, held_out: tuple[Look, ...] = ()
) -> tuple[np.ndarray, list[str], list[Scene]]:
    """``count`` pictures of patterned objects with their captions, deterministic from ``seed``.

    The patterned half of the diffusion model's world (:func:`world_set` is the plain one):
    :func:`patterned_combinations` cycled in a seeded order, as :func:`world_set` cycles its captions.
    """
    rng = np.random.default_rng(seed)
    combos = patterned_combinations(held_out)
    scenes: list[Scene] = []
    while len(scenes) < count:
        for i in rng.permutation(len(combos)):
            colour, shape, pattern, colour2, background = combos[int(i)]
            scene = world_scene(rng, shape, colour, background)
            scenes.append(replace(scene, fill=world_fill(rng, pattern, colour, colour2)))
            if len(scenes) == count:
                break
    return render_many(scenes), [s.caption() for s in scenes], scenes


def judge_set(seed: int, count: int) -> tuple[np.ndarray, list[Scene]]:
    rng = np.random.default_rng(seed)
    scenes = [judge_scene(rng) for _ in range(count)]
    return render_many(scenes), scenes


def codec_set(seed: int, count: int) -> tuple[np.ndarray, list[Scene]]:
    rng = np.random.default_rng(seed)
    scenes = [codec_scene(rng) for _ in range(count)]
    return render_many(scenes), scenes


def _parse(text: str) -> tuple[str, str, str]:
    """(colour, shape, background) of a world caption."""
    words = text.split()
    if len(words) != 7 or words[0] != "a" or words[3:5] != ["on", "a"] or words[6] != "background":
        raise ValueError(f"not a world caption: {text!r}")
    return words[1], words[2], words[5]


def parse_caption(text: str) -> tuple[str, str, str]:
    """(colour, shape, background) of ``a {colour} {shape} on a {colour} background``."""
    colour, shape, background = _parse(text)
    if colour not in COLOURS or background not in COLOURS or shape not in SHAPES:
        raise ValueError(f"caption outside the vocabulary: {text!r}")
    return colour, shape, background


@dataclass(frozen=True)
class CaptionParts:
    """What a world caption (plain or patterned) asks for; ``pattern`` is ``plain`` and ``colour2`` None for plain ones."""

    colour: str
    shape: str
    background: str
    pattern: str = "plain"
    colour2: str | None = None


def parse_any_caption(text: str) -> CaptionParts:
    """The parts of ``a red star on a blue background`` or ``a red star with white stripes on a blue background``."""
    words = text.split()
    if len(words) == 7:
        return CaptionParts(*parse_caption(text))
    if len(words) < 10 or words[3] != "with":
        raise ValueError(f"not a world caption: {text!r}")
    if words[4] == "a":
        colour2, word, rest = words[5], words[6], words[7:]
        pattern = "split" if word == "half" else ""
    else:
        colour2, pattern, rest = words[4], words[5], words[6:]
        pattern = pattern if pattern in PATTERNS[1:4] else ""
    colour, shape, background = parse_caption(" ".join([*words[:3], *rest]))
    if not pattern or colour2 not in COLOURS:
        raise ValueError(f"caption outside the vocabulary: {text!r}")
    return CaptionParts(colour, shape, background, pattern, colour2)
