"""Independent oracles: what the fused ops must return, derived without fastgp's reference.

``fastgp.backends.reference`` is one of the backends under test (``backend="torch"``), so a
test that takes its expected value from it compares the reference with itself. The oracles
here are written from the definitions instead (the op contract in words, in the docstring
of ``fastgp.backends.reference``, and the WGAN-GP paper), with plain PyTorch arithmetic in
float64 on the exact values of the inputs, on whatever device the inputs are on:

* ``interpolate``, ``interpolate_grads``: the interpolation and its gradients in closed form.
* ``group_norms``, ``penalty``: the penalty, summing squares sample by sample and then over
  each group of ``pac`` consecutive samples, with the one-sided clamp written as an IEEE
  ``max(d, 0)`` that keeps NaN. Differentiable, so ``torch.autograd`` through ``penalty``
  re-derives every derivative of the formula in float64 (``penalty_autograd_gradient``;
  ``tests/test_oracles.py`` checks the closed forms against it).
* ``penalty_gradient``: dP/dg in closed form, derived below, with the convention at a zero
  norm (coefficient 0, PyTorch's subgradient of the norm) that autograd of ``sqrt`` cannot
  give (it gives NaN there).
* ``classic_gradient_penalty``, ``ctgan_gradient_penalty`` (defined in ``tests/helpers.py``,
  re-exported here): the public seed formulas fastgp replaces, for whole penalty calls.

Every oracle returns float64 tensors; compare them with ``assert_close_report`` (which
compares in float64) and the tolerance of the dtype the result was computed in.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from helpers import classic_gradient_penalty, ctgan_gradient_penalty, per_sample
from torch import Tensor

__all__ = [
    "classic_gradient_penalty",
    "ctgan_gradient_penalty",
    "group_norms",
    "interpolate",
    "interpolate_grads",
    "penalty",
    "penalty_autograd_gradient",
    "penalty_gradient",
]

F64 = torch.float64


def interpolate(real: Tensor, fake: Tensor, alpha: Tensor) -> Tensor:
    """x_hat[i] = alpha[i] * real[i] + (1 - alpha[i]) * fake[i], in float64.

    real, fake: (B, *) any dtype; alpha: (B,) or (B, 1, ..., 1), on any device. The exact
    value the op rounds once to real's dtype.
    """
    a = per_sample(alpha.reshape(-1).to(real.device, F64), real)
    return a * real.to(F64) + (1 - a) * fake.to(F64)


def interpolate_grads(weights: Tensor, alpha: Tensor) -> tuple[Tensor, Tensor]:
    """(d/d real, d/d fake) of sum(weights * x_hat): alpha * weights and (1 - alpha) * weights.

    x_hat is linear in real and fake with per-sample coefficients alpha and 1 - alpha.
    """
    a = per_sample(alpha.reshape(-1).to(weights.device, F64), weights)
    w = weights.to(F64)
    return a * w, (1 - a) * w


def _as_list(grads: Tensor | Sequence[Tensor]) -> list[Tensor]:
    return [grads] if isinstance(grads, Tensor) else list(grads)


def group_norms(grads: Tensor | Sequence[Tensor], pac: int = 1, scale: float = 1.0) -> Tensor:
    """(B // pac,) float64: the norm of each group's gradients, divided by ``scale``.

    s_j = sum over every element of every tensor of sample j of g**2; a group is ``pac``
    consecutive samples (CTGAN's ``gradients.view(-1, pac * D)``); norm_i = sqrt(sum of
    s_j over group i) / scale, ``scale`` being the loss scale the gradients carry. A NaN
    anywhere in a group makes its norm NaN, an inf (no NaN) makes it inf, as IEEE
    arithmetic does.
    """
    grads = _as_list(grads)
    batch = grads[0].shape[0]
    per_sample_sq = sum(g.to(F64).reshape(batch, -1).pow(2).sum(dim=1) for g in grads)
    per_group_sq = per_sample_sq.reshape(batch // pac, pac).sum(dim=1)
    return per_group_sq.sqrt() / scale


def _excess(norms: Tensor, center: float, one_sided: bool) -> Tensor:
    """d = norm - center; one-sided: max(d, 0), where a NaN stays NaN (d < 0 is False)."""
    d = norms - center
    return torch.where(d < 0, torch.zeros_like(d), d) if one_sided else d


def penalty(
    grads: Tensor | Sequence[Tensor],
    lambda_gp: float = 10.0,
    center: float = 1.0,
    one_sided: bool = False,
    pac: int = 1,
    scale: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """(penalty, norms) in float64: lambda_gp * mean_i d_i**2 with d from ``_excess``.

    The WGAN-GP penalty (Gulrajani et al. 2017, eq. 3) with the variants of fastgp's
    ``penalty_from_grads``: ``center`` (0 for zero-centred penalties), ``one_sided``
    (WGAN-LP's max(0, ||g|| - center)**2), ``pac`` and ``scale`` as in ``group_norms``.
    Differentiable in ``grads`` (away from zero norms).
    """
    norms = group_norms(grads, pac, scale)
    return lambda_gp * _excess(norms, center, one_sided).pow(2).mean(), norms


def penalty_gradient(
    grads: Tensor | Sequence[Tensor],
    lambda_gp: float = 10.0,
    center: float = 1.0,
    one_sided: bool = False,
    pac: int = 1,
    scale: float = 1.0,
    upstream: float = 1.0,
) -> list[Tensor]:
    """upstream * dP/dg for each tensor of ``grads``, float64, in closed form.

    With G groups, n_i = ||g_(i)|| / S (S = ``scale``) and d_i = n_i - center (clamped as
    in ``_excess``): P = lambda/G sum_i d_i**2, dn_i/dg_j = g_j / (S**2 n_i) for sample j
    of group i, so dP/dg_j = 2 lambda / G * d_i / n_i * g_j / S**2 (d_i = 0 below the
    centre when one-sided). At n_i = 0 (then g_(i) = 0) the coefficient d_i / n_i is
    taken as 0, the subgradient PyTorch's norm uses; a NaN or inf norm gives a NaN
    coefficient (inf / inf), so the whole group's gradient is NaN.
    """
    grads = _as_list(grads)
    norms = group_norms(grads, pac, scale)
    d = _excess(norms, center, one_sided)
    zero = norms == 0
    ratio = torch.where(zero, torch.zeros_like(d), d / torch.where(zero, 1.0, norms))
    coef = (upstream * 2.0 * lambda_gp / norms.shape[0] / scale**2) * ratio
    coef = coef.repeat_interleave(pac)
    return [per_sample(coef, g) * g.to(F64) for g in grads]


def penalty_autograd_gradient(
    grads: Tensor | Sequence[Tensor],
    lambda_gp: float = 10.0,
    center: float = 1.0,
    one_sided: bool = False,
    pac: int = 1,
    scale: float = 1.0,
) -> list[Tensor]:
    """dP/dg re-derived by ``torch.autograd`` through ``penalty`` in float64.

    Valid where no group norm is 0 (autograd of sqrt gives NaN there).
    """
    leaves = [g.detach().to(F64).requires_grad_() for g in _as_list(grads)]
    value, _ = penalty(leaves, lambda_gp, center, one_sided, pac, scale)
    return list(torch.autograd.grad(value, leaves))
