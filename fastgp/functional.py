"""The fused building blocks: ``interpolate`` and ``penalty_from_grads``."""

from __future__ import annotations

import torch
from torch import Tensor

from fastgp.autograd import InterpolateFunction, PenaltyFromGradsFunction, kernels
from fastgp.backends import reference, resolve_backend
from fastgp.validation import (
    as_tensor_tuple,
    check_batch,
    check_number,
    check_pac,
    check_pair,
    check_weight,
    inverse_scale,
    per_sample_alpha,
)


def interpolate(
    real: Tensor,
    fake: Tensor,
    alpha: Tensor | float | None = None,
    *,
    generator: torch.Generator | None = None,
    backend: str = "auto",
) -> Tensor:
    """``alpha * real + (1 - alpha) * fake`` with one alpha per sample, in one fused pass.

    Args:
        real, fake: (B, *) tensors of one floating dtype and device, any strides
            (contiguous and channels_last are read without a copy).
        alpha: None (draw U[0, 1) per sample from ``generator``), a float, or a tensor of
            shape (B,) or (B, 1, ..., 1).
        generator: the ``torch.Generator`` alpha is drawn from when ``alpha`` is None.
        backend: ``"auto"``, ``"triton"``, ``"cpp"`` or ``"torch"`` (see ``fastgp.backends``).

    Returns:
        x_hat: (B, *) in real's dtype and layout. It requires grad only if real or fake do;
        its backward (one fused pass) reaches them.
    """
    batch = check_pair((real,), (fake,))
    return interpolate_with(
        resolve_backend(backend, real.device, real.dtype),
        real,
        fake,
        per_sample_alpha(
            alpha, batch, 1, real, reference.accumulation_dtype(real.dtype), generator
        ),
    )


def interpolate_with(backend: str, real: Tensor, fake: Tensor, alpha: Tensor) -> Tensor:
    """``interpolate`` on checked inputs, a resolved backend and a (B,) alpha."""
    if backend == "torch" or alpha.requires_grad:
        return reference.interpolate(real, fake, alpha)
    if torch.is_grad_enabled() and (real.requires_grad or fake.requires_grad):
        return InterpolateFunction.apply(backend, alpha, real, fake)
    return kernels(backend, real.device).interpolate(real, fake, alpha)


def penalty_from_grads(
    grads: Tensor | tuple[Tensor, ...],
    lambda_gp: float = 10.0,
    center: float = 1.0,
    one_sided: bool = False,
    grad_scale: float | torch.amp.GradScaler | None = None,
    pac: int = 1,
    return_norms: bool = False,
    backend: str = "auto",
) -> Tensor | tuple[Tensor, Tensor]:
    """``lambda_gp * mean_i h(||g_i|| - center)`` from gradients you computed yourself.

    Args:
        grads: (B, *) tensor, or a tuple of them (one per critic input; the norm of a sample
            is taken over all of them together). fp32, fp16, bf16 (accumulated in fp32) or
            fp64; any strides.
        lambda_gp: weight, >= 0.
        center: target norm (1 for WGAN-GP, 0 for zero-centred penalties).
        one_sided: use ``max(0, ||g_i|| - center)**2`` (WGAN-LP) instead of the square.
        grad_scale: the scale the critic output was multiplied by before ``autograd.grad``
            (a float or a ``torch.amp.GradScaler``); removed inside the norm.
        pac: norms are taken over groups of ``pac`` consecutive samples (PacGAN / CTGAN).
        return_norms: also return the detached per-group norms, shape (B // pac,).
        backend: ``"auto"``, ``"triton"``, ``"cpp"`` or ``"torch"``.

    Returns:
        The 0-dim penalty (fp32; fp64 for fp64 grads), differentiable with respect to
        ``grads`` (also under ``create_graph=True``); with ``return_norms``,
        ``(penalty, norms)``.
    """
    grads = as_tensor_tuple(grads, "grads")
    pac = check_pac(pac, check_batch(grads, "grads"))
    return penalty_with(
        resolve_backend(backend, grads[0].device, grads[0].dtype),
        grads,
        check_weight(lambda_gp, "lambda_gp"),
        check_number(center, "center"),
        bool(one_sided),
        inverse_scale(grad_scale),
        pac,
        return_norms,
    )


def penalty_with(
    backend: str,
    grads: tuple[Tensor, ...],
    lambda_gp: float,
    center: float,
    one_sided: bool,
    inv_scale: float,
    pac: int,
    return_norms: bool,
) -> Tensor | tuple[Tensor, Tensor]:
    """``penalty_from_grads`` on checked arguments and a resolved backend."""
    if backend == "cpp":
        # Autograd in C++ (csrc/fastgp_ops.cpp): no Python on the backward path.
        penalty, norms = torch.ops.fastgp.penalty.default(
            grads, inv_scale, lambda_gp, center, one_sided, pac
        )
    elif backend == "torch":
        penalty, norms = reference.penalty_forward(
            list(grads), inv_scale, lambda_gp, center, one_sided, pac
        )
        norms = norms.detach()
    else:
        penalty, norms = PenaltyFromGradsFunction.apply(
            backend, inv_scale, lambda_gp, center, one_sided, pac, *grads
        )
    return (penalty, norms) if return_norms else penalty
