"""The oracles of tests/oracles.py against numbers worked out by hand, against torch.autograd,
and against the public seed formulas: what every other test's expected value rests on."""

from __future__ import annotations

import math

import oracles
import pytest
import torch
from helpers import TOLERANCES, MLPCritic, assert_close_report, make_input

F64 = TOLERANCES[torch.float64]


def _g() -> torch.Tensor:
    # Sample norms 5, 0 and 13 (3-4-5 and 5-12-13 triangles).
    return torch.tensor([[3.0, 4.0], [0.0, 0.0], [5.0, 12.0]], dtype=torch.float64)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        # lambda * mean((n - c)**2) over n = 5, 0, 13.
        ({}, 10.0 * (16 + 1 + 144) / 3),
        ({"one_sided": True}, 10.0 * (16 + 0 + 144) / 3),
        ({"center": 0.0, "lambda_gp": 0.5}, 0.5 * (25 + 0 + 169) / 3),
        # The loss scale divides the norms: 2.5, 0, 6.5.
        ({"scale": 2.0}, 10.0 * (1.5**2 + 1 + 5.5**2) / 3),
    ],
    ids=["two_sided", "one_sided", "zero_centred", "scaled"],
)
def test_penalty_by_hand(options, expected):
    value, norms = oracles.penalty(_g(), **options)
    scale = options.get("scale", 1.0)
    assert torch.equal(norms, torch.tensor([5.0, 0.0, 13.0], dtype=torch.float64) / scale)
    assert math.isclose(float(value), expected, rel_tol=1e-15)


def test_pac_groups_consecutive_samples_by_hand():
    g = torch.tensor([[3.0], [4.0], [0.0], [1.0]], dtype=torch.float64)
    value, norms = oracles.penalty(g, pac=2, lambda_gp=1.0)
    assert torch.equal(norms, torch.tensor([5.0, 1.0], dtype=torch.float64))
    assert float(value) == (16 + 0) / 2


def test_several_inputs_share_one_norm_by_hand():
    value, norms = oracles.penalty(
        (torch.tensor([[3.0]]), torch.tensor([[[4.0, 0.0]]])), lambda_gp=1.0, center=2.0
    )
    assert float(norms) == 5.0 and float(value) == 9.0


def test_gradient_by_hand():
    # dP/dg_j = 2 lambda / G * (n - c) / n * g_j: row 0 = 2 * 10 / 3 * 4 / 5 * (3, 4); the zero
    # row gets 0 (the convention), row 2 = 2 * 10 / 3 * 12 / 13 * (5, 12).
    (grad,) = oracles.penalty_gradient(_g())
    expected = torch.tensor(
        [[16.0, 64.0 / 3], [0.0, 0.0], [2 * 10 / 3 * 12 / 13 * 5, 2 * 10 / 3 * 12 / 13 * 12]],
        dtype=torch.float64,
    )
    assert_close_report(grad, expected, 0, 1e-15, what="dP/dg")


def test_nonfinite_conventions():
    g = torch.tensor([[3.0, 4.0], [math.nan, 1.0], [math.inf, 0.0], [1.0, 0.0]])
    value, norms = oracles.penalty(g, one_sided=True)
    assert norms[1].isnan() and norms[2] == math.inf and norms[0] == 5.0
    assert value.isnan(), "the one-sided clamp must keep a NaN"
    (grad,) = oracles.penalty_gradient(g, one_sided=True)
    assert grad[1:3].isnan().all() and grad[[0, 3]].isfinite().all()
    assert torch.equal(grad[3], torch.zeros(2, dtype=torch.float64)), "norm 1 is at the centre"
    value, _ = oracles.penalty(g[[0, 2]])
    assert value == math.inf


@pytest.mark.parametrize(
    "options",
    [{}, {"one_sided": True, "center": 4.5}, {"center": 0.0}, {"pac": 3, "scale": 4.0}],
    ids=["two_sided", "one_sided", "zero_centred", "pac_scaled"],
)
def test_closed_form_gradient_is_the_autograd_derivative(options):
    grads = (
        make_input((6, 3, 4), torch.float64, seed=1),
        make_input((6, 5), torch.float64, seed=2),
    )
    # The norms here lie between 3 and 6.
    closed = oracles.penalty_gradient(grads, **options)
    derived = oracles.penalty_autograd_gradient(grads, **options)
    if options.get("one_sided"):
        norms = oracles.group_norms(grads, options.get("pac", 1), options.get("scale", 1.0))
        assert (norms < 4.5).any() and (norms > 4.5).any(), "must cover both sides"
    for i, (a, b) in enumerate(zip(closed, derived, strict=True)):
        assert_close_report(a, b, *F64, what=f"dP/dg[{i}]")
    (upstream,) = oracles.penalty_gradient(grads[0], upstream=2.5)
    (plain,) = oracles.penalty_gradient(grads[0])
    assert_close_report(upstream, 2.5 * plain, *F64, what="upstream")


def test_interpolation_by_hand():
    real = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float16)
    fake = torch.tensor([[5.0, 6.0], [7.0, 8.0]], dtype=torch.float16)
    alpha = torch.tensor([0.25, 1.0])
    x_hat = oracles.interpolate(real, fake, alpha)
    assert x_hat.dtype == torch.float64
    assert torch.equal(x_hat, torch.tensor([[4.0, 5.0], [3.0, 4.0]], dtype=torch.float64))
    weights = torch.tensor([[1.0, -2.0], [4.0, 1.0]])
    grad_real, grad_fake = oracles.interpolate_grads(weights, alpha.reshape(2, 1))
    assert torch.equal(grad_real, torch.tensor([[0.25, -0.5], [4.0, 1.0]], dtype=torch.float64))
    assert torch.equal(grad_fake, torch.tensor([[0.75, -1.5], [0.0, 0.0]], dtype=torch.float64))


def test_seed_formulas_agree_with_the_penalty_oracle():
    """The classic and CTGAN formulas are the oracle's penalty of the critic's input gradient."""
    torch.manual_seed(0)
    critic = MLPCritic(4).double()
    real = make_input((6, 4), torch.float64, seed=1)
    fake = make_input((6, 4), torch.float64, seed=2)
    alpha = torch.rand(6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x_hat = oracles.interpolate(real, fake, alpha).requires_grad_()
    (g,) = torch.autograd.grad(critic(x_hat).sum(), x_hat)
    classic = oracles.classic_gradient_penalty(critic, real, fake, alpha, 10.0)
    assert_close_report(classic, oracles.penalty(g)[0], *F64, what="classic")
    groups = alpha[::3]
    x_packed = oracles.interpolate(real, fake, groups.repeat_interleave(3)).requires_grad_()
    (g_packed,) = torch.autograd.grad(critic(x_packed).sum(), x_packed)
    ctgan = oracles.ctgan_gradient_penalty(critic, real, fake, groups, pac=3)
    assert_close_report(ctgan, oracles.penalty(g_packed, pac=3)[0], *F64, what="CTGAN")
