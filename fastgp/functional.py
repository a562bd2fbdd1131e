"""The fused building blocks: ``interpolate`` and ``penalty_from_grads``."""

from __future__ import annotations

import torch
from torch import Tensor

from fastgp import ops
from fastgp.backends import resolve_backend
from fastgp.validation import (
    as_tensor_tuple,
    batch_size,
    check_number,
    check_pac,
    check_weight,
    grad_scale_of,
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
        x_hat: (B, *) in real's dtype and layout. It requires grad only if real or fake (or
        a tensor alpha) do; its backward (one fused pass) reaches them.
    """
    for name, value in (("real", real), ("fake", fake)):
        if not isinstance(value, Tensor):
            raise TypeError(f"`{name}` must be a Tensor, got {type(value).__name__}")
    return ops.interpolate(
        resolve_backend(backend, real.device, real.dtype, torch.compiler.is_compiling()),
        real,
        fake,
        per_sample_alpha(alpha, batch_size(real, "real"), 1, real, generator),
    )


def penalty_from_grads(
    grads: Tensor | tuple[Tensor, ...],
    lambda_gp: float = 10.0,
    center: float = 1.0,
    one_sided: bool = False,
    grad_scale: float | Tensor | torch.amp.GradScaler | None = None,
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
        grad_scale: the loss scale the critic output was multiplied by before
            ``autograd.grad``: a float, a one-element tensor or a ``torch.amp.GradScaler``
            (both read on the device, never synchronised); removed inside the norm.
        pac: norms are taken over groups of ``pac`` consecutive samples (PacGAN / CTGAN).
        return_norms: also return the detached per-group norms, shape (B // pac,).
        backend: ``"auto"``, ``"triton"``, ``"cpp"`` or ``"torch"``.

    Returns:
        The 0-dim penalty (fp32; fp64 for fp64 grads), differentiable with respect to
        ``grads`` (also under ``create_graph=True``); with ``return_norms``,
        ``(penalty, norms)``.
    """
    grads = as_tensor_tuple(grads, "grads")
    first = grads[0]
    scale, inv_scale = grad_scale_of(grad_scale, first.device)
    value, norms = ops.penalty(
        resolve_backend(backend, first.device, first.dtype, torch.compiler.is_compiling()),
        grads,
        scale,
        inv_scale,
        check_weight(lambda_gp, "lambda_gp"),
        check_number(center, "center"),
        bool(one_sided),
        check_pac(pac, batch_size(first, "grads")),
    )
    return (value, norms) if return_norms else value
