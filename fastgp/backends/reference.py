"""Pure PyTorch reference backend: the fallback and the oracle every test compares against.

Every backend (``reference``, ``cpp``, ``triton``) implements the same four functions with
the same signatures and semantics, documented here once:

``interpolate(real, fake, alpha) -> x_hat``
    real, fake: (B, *) same shape, dtype and device, any strides.
    alpha: (B,) contiguous, float32 (float64 when real is float64).
    x_hat[i] = alpha[i] * real[i] + (1 - alpha[i]) * fake[i], computed in alpha's dtype
    and cast once to real's dtype. Layout of x_hat as ``torch.empty_like(real)``.

``interpolate_backward(grad_out, alpha, need_real, need_fake) -> list[Tensor]``
    grad_out: (B, *) any strides. Returns [grad_real] + [grad_fake] (each only if needed):
    grad_real = alpha * grad_out, grad_fake = (1 - alpha) * grad_out, dtype of grad_out.

``penalty_forward(grads, inv_scale, lambda_gp, center, one_sided, pac) -> (penalty, norms)``
    grads: list of (B, *) tensors (one per critic input), same B, dtype and device.
    s_j = sum over every non-batch element of every tensor of (g * inv_scale)**2 for sample j,
    accumulated in float32 (float64 for float64 grads);
    norms[i] = sqrt(sum_{j in group i} s_j) with groups of ``pac`` consecutive samples,
    shape (B // pac,); penalty = lambda_gp * mean_i h(norms[i] - center) with
    h(d) = d**2, or max(d, 0)**2 when one_sided. penalty is 0-dim; both outputs are float32
    (float64 for float64 grads).

``penalty_backward(grad_penalty, grads, norms, inv_scale, lambda_gp, center, one_sided, pac)``
    Returns one tensor per entry of grads, same shape and dtype (layout as empty_like):
    dP/dg = grad_penalty * lambda_gp / G * 2 * d_i / norms[i] * inv_scale**2 * g,
    d_i = norms[i] - center (clamped at 0 when one_sided), G = B // pac, i = sample // pac.
    Convention at norms[i] == 0 (then g_i == 0): the coefficient is 0, as the subgradient
    of the norm that PyTorch's own ``norm`` backward uses.

Here everything is written with differentiable PyTorch ops, so autograd through these
functions is the ground truth for first and higher derivatives.
"""

from __future__ import annotations

import torch
from torch import Tensor


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other floating dtype accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _per_sample(alpha: Tensor, like: Tensor) -> Tensor:
    """Reshape per-sample (B,) values to broadcast against a (B, *) tensor."""
    return alpha.reshape((alpha.shape[0],) + (1,) * (like.dim() - 1))


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
    norms = torch.linalg.vector_norm(flat, dim=1) * inv_scale
    d = norms - center
    if one_sided:
        d = d.clamp_min(0)
    penalty = lambda_gp * d.pow(2).mean()
    return penalty, norms


def penalty_backward(
    grad_penalty: Tensor,
    grads: list[Tensor],
    norms: Tensor,
    inv_scale: float,
    lambda_gp: float,
    center: float,
    one_sided: bool,
    pac: int,
) -> list[Tensor]:
    d = norms - center
    if one_sided:
        d = d.clamp_min(0)
    safe = torch.where(norms > 0, norms, torch.ones_like(norms))
    coef = torch.where(norms > 0, d / safe, torch.zeros_like(norms))
    coef = coef * (grad_penalty * (2.0 * lambda_gp * inv_scale * inv_scale / norms.shape[0]))
    coef = coef.repeat_interleave(pac)
    return [(_per_sample(coef, g) * g.to(coef.dtype)).to(g.dtype) for g in grads]
