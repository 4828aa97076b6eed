"""The DreamBooth paper's evaluation in miniature, on the judge's readings and embeddings.

Notation: ``e(x)`` is the judge's L2-normalised embedding of picture ``x``
(:meth:`pocket.judge.Judge.embed`), ``cos(a, b) = e(a) . e(b)``; ``read(x)`` its class reading.

* **Subject fidelity** (DINO-like), for generations ``g_1..g_n`` of ``a sks <class>`` and the
  subject's real photos ``r_1..r_m``::

      fidelity = 1/(n m) * sum_i sum_j cos(g_i, r_j)
      subject_rate = 1/n * #{i : read(g_i) shows the subject's pattern in the subject's two colours}
      pattern_rate = 1/n * #{i : read(g_i).pattern == the subject's pattern kind}
      colour_pair_rate = 1/n * #{i : read(g_i) has the subject's two colours, any pattern}
      shape_rate = 1/n * #{i : read(g_i).shape == the subject's class}   (the subject rate does not ask it)

* **Prior preservation**, for class prompts (``a <class>``, ``a red <class> on a blue
  background``) sampled with the same seeds before (``b_i``) and after (``a_i``) training::

      drift = 1/n * sum_i (1 - cos(a_i, b_i))          (0: unchanged; lower is better)
      leak  = 1/n * #{i : read(a_i) shows the subject's pattern in its colours}
      leak_before = the same for b_i (the base model's own rate; it never saw patterns)

* **Prompt alignment** (CLIP-T-like), for ``a sks <class> on a {c_i} background``::

      alignment = 1/n * #{i : read(g_i).background == c_i}

* **Caption accuracy** of the base model, for world captions ``a {c} {s} on a {b} background``:
  the share of pictures whose reading has the asked shape, colour, background, and all three.

Every function takes plain lists/tensors, so each formula is testable on constructed cases.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

Reading = dict[str, str]


def _unit(x: Any) -> torch.Tensor:
    x = torch.as_tensor(x, dtype=torch.float32)
    if x.dim() == 1:
        x = x.unsqueeze(0)
    return F.normalize(x, dim=1)


def mean_pairwise_cosine(generated: Any, real: Any) -> float:
    """``1/(n m) sum_i sum_j cos(g_i, r_j)`` (embeddings are normalised here again)."""
    g, r = _unit(generated), _unit(real)
    if len(g) == 0 or len(r) == 0:
        raise ValueError("need at least one generated and one real embedding")
    return float((g @ r.T).mean())


def paired_drift(after: Any, before: Any) -> float:
    """``1/n sum_i (1 - cos(a_i, b_i))`` for embeddings paired by seed (same order)."""
    a, b = _unit(after), _unit(before)
    if a.shape != b.shape:
        raise ValueError(f"after {tuple(a.shape)} and before {tuple(b.shape)} must pair one to one")
    return float((1.0 - (a * b).sum(dim=1)).mean())


def rate(readings: Sequence[Reading], key: str, value: str | Sequence[str]) -> float:
    """Share of readings whose ``key`` equals ``value`` (one value, or one per reading)."""
    values = [value] * len(readings) if isinstance(value, str) else list(value)
    if len(values) != len(readings):
        raise ValueError("one asked value per reading")
    return _share(list(zip(readings, values, strict=True)), lambda pair: pair[0][key] == pair[1])


def _share(items: Sequence[Any], holds: Callable[[Any], bool]) -> float:
    """Share of ``items`` for which ``holds`` is true; an empty list has no share."""
    if not items:
        raise ValueError("no readings")
    return sum(bool(holds(item)) for item in items) / len(items)


def prompt_alignment(readings: Sequence[Reading], asked_backgrounds: Sequence[str]) -> float:
    """Share of generations whose background reads as the one asked for."""
    return rate(readings, "background", list(asked_backgrounds))


@dataclass
class CaptionAccuracy:
    shape: float
    colour: float
    background: float
    all: float
    count: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def caption_accuracy(readings: Sequence[Reading], asked: Sequence[tuple[str, str, str]]) -> CaptionAccuracy:
    """Per-attribute and all-three match rates; ``asked`` holds (colour, shape, background) per picture."""
    if len(readings) != len(asked) or not readings:
        raise ValueError("one asked caption per reading, at least one")
    pairs = list(zip(readings, asked, strict=True))
    fields = ("colour", "shape", "background")  # the order of each asked triple

    def matches(pair: tuple[Reading, tuple[str, str, str]], field: str) -> bool:
        return pair[0][field] == pair[1][fields.index(field)]

    rates = {f: _share(pairs, lambda p, f=f: matches(p, f)) for f in fields}
    every = _share(pairs, lambda p: all(matches(p, f) for f in fields))
    return CaptionAccuracy(rates["shape"], rates["colour"], rates["background"], every, len(pairs))


# ----------------------------------------------------------------------------------------------
# One subject's evaluation: the three measures from pictures of the evaluation prompts


def shows_subject(reading: Reading, pattern: str, colours: Sequence[str]) -> bool:
    """The judge sees the subject: its pattern kind in its two colours (in either order)."""
    return reading["pattern"] == pattern and has_colour_pair(reading, colours)


def has_colour_pair(reading: Reading, colours: Sequence[str]) -> bool:
    """The judge reads the subject's two colours (in either order), whatever the pattern."""
    return {reading["colour"], reading["colour2"]} == set(colours)


