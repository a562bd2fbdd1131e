"""The competitors of every microbenchmark, each as a timed callable over rotated inputs.

- ``eager``: the formulas public WGAN-GP code copies (``alpha * real + (1 - alpha) * fake``;
  ``grads.view(B, -1).norm(2, dim=1)`` then ``lambda * ((norms - 1) ** 2).mean()``).
- ``compile``: the same Python functions under ``torch.compile`` (``dynamic=False``: one
  static-shape graph per case, compiled during warm-up; the dynamo cache is reset before
  each case so guard checks of earlier shapes do not slow it down).
- ``fastgp``: the public ``fastgp.interpolate`` / ``fastgp.penalty_from_grads`` with the
  backend the run asked for (``auto``: C++ on CPU, Triton on CUDA).
- ``copy``: ``dst.copy_(src)`` of the case's counted bytes: the speed of light.
- ``one_op``: one built-in PyTorch operator with the same memory traffic and a single autograd
  node, called the same way (``torch.lerp(fake, real, alpha)`` for the interpolation;
  ``torch.linalg.vector_norm(g)``, one norm over the whole tensor, for the penalty). It is
  not a competitor (the norm computes a different quantity): it is the floor of any
  implementation that is one operator call from Python, so ``eager / one_op`` bounds the
  speed-up over eager that fusing can buy at sizes where fixed per-call costs dominate.

alpha is drawn once per input set for every provider, so no provider pays for ``torch.rand``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

import fastgp
from benchmarks.cases import OpCase, counted_bytes

PROVIDERS = ("eager", "compile", "fastgp", "copy", "one_op")
LAMBDA_GP = 10.0
MAX_INPUT_SETS = 256


def eager_interpolate(real: Tensor, fake: Tensor, alpha: Tensor) -> Tensor:
    """The usual per-sample interpolation; alpha: (B,) broadcast over the sample dims."""
    a = alpha.view(-1, *([1] * (real.dim() - 1)))
    return a * real + (1 - a) * fake


def eager_penalty(grads: Tensor) -> Tensor:
    """The usual WGAN-GP penalty from gradients (B, *): 0-dim, ``LAMBDA_GP`` weighted."""
    norms = grads.view(grads.size(0), -1).norm(2, dim=1)
    return LAMBDA_GP * ((norms - 1) ** 2).mean()


def one_op_interpolate(real: Tensor, fake: Tensor, alpha: Tensor) -> Tensor:
    """The interpolation as one ATen operator (``lerp``, one autograd node for both inputs)."""
    return torch.lerp(fake, real, alpha.view(-1, *([1] * (real.dim() - 1))))


def one_op_norm(grads: Tensor) -> Tensor:
    """One norm over all of ``grads``: the penalty's bytes (read g; read g, write dg) in one
    ATen operator with one autograd node. Not the penalty: a cost floor."""
    return torch.linalg.vector_norm(grads)


def fastgp_interpolate(backend: str) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    return lambda real, fake, alpha: fastgp.interpolate(real, fake, alpha, backend=backend)


def fastgp_penalty(backend: str) -> Callable[[Tensor], Tensor]:
    return lambda grads: fastgp.penalty_from_grads(grads, lambda_gp=LAMBDA_GP, backend=backend)


def compiled(fn: Callable) -> Callable:
    """``torch.compile(fn, dynamic=False)`` after clearing dynamo's caches (see module doc)."""
    torch._dynamo.reset()
    return torch.compile(fn, dynamic=False)


