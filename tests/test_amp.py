"""Mixed precision: GradScaler scales are removed inside the norm; autocast works (on the
backend's device: CPU, or CUDA with FASTGP_TEST_DEVICE=cuda)."""

from __future__ import annotations

import pytest
import torch
from helpers import (
    TOLERANCES,
    MLPCritic,
    assert_close_report,
    assert_no_worse_than_reference,
    classic_gradient_penalty,
    make_input,
    param_grads,
)

import fastgp

F32 = TOLERANCES[torch.float32]


def _scaler(device: torch.device, scale: float = 2.0**12) -> torch.amp.GradScaler:
    return torch.amp.GradScaler(device.type, init_scale=scale)


def _setup(device, batch=5, dim=6, seed=0):
    torch.manual_seed(seed)
    critic = MLPCritic(dim).to(device)
    real = make_input((batch, dim), seed=1, device=device)
    fake = make_input((batch, dim), seed=2, device=device)
    alpha = torch.rand(batch, generator=torch.Generator().manual_seed(3)).to(device)
    return critic, real, fake, alpha


def _run(critic, compute):
    critic.zero_grad(set_to_none=True)
    penalty = compute()
    penalty.backward()
    return penalty.detach(), param_grads(critic)


def test_grad_scaler_is_unscaled(backend, device):
    critic, real, fake, alpha = _setup(device)
    scaler = _scaler(device)
    scaled = _run(
        critic,
        lambda: fastgp.gradient_penalty(
            critic, real, fake, alpha=alpha, grad_scale=scaler, backend=backend
        ),
    )
    plain = _run(
        critic, lambda: fastgp.gradient_penalty(critic, real, fake, alpha=alpha, backend=backend)
    )
    assert_close_report(scaled[0], plain[0], *F32, what="penalty with a GradScaler")
    for i, (a, b) in enumerate(zip(scaled[1], plain[1], strict=True)):
        assert_close_report(a, b, 10 * F32[0], 10 * F32[1], what=f"parameter {i} grad")


def test_grad_scaler_training_step(backend, device):
    """The usual AMP step: scale the loss, backward, unscale: the same gradients as fp32."""
    critic, real, fake, alpha = _setup(device, seed=1)
    scaler = _scaler(device, 2.0**10)
    optimizer = torch.optim.SGD(critic.parameters(), lr=0.1)
    optimizer.zero_grad(set_to_none=True)
    penalty = fastgp.gradient_penalty(
        critic, real, fake, alpha=alpha, grad_scale=scaler, backend=backend
    )
    scaler.scale(penalty).backward()
    scaler.unscale_(optimizer)
    got = param_grads(critic)
    expected = _run(critic, lambda: classic_gradient_penalty(critic, real, fake, alpha, 10.0))
    assert_close_report(penalty.detach(), expected[0], *F32, what="penalty")
    for i, (a, b) in enumerate(zip(got, expected[1], strict=True)):
        assert_close_report(a, b, 10 * F32[0], 10 * F32[1], what=f"parameter {i} grad")


def test_scale_rescues_fp16_gradients_that_would_underflow(backend, device):
    """fp16 gradients ~1e-7 are subnormal and lose most bits; scaled by 2**16 they keep them."""
    exact = make_input((4, 64), torch.float64, seed=4, scale=1e-7, device=device)
    exact_norms = exact.norm(dim=1)
    scaled = (exact * 2.0**16).half()
    _, norms = fastgp.penalty_from_grads(
        scaled, center=0.0, grad_scale=_scaler(device, 2.0**16), return_norms=True, backend=backend
    )
    assert_close_report(norms, exact_norms.float(), 0, 2e-3, what="norms of scaled fp16")
    _, unscaled_norms = fastgp.penalty_from_grads(
        exact.half(), center=0.0, return_norms=True, backend=backend
    )
    relative = ((unscaled_norms.double() - exact_norms).abs() / exact_norms).max()
    assert relative > 2e-2, "the scenario must actually lose precision without the scale"


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16), ids=str)
def test_autocast(backend, device, dtype):
    critic, real, fake, alpha = _setup(device, batch=6, dim=8, seed=2)
    with torch.autocast(device.type, dtype=dtype):
        fast = _run(
            critic,
            lambda: fastgp.gradient_penalty(
                critic, real, fake, alpha=alpha, grad_scale=_scaler(device), backend=backend
            ),
        )
        same_precision = _run(
            critic, lambda: classic_gradient_penalty(critic, real, fake, alpha, 10.0)
        )
    assert fast[0].dtype == torch.float32
    critic64 = MLPCritic(8).to(device, torch.float64)
    critic64.load_state_dict(critic.state_dict())
    exact = _run(
        critic64,
        lambda: classic_gradient_penalty(critic64, real.double(), fake.double(), alpha, 10.0),
    )
    # The flash-attention rule: no worse than twice eager PyTorch under the same autocast.
    assert_no_worse_than_reference(fast[0], same_precision[0], exact[0], what="penalty")
    for i, (a, b, c) in enumerate(zip(fast[1], same_precision[1], exact[1], strict=True)):
        assert_no_worse_than_reference(
            a.to(dtype), b.to(dtype), c, what=f"parameter {i} grad (as {dtype})"
        )
