"""Finite-difference checks in float64: first, second and third derivatives are exact.

Every backend supports float64, so each is checked. Under ``create_graph`` the backward of
the fused ops is computed with the differentiable reference (fastgp/ops/autograd.py), which
is what makes the higher orders exact; the first-order backward runs the backend's kernel.
The third-order check compares with torch.autograd through the float64 oracle of
tests/oracles.py, a formula written independently of the reference.
"""

from __future__ import annotations

import oracles
import pytest
import torch
from helpers import TOLERANCES, assert_close_report, make_input
from torch.autograd import gradcheck, gradgradcheck

import fastgp

F64 = torch.float64

# The default run checks random directional derivatives (gradcheck's fast mode: a few
# evaluations instead of one per input element, which matters in the Triton
# interpreter); the slow run checks every entry of the Jacobians.
MODES = [
    pytest.param(True, id="fast"),
    pytest.param(False, id="full", marks=pytest.mark.slow),
]


def _leaf(shape, seed, device, scale=1.0, layout="contiguous"):
    return make_input(
        shape, F64, seed=seed, layout=layout, scale=scale, requires_grad=True, device=device
    )


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"pac": 2, "center": 0.7},
        {"one_sided": True, "center": 0.8},
        {"center": 0.0, "grad_scale": 4.0},
    ],
    ids=["plain", "pac", "one_sided", "zero_centred_scaled"],
)
@pytest.mark.parametrize("fast_mode", MODES)
def test_penalty_from_grads(backend, device, options, fast_mode):
    # Norms away from the centre and from 0 (where the derivatives are not smooth).
    g1 = _leaf((4, 3), seed=1, device=device, scale=0.6)
    g2 = _leaf((4, 2, 2), seed=2, device=device, scale=0.6, layout="transposed")

    def fn(a, b):
        return fastgp.penalty_from_grads((a, b), lambda_gp=1.5, backend=backend, **options)

    assert gradcheck(fn, (g1, g2), fast_mode=fast_mode)
    assert gradgradcheck(fn, (g1, g2), fast_mode=fast_mode)


@pytest.mark.parametrize("fast_mode", MODES)
def test_interpolate(backend, device, fast_mode):
    real = _leaf((3, 2, 2), seed=1, device=device, layout="transposed")
    fake = _leaf((3, 2, 2), seed=2, device=device)
    alpha = torch.rand(3, generator=torch.Generator().manual_seed(0), dtype=F64).to(device)
    fn = lambda r, f: fastgp.interpolate(r, f, alpha, backend=backend)
    assert gradcheck(fn, (real, fake), fast_mode=fast_mode)
    assert gradgradcheck(fn, (real, fake), fast_mode=fast_mode)
    alpha = alpha.clone().requires_grad_()
    with_alpha = lambda r, f, a: fastgp.interpolate(r, f, a, backend=backend)
    assert gradcheck(with_alpha, (real, fake, alpha), fast_mode=fast_mode)


def _tiny_critic(w1, b1, w2):
    # Smooth in the input with non-zero third derivatives, so every order is exercised.
    return lambda x: torch.tanh(x.reshape(x.shape[0], -1) @ w1 + b1) @ w2


@pytest.mark.parametrize("fast_mode", MODES)
def test_gradient_penalty_wrt_critic_parameters(backend, device, fast_mode):
    params = (
        _leaf((4, 3), seed=3, device=device, scale=0.8),
        _leaf((3,), seed=4, device=device),
        _leaf((3, 1), seed=5, device=device),
    )
    real = make_input((3, 2, 2), F64, seed=6, device=device)
    fake = make_input((3, 2, 2), F64, seed=7, device=device)
    alpha = torch.rand(3, generator=torch.Generator().manual_seed(1), dtype=F64).to(device)

    def fn(w1, b1, w2):
        return fastgp.gradient_penalty(
            _tiny_critic(w1, b1, w2), real, fake, alpha=alpha, backend=backend
        )

    assert gradcheck(fn, params, fast_mode=fast_mode)
    # The critic's parameters enter through its input gradient: second derivatives in
    # the parameters need third derivatives of the critic through the penalty's backward.
    assert gradgradcheck(fn, params, fast_mode=fast_mode)


def _third_derivative(penalty_fn, g, u, w):
    """d/dg < d/dg < dP/dg, u >, w > : a vector-Hessian-vector product differentiated once more."""
    (first,) = torch.autograd.grad(penalty_fn(g), g, create_graph=True)
    (second,) = torch.autograd.grad((first * u).sum(), g, create_graph=True)
    (third,) = torch.autograd.grad((second * w).sum(), g)
    return first.detach(), second.detach(), third


@pytest.mark.parametrize("options", [{}, {"pac": 3, "one_sided": True, "center": 0.5}])
def test_third_order_matches_oracle(backend, device, options):
    g = _leaf((6, 5), seed=8, device=device, scale=0.5)
    u = make_input((6, 5), F64, seed=9, device=device)
    w = make_input((6, 5), F64, seed=10, device=device)
    fast = _third_derivative(
        lambda x: fastgp.penalty_from_grads(x, backend=backend, **options), g, u, w
    )
    exact = _third_derivative(lambda x: oracles.penalty(x, **options)[0], g, u, w)
    assert_close_report(
        fast[0], oracles.penalty_gradient(g.detach(), **options)[0], *TOLERANCES[F64]
    )
    for order, (got, want) in enumerate(zip(fast, exact, strict=True), start=1):
        assert got.abs().sum() > 0, f"derivative of order {order} is identically zero"
        assert_close_report(got, want, *TOLERANCES[F64], what=f"derivative of order {order}")
