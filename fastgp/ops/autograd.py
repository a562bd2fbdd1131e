"""The autograd formulas of the fused ops: one ``torch.autograd.Function`` each.

Both are written with ``setup_context``, which is what ``torch.func`` transforms require,
and both call the ops through the dispatcher of the namespace they are given
(``torch.ops.fastgp``, or ``torch.ops.fastgp_interpret`` for Triton's CPU interpreter), so
one formula serves every device and backend, eager, under ``torch.func`` and inside a
compiled step (``torch.compile`` traces them with the ops as opaque nodes and their fake
kernels). (``torch.library.register_autograd`` would be the other way to attach them; in
torch 2.13 its generated Function has no ``setup_context`` and ``torch.func.grad`` refuses
it, and it costs about 110 µs more per fwd+bwd call than the C++ node below.)

The first-order backward runs one fused kernel. When a backward is itself recorded
(``create_graph=True``: grad mode is on inside ``backward``) it runs the differentiable
reference formula instead, so higher derivatives are exact, never silently wrong; the
ordinary WGAN-GP step never takes that path.

The CPU eager fast paths (``torch.ops.fastgp.penalty`` and
``torch.ops.fastgp.interpolate_autograd``, see ``fastgp.ops``) are the same formulas with
their nodes in C++.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from fastgp.backends import reference


class InterpolateFunction(torch.autograd.Function):
    """x_hat = alpha * real + (1 - alpha) * fake per sample, for real/fake that need grad.

    alpha gets no gradient here (``fastgp.ops.interpolate`` uses the reference when it
    requires one).
    """

    @staticmethod
    def forward(real: Tensor, fake: Tensor, alpha: Tensor, ops: Any) -> Tensor:
        return ops.interpolate.default(real, fake, alpha)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        _, _, alpha, ops = inputs
        ctx.ops = ops
        ctx.save_for_backward(alpha)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        (alpha,) = ctx.saved_tensors
        need_real, need_fake = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if torch.is_grad_enabled():
            grads = reference.interpolate_backward(grad_out, alpha, need_real, need_fake)
        else:
            grads = ctx.ops.interpolate_backward.default(grad_out, alpha, need_real, need_fake)
        grads = list(grads)
        grad_real = grads.pop(0) if need_real else None
        grad_fake = grads.pop(0) if need_fake else None
        return grad_real, grad_fake, None, None


class PenaltyFunction(torch.autograd.Function):
    """(penalty, norms) from per-sample gradients; see ``reference.penalty_forward``.

    ``norms`` is non-differentiable (it is for logging).
    """

    @staticmethod
    def forward(
        ops: Any,
        grad_scale: Tensor | None,
        inv_scale: float,
        lambda_gp: float,
        center: float,
        one_sided: bool,
        pac: int,
        *grads: Tensor,
    ) -> tuple[Tensor, Tensor]:
        return ops.penalty_forward.default(
            list(grads), grad_scale, inv_scale, lambda_gp, center, one_sided, pac
        )

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ops, grad_scale, *params = inputs[:7]
        grads = inputs[7:]
        norms = output[1]
        ctx.ops = ops
        ctx.params = tuple(params)
        ctx.has_scale = grad_scale is not None
        saved = (*grads, norms) + ((grad_scale,) if grad_scale is not None else ())
        ctx.save_for_backward(*saved)
        ctx.mark_non_differentiable(norms)

    @staticmethod
    def backward(ctx, grad_penalty: Tensor, grad_norms: Tensor | None):
        saved = list(ctx.saved_tensors)
        grad_scale = saved.pop() if ctx.has_scale else None
        norms = saved.pop()
        grads = saved
        if torch.is_grad_enabled():
            dgrads = reference.penalty_grads(grad_penalty, grads, grad_scale, *ctx.params)
        else:
            dgrads = ctx.ops.penalty_backward.default(
                grad_penalty, grads, norms, grad_scale, *ctx.params
            )
        return (None,) * 7 + tuple(dgrads)
