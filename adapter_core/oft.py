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
from typing import Any

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
    # In place on the fresh difference: one k x k pass fewer, and autograd allows it.
    return (P - P.transpose(-1, -2)).mul_(0.5)


def _per_block(device: torch.device) -> bool:
    # On the CPU, MKL's *batched* LU in the torch 2.14 kernels deadlocks (after printing
    # "Parameter 6 was incorrect on entry to SLASWP") once torch.set_num_threads has been
    # called, for blocks of 160 and more; single-matrix LU is safe. So the CPU inverts each
    # block on its own (somewhat slower at these sizes); other devices batch.
    return device.type == "cpu"


def inverse_blocks(A: torch.Tensor) -> torch.Tensor:
    """The inverse of every block of a stack ``(n, k, k)``."""
    if _per_block(A.device) and A.shape[0] > 1:
        return torch.stack([torch.linalg.inv(block) for block in A])
    return torch.linalg.inv(A)


class SkewSystemSolve(torch.autograd.Function):
    """``X = (I - c (P - P^T))^-1 B`` for a stack of blocks, with gradients to ``P`` and ``B``.

    One node for what would otherwise be a skew, a scale, an identity, a solve and their
    backward. The system ``I - S`` is well conditioned (its singular values are at least 1,
    ``S`` being skew-symmetric), so the block inverses are formed once and everything else
    is matrix products, which run far faster than triangular solves: ``dB = A^-T dX``,
    ``dA = -dB X^T``, ``dP = c (dA^T - dA)``.
    """

    @staticmethod
    def forward(ctx: Any, P: torch.Tensor, B: torch.Tensor, c: float) -> torch.Tensor:
        # Always fp32, also under autocast: the backward below runs outside autocast and its
        # products must see one dtype (and the inverse wants the precision).
        ctx.dtypes = (P.dtype, B.dtype)
        with torch.autocast(B.device.type, enabled=False):
            P32, B32 = P.float(), B.float()
            A = (P32.transpose(-1, -2) - P32).mul_(c)
            A.diagonal(dim1=-2, dim2=-1).add_(1.0)
            inverse = inverse_blocks(A)
            X = inverse @ B32
        ctx.save_for_backward(inverse, X)
        ctx.c = c
        return X

    @staticmethod
    def backward(ctx: Any, grad_X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        inverse, X = ctx.saved_tensors
        grad_X = grad_X.to(inverse.dtype)
        grad_B = inverse.transpose(-1, -2) @ grad_X
        grad_A = -(grad_B @ X.transpose(-1, -2))
        grad_P = (grad_A.transpose(-1, -2) - grad_A).mul_(ctx.c)
        p_dtype, b_dtype = ctx.dtypes
        return grad_P.to(p_dtype), grad_B.to(b_dtype), None


def cayley(S: torch.Tensor) -> torch.Tensor:
    """Exact Cayley transform ``(I - S)(I + S)^-1`` of a stack of skew-symmetric blocks.

    Uses ``(I - S)(I + S)^-1 = 2 (I + S)^-1 - I`` (one solve); runs in fp32 at least.
    """
    work = S if S.dtype == torch.float64 else S.float()
    eye = torch.eye(work.shape[-1], dtype=work.dtype, device=work.device)
    inverse = inverse_blocks(eye + work)
    return (2.0 * inverse - eye).to(S.dtype)


def neumann_inverse_series(S: torch.Tensor, terms: int, x: torch.Tensor | None = None) -> torch.Tensor:
    """``sum_{i<terms} S^i`` (``≈ (I - S)^-1``), or that sum applied to ``x`` when given."""
    if terms < 1:
        raise OFTConfigError("the Neumann series needs at least one term")
    if x is None:
        x = torch.eye(S.shape[-1], dtype=S.dtype, device=S.device).expand_as(S)
    total, term = x, x
    for _ in range(terms - 1):
        term = S @ term
        total = total + term
    return total


def cayley_neumann(S: torch.Tensor, terms: int) -> torch.Tensor:
    """The Cayley transform with the inverse replaced by a Neumann series (as in OFTv2).

    ``R = 2 (I + S)^-1 - I`` becomes ``R_n = 2 sum_{i<terms} (-S)^i - I``: only matrix
    products, no solve. With ``q = ||S||_2 < 1`` the error is at most ``2 q^terms / (1 - q)``
    in spectral norm (:func:`neumann_error_bound`); ``R_n`` is only approximately orthogonal.
    """
    eye = torch.eye(S.shape[-1], dtype=S.dtype, device=S.device)
    return 2.0 * neumann_inverse_series(-S, terms) - eye


def neumann_error_bound(S: torch.Tensor, terms: int) -> float:
    """Upper bound on ``||cayley(S) - cayley_neumann(S, terms)||_2`` over all blocks.

    Infinite when the series does not converge (``||S||_2 >= 1``).
    """
    q = float(torch.linalg.matrix_norm(S.double(), ord=2).max())
    if q >= 1.0:
        return math.inf
    return 2.0 * q**terms / (1.0 - q)


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


def _block_patterns(shared: bool, rows: str) -> tuple[str, str]:
    # Rows of width b*k become columns of each k x k block (shared: all blocks side by side).
    if shared:
        return f"{rows} (b k) -> 1 k ({rows} b)", f"1 k ({rows} b) -> {rows} (b k)"
    return f"{rows} (b k) -> b k {rows}", f"b k {rows} -> {rows} (b k)"


def _inverse_apply(P: torch.Tensor, columns: torch.Tensor, c: float, neumann_terms: int | None) -> torch.Tensor:
    """``(I - c (P - P^T))^-1 columns`` per block: one LU per block, or the Neumann series."""
    if neumann_terms is None:
        return SkewSystemSolve.apply(P, columns, c)
    S = (P - P.transpose(-1, -2)).mul_(c)
    return neumann_inverse_series(S, neumann_terms, columns)


def rotate_input_from_raw(
    x: torch.Tensor, P: torch.Tensor, strength: float = 1.0, neumann_terms: int | None = None
) -> torch.Tensor:
    """``R^T x`` per row vector for ``S = strength (P - P^T) / 2``, never forming ``R``.

    ``R^T = 2 (I - S)^-1 - I``: one LU solve per block with the tokens as right-hand
    sides. Forward and backward together cost about what a LoRA of the same size costs,
    plus the LU itself.
    """
    rows = x.reshape(-1, x.shape[-1])
    pattern, back = _block_patterns(P.shape[0] == 1, "n")
    columns = rearrange(rows, pattern, k=P.shape[-1]).to(P.dtype) * 2.0
    solved = rearrange(_inverse_apply(P, columns, 0.5 * strength, neumann_terms), back, n=rows.shape[0])
    return (solved.to(x.dtype) - rows).reshape(x.shape)


def rotate_weight_from_raw(
    weight: torch.Tensor, P: torch.Tensor, strength: float = 1.0, neumann_terms: int | None = None
) -> torch.Tensor:
    """``W R^T`` for ``S = strength (P - P^T) / 2``: ``W R^T = 2 W (I - S)^-1 - W`` (rows as right-hand sides)."""
    pattern, back = _block_patterns(P.shape[0] == 1, "o")
    # W (I - S)^-1 = ((I - S)^-T W^T)^T = ((I + S)^-1 W^T)^T: the system with -c, rows as columns.
    columns = rearrange(weight, pattern, k=P.shape[-1]).to(P.dtype) * 2.0
    solved = rearrange(_inverse_apply(P, columns, -0.5 * strength, neumann_terms), back, o=weight.shape[0])
    return solved.to(weight.dtype) - weight


def activation_side_is_cheaper(tokens: int, out_features: int, k: int, training: bool) -> bool:
    """Whether to rotate the activations rather than the weight, by multiply-adds.

    Without gradients: ``tokens * in * k`` against ``out * in * k``. With gradients the
    weight side also needs the gradient of the rotated weight (``tokens * in * out``), while
    either side's rotation costs about three times its forward: activations win when
    ``tokens (3k - out) < 3 out k``, which holds for every size once ``r >= 3``.
    """
    if not training:
        return tokens < out_features
    return tokens * (3 * k - out_features) < 3 * out_features * k


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

    def linear(
        self,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        strength: float = 1.0,
        neumann_terms: int | None = None,
    ) -> torch.Tensor:
        """``diag(m) W R^T x + b`` with gradients to ``P`` (and ``m``): the training path.

        The rotation goes onto the activations or onto the weight, whichever costs less for
        these shapes (:func:`activation_side_is_cheaper`, backward included when training);
        either way it is solved straight from ``S`` (one LU per block, ``R`` is never formed):
        see :func:`rotate_input_from_raw` and :func:`rotate_weight_from_raw`.
        """
        weight = weight.to(device=x.device, dtype=x.dtype)
        P = self.blocks.to(device=x.device)
        if x.dtype not in (torch.float32, torch.float64):
            P = P.float()  # the solve needs fp32; the big matmul below stays in x's dtype
        tokens = x.numel() // x.shape[-1]
        if activation_side_is_cheaper(
            tokens, weight.shape[0], self.k, torch.is_grad_enabled() and self.P.requires_grad
        ):
            y = F.linear(rotate_input_from_raw(x, P, strength, neumann_terms), weight)
        else:
            y = F.linear(x, rotate_weight_from_raw(weight, P, strength, neumann_terms))
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
