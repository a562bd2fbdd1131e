"""Non-finite gradients are never hidden (issue 8 §2), on every backend, variant and dtype.

A NaN, +inf or -inf in one element of one sample's gradient (of one tensor of a tuple) must
give exactly the oracle's pattern (tests/oracles.py): that group's norm NaN (for NaN) or
+inf (for an infinity); the penalty NaN or +inf; the gradient of every element of that
group, in every tensor, NaN (d / norm is NaN / NaN or inf / inf); every other norm and
gradient finite and equal to the oracle's. The reference docstring states the convention;
the kernels must not turn a NaN into 0 (a one-sided clamp written as max(d, 0) with a
NaN-dropping max, or a "coefficient 0 unless norm > 0" test would).
"""

from __future__ import annotations

import math

import oracles
import pytest
import torch
from helpers import TOLERANCES, MLPCritic, assert_close_report, grad_leaf, make_input, param_grads
from torch import nn

import fastgp
from fastgp.backends.reference import accumulation_dtype

# Triton's interpreter runs the kernels in numpy, which warns about the inf / inf and the
# overflows these tests compute on purpose.
pytestmark = [
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
]

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
VALUES = {"nan": math.nan, "+inf": math.inf, "-inf": -math.inf}
BATCH = 6
BAD_SAMPLE = 2
# name -> (options of penalty_from_grads, several inputs?)
VARIANTS = {
    "two_sided": ({}, False),
    "one_sided": ({"one_sided": True}, False),
    "zero_centred": ({"center": 0.0, "lambda_gp": 5.0}, False),
    "pac": ({"pac": 2}, False),
    "several_inputs": ({}, True),
    "grad_scale": ({"grad_scale": 8.0}, False),
}


def _grads(dtype: torch.dtype, several: bool, value: float, device) -> list[torch.Tensor]:
    """(6, 3, 5) gradients (and a (6, 4) second input), ``value`` in one element of sample 2:
    of the second input when there are several. Norms straddle 1 (scales 0.1 to 2)."""
    scales = torch.tensor([0.1, 0.2, 0.5, 1.0, 1.5, 2.0], dtype=torch.float64, device=device)
    shapes = [(BATCH, 3, 5), (BATCH, 4)] if several else [(BATCH, 3, 5)]
    grads = []
    for seed, shape in enumerate(shapes):
        g = make_input(shape, torch.float64, seed=seed, device=device, scale=0.3)
        grads.append((g * scales.reshape(-1, *[1] * (g.dim() - 1))).to(dtype))
    grads[-1].view(BATCH, -1)[BAD_SAMPLE, 1] = value
    return grads


def _oracle_options(options: dict) -> dict:
    oracle = {k: v for k, v in options.items() if k != "grad_scale"}
    oracle["scale"] = options.get("grad_scale", 1.0)
    return oracle


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("value", VALUES)
def test_penalty_from_grads_shows_the_non_finite_sample(backend, device, value, variant, dtype):
    options, several = VARIANTS[variant]
    grads = _grads(dtype, several, VALUES[value], device)
    leaves = [grad_leaf(g) for g in grads]
    penalty, norms = fastgp.penalty_from_grads(
        tuple(leaves) if several else leaves[0], return_norms=True, backend=backend, **options
    )
    penalty.backward()

    pac = options.get("pac", 1)
    bad_group = BAD_SAMPLE // pac
    exact_penalty, exact_norms = oracles.penalty(grads, **_oracle_options(options))
    exact_dgrads = oracles.penalty_gradient(grads, **_oracle_options(options))
    # The oracle's own pattern, so that agreeing with it means what the docstring says.
    expect_nan = value == "nan"
    assert exact_penalty.isnan() if expect_nan else exact_penalty == math.inf
    assert exact_norms[bad_group].isnan() if expect_nan else exact_norms[bad_group] == math.inf
    assert exact_norms.isfinite().sum() == exact_norms.numel() - 1
    center = options.get("center", 1.0)
    assert (exact_norms < center).any() or center == 0, "norms should straddle the centre"
    bad = slice(bad_group * pac, (bad_group + 1) * pac)
    for d in exact_dgrads:
        assert d[bad].isnan().all() and d.isfinite().sum() == d.numel() - d[bad].numel()

    acc_tol = TOLERANCES[accumulation_dtype(dtype)]
    assert_close_report(penalty, exact_penalty, *acc_tol, what="penalty")
    assert_close_report(norms, exact_norms, *acc_tol, what="norms")
    for i, (leaf, want) in enumerate(zip(leaves, exact_dgrads, strict=True)):
        assert leaf.grad.dtype == dtype
        assert_close_report(leaf.grad, want, *TOLERANCES[dtype], what=f"dP/dg[{i}]")


