"""OFT's fast training path (issue 19 §4) against the plain math: same values, same gradients.

The block inverse by matrix products, the fused rotation of activations with its k^3-free
backward, and the automatic Cayley-Neumann choice, each checked against float64 references
built from ``torch.linalg.inv``; the Neumann series within its bound and the tolerance.
"""

from __future__ import annotations

import sys

import pytest
import torch

from taptune.adapter_core import OFTConfig, OFTRotation
from taptune.adapter_core.oft.cayley import (
    AUTO_NEUMANN_TOLERANCE,
    cayley,
    cayley_neumann,
    inverse_identity_plus_skew,
    neumann_terms_within,
    rotate_input_from_raw,
)

cayley_module = sys.modules["taptune.adapter_core.oft.cayley"]


def skew_stack(blocks: int, k: int, scale: float, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    P = torch.randn(blocks, k, k, generator=g, dtype=dtype) * scale
    return (P - P.transpose(1, 2)) / 2


@pytest.mark.parametrize("k", [7, 48, 49, 100, 130])
def test_block_inverse_by_products_equals_lapack(k):
    S = skew_stack(3, k, 3.0 / k**0.5)  # ||S||_2 well above 1: far outside any series' reach
    A = torch.eye(k, dtype=torch.float64) - S
    expected = torch.linalg.inv(A)
    assert float((inverse_identity_plus_skew(A) - expected).abs().max()) < 1e-12
    got32 = inverse_identity_plus_skew(A.float())
    assert float((got32.double() - expected).norm() / expected.norm()) < 1e-6


def dense_rotated_input(x: torch.Tensor, P: torch.Tensor, strength: float) -> torch.Tensor:
    """R^T x per row, R = blockdiag((I - S)(I + S)^-1), S = strength (P - P^T) / 2, densely in float64."""
    S = strength * (P - P.transpose(-1, -2)) / 2
    eye = torch.eye(S.shape[-1], dtype=S.dtype)
    R = torch.stack([(eye - s) @ torch.linalg.inv(eye + s) for s in S])
    blocks = x.shape[-1] // S.shape[-1]
    dense = torch.block_diag(*(R if R.shape[0] == blocks else R.expand(blocks, -1, -1)))
    return x @ dense  # rows: (R^T x)^T = x^T R


@pytest.mark.parametrize(("blocks", "shared", "strength"), [(4, False, 1.0), (3, False, -0.6), (4, True, 1.7)])
def test_fused_rotation_values_and_gradients_equal_the_dense_math(blocks, shared, strength):
    k, n = 56, 9  # 56 > the direct-inverse size: the recursion runs
    g = torch.Generator().manual_seed(1)
    P = (torch.randn(1 if shared else blocks, k, k, generator=g, dtype=torch.float64) * 0.1).requires_grad_(True)
    x = torch.randn(2, n, blocks * k, generator=g, dtype=torch.float64).requires_grad_(True)
    weights = torch.randn(2, n, blocks * k, generator=g, dtype=torch.float64)
    got = rotate_input_from_raw(x, P, strength)
    (got * weights).sum().backward()
    got_grads = (x.grad.clone(), P.grad.clone())
    x.grad = P.grad = None
    expected = dense_rotated_input(x, P, strength)
    (expected * weights).sum().backward()
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got_grads[0], x.grad, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(got_grads[1], P.grad, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("trainable", ["x", "P"])
@pytest.mark.parametrize("neumann_terms", [None, 6])
def test_rotation_gradient_to_one_side_only_equals_the_dense_math(trainable, neumann_terms):
    # One side frozen: the activations of a text encoder's context (x frozen), or a frozen adapter
    # passing gradients on (P frozen); the series' path (neumann_terms) uses the plain rotation.
    k, blocks, n = 50, 3, 7
    g = torch.Generator().manual_seed(4)
    P = (torch.randn(blocks, k, k, generator=g, dtype=torch.float64) * 0.002).requires_grad_(trainable == "P")
    x = torch.randn(n, blocks * k, generator=g, dtype=torch.float64).requires_grad_(trainable == "x")
    weights = torch.randn(n, blocks * k, generator=g, dtype=torch.float64)
    (rotate_input_from_raw(x, P, 1.0, neumann_terms) * weights).sum().backward()
    leaf = x if trainable == "x" else P
    got, leaf.grad = leaf.grad.clone(), None
    (dense_rotated_input(x, P, 1.0) * weights).sum().backward()
    tolerance = 1e-9 if neumann_terms is None else 1e-6
    torch.testing.assert_close(got, leaf.grad, rtol=tolerance, atol=tolerance)


def test_fused_rotation_under_bfloat16_autocast_keeps_fp32_gradients_close():
    rotation = OFTRotation(256, OFTConfig(r=4, coft=False), out_features=64)
    with torch.no_grad():
        rotation.P.normal_(0, 0.02)
    W, x = torch.randn(64, 256) / 16, torch.randn(3, 40, 256)
    rotation.linear(x, W, None).square().mean().backward()
    reference = rotation.P.grad.clone()
    rotation.P.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = rotation.linear(x, W, None)
    y.float().square().mean().backward()
    assert rotation.P.grad.dtype == torch.float32
    assert float((rotation.P.grad - reference).norm() / reference.norm()) < 0.05


def test_automatic_neumann_is_used_only_where_its_bound_is_within_tolerance():
    # A small COFT ball: the bound radius/sqrt(2) is small enough for a few terms.
    small = OFTRotation(64, OFTConfig(r=4, coft=True, eps=1e-4), out_features=32)  # k 16, radius 0.0128
    terms = small.training_neumann_terms()
    assert terms is not None and terms <= 5
    # The paper's COFT on SD-sized blocks (k 80: radius 0.19): exact; plain OFT: exact (no bound).
    assert OFTRotation(320, OFTConfig(r=4, coft=True, eps=6e-5)).training_neumann_terms() is None
    assert OFTRotation(64, OFTConfig(r=4, coft=False)).training_neumann_terms() is None
    assert small.training_neumann_terms(neumann_terms=3) == 3  # an explicit choice is kept
    # Outside its ball (projection skipped) a rotation falls back to the exact transform.
    with torch.no_grad():
        small.P.fill_(1.0)
    assert small.training_neumann_terms() is None
    # On the ball's edge the series it picks is within the tolerance of the exact transform.
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        small.P.copy_(torch.randn(small.P.shape, generator=g))
        small.P.mul_(small.radius / torch.linalg.matrix_norm(small.P)[:, None, None])
    S = small.generator().detach().double()
    error = float(torch.linalg.matrix_norm(cayley(S) - cayley_neumann(S, terms), ord=2).max())
    assert error <= AUTO_NEUMANN_TOLERANCE
    x, W = torch.randn(10, 64), torch.randn(32, 64)
    exact = x @ small.merged_weight(W).T
    torch.testing.assert_close(small.linear(x, W, None), exact, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("q", [1e-4, 0.01, 0.05, 0.2, 0.6])
def test_neumann_error_against_the_exact_transform_stays_under_its_bound(q):
    S = skew_stack(4, 40, 1.0, seed=3)
    S = S * (q / torch.linalg.matrix_norm(S, ord=2).max())  # ||S||_2 = q exactly
    exact = cayley(S)
    for terms in range(1, 9):
        error = float(torch.linalg.matrix_norm(exact - cayley_neumann(S, terms), ord=2).max())
        assert error <= cayley_module.neumann_bound_for_norm(q, terms) * (1 + 1e-9) + 1e-13  # float64 rounding floor
    chosen = neumann_terms_within(q)
    if chosen is not None:
        assert float(torch.linalg.matrix_norm(exact - cayley_neumann(S, chosen), ord=2).max()) <= AUTO_NEUMANN_TOLERANCE


def _members(rotations, shared):
    from taptune.adapter_core.oft.oft_wrappers import RotationMember

    return [RotationMember(r, None, shared) for r in rotations]


def _rotated_layers(widths, eps=None, seed=3):
    g = torch.Generator().manual_seed(seed)
    config = OFTConfig(r=2) if eps is None else OFTConfig(r=2, coft=True, eps=eps)
    rotations = [OFTRotation(width, config) for width in widths]
    with torch.no_grad():
        for r in rotations:
            r.P.copy_(torch.randn(r.P.shape, generator=g) * 0.05)
    weights = [torch.randn(5, width, generator=g) for width in widths]
    return rotations, weights


def test_rotations_solved_together_equal_each_solved_alone():
    """The batched solve (one Cayley transform per block size, as on a GPU) gives each layer's values and gradients."""
    from taptune.adapter_core.oft.shared_rotations import SharedRotations

    widths = [112, 160, 112, 96]  # block sizes 56 (twice: one batch), 80, 48
    rotations, weights = _rotated_layers(widths)
    g = torch.Generator().manual_seed(4)
    xs = [torch.randn(2, 7, w, generator=g) for w in widths]

    def run(members):
        for r in rotations:
            r.P.grad = None
        outs = [m.linear(x, w, None) for m, x, w in zip(members, xs, weights, strict=True)]
        sum((o * o).sum() for o in outs).backward()
        return [o.detach() for o in outs], [r.P.grad.clone() for r in rotations]

    alone_out, alone_grad = run(_members(rotations, None))
    shared = SharedRotations(rotations, on_cpu=True)
    together_out, together_grad = run(_members(rotations, shared))
    assert len(shared._solved) == 3  # one solve per block size, not per layer
    for a, b in zip(alone_out + alone_grad, together_out + together_grad, strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_shared_solve_is_redone_after_a_backward_pass_and_after_a_step():
    """Gradient accumulation (two backward passes, no step) and optimiser steps each get a fresh, correct solve."""
    from taptune.adapter_core.oft.shared_rotations import SharedRotations

    widths = [112, 112]
    rotations, weights = _rotated_layers(widths)
    shared = SharedRotations(rotations, on_cpu=True)
    batched, alone = _members(rotations, shared), _members(rotations, None)
    optimizer = torch.optim.SGD([r.P for r in rotations], lr=0.5)
    x = torch.randn(3, 112, generator=torch.Generator().manual_seed(5))

    def loss(members):
        return sum((m.linear(x, w, None) ** 2).sum() for m, w in zip(members, weights, strict=True))

    for _ in range(2):
        for _micro in range(2):  # a reused spent graph would raise here
            loss(batched).backward()
        grads = [r.P.grad.clone() for r in rotations]
        optimizer.zero_grad()
        for _micro in range(2):
            loss(alone).backward()
        for a, r in zip(grads, rotations, strict=True):
            assert float((a - r.P.grad).abs().max()) <= 1e-5 * float(a.abs().max()), float(
                (a - r.P.grad).abs().max() / a.abs().max()
            )
        before = shared._solved[56]
        optimizer.step()
        with torch.no_grad():
            fresh = loss(batched)  # P moved: solved again, and equal to the per-layer path
            assert shared._solved[56] is not before
            assert torch.allclose(fresh, loss(alone), rtol=1e-5)
        optimizer.zero_grad()


def test_a_shared_solve_lets_go_of_the_run_when_the_run_ends():
    """Nothing of a finished run stays reachable through the solve's backward hook (no parameter or gradient kept)."""
    import gc
    import weakref

    from taptune.adapter_core.oft.shared_rotations import SharedRotations

    rotations, weights = _rotated_layers([112, 112])
    shared = SharedRotations(rotations, on_cpu=True)
    members = _members(rotations, shared)
    x = torch.randn(3, 112, generator=torch.Generator().manual_seed(6))
    sum((m.linear(x, w, None) ** 2).sum() for m, w in zip(members, weights, strict=True)).backward()
    with torch.no_grad():
        members[0].linear(x, weights[0], None)  # a second, graph-free solve replaces the first
    sum((m.linear(x, w, None) ** 2).sum() for m, w in zip(members, weights, strict=True)).backward()
    kept = [weakref.ref(r.P) for r in rotations] + [weakref.ref(shared)]
    del rotations, shared, members
    gc.collect()
    assert all(ref() is None for ref in kept)
