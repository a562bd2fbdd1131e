"""Bad arguments raise clear errors that name the argument and what was expected."""

from __future__ import annotations

import pytest
import torch
from helpers import (
    TOLERANCES,
    MLPCritic,
    assert_close_report,
    classic_gradient_penalty,
    make_input,
)
from torch import nn

import fastgp

B, D = 4, 3
# A penalty weight is rejected as non-finite or as negative.
WEIGHT_RULE = r"must be (finite|a finite number >= 0)"


@pytest.fixture
def critic():
    torch.manual_seed(0)
    return MLPCritic(D)


def _pair(shape=(B, D), device="cpu"):
    return make_input(shape, seed=1, device=device), make_input(shape, seed=2, device=device)


@pytest.mark.parametrize(
    ("real", "fake", "error", "pattern"),
    [
        (
            torch.zeros(B, D),
            torch.zeros(B, D + 1),
            ValueError,
            r"`fake` must have the shape of `real`",
        ),
        (torch.zeros(B, D), torch.zeros(B + 1, D), ValueError, r"`fake` must have the shape"),
        (
            torch.zeros(B, D),
            torch.zeros(B, D, dtype=torch.float64),
            TypeError,
            r"`fake` must have the dtype of `real` \(torch.float32\)",
        ),
        (
            torch.zeros(B, D),
            torch.zeros(B, D, device="meta"),
            ValueError,
            r"`fake` must be on the device of `real`",
        ),
        (torch.zeros(0, D), torch.zeros(0, D), ValueError, r"`real` is an empty batch"),
        (torch.zeros(B, 0), torch.zeros(B, 0), ValueError, r"`real` has samples with no elements"),
        (torch.tensor(1.0), torch.tensor(1.0), ValueError, r"`real` must have a batch dimension"),
        (
            torch.zeros(B, D, dtype=torch.int64),
            torch.zeros(B, D, dtype=torch.int64),
            TypeError,
            r"`real` must be a floating-point tensor",
        ),
        (
            torch.zeros(B, D),
            torch.zeros(B, D, dtype=torch.int32),
            TypeError,
            r"`fake` must have the dtype of `real` \(torch.float32\), got torch.int32",
        ),
        (
            "not a tensor",
            torch.zeros(B, D),
            TypeError,
            r"`real` must be a Tensor or a non-empty tuple",
        ),
        ((), torch.zeros(B, D), TypeError, r"`real` must be a Tensor or a non-empty tuple"),
    ],
    ids=[
        "shape",
        "batch",
        "dtype",
        "device",
        "empty_batch",
        "empty_sample",
        "0-dim",
        "int_real",
        "int_fake",
        "not_tensor",
        "empty_tuple",
    ],
)
def test_real_fake_mismatch(critic, real, fake, error, pattern):
    with pytest.raises(error, match=pattern):
        fastgp.gradient_penalty(critic, real, fake, backend="torch")
    if isinstance(real, torch.Tensor) and real.dim() > 0 and real.shape[1:] == fake.shape[1:]:
        with pytest.raises(error, match=pattern):
            fastgp.interpolate(real, fake, 0.5, backend="torch")


def test_tuple_inputs_mismatch():
    critic = lambda a, b: a.sum(1) + b.sum(1)
    reals = (torch.zeros(B, D), torch.zeros(B, 2))
    with pytest.raises(ValueError, match=r"`real` has 2 tensors but `fake` has 1"):
        fastgp.gradient_penalty(critic, reals, (torch.zeros(B, D),), backend="torch")
    with pytest.raises(ValueError, match=r"`real\[1\]` has batch size 3 but `real\[0\]` has 4"):
        fastgp.gradient_penalty(
            critic, (torch.zeros(B, D), torch.zeros(3, 2)), reals, backend="torch"
        )
    with pytest.raises(ValueError, match=r"`fake\[1\]` must have the shape of `real\[1\]`"):
        fastgp.gradient_penalty(
            critic, reals, (torch.zeros(B, D), torch.zeros(B, 5)), backend="torch"
        )


