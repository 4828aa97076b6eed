"""Switching a training run's adapters off for a moment: the output of the MODEL it was given.

Training with a teacher (prior preservation against the base model's predictions) needs the
output of the MODEL the run started from on the same inputs at every step. Unloading the
adapters and loading them back would go through the host's model management each step;
instead every training wrapper (tapped blocks, adapted attention / feed-forward modules) is
:class:`Bypassable` and, while bypassed, computes without the run's adapters. Adapters the
MODEL already carried (a tap adapter loaded for sampling in the same block, merged weights of
OFT or LoRA) stay as they were: the teacher is the MODEL given, not the bare checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn


class Bypassable:
    """A wrapper that can compute as if some adapters were absent (see :func:`adapters_bypassed`)."""

    #: Marks the class for :func:`adapters_bypassed` (duck-typed: another copy of this package counts too).
    taptune_bypassable = True
    #: While set: the identities (``id``) of the parameters whose adapters compute as if absent.
    bypassed: frozenset[int] | None = None

    def is_bypassed(self, module: nn.Module) -> bool:
        """Whether ``module`` (a hook or member of this wrapper) is switched off now: it holds a bypassed parameter."""
        return self.bypassed is not None and any(id(p) in self.bypassed for p in module.parameters())


@contextmanager
def adapters_bypassed(root: nn.Module, parameters: Iterable[torch.Tensor]) -> Iterator[int]:
    """Within the block, the adapters under ``root`` that hold any of ``parameters`` compute as if absent.

    ``parameters`` are the run's trainable parameters (``adapter_set.parameters()``): a hook or
    member holding one of them is the run's; any other adapter (one the MODEL was given with)
    keeps computing. Yields how many wrappers were switched; each gets back its own state
    afterwards, also on error.
    """
    ids = frozenset(id(p) for p in parameters)
    switched = [m for m in root.modules() if getattr(type(m), "taptune_bypassable", False)]
    before = [m.bypassed for m in switched]
    for m in switched:
        m.bypassed = ids
    try:
        yield len(switched)
    finally:
        for m, state in zip(switched, before, strict=True):
            m.bypassed = state
