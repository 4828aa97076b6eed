"""Every rotation of a training run solved together: one batched Cayley transform per block size.

While training, each rotated layer needs ``R^T`` of its own ``P`` on every forward pass. Solved
layer by layer, that is one small inverse per layer and pass: on a GPU each is a handful of
latency-bound kernels (the GPU check measured about 1.2 ms per inverse at SD 1.5's sizes, over
100 of them per step), so the step waited on them. Here the ``P`` blocks of all layers with the
same block size are stacked and transformed in one call; each layer takes its slice. The math
is the exact Cayley transform of :func:`~.cayley.transposed_rotation`, with gradients to every
``P`` through the stack.

A solved stack is reused until it can no longer be: a ``P`` changed in place (optimiser step,
COFT projection: the tensor's version counter moves), gradient mode changed, or a backward pass
has gone through it (its graph is then spent; the next forward pass, e.g. the next micro-batch
of gradient accumulation, solves again).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from .cayley import transposed_rotation
from .oft_rotation import OFTRotation


@dataclass
class _Spent:
    """Set by the stack's backward hook. Its own object: a hook that held the stack (or anything
    holding it) would make a cycle through autograd's C++ graph, which Python's collector cannot
    see, and keep the run's parameters and gradients alive after the run."""

    value: bool = False


@dataclass
class _Solved:
    key: tuple[object, ...]
    stack: torch.Tensor
    sizes: list[int]
    casts: dict[torch.dtype, list[torch.Tensor]] = field(default_factory=dict)
    spent: _Spent = field(default_factory=_Spent)

    def blocks(self, dtype: torch.dtype) -> list[torch.Tensor]:
        """Every layer's slice in ``dtype``: one cast of the whole stack per dtype met."""
        if dtype not in self.casts:
            self.casts[dtype] = list(self.stack.to(dtype).split(self.sizes))
        return self.casts[dtype]


class SharedRotations:
    """The training-time ``R^T`` blocks of a set of rotations, solved per block size in one batch.

    ``on_cpu``: batch on the CPU too. Off by default: there the per-layer fused path
    (:func:`~.cayley.rotate_input_from_raw`) is tuned and measured, and batching buys little,
    since a CPU inverse costs its arithmetic rather than its kernel launches.
    """

    def __init__(self, rotations: Iterable[OFTRotation], on_cpu: bool = False) -> None:
        self.on_cpu = on_cpu
        groups: dict[int, list[OFTRotation]] = {}
        self._index: dict[int, int] = {}
        for rotation in rotations:
            group = groups.setdefault(rotation.k, [])
            self._index[id(rotation)] = len(group)
            group.append(rotation)
        self._groups = groups
        self._solved: dict[int, _Solved] = {}

    def applies(self, rotation: OFTRotation, device: torch.device) -> bool:
        """Whether ``rotation``'s forward pass on ``device`` may take its exact ``R^T`` from here."""
        return (device.type != "cpu" or self.on_cpu) and id(rotation) in self._index

    def transposed(self, rotation: OFTRotation, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """``R^T`` blocks of ``rotation`` (``(blocks, k, k)``) at strength 1, from its block size's batch.

        Solved in fp32 and cast to ``dtype`` (the activations') once for the whole batch per
        dtype met (inputs after a norm are fp32 under autocast, others half), not once per layer.
        """
        group = self._groups[rotation.k]
        key = (device, torch.is_grad_enabled(), tuple((id(r.P), r.P._version) for r in group))
        solved = self._solved.get(rotation.k)
        if solved is None or solved.spent.value or solved.key != key:
            solved = self._solve(rotation.k, group, device, key)
        return solved.blocks(dtype)[self._index[id(rotation)]]

    def _solve(self, k: int, group: list[OFTRotation], device: torch.device, key: tuple[object, ...]) -> _Solved:
        stacks = [r.blocks.to(device) for r in group]
        transposed = transposed_rotation(torch.cat(stacks), 1.0, None)
        solved = _Solved(key, transposed, [s.shape[0] for s in stacks])
        if transposed.requires_grad:
            spent = solved.spent

            def mark_spent(grad: torch.Tensor) -> None:
                spent.value = True

            # Fires when a backward pass reaches the stack: its saved tensors are freed after it.
            transposed.register_hook(mark_spent)
        self._solved[k] = solved
        return solved
