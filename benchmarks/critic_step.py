"""Whole WGAN-GP critic steps: W loss + gradient penalty, backward, Adam step (``fastgp
train``'s Adam: fused eagerly, its update traced into the graph when compiled).

Versions of the same step, on identical copies of one critic and the same inputs:

- ``eager``: the penalty every public WGAN-GP implementation writes (README "Why"):
  interpolate, ``autograd.grad(create_graph=True)``, ``norm(2, dim=1)``, ``((n - 1)**2).mean()``;
  ``loss.backward()``, then the optimiser's ``step()``.
- ``fastgp``: ``fastgp.gradient_penalty(critic, real, fake, alpha=alpha)``, eager.
- ``compile``: the ``eager`` step compiled whole by ``fastgp.compile_step``: the critic, its
  double backward, the penalty and Adam's update (``fastgp.train.gan.optimizers
  .adam_update_``, as ``fastgp train --compile`` runs it: ``Optimizer.step`` breaks graphs on
  purpose) in one graph.
- ``fastgp_compile``: the ``fastgp`` step compiled the same way (``backend="auto"``, which
  inside torch.compile picks ``fastgp.backends.AUTO_WHEN_COMPILED``'s choice).
- ``fastgp_compile_kernels``: the same with fastgp's kernels forced (the backend the suite
  runs), the other side of that choice.
- ``fastgp_compile_cudagraphs`` (GPU only): ``fastgp_compile`` with ``mode="reduce-overhead"``.

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
from fastgp.train.gan.optimizers import AdamTensors, InGraphAdam, adam_update_, build_optimizer
from fastgp.train.models import build_models

STEP_PROVIDERS = ("eager", "fastgp", "compile", "fastgp_compile", "fastgp_compile_kernels")
# Provider -> the torch.compile mode of its compiled step. The CUDA-graph one exists for
# the GPU benchmark only (benchmarks/gpu.py): on CPU "reduce-overhead" is the default mode.
COMPILE_MODES = {
    "compile": None,
    "fastgp_compile": None,
    "fastgp_compile_kernels": None,
    "fastgp_compile_cudagraphs": "reduce-overhead",
}


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


# The toy MLP critic (2 -> nf -> nf -> nf -> 1) at the default trainer's width 128 and at
# 512 (issue 4's), DCGAN 28x28 at B=64 and B=256, and a DCGAN 64x64 RGB critic.
STEP_CASES = (
    StepCase("mlp", 256, (2,), 128),  # the critic of the default `fastgp train`
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
    if provider in ("eager", "compile"):
        return classic_penalty
    if provider not in (*STEP_PROVIDERS, *COMPILE_MODES):
        raise ValueError(f"provider must be one of {STEP_PROVIDERS}, got {provider!r}")
    if provider.startswith("fastgp"):
        chosen = backend if provider in ("fastgp", "fastgp_compile_kernels") else "auto"
        return lambda critic, real, fake, alpha: fastgp.gradient_penalty(
            critic, real, fake, alpha=alpha, lambda_gp=LAMBDA_GP, backend=chosen
        )
    raise ValueError(f"provider must be one of {STEP_PROVIDERS}, got {provider!r}")


def new_case() -> None:
    """Forget compiled steps of earlier cases (dynamo caches at most 8 graphs a function)."""
    torch._dynamo.reset()


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
    this callable, so every provider starts from the same weights. Every provider steps
    ``fastgp train``'s Adam (``optimizers.build_optimizer``: PyTorch's, fused), eagerly with
    ``step()`` or, compiled, with its update in the graph, as the trainer does.
    """
    net = copy.deepcopy(critic)
    opt = build_optimizer("adam", net.parameters(), 1e-4, (0.0, 0.9))
    gp = penalty_fn(provider, backend)
    n = len(inputs)

    def loss_of(real: Tensor, fake: Tensor, alpha: Tensor) -> Tensor:
        return net(fake).mean() - net(real).mean() + gp(net, real, fake, alpha)

    if provider not in COMPILE_MODES:

        def run(i: int) -> object:
            opt.zero_grad(set_to_none=True)
            loss = loss_of(*inputs[i % n])
            loss.backward()
            opt.step()
            return loss.detach()

        return run

    params, adam = list(net.parameters()), InGraphAdam(opt)

    def whole_step(real: Tensor, fake: Tensor, alpha: Tensor, tensors: AdamTensors) -> Tensor:
        loss = loss_of(real, fake, alpha)
        adam_update_(params, torch.autograd.grad(loss, params), tensors)
        return loss.detach()

    # All compiled providers share this function's code object, hence dynamo's cache for
    # it: callers reset dynamo between cases (``new_case``).
    compiled = fastgp.compile_step(whole_step, mode=COMPILE_MODES[provider])

    def run_compiled(i: int) -> object:
        return compiled(*inputs[i % n], adam.tensors())

    return run_compiled
