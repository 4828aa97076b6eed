"""Orthogonal finetuning (OFT) and its constrained form (COFT), as in the paper.

For a linear layer ``y = W x + b`` (``W``: out x in) OFT learns a block-diagonal
orthogonal ``R`` (in x in, ``r`` blocks of size ``k = in / r``) and uses ``W R^T``:
every neuron's weight row is rotated by the same ``R``, which keeps the hyperspherical
energy of the layer. Each block comes from a raw parameter ``P`` through
``S = (P - P^T) / 2`` and the Cayley transform ``R = (I - S)(I + S)^-1``
(REFERENCE.md section 2).

Nothing here builds the dense block-diagonal matrix: blocks are kept as an ``(r, k, k)``
stack (``(1, k, k)`` when shared), the Cayley transform is one batched solve, and a
rotation is applied to whichever of weight or activations is cheaper.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class OFTConfigError(ValueError):
    """An OFT configuration that cannot apply to a layer."""


@dataclass(frozen=True)
class OFTConfig:
    """Settings shared by every rotation of one group.

    Exactly one of ``r`` (number of blocks) and ``block_size`` is given; the other
    follows from each layer's input width.
    """

    r: int | None = 4
    block_size: int | None = None
    block_share: bool = False
    coft: bool = True
    eps: float = 6e-5

    def __post_init__(self) -> None:
        if (self.r is None) == (self.block_size is None):
            raise OFTConfigError("give exactly one of r (number of blocks) and block_size")
        for name in ("r", "block_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise OFTConfigError(f"{name} must be a positive integer, got {value!r}")
        if not (math.isfinite(self.eps) and self.eps > 0):
            raise OFTConfigError(f"eps must be a positive number, got {self.eps!r}")

    def blocks_for(self, in_features: int, where: str = "layer") -> tuple[int, int]:
        """``(r, k)`` for a layer of input width ``in_features``; raises if it does not divide."""
        if self.r is not None:
            if in_features % self.r:
                raise OFTConfigError(
                    f"{where}: input width {in_features} does not divide into r={self.r} blocks "
                    f"(choose r among {_divisors(in_features)})"
                )
            return self.r, in_features // self.r
        assert self.block_size is not None
        if in_features % self.block_size:
            raise OFTConfigError(
                f"{where}: input width {in_features} does not divide into blocks of size {self.block_size} "
                f"(choose block_size among {_divisors(in_features)})"
            )
        return in_features // self.block_size, self.block_size


def _divisors(n: int, limit: int = 64) -> str:
    return ", ".join(str(d) for d in range(1, min(n, limit) + 1) if n % d == 0)


def skew(P: torch.Tensor) -> torch.Tensor:
    """``(P - P^T) / 2`` over the last two dimensions."""
    return 0.5 * (P - P.transpose(-1, -2))


def cayley(S: torch.Tensor) -> torch.Tensor:
    """Exact Cayley transform ``(I - S)(I + S)^-1`` of a stack of skew-symmetric blocks.

    ``(I - S)`` and ``(I + S)^-1`` commute, so one batched solve of ``(I + S) R = I - S``
    gives ``R``; it runs in fp32 at least, for accuracy.
    """
    work = S if S.dtype == torch.float64 else S.float()
    eye = torch.eye(work.shape[-1], dtype=work.dtype, device=work.device)
    return torch.linalg.solve(eye + work, eye - work).to(S.dtype)


def cayley_neumann(S: torch.Tensor, terms: int) -> torch.Tensor:
    """Cayley transform with ``(I + S)^-1`` replaced by its Neumann series (OFTv2 style).

    ``R_n = (I - S) * sum_{i=0}^{terms-1} (-S)^i``. With ``q = ||S||_2 < 1`` the error is at
    most ``(1 + q) q^terms / (1 - q)`` in spectral norm (see :func:`neumann_error_bound`);
    the result is only approximately orthogonal.
    """
    if terms < 1:
        raise OFTConfigError("the Neumann series needs at least one term")
    eye = torch.eye(S.shape[-1], dtype=S.dtype, device=S.device)
    inverse = eye.expand_as(S).clone()
    power = eye.expand_as(S)
    for _ in range(terms - 1):
        power = -(power @ S)
        inverse = inverse + power
    return (eye - S) @ inverse


def neumann_error_bound(S: torch.Tensor, terms: int) -> float:
    """Upper bound on ``||cayley(S) - cayley_neumann(S, terms)||_2`` over all blocks.

    Infinite when the series does not converge (``||S||_2 >= 1``).
    """
    q = float(torch.linalg.matrix_norm(S.double(), ord=2).max())
    if q >= 1.0:
        return math.inf
    return (1.0 + q) * q**terms / (1.0 - q)


def rotate_weight(weight: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """``W R^T`` for a block-diagonal ``R`` given as ``(r, k, k)`` (or ``(1, k, k)`` shared)."""
    blocks = R.shape[0]
    k = R.shape[-1]
    w = rearrange(weight, "o (b k) -> o b k", k=k)
    if blocks == 1:
        out = torch.einsum("obj,ij->obi", w, R[0])
    else:
        out = torch.einsum("obj,bij->obi", w, R)
    return rearrange(out, "o b k -> o (b k)")


def rotate_input(x: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """``R^T x`` for each row vector ``x`` (so that ``W (R^T x) = (W R^T) x``)."""
    k = R.shape[-1]
    xs = rearrange(x, "... (b k) -> ... b k", k=k)
    if R.shape[0] == 1:
        out = torch.einsum("...bj,ji->...bi", xs, R[0])
    else:
        out = torch.einsum("...bj,bji->...bi", xs, R)
    return rearrange(out, "... b k -> ... (b k)")


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

    def generator(self) -> torch.Tensor:
        """The skew-symmetric generator ``S``, always as a ``(blocks, k, k)`` stack."""
        P = self.P if self.P.dim() == 3 else self.P.unsqueeze(0)
        return skew(P)

    def rotation(self, strength: float = 1.0, neumann_terms: int | None = None, precise: bool = False) -> torch.Tensor:
        """Blocks of ``R(strength * S)``, shape ``(r, k, k)`` or ``(1, k, k)`` when shared.

        ``strength`` scales the generator, so every value gives an orthogonal matrix:
        0 is the identity, 1 the trained rotation, -1 its inverse. ``precise`` solves in
        float64 (used for merging, which runs once per load) and returns the parameter dtype.
        """
        S = self.generator() * strength
        if precise:
            S = S.double()
        if neumann_terms is None:
            R = cayley(S)
        else:
            R = cayley_neumann(S, neumann_terms)
        return R.to(self.P.dtype)

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
        P = self.P if self.P.dim() == 3 else self.P.unsqueeze(0)
        norms = torch.linalg.matrix_norm(P.float()).to(P.dtype)
        factor = torch.where(norms > self.radius, self.radius / norms.clamp_min(1e-30), torch.ones_like(norms))
        P.mul_(factor[:, None, None])

    @torch.no_grad()
    def merged_weight(self, weight: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
        """``diag(m^s) W R(sS)^T`` computed in fp32 (the weight patch at inference)."""
        R = self.rotation(strength, precise=True).to(device=weight.device, dtype=torch.float32)
        out = rotate_weight(weight.to(torch.float32), R)
        m = self.magnitude_at(strength)
        if m is not None:
            out = out * m.to(out)[:, None]
        return out

    def linear(
        self,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        strength: float = 1.0,
        neumann_terms: int | None = None,
    ) -> torch.Tensor:
        """``diag(m) W R^T x + b`` with gradients to ``P`` (and ``m``): the training path.

        The rotation goes onto the weight or onto the activations, whichever needs fewer
        multiply-adds for these shapes (``out * in * k`` versus ``tokens * in * k``).
        """
        R = self.rotation(strength, neumann_terms).to(device=x.device, dtype=x.dtype)
        tokens = x.numel() // x.shape[-1]
        weight = weight.to(device=x.device, dtype=x.dtype)
        if weight.shape[0] <= tokens:
            y = F.linear(x, rotate_weight(weight, R))
        else:
            y = F.linear(rotate_input(x, R), weight)
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


def hyperspherical_energy(weight: torch.Tensor) -> torch.Tensor:
    """``sum_{i != j} 1 / ||w_i/|w_i| - w_j/|w_j|||`` over the rows of ``weight``."""
    unit = F.normalize(weight.double(), dim=1)
    distances = torch.cdist(unit, unit)
    off = ~torch.eye(unit.shape[0], dtype=torch.bool, device=unit.device)
    return (1.0 / distances[off]).sum()