@pytest.mark.parametrize("value", VALUES)
def test_kernel_ops_show_the_non_finite_sample(backend, device, value):
    """The op layer directly (``penalty_forward`` / ``penalty_backward`` with a grad_scale
    tensor, one-sided, pac 3): the same pattern as through ``penalty_from_grads``."""
    from helpers import kernels

    grads = _grads(torch.float32, True, VALUES[value], device)
    scale = torch.tensor(4.0, device=device)
    params = (1.0, 10.0, 1.0, True, 3)  # inv_scale, lambda_gp, center, one_sided, pac
    k = kernels(backend, device)
    penalty, norms = k.penalty_forward(grads, scale, *params)
    upstream = torch.tensor(0.5, device=device)
    dgrads = k.penalty_backward(upstream, grads, norms, scale, *params)
    options = {"lambda_gp": 10.0, "center": 1.0, "one_sided": True, "pac": 3, "scale": 4.0}
    exact_penalty, exact_norms = oracles.penalty(grads, **options)
    exact_dgrads = oracles.penalty_gradient(grads, **options, upstream=0.5)
    assert not exact_norms[0].isfinite() and exact_norms[1].isfinite()  # sample 2: group 0
    tol = TOLERANCES[torch.float32]
    assert_close_report(penalty, exact_penalty, *tol, what="penalty")
    assert_close_report(norms, exact_norms, *tol, what="norms")
    for i, (got, want) in enumerate(zip(dgrads, exact_dgrads, strict=True)):
        assert_close_report(got, want, *tol, what=f"penalty_backward[{i}]")


class PoisonedCritic(nn.Module):
    """An MLP critic plus ``poison[i] * x[i, 0]``: the input gradient of sample i is the MLP's
    plus ``poison[i]`` in its first element, so a NaN or inf there poisons one sample only."""

    def __init__(self, dim: int, poison: torch.Tensor):
        super().__init__()
        self.mlp = MLPCritic(dim)
        self.register_buffer("poison", poison)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x).squeeze(1) + self.poison * x[:, 0]


@pytest.mark.parametrize("value", VALUES)
def test_gradient_penalty_with_a_critic_whose_gradient_is_not_finite(backend, device, value):
    """Through the whole WGAN-GP call: the penalty, the norms and the NaN pattern of every
    parameter gradient are those of the seed formula (tests/helpers.py)."""
    torch.manual_seed(0)
    poison = torch.zeros(BATCH)
    poison[BAD_SAMPLE] = VALUES[value]
    critic = PoisonedCritic(5, poison).to(device)
    real = make_input((BATCH, 5), seed=1, device=device)
    fake = make_input((BATCH, 5), seed=2, device=device)
    alpha = torch.rand(BATCH, generator=torch.Generator().manual_seed(3)).to(device)

    critic.zero_grad(set_to_none=True)
    penalty, norms = fastgp.gradient_penalty(
        critic, real, fake, alpha=alpha, return_norms=True, backend=backend
    )
    penalty.backward()
    fast_grads = param_grads(critic)
    critic.zero_grad(set_to_none=True)
    classic = oracles.classic_gradient_penalty(critic, real, fake, alpha)
    classic.backward()
    classic_grads = param_grads(critic)

    x_hat = oracles.interpolate(real, fake, alpha).float().requires_grad_()
    (g,) = torch.autograd.grad(critic(x_hat).sum(), x_hat)
    exact_penalty, exact_norms = oracles.penalty(g)
    assert exact_norms.isfinite().sum() == BATCH - 1 and not exact_norms[BAD_SAMPLE].isfinite()
    assert classic.isnan() if value == "nan" else classic == math.inf
    tol = TOLERANCES[torch.float32]
    assert_close_report(penalty, classic, *tol, what="penalty vs the seed formula")
    assert_close_report(penalty, exact_penalty, *tol, what="penalty vs the oracle")
    assert_close_report(norms, exact_norms, *tol, what="norms")
    assert any(p.isnan().any() for p in classic_grads), "the seed formula's grads show it"
    for i, (got, want) in enumerate(zip(fast_grads, classic_grads, strict=True)):
        assert_close_report(got, want, 10 * tol[0], 10 * tol[1], what=f"parameter {i} grad")


