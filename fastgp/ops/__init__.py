"""The op layer: the fused ops with their autograd, on a resolved backend.

``interpolate`` and ``penalty`` are what the public functions call once their arguments are
normalised and the backend is resolved (``fastgp.backends.resolve_backend``):

* ``"torch"``: the pure PyTorch reference (``fastgp.backends.reference``), after the op
  contract's checks;
* ``"cpp"`` and ``"triton"``: the ``torch.ops`` operators of ``fastgp.ops.library``
  (``fastgp`` for CPU/C++ and CUDA/Triton, ``fastgp_interpret`` for Triton's CPU
  interpreter), whose kernels check their own arguments, with the autograd formulas of
  ``fastgp.ops.autograd``.

One exception, measured: on CPU, outside ``torch.compile`` and ``torch.func``, the two ops
run through ``torch.ops.fastgp.penalty`` and ``torch.ops.fastgp.interpolate_autograd``,
whose autograd nodes are C++ (``csrc/fastgp_ops.cpp``), because a Python node costs more
than the kernels at the sizes toy critics and MNIST use (1 thread, ``torch.autograd.grad``
included; eager PyTorch's formula in brackets):

* penalty fwd+bwd, 1x2 gradients: ``PenaltyFunction`` 94–107 µs, C++ node 34–48 µs (eager
  about 100 µs);
* interpolate fwd+bwd, 16x1x28x28 (``python -m benchmarks.run --threads 1 --steps none
  --sizes 16x1x28x28 --ops interpolate --modes fwdbwd --providers eager,fastgp``): through
  ``InterpolateFunction`` 0.59–0.66× eager, through the C++ node 1.14× eager in two runs
  (0.073 and 0.153 ms against eager's 0.083 and 0.174 ms: the machine's load differed).

The C++ nodes run the same kernels and, under ``create_graph``, the same reference formulas
(``fastgp::penalty_grads``, ``fastgp::interpolate_grads``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from fastgp import validation
from fastgp.backends import reference
from fastgp.ops import library
from fastgp.ops.autograd import InterpolateFunction, PenaltyFunction

__all__ = ["interpolate", "op_namespace", "penalty"]

# (backend, device) -> torch.ops namespace. Keyed by the device itself: on this VM reading
# ``device.type`` inside an autograd loop costs more than the lookup.
_namespaces: dict[tuple[str, torch.device], Any] = {}


def op_namespace(backend: str, device: torch.device) -> Any:
    """The ``torch.ops`` namespace whose kernels run ``backend`` ("cpp"/"triton") on ``device``."""
    if torch.compiler.is_compiling():
        # No cache while tracing: dynamo would guard on the dict's contents.
        return _namespace_for(backend, device.type)
    key = (backend, device)
    found = _namespaces.get(key)
    if found is None:
        found = _namespaces[key] = _namespace_for(backend, device.type)
    return found


def _namespace_for(backend: str, device_type: str) -> Any:
    if backend == "triton" and device_type == "cpu":
        library.define_interpreter_namespace()
        return getattr(torch.ops, library.INTERPRETER_NAMESPACE)
    return getattr(torch.ops, library.NAMESPACE)


def _transformed() -> bool:
    """True under torch.compile tracing or a torch.func transform (no C++ autograd nodes)."""
    return torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active()


def interpolate(backend: str, real: Tensor, fake: Tensor, alpha: Tensor) -> Tensor:
    """x_hat = alpha * real + (1 - alpha) * fake per sample (alpha: (B,) accumulation dtype).

    Differentiable with respect to real and fake (one fused backward pass), and with respect
    to alpha through the reference.
    """
    if backend == "torch" or alpha.requires_grad:
        validation.check_interpolate(real, fake, alpha, kernel=backend != "torch")
        return reference.interpolate(real, fake, alpha)
    if torch.is_grad_enabled() and (real.requires_grad or fake.requires_grad):
        if backend == "cpp" and not _transformed():
            return torch.ops.fastgp.interpolate_autograd.default(real, fake, alpha)
        return InterpolateFunction.apply(real, fake, alpha, op_namespace(backend, real.device))
    ops = op_namespace(backend, real.device)
    return ops.interpolate.default(real, fake, alpha)


def penalty(
    backend: str,
    grads: tuple[Tensor, ...],
    grad_scale: Tensor | None,
    inv_scale: float,
    lambda_gp: float,
    center: float,
    one_sided: bool,
    pac: int,
) -> tuple[Tensor, Tensor]:
    """(penalty, detached norms) of ``reference.penalty_forward``, differentiable in ``grads``."""
    if backend == "torch":
        validation.check_penalty(grads, grad_scale, pac, kernel=False)
        value, norms = reference.penalty_forward(
            list(grads), grad_scale, inv_scale, lambda_gp, center, one_sided, pac
        )
        return value, norms.detach()
    if backend == "cpp" and not _transformed():
        return torch.ops.fastgp.penalty.default(
            grads, grad_scale, inv_scale, lambda_gp, center, one_sided, pac
        )
    ops = op_namespace(backend, grads[0].device)
    if torch.is_grad_enabled() and any(g.requires_grad for g in grads):
        return PenaltyFunction.apply(
            ops, grad_scale, inv_scale, lambda_gp, center, one_sided, pac, *grads
        )
    return ops.penalty_forward.default(
        list(grads), grad_scale, inv_scale, lambda_gp, center, one_sided, pac
    )
