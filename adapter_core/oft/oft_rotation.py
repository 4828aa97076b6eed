"""The trainable OFT state of one linear layer, and its merge into the weight (specification §2).

``P`` blocks give ``S = (P - P^T) / 2`` and ``R = (I - S)(I + S)^-1``; COFT keeps each ``P``
block inside a Frobenius ball (§2.3); an optional per-neuron magnitude scales the rows (§2.5);
a strength ``s`` uses ``R(sS)`` and ``m^s`` (§2.6).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .cayley import (
    activation_side_is_cheaper,
    cayley,
    neumann_terms_within,
    rotate_input_from_raw,
    rotate_rows,
    rotate_weight,
    rotate_weight_from_raw,
    skew,
)
from .oft_config import OFTConfig, OFTConfigError


class OFTRotation(nn.Module):
    """The trainable OFT state of one linear layer: ``P`` blocks and an optional magnitude.

    ``P`` has shape ``(r, k, k)``, or ``(k, k)`` with ``block_share``; it starts at 0, so
    ``R = I``. ``magnitude`` (shape ``(out,)``, the paper's post-stage fitting) scales
    each output row: the layer becomes ``diag(m) W R^T``.
    """

    def __init__(
        self,
        in_features: int,
        config: OFTConfig,
        *,
        out_features: int | None = None,
        magnitude: bool = False,
        where: str = "layer",
    ) -> None:
        super().__init__()
        self.config = config
        self.in_features = in_features
        self.r, self.k = config.blocks_for(in_features, where)
        shape = (self.k, self.k) if config.block_share else (self.r, self.k, self.k)
        self.P = nn.Parameter(torch.zeros(shape))
        if magnitude:
            if out_features is None:
                raise OFTConfigError(f"{where}: magnitude fitting needs the layer's output width")
            self.magnitude = nn.Parameter(torch.ones(out_features))
        else:
            self.magnitude = None

    @property
    def radius(self) -> float:
        """COFT radius of each ``P`` block: ``eps k^2``, divided by ``sqrt(r)`` for separate blocks."""
        base = self.config.eps * self.k * self.k
        return base if self.config.block_share else base / math.sqrt(self.r)

    @property
    def blocks(self) -> torch.Tensor:
        """``P`` as a ``(blocks, k, k)`` stack (a view; ``(1, k, k)`` when shared)."""
        return self.P if self.P.dim() == 3 else self.P.unsqueeze(0)

    def generator(self) -> torch.Tensor:
        """The skew-symmetric generator ``S``, always as a ``(blocks, k, k)`` stack."""
        return skew(self.blocks)

    def rotation(self, strength: float = 1.0, precise: bool = False) -> torch.Tensor:
        """Blocks of ``R(strength * S)``, shape ``(r, k, k)`` or ``(1, k, k)`` when shared.

        ``strength`` scales the generator, so every value gives an orthogonal matrix:
        0 is the identity, 1 the trained rotation, -1 its inverse. ``precise`` solves in
        float64 (used for merging, which runs once per load) and returns the parameter dtype.
        """
        S = self.generator() * strength
        if precise:
            S = S.double()
        return cayley(S).to(self.P.dtype)

    def magnitude_at(self, strength: float = 1.0) -> torch.Tensor | None:
        """``m ** strength`` (so 0 leaves rows unscaled and -1 undoes ``m`` exactly)."""
        if self.magnitude is None:
            return None
        return self.magnitude if strength == 1.0 else self.magnitude.pow(strength)

    @torch.no_grad()
    def project_(self) -> None:
        """COFT: pull each ``P`` block back onto the Frobenius ball of :attr:`radius`.

        Runs before each training forward pass, without gradient (as in the paper).
        """
        P = self.blocks
        norms = torch.linalg.matrix_norm(P.float()).to(P.dtype)
        factor = torch.where(norms > self.radius, self.radius / norms.clamp_min(1e-30), torch.ones_like(norms))
        P.mul_(factor[:, None, None])

    @torch.no_grad()
    def merged_weight(self, weight: torch.Tensor, strength: float = 1.0, R: torch.Tensor | None = None) -> torch.Tensor:
        """``diag(m^s) W R(sS)^T`` computed in fp32 (the weight patch at inference).

        ``R`` may be passed in when the caller keeps ``rotation(strength, precise=True)``.
        """
        if R is None:
            R = self.rotation(strength, precise=True)
        R = R.to(device=weight.device, dtype=torch.float32)
        out = rotate_weight(weight.to(torch.float32), R)
        m = self.magnitude_at(strength)
        if m is not None:
            out = out * m.to(out)[:, None]
        return out

    def generator_norm_bound(self) -> float | None:
        """A bound on ``||S||_2`` of every block known without reading ``P``: COFT's, or None.

        The COFT projection keeps ``||P_i||_F <= radius`` (it runs after every optimiser step
        of the main phase, and ``P`` starts at 0); ``||S_i||_F <= ||P_i||_F`` (``S`` is the
        skew part of ``P``) and ``||S||_2 <= ||S||_F / sqrt(2)`` for a skew-symmetric ``S``
        (its eigenvalues come in pairs ``+-i lambda``).
        """
        if not self.config.coft:
            return None
        return self.radius / math.sqrt(2.0)

    def training_neumann_terms(self, neumann_terms: int | None = None, strength: float = 1.0) -> int | None:
        """How many Neumann terms the training path uses, or None for the exact Cayley transform.

        An explicit ``neumann_terms`` (the spec's option) is kept. Otherwise the series is used
        only where its error bound (:func:`~.cayley.neumann_terms_within`, at most
        :data:`~.cayley.AUTO_NEUMANN_TOLERANCE`) holds for every ``P`` the COFT ball allows;
        everywhere else the transform is exact. Merged weights are always exact.
        """
        if neumann_terms is not None:
            return neumann_terms
        bound = self.generator_norm_bound()
        if bound is None:
            return None
        terms = neumann_terms_within(bound * abs(strength))
        if terms is not None and self.P.device.type == "cpu":
            # Free here (no device sync): a P outside its ball (projection skipped) falls back to exact.
            norms = torch.linalg.matrix_norm(self.blocks.detach().float())
            if float(norms.max()) > self.radius * (1.0 + 1e-6):
                return None
        return terms

    def linear(
        self,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        strength: float = 1.0,
        neumann_terms: int | None = None,
        transposed: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``diag(m) W R^T x + b`` with gradients to ``P`` (and ``m``): the training path.

        The ``k x k`` blocks of ``R^T`` are computed once per call (exact, or the Neumann series:
        :meth:`training_neumann_terms`), or taken as given in ``transposed`` (at ``strength``,
        with their gradient path to ``P``: see :class:`~.shared_rotations.SharedRotations`).
        Then the rotation goes onto the activations or onto the weight, whichever costs less
        for these shapes (:func:`activation_side_is_cheaper`, backward included when
        training), as one batched product: see :func:`rotate_input_from_raw` and
        :func:`rotate_weight_from_raw`.
        """
        weight = weight.to(device=x.device, dtype=x.dtype)
        tokens = x.numel() // x.shape[-1]
        input_side = activation_side_is_cheaper(
            tokens, weight.shape[0], self.k, torch.is_grad_enabled() and self.P.requires_grad
        )
        if transposed is not None:
            if input_side:
                y = F.linear(rotate_rows(x, transposed), weight)
            else:
                y = F.linear(x, rotate_rows(weight, transposed.transpose(-1, -2)))
        else:
            P = self.blocks.to(device=x.device)
            terms = self.training_neumann_terms(neumann_terms, strength)
            if input_side:
                y = F.linear(rotate_input_from_raw(x, P, strength, terms), weight)
            else:
                y = F.linear(x, rotate_weight_from_raw(weight, P, strength, terms))
        m = self.magnitude_at(strength)
        if m is not None:
            y = y * m.to(y)
        if bias is not None:
            y = y + bias.to(y)
        return y

    def num_parameters(self, free_only: bool = False) -> int:
        """Stored parameters, or with ``free_only`` the degrees of freedom of ``S`` (k(k-1)/2 per block)."""
        blocks = 1 if self.config.block_share else self.r
        p = blocks * (self.k * (self.k - 1) // 2 if free_only else self.k * self.k)
        if self.magnitude is not None:
            p += self.magnitude.numel()
        return p


class RotationMerge:
    """The weight function of a merged rotation: ``W -> diag(m^s) W R(sS)^T`` (host weight patches call it).

    ``R(sS)`` is solved once per strength (in float64) and kept, so a host that recomputes
    patched weights on every forward (low-VRAM loading) pays only the products.
    """

    def __init__(self, rotation: OFTRotation) -> None:
        self.rotation = rotation
        self._rotations: dict[float, torch.Tensor] = {}

    def __call__(self, weight: torch.Tensor, strength: float) -> torch.Tensor:
        R = self._rotations.get(strength)
        if R is None:
            R = self._rotations[strength] = self.rotation.rotation(strength, precise=True)
        if R.device != weight.device:
            R = self._rotations[strength] = R.to(weight.device)
        return self.rotation.merged_weight(weight, strength, R).to(weight.dtype)
