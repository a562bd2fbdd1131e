"""R1, R2, DRAGAN and the one-sided (WGAN-LP) penalty against their formulas written out."""

from __future__ import annotations

import pytest
import torch
from helpers import TOLERANCES, MLPCritic, assert_close_report, make_input, param_grads, per_sample
from torch import nn

import fastgp

F64 = TOLERANCES[torch.float64]


def _input_grads(critic, points):
    """d sum(critic(*points)) / d points with create_graph (the manual formulas' g)."""
    points = [p if p.requires_grad else p.detach().requires_grad_() for p in points]
    return torch.autograd.grad(critic(*points).sum(), points, create_graph=True)


def _sq_norms(grads, batch):
    return torch.cat([g.reshape(batch, -1) for g in grads], dim=1).pow(2).sum(dim=1)


def _value_and_param_grads(critic, compute):
    critic.zero_grad(set_to_none=True)
    penalty = compute()
    penalty.backward()
    return penalty.detach(), param_grads(critic)


def _assert_same(got, want):
    assert_close_report(got[0], want[0], *F64, what="penalty")
    for i, (a, b) in enumerate(zip(got[1], want[1], strict=True)):
        assert_close_report(a, b, 10 * F64[0], 10 * F64[1], what=f"parameter {i} grad")


@pytest.mark.parametrize("which", ["r1", "r2"])
def test_r1_r2_are_half_gamma_mean_squared_norm(backend, device, which):
    torch.manual_seed(0)
    critic = MLPCritic(6).to(device, torch.float64)
    x = make_input((5, 2, 3), torch.float64, seed=1, device=device)
    penalty_fn = fastgp.r1_penalty if which == "r1" else fastgp.r2_penalty
    fast = _value_and_param_grads(critic, lambda: penalty_fn(critic, x, gamma=3.0, backend=backend))
    manual = _value_and_param_grads(
        critic, lambda: 3.0 / 2 * _sq_norms(_input_grads(critic, [x]), 5).mean()
    )
    _assert_same(fast, manual)
    assert not x.requires_grad, "the caller's tensor must not be changed"


def test_r1_gradient_reaches_real_that_requires_grad(backend, device):
    torch.manual_seed(1)
    critic = MLPCritic(4).to(device, torch.float64)

    def run(compute):
        real = make_input((3, 4), torch.float64, seed=2, requires_grad=True, device=device)
        compute(real).backward()
        return real.grad

    fast = run(lambda r: fastgp.r1_penalty(critic, r, backend=backend))
    manual = run(lambda r: 5.0 * _sq_norms(_input_grads(critic, [r]), 3).mean())
    assert fast is not None and fast.abs().sum() > 0
    assert_close_report(fast, manual, *F64, what="grad of real")


def test_r1_tuple_inputs_and_critic_arguments(backend, device):
    torch.manual_seed(2)
    net = MLPCritic(7).to(device, torch.float64)

    def critic(a, b, offset, *, weight):
        return weight * net(torch.cat([a.reshape(a.shape[0], -1), b], dim=1) + offset)

    xs = (
        make_input((4, 2, 2), torch.float64, seed=1, device=device),
        make_input((4, 3), torch.float64, seed=2, device=device),
    )
    offset = 0.25
    fast = _value_and_param_grads(
        net, lambda: fastgp.r1_penalty(critic, xs, offset, weight=2.0, gamma=1.0, backend=backend)
    )
    bound = lambda a, b: critic(a, b, offset, weight=2.0)
    manual = _value_and_param_grads(
        net, lambda: 0.5 * _sq_norms(_input_grads(bound, list(xs)), 4).mean()
    )
    _assert_same(fast, manual)


def test_dragan_matches_its_formula(backend, device):
    torch.manual_seed(3)
    critic = MLPCritic(12).to(device, torch.float64)
    real = make_input((4, 3, 4), torch.float64, seed=1, device=device)
    gen = torch.Generator().manual_seed(9)
    alpha = torch.rand(4, generator=gen, dtype=torch.float64).to(device)

    def manual():
        # fastgp draws the noise from the generator's device (CPU here) and moves it.
        gen = torch.Generator().manual_seed(5)
        noise = torch.rand(real.shape, generator=gen, dtype=real.dtype).to(device)
        delta = 0.5 * real.std() * noise
        a = per_sample(alpha, real)
        x_hat = a * (real + delta) + (1 - a) * real
        norms = _sq_norms(_input_grads(critic, [x_hat]), 4).sqrt()
        return 7.0 * ((norms - 1) ** 2).mean()

    fast = _value_and_param_grads(
        critic,
        lambda: fastgp.dragan_penalty(
            critic,
            real,
            lambda_gp=7.0,
            alpha=alpha,
            generator=torch.Generator().manual_seed(5),
            backend=backend,
        ),
    )
    _assert_same(fast, _value_and_param_grads(critic, manual))


def test_dragan_generator_reproducibility(backend, device):
    torch.manual_seed(4)
    critic = MLPCritic(5).to(device)
    real = make_input((6, 5), seed=1, device=device)

    def with_seed(seed):
        gen = torch.Generator().manual_seed(seed)
        return fastgp.dragan_penalty(critic, real, generator=gen, backend=backend)

    assert torch.equal(with_seed(3), with_seed(3))
    assert not torch.equal(with_seed(3), with_seed(4))


class QuadraticCritic(nn.Module):
    """D(x) = w / 2 * ||x||^2 per sample: gradient w * x, norm |w| * ||x||."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.8, dtype=torch.float64))

    def forward(self, x):
        return self.w / 2 * x.reshape(x.shape[0], -1).pow(2).sum(dim=1)


@pytest.mark.parametrize("center", [1.0, 0.5])
def test_one_sided_penalises_only_norms_above_center(backend, device, center):
    critic = QuadraticCritic().to(device)
    scales = torch.tensor([0.1, 0.3, 0.6, 1.2, 2.0, 3.0], dtype=torch.float64, device=device)
    unit = make_input((6, 4), torch.float64, seed=1, device=device)
    unit = unit / unit.norm(dim=1, keepdim=True)
    real = unit * scales[:, None]
    fake = real * 1.1
    alpha = torch.full((6,), 0.5, dtype=torch.float64, device=device)
    x_hat = real * 1.05
    norms = 0.8 * x_hat.norm(dim=1)
    assert (norms < center).any() and (norms > center).any(), "must cover both sides"

    def manual():
        g = _input_grads(critic, [x_hat])
        n = _sq_norms(g, 6).sqrt()
        return 10.0 * (n - center).clamp_min(0).pow(2).mean()

    fast = _value_and_param_grads(
        critic,
        lambda: fastgp.gradient_penalty(
            critic, real, fake, alpha=alpha, one_sided=True, center=center, backend=backend
        ),
    )
    manual_result = _value_and_param_grads(critic, manual)
    _assert_same(fast, manual_result)
    two_sided = fastgp.gradient_penalty(
        critic, real, fake, alpha=alpha, center=center, backend=backend
    )
    assert two_sided > fast[0] > 0
