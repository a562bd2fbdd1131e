"""Whole WGAN-GP critic steps: W loss + gradient penalty, backward, Adam step.

Three versions of the same step, on identical copies of one critic and the same inputs:

- ``eager``: the penalty every public WGAN-GP implementation writes (README "Why"):
  interpolate, ``autograd.grad(create_graph=True)``, ``norm(2, dim=1)``, ``((n - 1)**2).mean()``.
- ``compile``: the same, with the interpolation and the norm + penalty (functions of the
  inputs and of the gradients) under ``torch.compile``; the critic's double backward itself
  cannot be compiled (torch.compile refuses double backward through aot_autograd).
- ``fastgp``: ``fastgp.gradient_penalty(critic, real, fake, alpha=alpha)``.

The critics come from ``fastgp.train.models.build_models`` (the trainer's models).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

import fastgp
from benchmarks.providers import LAMBDA_GP, eager_interpolate, eager_penalty
from fastgp.train.models import build_models

STEP_PROVIDERS = ("eager", "compile", "fastgp")


@dataclass(frozen=True)
class StepCase:
    """One critic step: ``arch`` critic (``nf`` width) on a batch of ``batch`` samples."""

    arch: str
    batch: int
    sample_shape: tuple[int, ...]
    nf: int

    @property
    def name(self) -> str:
        return f"{self.arch}-nf{self.nf}-B{self.batch}"

    @property
    def elements(self) -> int:
        n = self.batch
        for d in self.sample_shape:
            n *= d
        return n


# Issue 4: the toy MLP (2 -> 512 -> 512 -> 512 -> 1), DCGAN 28x28 at B=64 and B=256, and a
# DCGAN 64x64 RGB critic.
STEP_CASES = (
    StepCase("mlp", 256, (2,), 512),
    StepCase("dcgan28", 64, (1, 28, 28), 64),
    StepCase("dcgan28", 256, (1, 28, 28), 64),
    StepCase("dcgan64", 64, (3, 64, 64), 64),
)
# The same architectures, small enough for the smoke test and CI's quick run.
QUICK_STEP_CASES = (
    StepCase("mlp", 64, (2,), 64),
    StepCase("dcgan28", 16, (1, 28, 28), 16),
    StepCase("dcgan64", 8, (3, 64, 64), 8),
)


def build_critic(case: StepCase, device: torch.device, seed: int = 0) -> nn.Module:
    """The trainer's critic for ``case`` (float32, on ``device``), seeded."""
    torch.manual_seed(seed)
    _, critic = build_models(case.arch, case.sample_shape, nf=case.nf)
    return critic.to(device)


def classic_penalty(
    critic: nn.Module,
    real: Tensor,
    fake: Tensor,
    alpha: Tensor,
    interpolate: Callable[[Tensor, Tensor, Tensor], Tensor] = eager_interpolate,
    penalty: Callable[[Tensor], Tensor] = eager_penalty,
) -> Tensor:
    """The usual WGAN-GP penalty; ``interpolate`` and ``penalty`` may be compiled versions."""
    x_hat = interpolate(real, fake, alpha).requires_grad_(True)
    out = critic(x_hat)
    grads = torch.autograd.grad(out, x_hat, torch.ones_like(out), create_graph=True)[0]
    return penalty(grads)


def penalty_fn(
    provider: str, backend: str
) -> Callable[[nn.Module, Tensor, Tensor, Tensor], Tensor]:
    """(critic, real, fake, alpha) -> penalty for ``provider``."""
    if provider == "eager":
        return classic_penalty
    if provider == "compile":
        torch._dynamo.reset()
        interp = torch.compile(eager_interpolate, dynamic=False)
        pen = torch.compile(eager_penalty, dynamic=False)
        return lambda critic, real, fake, alpha: classic_penalty(
            critic, real, fake, alpha, interp, pen
        )
    if provider == "fastgp":
        return lambda critic, real, fake, alpha: fastgp.gradient_penalty(
            critic, real, fake, alpha=alpha, lambda_gp=LAMBDA_GP, backend=backend
        )
    raise ValueError(f"provider must be one of {STEP_PROVIDERS}, got {provider!r}")


def step_inputs(
    case: StepCase, device: torch.device, count: int, seed: int = 1
) -> list[tuple[Tensor, Tensor, Tensor]]:
    """``count`` (real, fake, alpha) triples: images in [-1, 1], alpha (B,) U[0, 1)."""
    gen = torch.Generator().manual_seed(seed)
    shape = (case.batch, *case.sample_shape)
    return [
        (
            (torch.rand(shape, generator=gen) * 2 - 1).to(device),
            (torch.rand(shape, generator=gen) * 2 - 1).to(device),
            torch.rand(case.batch, generator=gen).to(device),
        )
        for _ in range(count)
    ]


def step_callable(
    case: StepCase,
    provider: str,
    critic: nn.Module,
    inputs: list[tuple[Tensor, Tensor, Tensor]],
    backend: str,
) -> Callable[[int], object]:
    """``fn(i)``: one critic step of ``provider`` on a private copy of ``critic``.

    The copy and its Adam state (lr 1e-4, betas (0, 0.9), as in the WGAN-GP paper) belong to
    this callable, so every provider starts from the same weights.
    """
    net = copy.deepcopy(critic)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, betas=(0.0, 0.9))
    gp = penalty_fn(provider, backend)
    n = len(inputs)

    def run(i: int) -> object:
        real, fake, alpha = inputs[i % n]
        opt.zero_grad(set_to_none=True)
        loss = net(fake).mean() - net(real).mean() + gp(net, real, fake, alpha)
        loss.backward()
        opt.step()
        return loss

    return run
