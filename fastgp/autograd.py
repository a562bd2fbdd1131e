"""The autograd Functions around the fused kernels.

The C++ backend's penalty does not use ``PenaltyFromGradsFunction``: its autograd node is
written in C++ (``fastgp::penalty`` in ``csrc/fastgp_ops.cpp``, same two rules as here), so
that its backward never enters Python. Triton and the interpolation use the Functions below.

Forward and first-order backward run one fused kernel each. When a backward itself is
being recorded (``create_graph=True``, i.e. grad mode is on inside ``backward``), the
backward is computed with the differentiable reference formula instead, so higher-order
derivatives are exact rather than silently wrong; the ordinary WGAN-GP step never takes
that path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from fastgp.backends import reference


class Kernels(NamedTuple):
    """The four kernels of one backend on one device type (signatures as in ``reference``)."""

    interpolate: Callable
    interpolate_backward: Callable
    penalty_forward: Callable
    penalty_backward: Callable


# Keyed by the device itself, like resolve_backend's cache: ``device.type`` costs more than
# the lookup on this hot path.
_kernels: dict[tuple[str, torch.device], Kernels] = {}


def kernels(backend: str, device: torch.device) -> Kernels:
    """Kernels for a resolved backend name; dispatcher ops where the dispatcher has them.

    ``cpp`` (CPU) and ``triton`` on CUDA go through ``torch.ops.fastgp`` (opaque to
    ``torch.compile``, with fake kernels); Triton on CPU tensors (the interpreter, for tests)
    calls its launchers directly because the CPU dispatch key belongs to the C++ kernels.
    """
    if torch.compiler.is_compiling():
        # No cache while tracing: dynamo would guard on "key not in _kernels" and
        # recompile once the first compiled call has filled the cache.
        return _make_kernels(backend, device.type)
    key = (backend, device)
    found = _kernels.get(key)
    if found is None:
        if backend == "cpp":
            # The CPU kernels exist only once the extension is loaded (built on first use).
            # (Under torch.compile, resolve_backend has already run eagerly and loaded it.)
            from fastgp.backends import cpp

            cpp.load()
        found = _kernels[key] = _make_kernels(backend, device.type)
    return found


def _make_kernels(backend: str, device_type: str) -> Kernels:
    if backend == "cpp" or (backend == "triton" and device_type == "cuda"):
        ops = torch.ops.fastgp
        return Kernels(
            ops.interpolate.default,
            ops.interpolate_backward.default,
            ops.penalty_forward.default,
            ops.penalty_backward.default,
        )
    from fastgp.backends import implementation

    module = implementation(backend)
    return Kernels(
        module.interpolate,
        module.interpolate_backward,
        module.penalty_forward,
        module.penalty_backward,
    )


class InterpolateFunction(torch.autograd.Function):
    """x_hat = alpha * real + (1 - alpha) * fake per sample; used when real or fake need grad."""

    @staticmethod
    def forward(ctx, backend: str, alpha: Tensor, real: Tensor, fake: Tensor) -> Tensor:
        ctx.backend = backend
        ctx.save_for_backward(alpha)
        return kernels(backend, real.device).interpolate(real, fake, alpha)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        (alpha,) = ctx.saved_tensors
        need_real, need_fake = ctx.needs_input_grad[2], ctx.needs_input_grad[3]
        if torch.is_grad_enabled():
            grads = reference.interpolate_backward(grad_out, alpha, need_real, need_fake)
        else:
            k = kernels(ctx.backend, grad_out.device)
            grads = k.interpolate_backward(grad_out, alpha, need_real, need_fake)
        grads = list(grads)
        grad_real = grads.pop(0) if need_real else None
        grad_fake = grads.pop(0) if need_fake else None
        return None, None, grad_real, grad_fake


class PenaltyFromGradsFunction(torch.autograd.Function):
    """(penalty, norms) from per-sample gradients; see ``reference.penalty_forward``.

    ``norms`` is returned detached (non-differentiable): it is for logging.
    """

    @staticmethod
    def forward(
        ctx,
        backend: str,
        inv_scale: float,
        lambda_gp: float,
        center: float,
        one_sided: bool,
        pac: int,
        *grads: Tensor,
    ) -> tuple[Tensor, Tensor]:
        k = kernels(backend, grads[0].device)
        penalty, norms = k.penalty_forward(
            list(grads), inv_scale, lambda_gp, center, one_sided, pac
        )
        ctx.backend = backend
        ctx.params = (inv_scale, lambda_gp, center, one_sided, pac)
        ctx.save_for_backward(norms, *grads)
        ctx.mark_non_differentiable(norms)
        return penalty, norms

    @staticmethod
    def backward(ctx, grad_penalty: Tensor, grad_norms: Tensor | None):
        norms, *grads = ctx.saved_tensors
        inv_scale, lambda_gp, center, one_sided, pac = ctx.params
        if torch.is_grad_enabled():
            # Recompute the norms differentiably so the second derivative sees how the
            # per-sample coefficient depends on g.
            _, norms = reference.penalty_forward(
                grads, inv_scale, lambda_gp, center, one_sided, pac
            )
            dgrads = reference.penalty_backward(
                grad_penalty, grads, norms, inv_scale, lambda_gp, center, one_sided, pac
            )
        else:
            dgrads = kernels(ctx.backend, norms.device).penalty_backward(
                grad_penalty, grads, norms, inv_scale, lambda_gp, center, one_sided, pac
            )
        return (None,) * 6 + tuple(dgrads)
