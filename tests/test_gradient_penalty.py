"""fastgp.gradient_penalty as a drop-in for the eager WGAN-GP (and CTGAN's packed variant)."""

from __future__ import annotations

import pytest
import torch
from helpers import (
    TOLERANCES,
    ConditionalCritic,
    ConvCritic,
    CTGANDiscriminator,
    MLPCritic,
    TwoInputCritic,
    assert_close_report,
    assert_no_worse_than_reference,
    classic_gradient_penalty,
    ctgan_gradient_penalty,
    make_input,
    param_grads,
    per_sample,
)
from torch import nn

import fastgp


def _alpha(
    batch: int,
    dtype: torch.dtype = torch.float32,
    seed: int = 5,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """(B,) U[0, 1) drawn on CPU from ``seed`` (the same on every device), on ``device``."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, generator=gen, dtype=dtype).to(device)


def _penalty_and_grads(module: nn.Module, compute) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run ``compute()`` -> penalty, backpropagate it, return (penalty, parameter grads)."""
    module.zero_grad(set_to_none=True)
    penalty = compute()
    penalty.backward()
    return penalty.detach(), param_grads(module)


def _assert_same(fast, classic, dtype, what="critic"):
    (penalty, grads), (ref_penalty, ref_grads) = fast, classic
    atol, rtol = TOLERANCES[dtype]
    assert penalty.dtype == dtype and penalty.shape == ()
    assert_close_report(penalty, ref_penalty, atol, rtol, what="penalty")
    # Parameter gradients pass through the critic's double backward: a few more roundings.
    for i, (got, want) in enumerate(zip(grads, ref_grads, strict=True)):
        assert_close_report(got, want, 10 * atol, 10 * rtol, what=f"{what} parameter {i} grad")


@pytest.mark.parametrize("dtype", (torch.float64, torch.float32), ids=str)
@pytest.mark.parametrize("batch", [1, 5])
def test_mlp_critic_matches_classic(backend, device, dtype, batch):
    torch.manual_seed(0)
    critic = MLPCritic(7, dtype=dtype).to(device)
    real = make_input((batch, 7), dtype, seed=1, device=device)
    fake = make_input((batch, 7), dtype, seed=2, device=device)
    alpha = _alpha(batch, dtype, device=device)
    fast = _penalty_and_grads(
        critic, lambda: fastgp.gradient_penalty(critic, real, fake, alpha=alpha, backend=backend)
    )
    classic = _penalty_and_grads(
        critic, lambda: classic_gradient_penalty(critic, real, fake, alpha, 10.0)
    )
    _assert_same(fast, classic, dtype)


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16), ids=str)
def test_low_precision_critic_no_worse_than_classic(backend, device, dtype):
    """A critic run in fp16/bf16: fastgp's penalty (fp32 accumulation) against the eager
    version in the same precision, both measured against float64 (flash-attention rule)."""
    torch.manual_seed(9)
    critic64 = MLPCritic(24).to(device, torch.float64)
    critic = MLPCritic(24).to(device, dtype)
    critic.load_state_dict(critic64.state_dict())
    real = make_input((6, 24), dtype, seed=1, device=device)
    fake = make_input((6, 24), dtype, seed=2, device=device)
    alpha = _alpha(6, torch.float32, device=device)
    fast = _penalty_and_grads(
        critic, lambda: fastgp.gradient_penalty(critic, real, fake, alpha=alpha, backend=backend)
    )
    same_precision = _penalty_and_grads(
        critic, lambda: classic_gradient_penalty(critic, real, fake, alpha, 10.0)
    )
    exact = _penalty_and_grads(
        critic64,
        lambda: classic_gradient_penalty(
            critic64, real.double(), fake.double(), alpha.to(dtype).double(), 10.0
        ),
    )
    assert fast[0].dtype == torch.float32
    assert_no_worse_than_reference(fast[0], same_precision[0], exact[0], what="penalty")
    for i, (a, b, c) in enumerate(zip(fast[1], same_precision[1], exact[1], strict=True)):
        assert_no_worse_than_reference(a, b, c, what=f"parameter {i} grad")


