"""The math of block-diagonal Cayley rotations (specification §2.1, §2.2).

For a linear layer ``y = W x + b`` (``W``: out x in) OFT uses ``W R^T`` with a block-diagonal
orthogonal ``R`` (``r`` blocks of size ``k = in / r``). Each block comes from a skew-symmetric
generator ``S`` through the Cayley transform ``R = (I - S)(I + S)^-1``.

Nothing here builds the dense block-diagonal matrix: blocks are kept as an ``(r, k, k)``
stack (``(1, k, k)`` when shared), the Cayley transform is one ``k x k`` inverse per block
(mostly matrix products), and a rotation is applied to whichever of weight or activations is
cheaper, as one batched product (the input-centric form of OFTv2 while training).
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


#: Largest block the CPU inverts in one batched LU (the failure above starts near 96; 64 is safe).
BATCHED_CPU_LU_MAX = 64


def inverse_blocks(A: torch.Tensor) -> torch.Tensor:
    """The inverse of every block of a stack ``(n, k, k)`` (LAPACK: one LU per block)."""
    if _per_block(A.device) and A.shape[0] > 1 and A.shape[-1] > BATCHED_CPU_LU_MAX:
        return torch.stack([torch.linalg.inv(block) for block in A])
    if A.device.type == "cpu":
        return torch.linalg.inv(A)
    # linalg.inv reads the LU's status back to raise on a singular block: a device sync per
    # call, which on a GPU stalls the queue once per layer and pass (the GPU check measured OFT's
    # step at 2.4x LoRA's with it). inv_ex skips the check; the blocks met here are I + skew
    # or I + S with ||S|| bounded, never singular.
    return torch.linalg.inv_ex(A).inverse


#: Blocks up to this size are inverted by LAPACK; larger ones are split in two (see
#: :func:`inverse_identity_plus_skew`). Below it a split costs more in calls than it saves.
DIRECT_INVERSE_MAX = 48


def direct_inverse_max(device: torch.device) -> int:
    """The largest block inverted in one library call on ``device``; larger ones are split in two.

    On a CPU, batched products beat LAPACK's LU above :data:`DIRECT_INVERSE_MAX`. On a GPU the
    split's many small kernels cost more in launches than a batched LU costs in arithmetic, so
    every block is inverted directly.
    """
    return DIRECT_INVERSE_MAX if device.type == "cpu" else 1 << 30


def inverse_identity_plus_skew(A: torch.Tensor, direct_max: int | None = None) -> torch.Tensor:
    """The inverse of every block of a stack ``A = I + K`` (``K`` skew-symmetric), mostly by matrix products.

    Block elimination without pivoting: with ``A = [[A11, A12], [A21, A22]]``,
    ``T = A11^-1 A12``, ``U = A21 A11^-1`` and the Schur complement ``C = A22 - A21 T``,
    ``A^-1 = [[A11^-1 + T C^-1 U, -T C^-1], [-C^-1 U, C^-1]]``; ``A11^-1`` and ``C^-1`` the same
    way, down to :data:`DIRECT_INVERSE_MAX`. No pivot is ever small: the symmetric part of
    ``A`` is ``I``, and so is at least that of ``A11`` and of ``C`` (for ``v = [-T x; x]``,
    ``x^T C x = v^T A v = |v|^2 >= |x|^2``), so every inverse met has norm at most 1.

    Same flop count as an LU inverse, but batched matrix products run several times faster
    on a CPU than LAPACK's LU and triangular solves at these sizes (and need no batched LU).
    Blocks up to ``direct_max`` (default :func:`direct_inverse_max` of the device: on a GPU,
    every block) go to the library's inverse whole.
    """
    k = A.shape[-1]
    limit = direct_inverse_max(A.device) if direct_max is None else direct_max
    if k <= limit:
        return inverse_blocks(A)
    h = k // 2
    A11, A12, A21, A22 = A[:, :h, :h], A[:, :h, h:], A[:, h:, :h], A[:, h:, h:]
    X11 = inverse_identity_plus_skew(A11, limit)
    T = torch.bmm(X11, A12)
    U = torch.bmm(A21, X11)
    Y = inverse_identity_plus_skew(torch.baddbmm(A22, A21, T, alpha=-1.0), limit)
    B12 = torch.bmm(T, Y).neg_()
    B21 = torch.bmm(Y, U).neg_()
    B11 = torch.baddbmm(X11, B12, U, alpha=-1.0)
    return torch.cat((torch.cat((B11, B12), dim=2), torch.cat((B21, Y), dim=2)), dim=1)


class _InverseIdentityPlusSkew(torch.autograd.Function):
    """:func:`inverse_identity_plus_skew` with its gradient ``dA = -A^-T dX A^-T``."""

    @staticmethod
    def forward(ctx: Any, A: torch.Tensor) -> torch.Tensor:
        inverse = inverse_identity_plus_skew(A)
        ctx.save_for_backward(inverse)
        return inverse

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (inverse,) = ctx.saved_tensors
        transposed = inverse.transpose(-1, -2)
        return torch.bmm(torch.bmm(transposed, grad), transposed).neg_()


def transposed_rotation(P: torch.Tensor, strength: float = 1.0, neumann_terms: int | None = None) -> torch.Tensor:
    """Blocks of ``R^T = 2 (I - S)^-1 - I`` for ``S = strength (P - P^T) / 2``, with gradients to ``P``.

    ``P`` is a ``(blocks, k, k)`` stack; the result is fp32 (fp64 for fp64 ``P``), ``k x k`` per
    block: this is all the Cayley transform costs per step, whatever the number of tokens.
    Exact (:func:`inverse_identity_plus_skew`) unless ``neumann_terms`` is given: then
    ``(I - S)^-1`` is the series ``sum_{i<n} S^i`` (error bounded by :func:`neumann_error_bound`).
    """
    with torch.autocast(P.device.type, enabled=False):  # the inverse wants fp32 also under autocast
        work = P if P.dtype == torch.float64 else P.float()
        S = skew(work)
        if strength != 1.0:
            S = S * strength
        eye = torch.eye(S.shape[-1], dtype=S.dtype, device=S.device)
        if neumann_terms is None:
            inverse = _InverseIdentityPlusSkew.apply(eye - S)
        else:
            inverse = neumann_inverse_series(S, neumann_terms)
        return 2.0 * inverse - eye


class _RotateRows(torch.autograd.Function):
    """``y_b = M_b x_b`` for every row ``x`` split in blocks ``x_b`` (``M``: ``(blocks, k, k)``, or ``(1, k, k)`` shared).

    One batched product forward, two backward (``dx_b = M_b^T dy_b``, ``dM_b = sum dy_b x_b^T``);
    nothing of the activations' size is kept but ``x`` itself, and nothing is copied. Runs in ``x``'s dtype (``M`` is cast to it, as
    autocast casts a LoRA's weights); ``M``'s gradient comes back in ``M``'s dtype.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
        ctx.m_dtype = M.dtype
        with torch.autocast(x.device.type, enabled=False):
            Mx = M.to(x.dtype)
            y = _blocks_apply(x, Mx, transpose=False)
        ctx.save_for_backward(x, Mx)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        x, Mx = ctx.saved_tensors
        grad = grad.to(x.dtype)
        blocks, k = Mx.shape[0], Mx.shape[-1]
        grad_x = grad_M = None
        with torch.autocast(x.device.type, enabled=False):
            grad = grad.contiguous()
            if ctx.needs_input_grad[0]:
                grad_x = _blocks_apply(grad, Mx, transpose=True)
            if ctx.needs_input_grad[1]:
                grad_M = _blocks_outer(grad, x, blocks, k)
        if grad_M is not None:
            grad_M = grad_M.to(ctx.m_dtype)
        return grad_x, grad_M


def _blocks_apply(x: torch.Tensor, M: torch.Tensor, transpose: bool) -> torch.Tensor:
    """``M_b x_b`` (or ``M_b^T x_b``) for every row ``x`` of ``(n, blocks * k)``, as one product.

    The batched product writes straight into the rows' block layout (a strided ``out``): taking
    its result as ``(blocks, n, k)`` and transposing it back costs a copy of the activations'
    size, which on a CPU took 2.5x the product itself for 2048 tokens at k = 80.
    """
    n, width = x.shape
    blocks, k = M.shape[0], M.shape[-1]
    right = M if transpose else M.transpose(-1, -2)
    if blocks == 1:
        return torch.mm(x.view(-1, k), right[0]).view(n, width)
    y = torch.empty((n, width), dtype=x.dtype, device=x.device)
    torch.bmm(x.view(n, blocks, k).transpose(0, 1), right, out=y.view(n, blocks, k).transpose(0, 1))
    return y


def _blocks_outer(left: torch.Tensor, right: torch.Tensor, blocks: int, k: int) -> torch.Tensor:
    """``sum_n left_b^T right_b`` per block ``b`` of rows ``(n, blocks * k)``: a ``(blocks, k, k)`` stack."""
    if blocks == 1:
        return torch.mm(left.reshape(-1, k).t(), right.reshape(-1, k)).unsqueeze(0)
    n = left.shape[0]
    return torch.bmm(left.view(n, blocks, k).permute(1, 2, 0), right.view(n, blocks, k).transpose(0, 1))


class _CayleyRotateRows(torch.autograd.Function):
    """``y_b = R_b^T x_b`` for every row, ``R^T = 2 (I - S)^-1 - I``, ``S = s (P - P^T) / 2``: exact, no k^3 backward.

    Forward: one ``k x k`` inverse per block (:func:`inverse_identity_plus_skew`) and one
    batched product. Backward, with ``g = dL/dy``: ``dL/dx_b = g_b M_b`` (``M = R^T``), and since
    ``g inv = (dL/dx + g) / 2`` and ``x inv^T = (y + x) / 2`` (``inv = (I - S)^-1``),
    ``dL/d(I - S) = -inv^T (2 g^T x) inv^T = -Q / 2`` with ``Q_b = (dL/dx + g)_b^T (y + x)_b``,
    so ``dL/dP = s (Q - Q^T) / 4``: one more product of the activations' size and no second
    inverse or ``k^3`` product. Products run in ``x``'s dtype (``R^T`` is cast to it, as autocast
    casts a LoRA's weights); the inverse in fp32 at least.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, P: torch.Tensor, strength: float) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            work = P if P.dtype == torch.float64 else P.float()
            S = skew(work)
            if strength != 1.0:
                S.mul_(strength)
            eye = torch.eye(S.shape[-1], dtype=S.dtype, device=S.device)
            inverse = inverse_identity_plus_skew(eye - S)
            M = inverse.mul_(2.0).sub_(eye).to(x.dtype)
            y = _blocks_apply(x, M, transpose=False)
            # P's gradient needs only y + x: one tensor of the activations' size kept, not two.
            ctx.save_for_backward(y + x if ctx.needs_input_grad[1] else None, M)
        ctx.strength, ctx.p_dtype = strength, P.dtype
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        kept, M = ctx.saved_tensors
        grad = grad.to(M.dtype).contiguous()
        blocks, k = M.shape[0], M.shape[-1]
        with torch.autocast(M.device.type, enabled=False):
            grad_x = _blocks_apply(grad, M, transpose=True)
            grad_P = None
            if ctx.needs_input_grad[1]:
                Q = _blocks_outer(grad_x + grad, kept, blocks, k)
                Q = Q.float() if Q.dtype != torch.float64 else Q
                grad_P = (Q - Q.transpose(-1, -2)).mul_(0.25 * ctx.strength).to(ctx.p_dtype)
        return (grad_x if ctx.needs_input_grad[0] else None), grad_P, None


def rotate_rows(x: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """``M_b x_b`` for every row vector of ``x`` (any leading shape), blockwise; see :class:`_RotateRows`."""
    rows = x.reshape(-1, x.shape[-1])
    return _RotateRows.apply(rows, M).reshape(x.shape)


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
    return neumann_bound_for_norm(float(torch.linalg.matrix_norm(S.double(), ord=2).max()), terms)


def neumann_bound_for_norm(q: float, terms: int) -> float:
    """``2 q^n / (1 - q)``: the Neumann error bound for any generator with ``||S||_2 <= q``.

    ``(I + S)^-1 - sum_{i<n} (-S)^i = (-S)^n (I + S)^-1`` and ``||(I + S)^-1||_2 <= 1`` for a
    skew-symmetric ``S``, so the bound is even ``2 q^n``; the stated one holds for any ``S``.
    """
    if q >= 1.0:
        return math.inf
    return 2.0 * q**terms / (1.0 - q)


#: Training replaces the exact Cayley transform by the Neumann series on its own only when the
#: series' error bound (spectral norm of the rotation's error) is at most this: the size of the
#: fp32 rounding of the exact transform itself (see bench/oft.py's "neumann" figures).
AUTO_NEUMANN_TOLERANCE = 1e-6
#: ... and with at most this many terms (OFTv2's 5): each term is a ``k x k`` product forward
#: and two backward, and beyond that the exact transform (one inverse) costs less.
AUTO_NEUMANN_MAX_TERMS = 5


def neumann_terms_within(
    q: float, tolerance: float = AUTO_NEUMANN_TOLERANCE, max_terms: int = AUTO_NEUMANN_MAX_TERMS
) -> int | None:
    """The fewest Neumann terms whose error bound for ``||S||_2 <= q`` is within ``tolerance``, or None."""
    for terms in range(1, max_terms + 1):
        if neumann_bound_for_norm(q, terms) <= tolerance:
            return terms
    return None


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


def rotate_input_from_raw(
    x: torch.Tensor, P: torch.Tensor, strength: float = 1.0, neumann_terms: int | None = None
) -> torch.Tensor:
    """``R^T x`` per row vector for ``S = strength (P - P^T) / 2`` (``P``: ``(blocks, k, k)``).

    The ``k x k`` blocks of ``R^T`` come from :func:`transposed_rotation` (its cost does not
    grow with the tokens), then one batched product per direction (:func:`rotate_rows`):
    the input-centric form of OFTv2, never a weight-sized product.
    """
    if neumann_terms is not None:
        return rotate_rows(x, transposed_rotation(P, strength, neumann_terms))
    rows = x.reshape(-1, x.shape[-1])
    return _CayleyRotateRows.apply(rows, P, strength).reshape(x.shape)


def rotate_weight_from_raw(
    weight: torch.Tensor, P: torch.Tensor, strength: float = 1.0, neumann_terms: int | None = None
) -> torch.Tensor:
    """``W R^T`` for ``S = strength (P - P^T) / 2``: each row of ``W`` turned by ``R`` (``R w = (R^T)^T w``)."""
    Rt = transposed_rotation(P, strength, neumann_terms)
    return rotate_rows(weight, Rt.transpose(-1, -2))


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