def test_pac_must_divide_batch(critic):
    real, fake = _pair((6, D))
    with pytest.raises(ValueError, match=r"`pac`=4 must divide the batch size B=6"):
        fastgp.gradient_penalty(critic, real, fake, pac=4, backend="torch")
    with pytest.raises(ValueError, match=r"`pac`=4 must divide the batch size B=6"):
        fastgp.penalty_from_grads(real, pac=4, backend="torch")
    for bad in (0, -2, 1.5, True, "2"):
        with pytest.raises(ValueError, match=r"`pac` must be a positive integer"):
            fastgp.penalty_from_grads(real, pac=bad, backend="torch")


@pytest.mark.parametrize(
    "alpha",
    [torch.rand(B + 1), torch.rand(B, 2), torch.rand(B, D), torch.tensor(0.5), torch.rand(2)],
    ids=["long", "2-wide", "full", "0-dim", "groups_without_pac"],
)
def test_bad_alpha_shape(critic, alpha):
    real, fake = _pair()
    with pytest.raises(ValueError, match=r"`alpha` must have shape \(B,\) = \(4,\)"):
        fastgp.gradient_penalty(critic, real, fake, alpha=alpha, backend="torch")
    with pytest.raises(ValueError, match=r"`alpha` must have shape"):
        fastgp.interpolate(real, fake, alpha, backend="torch")


def test_bad_alpha_type_and_device(critic):
    real, fake = _pair()
    with pytest.raises(TypeError, match=r"`alpha` must be None, a float or a Tensor, got list"):
        fastgp.interpolate(real, fake, [0.5] * B, backend="torch")
    with pytest.raises(ValueError, match=r"`alpha` is on meta"):
        fastgp.interpolate(real, fake, torch.rand(B, device="meta"), backend="torch")


@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf")])
def test_weights_must_be_finite_and_non_negative(critic, value):
    real, fake = _pair()
    with pytest.raises(ValueError, match=rf"`lambda_gp` {WEIGHT_RULE}"):
        fastgp.gradient_penalty(critic, real, fake, lambda_gp=value, backend="torch")
    with pytest.raises(ValueError, match=rf"`lambda_gp` {WEIGHT_RULE}"):
        fastgp.penalty_from_grads(real, lambda_gp=value, backend="torch")
    with pytest.raises(ValueError, match=rf"`gamma` {WEIGHT_RULE}"):
        fastgp.r1_penalty(critic, real, gamma=value, backend="torch")
    with pytest.raises(ValueError, match=rf"`lambda_gp` {WEIGHT_RULE}"):
        fastgp.dragan_penalty(critic, real, lambda_gp=value, backend="torch")


@pytest.mark.parametrize("scale", [0.0, -2.0, float("inf")])
def test_bad_grad_scale(scale):
    with pytest.raises(ValueError, match=r"`grad_scale` must be a positive finite scale"):
        fastgp.penalty_from_grads(torch.ones(B, D), grad_scale=scale, backend="torch")


def test_non_float_grads():
    with pytest.raises(TypeError, match=r"`grads` must be a floating-point tensor"):
        fastgp.penalty_from_grads(torch.ones(B, D, dtype=torch.int64), backend="torch")
    with pytest.raises(TypeError, match=r"`grads\[1\]` has dtype torch.float64"):
        fastgp.penalty_from_grads(
            (torch.ones(B, D), torch.ones(B, 2, dtype=torch.float64)), backend="torch"
        )
    with pytest.raises(TypeError, match=r"`grads` must be a Tensor or a non-empty tuple"):
        fastgp.penalty_from_grads([], backend="torch")