@pytest.mark.parametrize("value", VALUES)
def test_create_graph_backward_shows_the_non_finite_sample(backend, device, value):
    """The differentiable backward (``create_graph=True``, the reference formula inside the
    fused autograd) and its derivative: the oracle's pattern, via autograd through the
    closed-form gradient of tests/oracles.py."""
    grads = _grads(torch.float64, True, VALUES[value], device)
    weights = [
        make_input(g.shape, torch.float64, seed=7 + i, device=device) for i, g in enumerate(grads)
    ]
    options = {"one_sided": True, "pac": 2}

    def second_order(first_derivative):
        leaves = [grad_leaf(g) for g in grads]
        first = first_derivative(leaves)
        total = sum((d * w).sum() for d, w in zip(first, weights, strict=True))
        return [d.detach() for d in first], torch.autograd.grad(total, leaves)

    def fused(leaves):
        penalty = fastgp.penalty_from_grads(tuple(leaves), backend=backend, **options)
        return torch.autograd.grad(penalty, leaves, create_graph=True)

    first, second = second_order(fused)
    exact_first, exact_second = second_order(lambda x: oracles.penalty_gradient(x, **options))
    assert exact_second[0][2:4].isnan().all() and exact_second[0][:2].isfinite().all()
    tol = TOLERANCES[torch.float64]
    for i in range(len(grads)):
        assert_close_report(first[i], exact_first[i], *tol, what=f"dP/dg[{i}]")
        assert_close_report(second[i], exact_second[i], *tol, what=f"d(dP/dg . w)/dg[{i}]")


@pytest.mark.parametrize("dtype", (torch.float32, torch.float16), ids=str)
def test_overflowing_squares_give_an_infinite_norm(backend, device, dtype):
    """Finite float32 gradients whose squares overflow the float32 accumulation (the op
    contract) give an infinite norm and a NaN gradient for that sample, never a finite wrong
    value. fp16 squares that overflow fp16 (1000**2 > 65504) do not overflow it."""
    big = 1e20 if dtype == torch.float32 else 1000.0
    g = torch.ones(3, 4, dtype=dtype, device=device)
    g[1, 2] = big
    leaf = grad_leaf(g)
    penalty, norms = fastgp.penalty_from_grads(leaf, return_norms=True, backend=backend)
    penalty.backward()
    if dtype == torch.float32:  # 1e40 > float32's largest value, 3.4e38
        assert norms[1] == math.inf and penalty == math.inf
        assert leaf.grad[1].isnan().all()
    else:
        exact_penalty, exact_norms = oracles.penalty(g)
        assert_close_report(norms, exact_norms, *TOLERANCES[torch.float32], what="norms")
        assert_close_report(penalty, exact_penalty, *TOLERANCES[torch.float32], what="penalty")
        exact_grad = oracles.penalty_gradient(g)[0]
        assert_close_report(leaf.grad, exact_grad, *TOLERANCES[dtype], what="dP/dg")
    assert_close_report(norms[[0, 2]], torch.full((2,), 2.0), 0, 0, what="other norms")
    assert torch.equal(leaf.grad[0], leaf.grad[2]) and leaf.grad[0].isfinite().all()
