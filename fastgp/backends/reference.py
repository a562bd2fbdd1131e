"""Pure PyTorch reference: the op contract, the fallback, and the oracle of every test.

The ``torch.ops.fastgp`` operators (schemas in ``fastgp.ops.library``) and their kernels
(C++ in ``csrc/``, Triton in ``fastgp.backends.triton``) implement the four functions below,
with the same signatures and semantics, documented here once:

``interpolate(real, fake, alpha) -> x_hat``
    real, fake: (B, *) same shape, dtype and device, any strides.
    alpha: (B,) float32 (float64 when real is float64).
    x_hat[i] = alpha[i] * real[i] + (1 - alpha[i]) * fake[i], computed in alpha's dtype
    and cast once to real's dtype. Layout of x_hat as ``torch.empty_like(real)``.

``interpolate_backward(grad_out, alpha, need_real, need_fake) -> list[Tensor]``
    grad_out: (B, *) any strides. Returns [grad_real] + [grad_fake] (each only if needed):
    grad_real = alpha * grad_out, grad_fake = (1 - alpha) * grad_out, dtype of grad_out.

``penalty_forward(grads, grad_scale, inv_scale, lambda_gp, center, one_sided, pac)``
    -> ``(penalty, norms)``.
    grads: list of (B, *) tensors (one per critic input), same B, dtype and device.
    grad_scale: None, or a one-element floating tensor on the gradients' device: the loss
    scale the critic output was multiplied by (read on the device, so no host sync).
    With s_j the sum over every non-batch element of every tensor of g**2 for sample j,
    accumulated in float32 (float64 for float64 grads):
    norms[i] = sqrt(sum_{j in group i} s_j) * r, r = inv_scale (/ grad_scale), over groups of
    ``pac`` consecutive samples, shape (B // pac,);
    penalty = lambda_gp * mean_i h(norms[i] - center) with h(d) = d**2, or max(d, 0)**2
    when one_sided. penalty is 0-dim; both outputs are float32
    (float64 for float64 grads).

``penalty_backward(grad_penalty, grads, norms, grad_scale, inv_scale, lambda_gp, center,
one_sided, pac)``
    Returns one tensor per entry of grads, same shape and dtype (layout as empty_like):
    dP/dg = d_i / norms[i] * u * g with u = grad_penalty * (2 lambda_gp inv_scale**2 / G)
    (then / grad_scale**2), in the accumulation dtype,
    d_i = norms[i] - center (clamped at 0 when one_sided), G = B // pac, i = sample // pac.
    Convention at norms[i] == 0 (then g_i == 0): the coefficient is 0, as the subgradient
    of the norm that PyTorch's own ``norm`` backward uses.

Non-finite values are never hidden: a NaN or inf anywhere in a group's gradients makes its
norm NaN or inf, and with it the penalty (the one-sided clamp keeps a NaN a NaN) and that
group's coefficient.

Everything here is written with differentiable PyTorch ops, so autograd through these
functions is the ground truth for first and higher derivatives; ``penalty_grads`` is the
differentiable form of the penalty's backward that the fused autograd uses when a backward
is itself recorded (``create_graph=True``).
"""

from __future__ import annotations

import torch
from torch import Tensor

# The dtypes the fused kernels implement; the reference takes any floating dtype.
KERNEL_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other floating dtype accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _per_sample(values: Tensor, like: Tensor) -> Tensor:
    """Reshape per-sample (B,) values to broadcast against a (B, *) tensor."""
    return values.reshape((values.shape[0],) + (1,) * (like.dim() - 1))


def _scale_value(grad_scale: Tensor, dtype: torch.dtype) -> Tensor:
    return grad_scale.detach().reshape(()).to(dtype)


def interpolate(real: Tensor, fake: Tensor, alpha: Tensor) -> Tensor:
    a = _per_sample(alpha, real)
    x_hat = a * real.to(alpha.dtype) + (1 - a) * fake.to(alpha.dtype)
    return x_hat.to(real.dtype)


def interpolate_backward(
    grad_out: Tensor, alpha: Tensor, need_real: bool, need_fake: bool
) -> list[Tensor]:
    a = _per_sample(alpha, grad_out)
    go = grad_out.to(alpha.dtype)
    out = []
    if need_real:
        out.append((a * go).to(grad_out.dtype))
    if need_fake:
        out.append(((1 - a) * go).to(grad_out.dtype))
    return out


def penalty_forward(
    grads: list[Tensor],
    grad_scale: Tensor | None,
    inv_scale: float,
    lambda_gp: float,
    center: float,
    one_sided: bool,
    pac: int,
) -> tuple[Tensor, Tensor]:
    acc = accumulation_dtype(grads[0].dtype)
    groups = grads[0].shape[0] // pac
    # One row per group of `pac` consecutive samples, all inputs side by side (CTGAN's
    # `gradients.view(-1, pac * D)`); vector_norm's backward gives 0 at a zero norm.
    rows = [g.to(acc).reshape(groups, -1) for g in grads]
    flat = rows[0] if len(rows) == 1 else torch.cat(rows, dim=1)
    # One factor per call, inv_scale / grad_scale (a division per norm would make the
    # fp64 kernels call the division's slow path inside their loop).
    factor = inv_scale if grad_scale is None else inv_scale / _scale_value(grad_scale, acc)
    norms = torch.linalg.vector_norm(flat, dim=1) * factor
    d = norms - center
    if one_sided:
        d = d.clamp_min(0)  # clamp_min keeps NaN (unlike a max that prefers the number)
    penalty = lambda_gp * d.pow(2).mean()
    return penalty, norms


def penalty_backward(
    grad_penalty: Tensor,
    grads: list[Tensor],
    norms: Tensor,
    grad_scale: Tensor | None,
    inv_scale: float,
    lambda_gp: float,
    center: float,
    one_sided: bool,
    pac: int,
) -> list[Tensor]:
    d = norms - center
    if one_sided:
        d = d.clamp_min(0)
    zero = norms == 0
    # NaN norms give NaN coefficients (only an exact 0 is special-cased).
    coef = torch.where(zero, torch.zeros_like(norms), d / torch.where(zero, 1.0, norms))
    upstream = grad_penalty * (2.0 * lambda_gp * inv_scale * inv_scale / norms.shape[0])
    if grad_scale is not None:
        s = _scale_value(grad_scale, norms.dtype)
        upstream = upstream / (s * s)
    coef = coef * upstream
    coef = coef.repeat_interleave(pac)
    return [(_per_sample(coef, g) * g.to(coef.dtype)).to(g.dtype) for g in grads]


def penalty_grads(
    grad_penalty: Tensor,
    grads: list[Tensor],
    grad_scale: Tensor | None,
    inv_scale: float,
    lambda_gp: float,
    center: float,
    one_sided: bool,
    pac: int,
) -> list[Tensor]:
    """``penalty_backward`` with the norms recomputed differentiably from ``grads``.

    The fused backward's result does not carry how its per-sample coefficient depends on g;
    when a backward is itself recorded (``create_graph=True``) this is used instead, so the
    second derivative is exact.
    """
    _, norms = penalty_forward(grads, grad_scale, inv_scale, lambda_gp, center, one_sided, pac)
    return penalty_backward(
        grad_penalty, grads, norms, grad_scale, inv_scale, lambda_gp, center, one_sided, pac
    )