def test_critic_that_ignores_its_input(backend, device):
    real, fake = _pair(device=device)
    weight = nn.Parameter(torch.ones((), device=device))
    # Depends on a parameter but not on x: the output requires grad, the input gets none.
    ignores_input = lambda x: weight * torch.ones(x.shape[0], device=device)
    with pytest.raises(ValueError, match=r"`critic` output does not depend on the interpolates"):
        fastgp.gradient_penalty(ignores_input, real, fake, backend=backend)
    # Nothing requires grad at all.
    constant = lambda x: torch.ones(x.shape[0], device=device)
    with pytest.raises(ValueError, match=r"`critic` output does not depend on its input"):
        fastgp.gradient_penalty(constant, real, fake, backend=backend)
    with pytest.raises(ValueError, match=r"`critic` output does not depend on `real`"):
        fastgp.r1_penalty(ignores_input, real, backend=backend)


def test_critic_that_ignores_one_tuple_input(backend, device):
    reals = (make_input((B, D), seed=1, device=device), make_input((B, 2), seed=2, device=device))
    fakes = (make_input((B, D), seed=3, device=device), make_input((B, 2), seed=4, device=device))
    uses_first_only = lambda a, b: a.pow(2).sum(dim=1)
    with pytest.raises(ValueError, match=r"does not depend on input 1 of the interpolates"):
        fastgp.gradient_penalty(uses_first_only, reals, fakes, backend=backend)


def test_critic_must_return_a_tensor():
    real, fake = _pair()
    with pytest.raises(TypeError, match=r"`critic` must return a Tensor, got float"):
        fastgp.gradient_penalty(lambda x: 1.0, real, fake, backend="torch")


def test_unknown_backend(critic):
    real, fake = _pair()
    pattern = r"backend must be one of 'auto', 'triton', 'cpp', 'torch'; got 'cuda'"
    with pytest.raises(ValueError, match=pattern):
        fastgp.gradient_penalty(critic, real, fake, backend="cuda")
    with pytest.raises(ValueError, match=r"got 'Torch'"):
        fastgp.interpolate(real, fake, 0.5, backend="Torch")
    with pytest.raises(ValueError, match=r"got 'fast'"):
        fastgp.penalty_from_grads(real, backend="fast")


@pytest.mark.parametrize(
    ("name", "value"),
    [("lambda_gp", None), ("lambda_gp", "ten"), ("center", None), ("grad_scale", "big")],
)
def test_hyperparameters_of_the_wrong_type_name_the_argument(name, value):
    with pytest.raises((TypeError, ValueError), match=rf"`{name}`"):
        fastgp.penalty_from_grads(torch.ones(B, D), backend="torch", **{name: value})


@pytest.mark.parametrize("center", [float("nan"), float("inf")])
def test_center_must_be_finite(critic, center):
    real, fake = _pair()
    with pytest.raises(ValueError, match=r"`center` must be finite"):
        fastgp.penalty_from_grads(real, center=center, backend="torch")
    with pytest.raises(ValueError, match=r"`center` must be finite"):
        fastgp.gradient_penalty(critic, real, fake, center=center, backend="torch")


def test_inference_mode_is_explained(critic):
    """Autograd is off under inference_mode: say so instead of blaming the critic."""
    real, fake = _pair()
    with torch.inference_mode(), pytest.raises(RuntimeError, match=r"inference_mode"):
        fastgp.gradient_penalty(critic, real, fake, backend="torch")


def test_no_grad_context_still_computes_the_penalty(backend, device, critic):
    """Under torch.no_grad (e.g. for logging) the value is computed, without a graph."""
    critic = critic.to(device)
    real, fake = _pair(device=device)
    with torch.no_grad():
        penalty = fastgp.gradient_penalty(critic, real, fake, alpha=0.3, backend=backend)
    alpha = torch.full((B,), 0.3, device=device)
    expected = classic_gradient_penalty(critic, real, fake, alpha).detach()
    assert not penalty.requires_grad
    assert_close_report(penalty, expected, *TOLERANCES[torch.float32], what="penalty")
