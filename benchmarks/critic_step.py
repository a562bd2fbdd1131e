"""Whole WGAN-GP critic steps: W loss + gradient penalty, backward, Adam step (``fastgp
train``'s Adam, stepped as ``fastgp train --compile`` steps it).

Versions of the same step, on identical copies of one critic and the same inputs:

- ``eager``: the penalty every public WGAN-GP implementation writes (README "Why"):
  interpolate, ``autograd.grad(create_graph=True)``, ``norm(2, dim=1)``, ``((n - 1)**2).mean()``;
  ``loss.backward()``, then the optimiser's ``step()``.
- ``fastgp``: ``fastgp.gradient_penalty(critic, real, fake, alpha=alpha)``, eager.
- ``compile``: the ``eager`` step compiled whole by ``fastgp.compile_step``: the critic, its
  double backward and the penalty in one graph, then the optimiser's ``step()`` (which breaks
  graphs on purpose), as ``fastgp train --compile`` runs it.
- ``fastgp_compile``: the ``fastgp`` step compiled the same way (``backend="auto"``, which
  inside torch.compile picks ``fastgp.backends.AUTO_WHEN_COMPILED``'s choice).
- ``fastgp_compile_kernels`` and ``fastgp_compile_reference``: the same with each side of
  that choice forced: fastgp's fused kernels for the device (``fastgp.backends.AUTO``: cpp on
  CPU, triton on CUDA) as opaque ops in the graph, or the reference formula that Inductor
  fuses with its neighbours. One of them is the graph ``fastgp_compile`` runs, so their
  difference beside it also shows the spread between identical steps.
- ``fastgp_compile_cudagraphs`` (GPU only): ``fastgp_compile`` with ``mode="reduce-overhead"``
  and Adam's update inside the graph (``fastgp.train.gan.optimizers.adam_update_``, as
  ``fastgp train --compile reduce-overhead`` runs it: ``optimizers.IN_GRAPH_MODES``).

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
from fastgp.backends import AUTO, AUTO_WHEN_COMPILED
from fastgp.train.gan.optimizers import (
    IN_GRAPH_MODES,
    AdamTensors,
    InGraphAdam,
    adam_update_,
    build_optimizer,
)
from fastgp.train.models import build_models

STEP_PROVIDERS = (
    "eager", "fastgp", "compile", "fastgp_compile", "fastgp_compile_kernels",
    "fastgp_compile_reference",
)  # fmt: skip
# Provider -> the torch.compile mode of its compiled step. The CUDA-graph one exists for
# the GPU benchmark only (benchmarks/gpu.py): on CPU "reduce-overhead" is the default mode.
COMPILE_MODES = {
    "compile": None,
    "fastgp_compile": None,
    "fastgp_compile_kernels": None,
    "fastgp_compile_reference": None,
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


def provider_backend(provider: str, backend: str, device: torch.device) -> str | None:
    """The fastgp backend ``provider``'s penalty asks for: ``backend`` (the run's) for
    ``fastgp``, the device's fused kernels or the reference for the forced compiled ones,
    "auto" for ``fastgp_compile``; None for the seed formula's providers."""
    if provider not in (*STEP_PROVIDERS, *COMPILE_MODES):
        raise ValueError(f"provider must be one of {STEP_PROVIDERS}, got {provider!r}")
    if provider in ("eager", "compile"):
        return None
    if provider == "fastgp":
        return backend
    if provider == "fastgp_compile_kernels":
        return AUTO[device.type]
    if provider == "fastgp_compile_reference":
        return "torch"
    return "auto"


def backend_ran(provider: str, resolved: str, device: torch.device) -> str | None:
    """The backend ``provider``'s penalty runs (for the rows): ``resolved`` (the run's
    ``--backend`` resolved) for ``fastgp``, ``AUTO_WHEN_COMPILED``'s pick for an "auto"
    inside a compiled step, the forced one otherwise."""
    asked = provider_backend(provider, resolved, device)
    if asked == "auto":
        return AUTO_WHEN_COMPILED.get(device.type)
    return asked


def penalty_fn(
    provider: str, backend: str, device: torch.device
) -> Callable[[nn.Module, Tensor, Tensor, Tensor], Tensor]:
    """(critic, real, fake, alpha) -> penalty for ``provider`` on ``device``."""
    chosen = provider_backend(provider, backend, device)
    if chosen is None:
        return classic_penalty
    return lambda critic, real, fake, alpha: fastgp.gradient_penalty(
        critic, real, fake, alpha=alpha, lambda_gp=LAMBDA_GP, backend=chosen
    )


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
    ``fastgp train``'s Adam (``optimizers.build_optimizer``: PyTorch's, fused) as the trainer
    does: with ``step()`` after the (compiled) backward, or, in ``IN_GRAPH_MODES``, with its
    update inside the graph.
    """
    net = copy.deepcopy(critic)
    opt = build_optimizer("adam", net.parameters(), 1e-4, (0.0, 0.9))
    gp = penalty_fn(provider, backend, inputs[0][0].device)
    n = len(inputs)

    def loss_of(real: Tensor, fake: Tensor, alpha: Tensor) -> Tensor:
        return net(fake).mean() - net(real).mean() + gp(net, real, fake, alpha)

    def loss_and_backward(real: Tensor, fake: Tensor, alpha: Tensor) -> Tensor:
        loss = loss_of(real, fake, alpha)
        loss.backward()
        return loss.detach()

    mode = COMPILE_MODES.get(provider, "off")
    if mode not in IN_GRAPH_MODES:
        if provider in COMPILE_MODES:
            # All compiled providers share this function's code object, hence dynamo's
            # cache for it: callers reset dynamo between cases (``new_case``).
            loss_and_backward = fastgp.compile_step(loss_and_backward, mode=mode)

        def run(i: int) -> object:
            opt.zero_grad(set_to_none=True)
            loss = loss_and_backward(*inputs[i % n])
            opt.step()
            return loss

        return run

    params, adam = list(net.parameters()), InGraphAdam(opt)

    def whole_step(real: Tensor, fake: Tensor, alpha: Tensor, tensors: AdamTensors) -> Tensor:
        loss = loss_of(real, fake, alpha)
        adam_update_(params, torch.autograd.grad(loss, params), tensors)
        return loss.detach()

    compiled = fastgp.compile_step(whole_step, mode=mode)

    def run_compiled(i: int) -> object:
        return compiled(*inputs[i % n], adam.tensors())

    return run_compiled
