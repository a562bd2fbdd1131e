"""Critic regularisers: WGAN-GP (and its one-sided / packed variants), R1, R2, DRAGAN.

Each builds the points to regularise, runs the critic there, takes
``g = d sum(critic(x)) / dx`` with ``create_graph=True`` and hands ``g`` to the fused
``penalty_from_grads``, so the result's backward reaches the critic's parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from fastgp import ops
from fastgp.backends import reference, resolve_backend
from fastgp.validation import (
    as_tensor_tuple,
    check_inputs,
    check_number,
    check_pac,
    check_weight,
    per_sample_alpha,
    scaled_output,
)

Critic = Callable[..., Tensor]


def gradient_penalty(
    critic: Critic,
    real: Tensor | tuple[Tensor, ...],
    fake: Tensor | tuple[Tensor, ...],
    *critic_args: Any,
    lambda_gp: float = 10.0,
    center: float = 1.0,
    one_sided: bool = False,
    alpha: Tensor | float | None = None,
    generator: torch.Generator | None = None,
    grad_scale: float | torch.amp.GradScaler | None = None,
    pac: int = 1,
    backend: str = "auto",
    return_norms: bool = False,
    **critic_kwargs: Any,
) -> Tensor | tuple[Tensor, Tensor]:
    """WGAN-GP: ``lambda_gp * mean_i (||grad_x critic(x_hat)_i|| - center)**2``.

    ``x_hat = alpha * real + (1 - alpha) * fake`` with one alpha per sample (per group of
    ``pac`` samples), drawn U[0, 1) from ``generator`` unless given.

    Args:
        critic: called as ``critic(*x_hat, *critic_args, **critic_kwargs)``; any output
            shape ((B,), (B, 1), patch maps): the output is summed before differentiating.
        real, fake: (B, *) tensors, or tuples of them for a critic with several inputs
            (each interpolated with the same alpha; the norm covers all of them). If they
            require grad, the penalty's gradient reaches them too.
        critic_args, critic_kwargs: passed unchanged (labels of a conditional critic).
        lambda_gp: weight, >= 0. center: target norm. one_sided: WGAN-LP's
            ``max(0, ||g|| - center)**2``.
        alpha: None, a float, or a tensor of shape (B,) / (B, 1, ..., 1), or (B // pac,)
            with pac > 1.
        generator: ``torch.Generator`` for alpha.
        grad_scale: a float or a ``torch.amp.GradScaler``: the critic output is multiplied
            by the scale before ``autograd.grad`` (fp16 gradients do not underflow) and the
            kernel removes it inside the norm.
        pac: PacGAN / CTGAN packing: the critic scores groups of ``pac`` consecutive
            samples; alpha and the norm are per group. B must be divisible by pac.
        backend: ``"auto"``, ``"triton"``, ``"cpp"`` or ``"torch"`` (see ``fastgp.backends``).
        return_norms: also return the detached per-group gradient norms, (B // pac,).

    Returns:
        0-dim penalty (fp32, or fp64 for fp64 inputs); with ``return_norms``,
        ``(penalty, norms)``.
    """
    reals, fakes = as_tensor_tuple(real, "real"), as_tensor_tuple(fake, "fake")
    batch = check_inputs(reals, fakes)
    pac = check_pac(pac, batch)
    lambda_gp = check_weight(lambda_gp, "lambda_gp")
    center = check_number(center, "center")
    first = reals[0]
    name = resolve_backend(backend, first.device, first.dtype, torch.compiler.is_compiling())
    a = per_sample_alpha(alpha, batch, pac, first, generator)
    points = tuple(ops.interpolate(name, r, f, a) for r, f in zip(reals, fakes, strict=True))
    return _penalty_at(
        critic,
        points,
        critic_args,
        critic_kwargs,
        name,
        lambda_gp,
        center,
        bool(one_sided),
        grad_scale,
        pac,
        return_norms,
        "the interpolates x_hat",
    )


def r1_penalty(
    critic: Critic,
    real: Tensor | tuple[Tensor, ...],
    *critic_args: Any,
    gamma: float = 10.0,
    grad_scale: float | torch.amp.GradScaler | None = None,
    backend: str = "auto",
    return_norms: bool = False,
    **critic_kwargs: Any,
) -> Tensor | tuple[Tensor, Tensor]:
    """R1 (Mescheder et al. 2018): ``gamma / 2 * mean_i ||grad_x critic(real)_i||**2``.

    Arguments as in ``gradient_penalty``; ``real`` is used as it is if it requires grad
    (the penalty's gradient then reaches it), else a detached copy that requires grad.
    """
    return _zero_centred(
        critic, real, "real", critic_args, critic_kwargs, gamma, grad_scale, backend, return_norms
    )


def r2_penalty(
    critic: Critic,
    fake: Tensor | tuple[Tensor, ...],
    *critic_args: Any,
    gamma: float = 10.0,
    grad_scale: float | torch.amp.GradScaler | None = None,
    backend: str = "auto",
    return_norms: bool = False,
    **critic_kwargs: Any,
) -> Tensor | tuple[Tensor, Tensor]:
    """R2: ``gamma / 2 * mean_i ||grad_x critic(fake)_i||**2``, R1 on generated samples."""
    return _zero_centred(
        critic, fake, "fake", critic_args, critic_kwargs, gamma, grad_scale, backend, return_norms
    )


def dragan_penalty(
    critic: Critic,
    real: Tensor | tuple[Tensor, ...],
    *critic_args: Any,
    lambda_gp: float = 10.0,
    center: float = 1.0,
    alpha: Tensor | float | None = None,
    generator: torch.Generator | None = None,
    grad_scale: float | torch.amp.GradScaler | None = None,
    backend: str = "auto",
    return_norms: bool = False,
    **critic_kwargs: Any,
) -> Tensor | tuple[Tensor, Tensor]:
    """DRAGAN (Kodali et al. 2017): the gradient penalty around perturbed real data.

    ``x_hat = real + alpha * delta`` with ``delta = 0.5 * std(real) * U[0, 1)`` elementwise
    (std over the whole batch of each input, as in the DRAGAN code) and one alpha per
    sample; computed as the fused interpolation between ``real + delta`` and ``real``.
    """
    reals = as_tensor_tuple(real, "real")
    batch = check_inputs(reals)
    center = check_number(center, "center")
    lambda_gp = check_weight(lambda_gp, "lambda_gp")
    first = reals[0]
    name = resolve_backend(backend, first.device, first.dtype, torch.compiler.is_compiling())
    acc = reference.accumulation_dtype(first.dtype)
    a = per_sample_alpha(alpha, batch, 1, first, generator)
    points = []
    for r in reals:
        with torch.no_grad():
            noise = torch.rand(
                r.shape,
                generator=generator,
                dtype=acc,
                device=generator.device if generator is not None else r.device,
            ).to(r.device)
            delta = (0.5 * r.to(acc).std() * noise).to(r.dtype)
        points.append(ops.interpolate(name, r + delta, r, a))
    return _penalty_at(
        critic,
        tuple(points),
        critic_args,
        critic_kwargs,
        name,
        lambda_gp,
        center,
        False,
        grad_scale,
        1,
        return_norms,
        "the perturbed points x_hat",
    )


def _zero_centred(
    critic, x, label, critic_args, critic_kwargs, gamma, grad_scale, backend, return_norms
):
    xs = as_tensor_tuple(x, label)
    check_inputs(xs)
    gamma = check_weight(gamma, "gamma")
    name = resolve_backend(backend, xs[0].device, xs[0].dtype, torch.compiler.is_compiling())
    return _penalty_at(
        critic,
        xs,
        critic_args,
        critic_kwargs,
        name,
        gamma / 2,
        0.0,
        False,
        grad_scale,
        1,
        return_norms,
        f"`{label}`",
    )


def _penalty_at(
    critic: Critic,
    points: tuple[Tensor, ...],
    critic_args: tuple,
    critic_kwargs: dict,
    backend: str,
    lambda_gp: float,
    center: float,
    one_sided: bool,
    grad_scale,
    pac: int,
    return_norms: bool,
    what: str,
) -> Tensor | tuple[Tensor, Tensor]:
    """Differentiate the critic at ``points`` and reduce the gradients to the penalty."""
    if torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
        grads, scale, inv_scale = _input_grads_by_vjp(
            critic, points, critic_args, critic_kwargs, grad_scale
        )
    else:
        grads, scale, inv_scale = _input_grads(
            critic, points, critic_args, critic_kwargs, grad_scale, what
        )
    value, norms = ops.penalty(backend, grads, scale, inv_scale, lambda_gp, center, one_sided, pac)
    return (value, norms) if return_norms else value


def _critic_total(critic, points, critic_args, critic_kwargs, grad_scale):
    """``sum(critic(*points))`` times the loss scale, and the scale to remove."""
    out = critic(*points, *critic_args, **critic_kwargs)
    if not isinstance(out, Tensor):
        raise TypeError(f"`critic` must return a Tensor, got {type(out).__name__}")
    return scaled_output(out.sum(), grad_scale)


def _input_grads(critic, points, critic_args, critic_kwargs, grad_scale, what):
    """d total / d points with ``create_graph=True`` (autograd), checking the critic uses
    every input."""
    if not torch.compiler.is_compiling() and torch.is_inference_mode_enabled():
        raise RuntimeError(
            "fastgp penalties need autograd (the critic's input gradient) and cannot run under "
            "torch.inference_mode(); use torch.no_grad() (the penalty enables grad itself) "
            "or neither"
        )
    points = tuple(p if p.requires_grad else p.detach().requires_grad_() for p in points)
    with torch.enable_grad():
        total, scale, inv_scale = _critic_total(
            critic, points, critic_args, critic_kwargs, grad_scale
        )
        if not total.requires_grad:
            raise ValueError(
                f"`critic` output does not depend on its input: nothing in it requires grad "
                f"at {what}. The critic must compute its score from the tensors it is given."
            )
        grads = torch.autograd.grad(total, points, create_graph=True, allow_unused=True)
    for i, g in enumerate(grads):
        if g is None:
            which = what if len(points) == 1 else f"input {i} of {what}"
            raise ValueError(
                f"`critic` output does not depend on {which}: autograd found no path from "
                f"that input to the output, so its gradient penalty is undefined."
            )
    return grads, scale, inv_scale


def _input_grads_by_vjp(critic, points, critic_args, critic_kwargs, grad_scale):
    """The input gradients from ``torch.func.vjp``, differentiable by whatever is outside.

    Used inside a ``torch.func`` transform (``torch.func.grad`` over the critic's parameters,
    say), where ``torch.autograd.grad`` cannot see the transform's tensors, and inside
    ``torch.compile``, where ``requires_grad_()`` on the points cannot be traced by every
    supported torch (2.11 refuses it). A vjp composes with autograd, so the result carries
    the critic's double-backward graph as ``autograd.grad(create_graph=True)`` would. (A
    critic that ignores an input gives zeros here instead of the eager path's error.)"""
    found = {}

    def total_of(*xs):
        total, scale, inv_scale = _critic_total(critic, xs, critic_args, critic_kwargs, grad_scale)
        found["scale"] = (scale, inv_scale)
        return total

    total, vjp_fn = torch.func.vjp(total_of, *points)
    grads = vjp_fn(torch.ones_like(total))
    return tuple(grads), *found["scale"]
