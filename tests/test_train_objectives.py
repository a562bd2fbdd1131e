"""fastgp.train.gan.objectives: loss formulas, regulariser dispatch, clipping, drift, errors."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import fastgp
from fastgp.train.gan import objectives
from fastgp.train.gan.objectives import (
    OBJECTIVES,
    PENALTIES,
    check_combination,
    clip_weights,
    critic_loss,
    default_penalty,
    draw_penalty,
    drift_penalty,
    generator_loss,
    regularizer,
    wasserstein_estimate,
)

D_REAL = torch.tensor([[2.0], [-0.5], [0.25]])
D_FAKE = torch.tensor([[-1.5], [0.5], [3.0]])


def test_wasserstein_losses_by_hand():
    # mean(d_fake) = 2/3, mean(d_real) = 7/12
    for objective in ("wgan-gp", "wgan-lp", "wgan-clip"):
        assert critic_loss(objective, D_REAL, D_FAKE).item() == pytest.approx(2 / 3 - 7 / 12)
        assert generator_loss(objective, D_FAKE).item() == pytest.approx(-2 / 3)
    assert wasserstein_estimate(D_REAL, D_FAKE).item() == pytest.approx(7 / 12 - 2 / 3)


def test_lsgan_losses_by_hand():
    # (d_real - 1)^2 = 1, 2.25, 0.5625; d_fake^2 = 2.25, 0.25, 9; (d_fake - 1)^2 = 6.25, .25, 4
    expected_d = 0.5 * (1 + 2.25 + 0.5625) / 3 + 0.5 * (2.25 + 0.25 + 9) / 3
    assert critic_loss("lsgan", D_REAL, D_FAKE).item() == pytest.approx(expected_d)
    assert generator_loss("lsgan", D_FAKE).item() == pytest.approx(0.5 * (6.25 + 0.25 + 4) / 3)


def test_hinge_losses_by_hand():
    # relu(1 - d_real) = 0, 1.5, 0.75; relu(1 + d_fake) = 0, 1.5, 4
    assert critic_loss("hinge", D_REAL, D_FAKE).item() == pytest.approx(2.25 / 3 + 5.5 / 3)
    assert generator_loss("hinge", D_FAKE).item() == pytest.approx(-2 / 3)


def test_losses_accumulate_bf16_scores_in_fp32_and_keep_fp64():
    loss = critic_loss("wgan-gp", D_REAL.bfloat16(), D_FAKE.bfloat16())
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert critic_loss("hinge", D_REAL.double(), D_FAKE.double()).dtype == torch.float64


def test_losses_are_differentiable_in_the_scores():
    d_real, d_fake = D_REAL.clone().requires_grad_(), D_FAKE.clone().requires_grad_()
    critic_loss("wgan-gp", d_real, d_fake).backward()
    torch.testing.assert_close(d_real.grad, torch.full((3, 1), -1 / 3))
    torch.testing.assert_close(d_fake.grad, torch.full((3, 1), 1 / 3))


def test_default_penalties():
    assert [default_penalty(o) for o in OBJECTIVES] == ["gp", "lp", "none", "none", "none"]
    assert set(map(default_penalty, OBJECTIVES)) <= set(PENALTIES)


def test_unknown_names_are_clear_errors():
    with pytest.raises(ValueError, match="`objective` must be one of .*'wgan'"):
        critic_loss("wgan", D_REAL, D_FAKE)
    with pytest.raises(ValueError, match="`objective`"):
        generator_loss("gan", D_FAKE)
    with pytest.raises(ValueError, match="`objective`"):
        default_penalty("WGAN-GP")
    with pytest.raises(ValueError, match="`penalty` must be one of .*'gp2'"):
        regularizer("gp2", nn.Linear(2, 1), torch.zeros(2, 2), torch.zeros(2, 2), weight=1.0)
    with pytest.raises(ValueError, match="`penalty`"):
        check_combination("hinge", "l2")
    with pytest.raises(TypeError, match="`d_fake`"):
        critic_loss("hinge", D_REAL, D_FAKE.long())
    with pytest.raises(ValueError, match="`d_real` is empty"):
        critic_loss("hinge", torch.zeros(0), D_FAKE)


def test_suspicious_combinations_warn_but_are_allowed():
    with pytest.warns(UserWarning, match="weight clipping and a gradient penalty"):
        assert len(check_combination("wgan-clip", "gp")) == 1
    with pytest.warns(UserWarning, match="nothing keeps the critic Lipschitz"):
        check_combination("wgan-gp", "none")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for objective in OBJECTIVES:
            assert check_combination(objective, default_penalty(objective)) == []
        assert check_combination("hinge", "r1") == []
        assert len(check_combination("wgan-lp", "none", warn=False)) == 1


def _critic() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))


def _batches():
    g = torch.Generator().manual_seed(1)
    return torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)


def _direct(kind, critic, real, fake, weight, seed):
    g = torch.Generator().manual_seed(seed)
    common = {"backend": "torch", "return_norms": True}
    if kind == "gp":
        return fastgp.gradient_penalty(critic, real, fake, lambda_gp=weight, generator=g, **common)
    if kind == "lp":
        return fastgp.gradient_penalty(
            critic, real, fake, lambda_gp=weight, one_sided=True, generator=g, **common
        )
    if kind == "r1":
        return fastgp.r1_penalty(critic, real, gamma=weight, **common)
    if kind == "r2":
        return fastgp.r2_penalty(critic, fake, gamma=weight, **common)
    return fastgp.dragan_penalty(critic, real, lambda_gp=weight, generator=g, **common)


@pytest.mark.parametrize("kind", ["gp", "lp", "r1", "r2", "dragan"])
def test_regularizer_matches_the_direct_fastgp_call(kind):
    critic = _critic()
    real, fake = _batches()
    penalty, norms = regularizer(
        kind,
        critic,
        real,
        fake,
        weight=3.0,
        backend="torch",
        draws=draw_penalty(kind, real.shape, real.dtype, torch.Generator().manual_seed(7)),
    )
    expected, expected_norms = _direct(kind, critic, real, fake, 3.0, seed=7)
    # Bit for bit: the draws are fastgp's own (DRAGAN's points are rebuilt from them).
    torch.testing.assert_close(penalty, expected, rtol=0, atol=0)
    torch.testing.assert_close(norms, expected_norms, rtol=0, atol=0)
    assert norms.shape == (6,) and not norms.requires_grad
    # The penalty's gradient reaches the critic's weights as the direct call's does (the
    # last bias does not affect the input gradient, hence allow_unused).
    params = list(critic.parameters())
    grads = torch.autograd.grad(penalty, params, allow_unused=True)
    expected_grads = torch.autograd.grad(expected, params, allow_unused=True)
    assert grads[0] is not None
    for g, e in zip(grads, expected_grads, strict=True):
        assert (g is None) == (e is None)
        if g is not None:
            torch.testing.assert_close(g, e)


def test_regularizer_lp_is_one_sided_and_gp_is_not():
    # A critic with input-gradient norm 0.5 everywhere: GP penalises (0.5 - 1)^2, LP nothing.
    critic = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        critic.weight.copy_(torch.tensor([[0.3, 0.4, 0.0]]))
    real, fake = _batches()
    gp, _ = regularizer("gp", critic, real, fake, weight=10.0, backend="torch")
    lp, _ = regularizer("lp", critic, real, fake, weight=10.0, backend="torch")
    assert gp.item() == pytest.approx(10 * 0.25)
    assert lp.item() == 0.0


def test_regularizer_none_is_a_zero_and_no_norms():
    real, fake = _batches()
    penalty, norms = regularizer("none", _critic(), real, fake, weight=10.0)
    assert norms is None and penalty.dim() == 0 and penalty.item() == 0.0
    assert penalty.dtype == torch.float32
    penalty, _ = regularizer("none", _critic(), real.bfloat16(), fake.bfloat16(), weight=1.0)
    assert penalty.dtype == torch.float32


def test_regularizer_does_not_reach_the_generator():
    generator_net = nn.Linear(3, 3)
    critic = _critic()
    real, z = _batches()
    fake = generator_net(z)
    for kind in ("gp", "r2"):
        penalty, _ = regularizer(kind, critic, real, fake, weight=1.0, backend="torch")
        penalty.backward()
        assert generator_net.weight.grad is None


def test_regularizer_rejects_bad_weight():
    real, fake = _batches()
    with pytest.raises(ValueError, match="`weight`"):
        regularizer("none", _critic(), real, fake, weight=-1.0)
    with pytest.raises(ValueError, match="`weight`"):
        regularizer("gp", _critic(), real, fake, weight=float("nan"), backend="torch")


def test_clip_weights_clamps_every_parameter_in_place():
    critic = _critic()
    with torch.no_grad():
        critic[0].weight.mul_(100)
    before = [p.detach().clone() for p in critic.parameters()]
    clip_weights(critic, 0.01)
    for old, p in zip(before, critic.parameters(), strict=True):
        torch.testing.assert_close(p.detach(), old.clamp(-0.01, 0.01))
    assert max(p.abs().max().item() for p in critic.parameters()) == pytest.approx(0.01)
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="`clip`"):
            clip_weights(critic, bad)


def test_drift_penalty_by_hand():
    # d_real^2 = 4, 0.25, 0.0625
    assert drift_penalty(D_REAL, 0.001).item() == pytest.approx(0.001 * 4.3125 / 3)
    with pytest.raises(ValueError, match="`epsilon`"):
        drift_penalty(D_REAL, -0.1)


def test_module_constants_are_the_documented_names():
    assert objectives.OBJECTIVES == ("wgan-gp", "wgan-lp", "wgan-clip", "lsgan", "hinge")
    assert objectives.PENALTIES == ("gp", "lp", "r1", "r2", "dragan", "none")


@pytest.mark.parametrize("kind", ["gp", "r1"])
@pytest.mark.parametrize("scale", [1024.0, "scaler"])
def test_regularizer_removes_the_grad_scale(kind, scale):
    critic = _critic()
    real, fake = _batches()
    if scale == "scaler":
        scale = torch.amp.GradScaler("cpu", init_scale=1024.0)
    results = [
        regularizer(
            kind,
            critic,
            real,
            fake,
            weight=2.0,
            backend="torch",
            grad_scale=grad_scale,
            draws=draw_penalty(kind, real.shape, real.dtype, torch.Generator().manual_seed(0)),
        )
        for grad_scale in (None, scale)
    ]
    (plain, plain_norms), (scaled, scaled_norms) = results
    torch.testing.assert_close(scaled, plain)
    torch.testing.assert_close(scaled_norms, plain_norms)


def test_draw_penalty_draws_what_each_penalty_needs():
    g = torch.Generator().manual_seed(0)
    assert draw_penalty("r1", (4, 3), torch.float32, g) == (None, None)
    assert draw_penalty("none", (4, 3), torch.float32, g) == (None, None)
    gp = draw_penalty("gp", (4, 3), torch.float32, g)
    assert gp.alpha.shape == (4,) and gp.alpha.dtype == torch.float32 and gp.noise is None
    dragan = draw_penalty("dragan", (4, 3), torch.float64, g)
    assert dragan.alpha.dtype == dragan.noise.dtype == torch.float64  # fp64 accumulates in fp64
    assert dragan.noise.shape == (4, 3)
    # bf16 points: fastgp draws alpha in their accumulation dtype, fp32.
    assert draw_penalty("lp", (2, 3), torch.bfloat16, g).alpha.dtype == torch.float32
    with pytest.raises(ValueError, match="`penalty`"):
        draw_penalty("wgan", (4, 3), torch.float32, g)


@pytest.mark.parametrize("kind", ["gp", "dragan"])
def test_regularizer_without_draws_uses_the_global_rng(kind):
    critic = _critic()
    real, fake = _batches()
    torch.manual_seed(11)
    first, _ = regularizer(kind, critic, real, fake, weight=1.0, backend="torch")
    torch.manual_seed(11)
    again, _ = regularizer(kind, critic, real, fake, weight=1.0, backend="torch")
    torch.testing.assert_close(first, again, rtol=0, atol=0)
