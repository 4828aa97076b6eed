"""The math of block-diagonal Cayley rotations (specification §2.1, §2.2).

For a linear layer ``y = W x + b`` (``W``: out x in) OFT uses ``W R^T`` with a block-diagonal
orthogonal ``R`` (``r`` blocks of size ``k = in / r``). Each block comes from a skew-symmetric
generator ``S`` through the Cayley transform ``R = (I - S)(I + S)^-1``.

Nothing here builds the dense block-diagonal matrix: blocks are kept as an ``(r, k, k)``
stack (``(1, k, k)`` when shared), the Cayley transform is one batched solve, and a
rotation is applied to whichever of weight or activations is cheaper.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange

from .oft_config import OFTConfigError

#: Most terms of the Cayley-Neumann series (OFTv2 uses 5; the node offers up to 32).
MAX_NEUMANN_TERMS = 64


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
    if not 1 <= terms <= MAX_NEUMANN_TERMS:
        raise OFTConfigError(
            f"the Neumann series takes 1 to {MAX_NEUMANN_TERMS} terms, not {terms}", input_name="neumann_terms"
        )
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


def hyperspherical_energy(weight: torch.Tensor) -> torch.Tensor:
    """``sum_{i != j} 1 / ||w_i/|w_i| - w_j/|w_j|||`` over the rows of ``weight``."""
    unit = F.normalize(weight.double(), dim=1)
    distances = torch.cdist(unit, unit)
    off = ~torch.eye(unit.shape[0], dtype=torch.bool, device=unit.device)
    return (1.0 / distances[off]).sum()
