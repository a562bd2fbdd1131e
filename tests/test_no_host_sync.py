"""A penalty call never reads a tensor on the host (issue: one sync per call on CUDA).

On CUDA, ``Tensor.item()``, ``float(tensor)`` or ``GradScaler.get_scale()`` wait for the GPU
and make a CUDA-graph capture of the step impossible. The test forbids them during fwd+bwd
of every penalty, with a ``GradScaler`` as ``grad_scale``, on every backend (on CPU tensors
the same Python calls are what would synchronise on CUDA; ``FASTGP_TEST_DEVICE=cuda`` runs
it on the GPU).
"""

from __future__ import annotations

import pytest
import torch
from helpers import MLPCritic, make_input

import fastgp


@pytest.fixture
def no_host_reads(monkeypatch: pytest.MonkeyPatch):
    """Make every host read of a tensor (and GradScaler.get_scale) raise inside the block."""
    active = []

    def forbid(name, original):
        def guarded(*args, **kwargs):
            if active:
                raise AssertionError(f"{name} was called: a host synchronisation on CUDA")
            return original(*args, **kwargs)

        return guarded

    for name in ("item", "tolist", "__float__", "__bool__", "__int__"):
        monkeypatch.setattr(
            torch.Tensor, name, forbid(f"Tensor.{name}", getattr(torch.Tensor, name))
        )
    monkeypatch.setattr(
        torch.amp.GradScaler,
        "get_scale",
        forbid("GradScaler.get_scale", torch.amp.GradScaler.get_scale),
    )
    return active


@pytest.mark.parametrize("penalty", ["gradient_penalty", "r1_penalty", "dragan_penalty"])
def test_penalty_with_a_grad_scaler_reads_nothing_on_the_host(
    backend, device, penalty, no_host_reads
):
    torch.manual_seed(0)
    critic = MLPCritic(6).to(device)
    real = make_input((5, 6), seed=1, device=device)
    fake = make_input((5, 6), seed=2, device=device)
    scaler = torch.amp.GradScaler(device.type, init_scale=2.0**10)
    scaler.scale(torch.ones((), device=device))  # the scale exists before the guarded block
    args = (real, fake) if penalty == "gradient_penalty" else (real,)
    no_host_reads.append(True)
    value = getattr(fastgp, penalty)(critic, *args, grad_scale=scaler, backend=backend)
    value.backward()
    no_host_reads.clear()
    assert torch.isfinite(value) and value > 0
    first_weight = next(critic.parameters())
    assert first_weight.grad is not None and first_weight.grad.abs().sum() > 0
