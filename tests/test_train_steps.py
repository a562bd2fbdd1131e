"""fastgp.train.gan.steps: the critic and generator updates on their own.

A critic update with SGD equals the same update written out with the usual eager WGAN-GP
(``classic_gradient_penalty``); the steps draw no random numbers (every random tensor is
an input); they are functions of their inputs; the penalty follows lazy regularisation;
the generator update leaves the critic alone; the gradient reduction runs between the
backward pass and the optimiser step.
"""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import classic_gradient_penalty
from torch import nn

from fastgp.train.gan import steps
from fastgp.train.gan.augment import draw_augment
from fastgp.train.gan.objectives import PenaltyDraws, draw_penalty
from fastgp.train.gan.steps import (
    CriticInputs,
    GanSettings,
    GeneratorInputs,
    critic_step,
    generator_step,
)
from fastgp.train.models import build_models

B = 8


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _toy_pair(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    return build_models("mlp", (2,), z_dim=2, nf=16, generator_norm="none")


def _scaler() -> torch.amp.GradScaler:
    return torch.amp.GradScaler("cpu", enabled=False)


def _critic_inputs(penalty: str = "gp", seed: int = 1, **extra) -> CriticInputs:
    g = _gen(seed)
    real = torch.randn(B, 2, generator=g)
    z = torch.randn(B, 2, generator=g)
    draws = draw_penalty(penalty, real.shape, real.dtype, g) if penalty != "none" else None
    fields = {
        "real": real,
        "z": z,
        "augment_real": {},
        "augment_fake": {},
        "penalty": draws,
        "replay": None,
    }
    fields.update(extra)
    return CriticInputs(**fields)


def test_critic_update_is_the_eager_wgan_gp_update():
    generator, critic = _toy_pair()
    reference = copy.deepcopy(critic)
    settings = GanSettings("wgan-gp", "gp", weight=10.0, backend="torch")
    inputs = _critic_inputs()
    opt = torch.optim.SGD(critic.parameters(), lr=0.1)
    out = critic_step(settings, generator, critic, opt, _scaler(), inputs)

    # The same update by hand: WGAN loss + the public eager gradient penalty, same alpha.
    with torch.no_grad():
        fake = generator(inputs.z)
    d_real, d_fake = reference(inputs.real), reference(fake)
    loss = d_fake.mean() - d_real.mean()
    gp = classic_gradient_penalty(reference, inputs.real, fake, inputs.penalty.alpha, 10.0)
    (loss + gp).backward()
    with torch.no_grad():
        for p in reference.parameters():
            p -= 0.1 * p.grad
    for mine, theirs in zip(critic.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.loss, loss.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.penalty, gp.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.wdist, -loss.detach(), rtol=1e-6, atol=1e-6)
    grads = torch.cat([p.grad.reshape(-1) for p in reference.parameters()])
    torch.testing.assert_close(out.param_grad_norm, grads.norm(), rtol=1e-5, atol=1e-6)
    assert out.grad_norms.shape == (B,) and out.fake.shape == (B, 2)
    assert all(t.dim() == 0 for t in (out.loss, out.wdist, out.penalty, out.param_grad_norm))


def _no_random_numbers(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a step drew a random number")

    for name in ("rand", "randn", "randint", "rand_like", "randn_like", "randperm", "normal"):
        monkeypatch.setattr(torch, name, refuse)
    monkeypatch.setattr(torch.Tensor, "uniform_", refuse)
    monkeypatch.setattr(torch.Tensor, "normal_", refuse)


@pytest.mark.parametrize("penalty", ["gp", "lp", "dragan", "r1", "r2"])
def test_steps_draw_no_random_numbers(monkeypatch, penalty):
    torch.manual_seed(0)
    generator, critic = build_models("dcgan28", (1, 28, 28), z_dim=4, nf=2)
    g = _gen(3)
    real = torch.rand(4, 1, 28, 28, generator=g) * 2 - 1
    policy = "color,translation,cutout,flip"
    swap = torch.tensor([True, False, True, False])
    inputs = CriticInputs(
        real=real,
        z=torch.randn(4, 4, generator=g),
        augment_real=draw_augment(policy, real.shape, g),
        augment_fake=draw_augment(policy, real.shape, g),
        penalty=draw_penalty(penalty, real.shape, real.dtype, g),
        replay=(swap, torch.zeros(4, 1, 28, 28)),
    )
    gen_inputs = GeneratorInputs(
        torch.randn(4, 4, generator=g), draw_augment(policy, real.shape, g)
    )
    settings = GanSettings("wgan-gp", penalty, weight=1.0, drift=0.001, backend="torch")
    opt_d = torch.optim.Adam(critic.parameters())
    opt_g = torch.optim.Adam(generator.parameters())
    _no_random_numbers(monkeypatch)
    rng = torch.get_rng_state()
    out = critic_step(settings, generator, critic, opt_d, _scaler(), inputs)
    generator_step(settings, generator, critic, opt_g, _scaler(), gen_inputs)
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.isfinite(out.loss) and torch.isfinite(out.penalty)


def test_a_step_is_a_function_of_its_inputs():
    settings = GanSettings("wgan-gp", "dragan", weight=1.0, backend="torch")
    results = []
    for _ in range(2):
        generator, critic = _toy_pair(seed=4)
        opt = torch.optim.Adam(critic.parameters())
        torch.manual_seed(99 + len(results))  # a different global RNG each time: unused
        out = critic_step(settings, generator, critic, opt, _scaler(), _critic_inputs("dragan"))
        results.append((out, [p.detach().clone() for p in critic.parameters()]))
    (a, pa), (b, pb) = results
    for x, y in zip(a[:-1] + (a.fake,), b[:-1] + (b.fake,), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    for x, y in zip(pa, pb, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_lazy_regularisation_schedule_and_weight(monkeypatch):
    settings = GanSettings("wgan-gp", "gp", weight=0.5, lazy_reg=4, backend="torch")
    assert [settings.regularises(i) for i in range(9)] == [i % 4 == 0 for i in range(9)]
    assert not GanSettings("wgan-gp", "none", weight=1.0).regularises(0)
    weights = []
    original = steps.regularizer

    def spy(kind, critic, real, fake, **kwargs):
        weights.append(kwargs["weight"])
        return original(kind, critic, real, fake, **kwargs)

    monkeypatch.setattr(steps, "regularizer", spy)
    generator, critic = _toy_pair()
    opt = torch.optim.SGD(critic.parameters(), lr=0.0)
    with_penalty = critic_step(settings, generator, critic, opt, _scaler(), _critic_inputs())
    without = critic_step(settings, generator, critic, opt, _scaler(), _critic_inputs("none"))
    assert weights == [2.0]  # 0.5 * 4, once: no draws, no penalty
    assert with_penalty.penalty is not None and without.penalty is None
    assert without.grad_norms is None


def test_replay_mixing_replaces_the_swapped_fakes_only(monkeypatch):
    seen = []
    original = steps.augment

    def spy(x, params):
        seen.append(x.detach().clone())
        return original(x, params)

    monkeypatch.setattr(steps, "augment", spy)
    generator, critic = _toy_pair()
    swap = torch.tensor([True] * 3 + [False] * (B - 3))
    replayed = torch.full((B, 2), 7.0)
    inputs = _critic_inputs(replay=(swap, replayed))
    opt = torch.optim.SGD(critic.parameters(), lr=0.0)
    out = critic_step(GanSettings("wgan-gp", "gp", 1.0), generator, critic, opt, _scaler(), inputs)
    shown = seen[1]  # augment(real), then augment(fakes as shown to the critic)
    assert torch.equal(shown[:3], replayed[:3])
    assert torch.equal(shown[3:], out.fake[3:]) and not torch.equal(out.fake[:3], replayed[:3])


def test_generator_update_leaves_the_critic_alone():
    generator, critic = _toy_pair()
    critic(torch.zeros(1, 2)).sum().backward()  # some stale critic gradients
    stale = [p.grad.clone() for p in critic.parameters()]
    before = [p.detach().clone() for p in critic.parameters()]
    g_before = [p.detach().clone() for p in generator.parameters()]
    opt = torch.optim.SGD(generator.parameters(), lr=0.1)
    inputs = GeneratorInputs(torch.randn(B, 2, generator=_gen()), {})
    out = generator_step(
        GanSettings("wgan-gp", "gp", 1.0), generator, critic, opt, _scaler(), inputs
    )
    for p, old, grad in zip(critic.parameters(), before, stale, strict=True):
        assert torch.equal(p, old) and torch.equal(p.grad, grad) and p.requires_grad
    assert all(
        not torch.equal(p, old) for p, old in zip(generator.parameters(), g_before, strict=True)
    )
    # The loss is -mean D(G(z)) of the weights before the update.
    torch.testing.assert_close(out.loss, -critic(_toy_pair()[0](inputs.z)).mean().detach())


def test_gradients_are_reduced_before_the_optimiser_steps():
    generator, critic = _toy_pair()
    before = [p.detach().clone() for p in critic.parameters()]
    seen = []

    def reduce(module):
        seen.append(module)
        unchanged = all(torch.equal(p, b) for p, b in zip(module.parameters(), before, strict=True))
        assert unchanged and all(p.grad is not None for p in module.parameters())
        for p in module.parameters():
            p.grad.zero_()  # what the optimiser then applies: nothing

    opt = torch.optim.SGD(critic.parameters(), lr=1.0)
    out = critic_step(
        GanSettings("wgan-gp", "gp", 1.0),
        generator,
        critic,
        opt,
        _scaler(),
        _critic_inputs(),
        reduce,
    )
    assert seen == [critic]
    assert all(torch.equal(p, b) for p, b in zip(critic.parameters(), before, strict=True))
    assert float(out.param_grad_norm) == 0.0  # measured after the reduction


def test_wgan_clip_clips_and_drift_adds_to_the_loss_only_through_gradients():
    generator, critic = _toy_pair()
    settings = GanSettings("wgan-clip", "none", weight=0.0, clip=0.05)
    opt = torch.optim.SGD(critic.parameters(), lr=1.0)
    critic_step(settings, generator, critic, opt, _scaler(), _critic_inputs("none"))
    bound = torch.tensor(0.05)  # in fp32, as the weights are clamped
    assert all(bool(p.detach().abs().max() <= bound) for p in critic.parameters())
    # Drift changes the update but not the reported GAN loss.
    results = []
    for drift in (0.0, 10.0):
        generator, critic = _toy_pair()
        opt = torch.optim.SGD(critic.parameters(), lr=0.1)
        out = critic_step(
            GanSettings("wgan-gp", "none", 0.0, drift=drift),
            generator,
            critic,
            opt,
            _scaler(),
            _critic_inputs("none"),
        )
        results.append((out.loss, [p.detach().clone() for p in critic.parameters()]))
    assert torch.equal(results[0][0], results[1][0])
    assert not all(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1], strict=True))


def test_penalty_draws_are_used_as_given():
    generator, critic = _toy_pair()
    inputs = _critic_inputs()
    zero_alpha = inputs._replace(penalty=PenaltyDraws(alpha=torch.zeros(B)))
    opt = torch.optim.SGD(critic.parameters(), lr=0.0)
    settings = GanSettings("wgan-gp", "gp", weight=1.0, backend="torch")
    out = critic_step(settings, generator, critic, opt, _scaler(), zero_alpha)
    # alpha = 0: the penalty's points are the fakes themselves.
    with torch.no_grad():
        fake = generator(inputs.z)
    x = fake.clone().requires_grad_()
    (g,) = torch.autograd.grad(critic(x).sum(), x)
    torch.testing.assert_close(out.grad_norms, g.norm(dim=1), rtol=1e-5, atol=1e-6)


def test_gradients_change_no_weight_and_the_step_applies_them():
    generator, critic = _toy_pair()
    inputs = _critic_inputs()
    params = list(critic.parameters())
    before = [p.detach().clone() for p in params]
    settings = GanSettings("wgan-gp", "gp", weight=10.0, backend="torch")
    grads, out = steps.critic_gradients(settings, generator, critic, params, inputs)
    assert all(torch.equal(p, b) and p.grad is None for p, b in zip(params, before, strict=True))
    assert out.param_grad_norm is None and len(grads) == len(params)
    same_g, same_d = _toy_pair()
    opt = torch.optim.SGD(same_d.parameters(), lr=0.1)
    stepped = critic_step(settings, same_g, same_d, opt, _scaler(), inputs)
    for p, g, after in zip(params, grads, same_d.parameters(), strict=True):
        torch.testing.assert_close(after, p.detach().add(g, alpha=-0.1), rtol=0, atol=0)
    norm = torch.cat([g.reshape(-1) for g in grads]).norm()
    torch.testing.assert_close(stepped.param_grad_norm, norm, rtol=1e-6, atol=0)
    g_params = list(generator.parameters())
    g_grads, loss = steps.generator_gradients(
        settings, generator, critic, g_params, GeneratorInputs(inputs.z, {})
    )
    assert len(g_grads) == len(g_params) and all(p.grad is None for p in critic.parameters())
    assert loss.dim() == 0 and not loss.requires_grad


@pytest.mark.slow  # about a minute: two torch.compile runs
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit, inside dynamo
def test_the_gradient_parts_compile_as_one_graph():
    """What ``fastgp train --compile`` builds on: the parts of an update without the
    optimiser compile with fullgraph=True (here without a fastgp penalty, which does not
    trace yet) and match eager."""
    generator, critic = _toy_pair()
    swap = torch.tensor([True, False] * (B // 2))
    inputs = _critic_inputs("none", replay=(swap, torch.zeros(B, 2)))
    settings = GanSettings("wgan-gp", "none", weight=0.0, drift=0.001)
    params, g_params = list(critic.parameters()), list(generator.parameters())
    g_inputs = GeneratorInputs(inputs.z, {})
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        try:
            compiled = torch.compile(steps.critic_gradients, fullgraph=True)
            got, _ = compiled(settings, generator, critic, params, inputs)
            compiled_g = torch.compile(steps.generator_gradients, fullgraph=True)
            got_g, _ = compiled_g(settings, generator, critic, g_params, g_inputs)
        finally:
            torch._dynamo.reset()
    expected, _ = steps.critic_gradients(settings, generator, critic, params, inputs)
    expected_g, _ = steps.generator_gradients(settings, generator, critic, g_params, g_inputs)
    for a, b in zip(got + got_g, expected + expected_g, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