def input_sets(
    case: OpCase, dtype: torch.dtype, device: torch.device, rotate_bytes: int, seed: int = 0
) -> list[dict[str, Tensor]]:
    """Enough independent input sets that cycling through them touches ``rotate_bytes``.

    Each set holds ``real``, ``fake`` (in [-1, 1]), ``alpha`` (B,) fp32 (fp64 for fp64),
    ``grad_out`` (the upstream gradient of x_hat) and ``grads`` (a critic-like gradient).
    Only the tensors the case reads are created; in ``fwdbwd`` mode real, fake and grads
    are leaves that require grad.
    """
    per_set = counted_bytes(case, dtype.itemsize)
    count = max(1, min(MAX_INPUT_SETS, math.ceil(rotate_bytes / per_set)))
    gen = torch.Generator().manual_seed(seed)
    acc = torch.float64 if dtype == torch.float64 else torch.float32

    def rand(shape: tuple[int, ...], dt: torch.dtype, scale: float, shift: float) -> Tensor:
        x = torch.rand(shape, generator=gen, dtype=acc) * scale + shift
        return x.to(device=device, dtype=dt)

    sets = []
    for _ in range(count):
        s: dict[str, Tensor] = {}
        if case.op == "interpolate":
            s["real"] = rand(case.shape, dtype, 2.0, -1.0)
            s["fake"] = rand(case.shape, dtype, 2.0, -1.0)
            s["alpha"] = rand((case.batch,), acc, 1.0, 0.0)
            if case.mode == "fwdbwd":
                s["grad_out"] = rand(case.shape, dtype, 2.0, -1.0)
        else:
            # Gradient entries of a size that gives per-sample norms around 1.
            s["grads"] = rand(case.shape, dtype, 2.0 * math.sqrt(3.0 / case.per_sample), 0.0)
            s["grads"] -= math.sqrt(3.0 / case.per_sample)
        if case.mode == "fwdbwd":
            for key in ("real", "fake", "grads"):
                if key in s:
                    s[key].requires_grad_()
        sets.append(s)
    return sets


def operation(op: str, provider: str, backend: str) -> Callable:
    """The function ``provider`` runs for ``op``: (real, fake, alpha) -> x_hat or g -> P."""
    eager = {"interpolate": eager_interpolate, "penalty": eager_penalty}[op]
    if provider == "eager":
        return eager
    if provider == "compile":
        return compiled(eager)
    if provider == "fastgp":
        return fastgp_interpolate(backend) if op == "interpolate" else fastgp_penalty(backend)
    if provider == "one_op":
        return one_op_interpolate if op == "interpolate" else one_op_norm
    raise ValueError(f"provider must be one of {PROVIDERS}, got {provider!r}")


def op_callable(
    case: OpCase, provider: str, sets: list[dict[str, Tensor]], backend: str
) -> Callable[[int], object]:
    """``fn(i)``: one call of ``provider`` on ``case`` using input set ``i % len(sets)``."""
    if provider == "copy":
        return copy_callable(case, sets)
    fn = operation(case.op, provider, backend)
    if case.op == "interpolate":
        return interpolate_callable(case, fn, sets)
    return penalty_callable(case, fn, sets)


def interpolate_callable(
    case: OpCase, fn: Callable[[Tensor, Tensor, Tensor], Tensor], sets: list[dict[str, Tensor]]
) -> Callable[[int], object]:
    n = len(sets)
    if case.mode == "fwd":

        def run(i: int) -> object:
            s = sets[i % n]
            with torch.no_grad():
                return fn(s["real"], s["fake"], s["alpha"])

        return run

    def run_bwd(i: int) -> object:
        s = sets[i % n]
        out = fn(s["real"], s["fake"], s["alpha"])
        # autograd.grad rather than backward(): no accumulation into .grad between calls.
        return torch.autograd.grad(out, (s["real"], s["fake"]), s["grad_out"])

    return run_bwd


def penalty_callable(
    case: OpCase, fn: Callable[[Tensor], Tensor], sets: list[dict[str, Tensor]]
) -> Callable[[int], object]:
    n = len(sets)
    if case.mode == "fwd":

        def run(i: int) -> object:
            with torch.no_grad():
                return fn(sets[i % n]["grads"])

        return run

    def run_bwd(i: int) -> object:
        g = sets[i % n]["grads"]
        return torch.autograd.grad(fn(g), g)

    return run_bwd


def copy_callable(case: OpCase, sets: list[dict[str, Tensor]]) -> Callable[[int], object]:
    """``dst.copy_(src)`` (fp32) moving the case's counted bytes, rotated like its inputs."""
    first = sets[0]["real" if case.op == "interpolate" else "grads"]
    device = first.device
    elements = max(1, counted_bytes(case, first.element_size()) // (2 * 4))
    pairs = [
        (torch.rand(elements, device=device), torch.empty(elements, device=device)) for _ in sets
    ]
    n = len(pairs)

    def run(i: int) -> object:
        src, dst = pairs[i % n]
        return dst.copy_(src)

    return run
