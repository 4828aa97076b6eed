"""Switching every adapter of a patched model off for a moment: the base model's own output.

Training with a teacher (prior preservation against the base model's predictions) needs the
base model's output on the same inputs at every step. Unloading the adapters and loading them
back would go through the host's model management each step; instead every training wrapper
(tapped blocks, adapted attention / feed-forward modules) is :class:`Bypassable` and, while
bypassed, computes exactly what the module it stands in for computes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


class Bypassable:
    """A wrapper that can compute as if its adapters were absent (``bypassed``)."""

    #: Marks the class for :func:`adapters_bypassed` (duck-typed: another copy of this package counts too).
    taptune_bypassable = True
    bypassed: bool = False


@contextmanager
def adapters_bypassed(root: nn.Module) -> Iterator[int]:
    """Within the block every bypassable wrapper under ``root`` computes the base model's output.

    Yields how many wrappers were switched; each gets back its own state afterwards, also on error.
    """
    switched = [m for m in root.modules() if getattr(type(m), "taptune_bypassable", False)]
    before = [m.bypassed for m in switched]
    for m in switched:
        m.bypassed = True
    try:
        yield len(switched)
    finally:
        for m, state in zip(switched, before, strict=True):
            m.bypassed = state