def colour_pair_rate(readings: Sequence[Reading], colours: Sequence[str]) -> float:
    """Share of readings that :func:`has_colour_pair`: the subject's colours apart from its pattern."""
    return _share(readings, lambda r: has_colour_pair(r, colours))


def subject_rate(readings: Sequence[Reading], pattern: str, colours: Sequence[str]) -> float:
    """Share of readings that :func:`shows_subject`."""
    return _share(readings, lambda r: shows_subject(r, pattern, colours))


@dataclass(frozen=True)
class EvaluationPrompts:
    """The prompts of one subject's evaluation (DreamBooth's, in miniature)."""

    fidelity: tuple[str, ...]
    preservation: tuple[str, ...]
    alignment: tuple[str, ...]
    #: The background asked by each alignment prompt.
    alignment_backgrounds: tuple[str, ...]

    def all(self) -> tuple[str, ...]:
        return (*self.fidelity, *self.preservation, *self.alignment)


def evaluation_prompts(subject: Any) -> EvaluationPrompts:
    """``a sks <class>``; ``a <class>`` and ``a red <class> on a blue background``;
    ``a sks <class> on a {c} background`` for every palette colour the subject does not use."""
    backgrounds = tuple(subject.alignment_backgrounds())
    return EvaluationPrompts(
        fidelity=(subject.instance_prompt(),),
        preservation=(subject.class_prompt(), f"a red {subject.shape} on a blue background"),
        alignment=tuple(subject.instance_prompt(c) for c in backgrounds),
        alignment_backgrounds=backgrounds,
    )


def evaluate_subject(
    judge: Any, subject: Any, pictures: Callable[[str, str], Any], models: Sequence[str] = ("base", "trained")
) -> dict[str, Any]:
    """Fidelity, pattern rate and alignment per model, and the trained model's drift from the base.

    ``pictures(model, prompt)`` returns that model's generations of ``prompt`` (``[N, H, W, 3]``
    in 0..1, the same seeds for every model); ``models`` names the models, the first being the base.
    """
    prompts = evaluation_prompts(subject)
    real = judge.embed(subject.photos())
    colours = subject.colours
    out: dict[str, Any] = {}
    for which in models:
        fid = [pictures(which, p) for p in prompts.fidelity]
        fid_all = torch.cat([torch.as_tensor(x) for x in fid])
        fid_read = judge.read(fid_all)
        align = [pictures(which, p) for p in prompts.alignment]
        asked = [c for c, pics in zip(prompts.alignment_backgrounds, align, strict=True) for _ in range(len(pics))]
        align_all = torch.cat([torch.as_tensor(x) for x in align])
        align_read = judge.read(align_all)
        out[which] = {
            "fidelity": mean_pairwise_cosine(judge.embed(fid_all), real),
            "subject_rate": subject_rate(fid_read, subject.pattern, colours),
            "pattern_rate": rate(fid_read, "pattern", subject.pattern),
            "colour_pair_rate": colour_pair_rate(fid_read, colours),
            "shape_rate": rate(fid_read, "shape", subject.shape),
            "alignment": prompt_alignment(align_read, asked),
            "alignment_subject_rate": subject_rate(align_read, subject.pattern, colours),
            "alignment_fidelity": mean_pairwise_cosine(judge.embed(align_all), real),
        }
    base = models[0]
    before = torch.cat([torch.as_tensor(pictures(base, p)) for p in prompts.preservation])
    before_read = judge.read(before)
    for which in models[1:]:
        after = torch.cat([torch.as_tensor(pictures(which, p)) for p in prompts.preservation])
        after_read = judge.read(after)
        out[which]["drift"] = paired_drift(judge.embed(after), judge.embed(before))
        out[which]["leak"] = subject_rate(after_read, subject.pattern, colours)
        out[which]["leak_before"] = subject_rate(before_read, subject.pattern, colours)
    return out