@pytest.mark.parametrize("patch", [False, True], ids=["score", "patch"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_conv_critic_matches_classic(backend, device, layout, patch):
    torch.manual_seed(1)
    dtype = torch.float64
    critic = ConvCritic(3, patch=patch, dtype=dtype).to(device)
    shape = (3, 3, 7, 5)
    real = make_input(shape, dtype, seed=1, layout=layout, device=device)
    fake = make_input(shape, dtype, seed=2, layout=layout, device=device)
    out = critic(real)
    assert out.shape == ((3, 1, 4, 3) if patch else (3,))
    alpha = _alpha(3, dtype, device=device)
    fast = _penalty_and_grads(
        critic,
        lambda: fastgp.gradient_penalty(
            critic, real, fake, alpha=alpha.reshape(3, 1, 1, 1), lambda_gp=5.0, backend=backend
        ),
    )
    classic = _penalty_and_grads(
        critic, lambda: classic_gradient_penalty(critic, real, fake, alpha, 5.0)
    )
    _assert_same(fast, classic, dtype)


def test_gradients_reach_real_and_a_non_detached_fake(backend, device):
    """A generator's output used without detach: the penalty trains the generator too."""
    torch.manual_seed(2)
    dtype = torch.float64
    critic = MLPCritic(6, dtype=dtype).to(device)
    generator = nn.Linear(4, 6, dtype=dtype).to(device)
    z = make_input((5, 4), dtype, seed=3, device=device)
    alpha = _alpha(5, dtype, device=device)

    def run(penalty_fn):
        critic.zero_grad(set_to_none=True)
        generator.zero_grad(set_to_none=True)
        real = make_input((5, 6), dtype, seed=4, requires_grad=True, device=device)
        penalty = penalty_fn(real, generator(z))
        penalty.backward()
        return penalty.detach(), real.grad, param_grads(critic) + param_grads(generator)

    fast = run(lambda r, f: fastgp.gradient_penalty(critic, r, f, alpha=alpha, backend=backend))
    classic = run(lambda r, f: classic_gradient_penalty(critic, r, f, alpha, 10.0))
    tol = TOLERANCES[dtype]
    assert_close_report(fast[0], classic[0], *tol, what="penalty")
    assert fast[1] is not None and fast[1].abs().sum() > 0
    assert_close_report(fast[1], classic[1], *tol, what="grad of real")
    assert any(g.abs().sum() > 0 for g in fast[2][-2:]), "no gradient reached the generator"
    for i, (got, want) in enumerate(zip(fast[2], classic[2], strict=True)):
        assert_close_report(got, want, *tol, what=f"parameter {i} grad")


def test_conditional_critic_arguments_pass_unchanged(backend, device):
    torch.manual_seed(3)
    critic = ConditionalCritic(5).to(device, torch.float64)
    real = make_input((4, 5), torch.float64, seed=1, device=device)
    fake = make_input((4, 5), torch.float64, seed=2, device=device)
    labels = torch.tensor([0, 2, 1, 2], device=device)
    condition = make_input((4, 5), torch.float64, seed=9, device=device)
    seen = []

    def conditional(x, labels_arg, condition_arg, *, scale):
        seen.append((labels_arg, condition_arg, scale))
        return critic(x + condition_arg, labels_arg, scale=scale)

    alpha = _alpha(4, torch.float64, device=device)
    fast = _penalty_and_grads(
        critic,
        lambda: fastgp.gradient_penalty(
            conditional, real, fake, labels, condition, alpha=alpha, backend=backend, scale=0.7
        ),
    )
    assert len(seen) == 1
    assert seen[0][0] is labels and seen[0][1] is condition and seen[0][2] == 0.7
    classic = _penalty_and_grads(
        critic,
        lambda: classic_gradient_penalty(
            lambda x: critic(x + condition, labels, scale=0.7), real, fake, alpha, 10.0
        ),
    )
    _assert_same(fast, classic, torch.float64)


def test_tuple_inputs_share_alpha_and_norm(backend, device):
    torch.manual_seed(4)
    dtype = torch.float64
    critic = TwoInputCritic(2, 3, 4).to(device, dtype)
    shapes = ((3, 2, 3, 3), (3, 4))
    reals = tuple(make_input(s, dtype, i, device=device) for i, s in enumerate(shapes, 1))
    fakes = tuple(make_input(s, dtype, i, device=device) for i, s in enumerate(shapes, 3))
    alpha = _alpha(3, dtype, device=device)

    def manual():
        points = [
            (per_sample(alpha, r) * r + (1 - per_sample(alpha, r)) * f).requires_grad_()
            for r, f in zip(reals, fakes, strict=True)
        ]
        grads = torch.autograd.grad(critic(*points).sum(), points, create_graph=True)
        norms = torch.cat([g.reshape(3, -1) for g in grads], dim=1).norm(dim=1)
        return 10.0 * ((norms - 1) ** 2).mean()

    fast = _penalty_and_grads(
        critic, lambda: fastgp.gradient_penalty(critic, reals, fakes, alpha=alpha, backend=backend)
    )
    _assert_same(fast, _penalty_and_grads(critic, manual), dtype)


@pytest.mark.parametrize("alpha_source", ["tensor", "generator"])
def test_pac_reproduces_ctgan(backend, device, alpha_source):
    torch.manual_seed(5)
    pac, batch, dim = 3, 9, 4
    disc = CTGANDiscriminator(dim, pac).to(device)
    gen_net = nn.Linear(2, dim).to(device)
    real = make_input((batch, dim), seed=1, device=device)
    z = make_input((batch, 2), seed=2, device=device)
    groups = _alpha(batch // pac, seed=6, device=device)

    def run(penalty_fn):
        disc.zero_grad(set_to_none=True)
        gen_net.zero_grad(set_to_none=True)
        fake = gen_net(z)  # not detached, as in CTGAN's training loop
        fake.retain_grad()
        penalty = penalty_fn(fake)
        penalty.backward()
        return penalty.detach(), fake.grad, param_grads(disc) + param_grads(gen_net)

    if alpha_source == "tensor":
        kwargs = {"alpha": groups}
    else:
        kwargs = {"generator": torch.Generator().manual_seed(6)}
    fast = run(lambda f: fastgp.gradient_penalty(disc, real, f, pac=pac, backend=backend, **kwargs))
    ctgan = run(lambda f: ctgan_gradient_penalty(disc, real, f, groups.reshape(-1, 1, 1), pac))
    tol = TOLERANCES[torch.float32]
    assert_close_report(fast[0], ctgan[0], *tol, what="penalty")
    assert fast[1].abs().sum() > 0
    assert_close_report(fast[1], ctgan[1], *tol, what="grad of the non-detached fake")
    for i, (got, want) in enumerate(zip(fast[2], ctgan[2], strict=True)):
        assert_close_report(got, want, 10 * tol[0], 10 * tol[1], what=f"parameter {i} grad")


def test_return_norms(backend, device):
    torch.manual_seed(6)
    critic = MLPCritic(5).to(device, torch.float64)
    real = make_input((6, 5), torch.float64, seed=1, device=device)
    fake = make_input((6, 5), torch.float64, seed=2, device=device)
    alpha = _alpha(6, torch.float64, device=device)
    penalty, norms = fastgp.gradient_penalty(
        critic, real, fake, alpha=alpha, pac=2, return_norms=True, backend=backend
    )
    assert norms.shape == (3,) and not norms.requires_grad and penalty.requires_grad
    x = (per_sample(alpha, real) * real + (1 - per_sample(alpha, real)) * fake).requires_grad_()
    (g,) = torch.autograd.grad(critic(x).sum(), x)
    expected = g.reshape(3, -1).norm(dim=1)
    assert_close_report(norms, expected, *TOLERANCES[torch.float64], what="norms")
    assert_close_report(
        penalty, 10 * ((expected - 1) ** 2).mean(), *TOLERANCES[torch.float64], what="penalty"
    )


def test_generator_reproducibility(backend, device):
    torch.manual_seed(7)
    critic = MLPCritic(5).to(device)
    real, fake = (
        make_input((4, 5), seed=1, device=device),
        make_input((4, 5), seed=2, device=device),
    )

    def with_seed(seed):
        gen = torch.Generator().manual_seed(seed)
        return fastgp.gradient_penalty(critic, real, fake, generator=gen, backend=backend)

    first, second, other = with_seed(11), with_seed(11), with_seed(12)
    assert torch.equal(first, second)
    assert not torch.equal(first, other)
    alpha = torch.rand(4, generator=torch.Generator().manual_seed(11)).to(device)
    expected = classic_gradient_penalty(critic, real, fake, alpha, 10.0)
    assert_close_report(first, expected, *TOLERANCES[torch.float32], what="penalty")


def test_output_shapes_b_and_b1_agree(backend, device):
    torch.manual_seed(8)
    critic = MLPCritic(3).to(device)
    real, fake = (
        make_input((5, 3), seed=1, device=device),
        make_input((5, 3), seed=2, device=device),
    )
    alpha = _alpha(5, device=device)
    as_b1 = fastgp.gradient_penalty(critic, real, fake, alpha=alpha, backend=backend)
    as_b = fastgp.gradient_penalty(
        lambda x: critic(x).squeeze(1), real, fake, alpha=alpha, backend=backend
    )
    assert critic(real).shape == (5, 1)
    assert torch.equal(as_b1, as_b)
