"""GAN objectives (critic and generator losses) and the critic regularisers around them.

The losses take the critic's raw scores, any shape with the batch first ((B,), (B, 1),
patch maps), and average over every element, in fp32 (fp64 for fp64 scores) so that
bf16/fp16 scores under autocast do not lose the small differences that matter.

Objectives:
    ``wgan-gp``, ``wgan-lp``, ``wgan-clip``: the Wasserstein critic loss
    ``mean(D(fake)) - mean(D(real))`` and generator loss ``-mean(D(fake))``; they differ only
    in how the critic is kept Lipschitz (default penalty ``gp``, ``lp``, or weight clipping).
    ``lsgan`` (Mao et al. 2017, a=0, b=c=1): critic ``0.5 mean((D(real)-1)^2) +
    0.5 mean(D(fake)^2)``, generator ``0.5 mean((D(fake)-1)^2)``.
    ``hinge`` (Miyato et al. 2018): critic ``mean(relu(1-D(real))) + mean(relu(1+D(fake)))``,
    generator ``-mean(D(fake))``.

Penalties (all through ``fastgp``): ``gp`` (WGAN-GP, two-sided, centre 1), ``lp`` (WGAN-LP,
one-sided), ``r1`` (zero-centred on real), ``r2`` (zero-centred on fake), ``dragan``
(around perturbed real data), ``none``. Their random inputs (interpolation weights,
DRAGAN's noise) are drawn by ``draw_penalty`` and handed to ``regularizer``, so the
trainer's critic step draws nothing itself.

Packing (PacGAN, ``pac`` > 1): the critic scores packs of ``pac`` consecutive samples
(``models.pack``), and every penalty is fastgp's with that ``pac``: one gradient norm per
pack (the norm of the pack's concatenated input gradient), and for gp/lp/dragan one
interpolation weight per pack. R1/R2 with packs are the zero-centred penalty on the packs,
``weight / 2 * mean_packs ||grad||^2``.

Default penalty per objective (``default_penalty``): wgan-gp -> gp, wgan-lp -> lp; wgan-clip
-> none (clipping is its constraint); lsgan and hinge -> none, as in their papers (R1 is a
common addition; pass it explicitly). Every penalty may be combined with every objective;
``check_combination`` warns about the two combinations that are almost always a mistake
(a Wasserstein loss with nothing keeping the critic Lipschitz, and weight clipping stacked
on a gradient penalty) but does not forbid them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import fastgp
from fastgp.backends import reference
from fastgp.validation import check_weight

OBJECTIVES = ("wgan-gp", "wgan-lp", "wgan-clip", "lsgan", "hinge")
PENALTIES = ("gp", "lp", "r1", "r2", "dragan", "none")

_WASSERSTEIN = ("wgan-gp", "wgan-lp", "wgan-clip")
_DEFAULT_PENALTY = {
    "wgan-gp": "gp",
    "wgan-lp": "lp",
    "wgan-clip": "none",
    "lsgan": "none",
    "hinge": "none",
}


def check_objective(objective: str) -> str:
    """``objective`` if it is one of ``OBJECTIVES``, else a ValueError listing them."""
    if objective not in OBJECTIVES:
        raise ValueError(f"`objective` must be one of {', '.join(OBJECTIVES)}; got {objective!r}")
    return objective


def check_penalty(kind: str) -> str:
    """``kind`` if it is one of ``PENALTIES``, else a ValueError listing them."""
    if kind not in PENALTIES:
        raise ValueError(f"`penalty` must be one of {', '.join(PENALTIES)}; got {kind!r}")
    return kind


def default_penalty(objective: str) -> str:
    """The regulariser an objective is normally trained with (see the module docstring)."""
    return _DEFAULT_PENALTY[check_objective(objective)]


def check_combination(objective: str, penalty: str, *, warn: bool = True) -> list[str]:
    """Validate an objective/penalty pair; return (and by default warn) the doubts about it.

    Unknown names raise ValueError. Two legal but suspicious pairs give a warning:
    a Wasserstein objective other than wgan-clip with penalty ``none`` (nothing bounds the
    critic, its scores grow without limit) and ``wgan-clip`` with a penalty (clipping and a
    gradient penalty fight each other; WGAN-GP was introduced to replace clipping).
    """
    check_objective(objective)
    check_penalty(penalty)
    doubts = []
    if objective in ("wgan-gp", "wgan-lp") and penalty == "none":
        doubts.append(
            f"objective {objective!r} with penalty 'none': nothing keeps the critic Lipschitz, "
            "so the Wasserstein estimate is unbounded and training usually diverges"
        )
    if objective == "wgan-clip" and penalty != "none":
        doubts.append(
            f"objective 'wgan-clip' with penalty {penalty!r}: weight clipping and a gradient "
            "penalty constrain the critic twice and work against each other"
        )
    if warn:
        for doubt in doubts:
            warnings.warn(doubt, stacklevel=2)
    return doubts


def _scores(d: Tensor, name: str) -> Tensor:
    """Critic scores as a float tensor in the accumulation dtype (fp32, or fp64)."""
    if not isinstance(d, Tensor):
        raise TypeError(f"`{name}` must be a Tensor of critic scores, got {type(d).__name__}")
    if not d.is_floating_point():
        raise TypeError(f"`{name}` must be a floating-point tensor, got dtype {d.dtype}")
    if d.numel() == 0:
        raise ValueError(f"`{name}` is empty (shape {tuple(d.shape)}); need at least one score")
    return d.to(reference.accumulation_dtype(d.dtype))


def critic_loss(objective: str, d_real: Tensor, d_fake: Tensor) -> Tensor:
    """The critic's (discriminator's) loss to minimise, a 0-dim tensor.

    Args:
        objective: one of ``OBJECTIVES``.
        d_real, d_fake: critic scores on real and generated samples, any shape.
    """
    check_objective(objective)
    real, fake = _scores(d_real, "d_real"), _scores(d_fake, "d_fake")
    if objective in _WASSERSTEIN:
        return fake.mean() - real.mean()
    if objective == "lsgan":
        return 0.5 * (real - 1).square().mean() + 0.5 * fake.square().mean()
    return F.relu(1 - real).mean() + F.relu(1 + fake).mean()


def generator_loss(objective: str, d_fake: Tensor) -> Tensor:
    """The generator's loss to minimise, a 0-dim tensor (scores of its samples, any shape)."""
    check_objective(objective)
    fake = _scores(d_fake, "d_fake")
    if objective == "lsgan":
        return 0.5 * (fake - 1).square().mean()
    # The Wasserstein objectives and hinge share the generator loss -E[D(G(z))].
    return -fake.mean()


def wasserstein_estimate(d_real: Tensor, d_fake: Tensor) -> Tensor:
    """``mean(D(real)) - mean(D(fake))``, detached: the critic's estimate of W1."""
    real, fake = _scores(d_real, "d_real"), _scores(d_fake, "d_fake")
    return (real.mean() - fake.mean()).detach()


class PenaltyDraws(NamedTuple):
    """The random inputs of a regulariser, drawn before it runs (``draw_penalty``).

    Attributes:
        alpha: (B // pac,) interpolation weights U[0, 1), one per pack (gp, lp, dragan; pac
            1: one per sample), or None.
        noise: (B, *) U[0, 1), DRAGAN's perturbation before scaling, or None.
    """

    alpha: Tensor | None = None
    noise: Tensor | None = None


def draw_penalty(
    kind: str,
    shape: Sequence[int],
    dtype: torch.dtype,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    pac: int = 1,
) -> PenaltyDraws:
    """Everything ``regularizer(kind, ..., pac=pac)`` needs at random for points of
    ``shape`` and ``dtype``, drawn exactly as fastgp would draw it from ``generator`` (alpha,
    one per pack of ``pac`` samples, then DRAGAN's noise; in the accumulation dtype of
    ``dtype``), so the result is the same whoever draws.

    Draws on the generator's device (``device``, default CPU, with the global RNG).
    """
    check_penalty(kind)
    where = generator.device if generator is not None else device
    acc = reference.accumulation_dtype(dtype)
    alpha = noise = None
    if kind in ("gp", "lp", "dragan"):
        alpha = torch.rand(shape[0] // pac, generator=generator, device=where, dtype=acc)
    if kind == "dragan":
        noise = torch.rand(tuple(shape), generator=generator, device=where, dtype=acc)
    return PenaltyDraws(alpha, noise)


def regularizer(
    kind: str,
    critic: Callable[[Tensor], Tensor],
    real: Tensor,
    fake: Tensor,
    *,
    weight: float,
    grad_scale: float | torch.amp.GradScaler | None = None,
    backend: str = "auto",
    draws: PenaltyDraws | None = None,
    pac: int = 1,
) -> tuple[Tensor, Tensor | None]:
    """The critic regulariser ``kind``, computed by ``fastgp``.

    ``real`` and ``fake`` are detached first: the regulariser is a critic-only term and its
    gradient must not reach the generator (or cost a double backward through it).

    Args:
        kind: one of ``PENALTIES``:
            ``gp``: ``fastgp.gradient_penalty(lambda_gp=weight, center=1)``;
            ``lp``: the same with ``one_sided=True``;
            ``r1``: ``fastgp.r1_penalty(real, gamma=weight)`` = weight/2 * mean ||grad||^2;
            ``r2``: ``fastgp.r2_penalty(fake, gamma=weight)``;
            ``dragan``: ``fastgp.dragan_penalty(real, lambda_gp=weight)``'s points and
            penalty (see below);
            ``none``: a zero.
        critic: maps a (B, *) batch to scores ((B // pac,) for a packed critic).
        real, fake: (B, *) batches of equal shape, dtype and device; B a multiple of pac.
        weight: lambda (gp, lp, dragan) or gamma (r1, r2), >= 0. With lazy regularisation
            the caller multiplies it by the interval.
        grad_scale: a ``GradScaler`` (or its scale) for fp16: the critic output is scaled
            before the input gradient so it does not underflow, and unscaled in the norm.
        backend: ``fastgp`` backend (``auto``, ``triton``, ``cpp``, ``torch``).
        draws: the random inputs from ``draw_penalty`` (on the batches' device, or moved
            there); None draws them here from torch's global RNG.
        pac: the critic's packing (see the module docstring): consecutive groups of
            ``pac`` samples share one gradient norm (and one alpha).

    Returns:
        ``(penalty, norms)``: the 0-dim penalty (fp32, fp64 for fp64 inputs; it requires
        grad through the critic's parameters), and the detached per-pack gradient norms
        (B // pac,), or None for ``none``.
    """
    check_penalty(kind)
    if not isinstance(real, Tensor) or not isinstance(fake, Tensor):
        raise TypeError("`real` and `fake` must be Tensors")
    check_weight(weight, "weight")
    real, fake = real.detach(), fake.detach()
    common = {"grad_scale": grad_scale, "backend": backend, "return_norms": True}
    if kind == "none":
        zero = torch.zeros((), dtype=reference.accumulation_dtype(real.dtype), device=real.device)
        return zero, None
    if kind in ("r1", "r2"):
        points = real if kind == "r1" else fake
        if pac == 1:
            zero_centred = fastgp.r1_penalty if kind == "r1" else fastgp.r2_penalty
            return zero_centred(critic, points, gamma=weight, **common)
        # fastgp's r1/r2_penalty have no `pac`: the same penalty on packs is its gradient
        # penalty at the points themselves (alpha = 1 makes x_hat = points exactly) with
        # centre 0 and weight gamma / 2, the arguments r1_penalty passes to the same kernel.
        return fastgp.gradient_penalty(
            critic,
            points,
            points,
            lambda_gp=weight / 2,
            center=0.0,
            alpha=1.0,
            pac=pac,
            **common,
        )
    if draws is None:
        draws = draw_penalty(kind, real.shape, real.dtype, device=real.device, pac=pac)
    alpha = draws.alpha.to(real.device)
    if kind in ("gp", "lp"):
        return fastgp.gradient_penalty(
            critic,
            real,
            fake,
            lambda_gp=weight,
            center=1.0,
            one_sided=kind == "lp",
            alpha=alpha,
            pac=pac,
            **common,
        )
    # DRAGAN as fastgp.dragan_penalty computes it, x_hat = real + alpha * delta with
    # delta = 0.5 * std(real) * noise, written as the interpolation from real + delta to
    # real so that the noise comes from the caller (dragan_penalty draws it itself).
    with torch.no_grad():
        acc = reference.accumulation_dtype(real.dtype)
        delta = (0.5 * real.to(acc).std() * draws.noise.to(real.device)).to(real.dtype)
    return fastgp.gradient_penalty(
        critic, real + delta, real, lambda_gp=weight, center=1.0, alpha=alpha, pac=pac, **common
    )


def clip_weights(critic: nn.Module | Iterable[Tensor], clip: float) -> None:
    """Clamp every parameter to [-clip, clip] in place (the original WGAN's constraint).

    Args:
        critic: a module (all its parameters) or an iterable of parameters.
        clip: the bound, > 0 (the WGAN paper uses 0.01).
    """
    clip = float(clip)
    if not clip > 0 or clip == float("inf"):
        raise ValueError(f"`clip` must be a finite number > 0, got {clip}")
    params = critic.parameters() if isinstance(critic, nn.Module) else critic
    with torch.no_grad():
        for p in params:
            p.clamp_(-clip, clip)


def drift_penalty(d_real: Tensor, epsilon: float) -> Tensor:
    """ProGAN's epsilon-drift term ``epsilon * mean(D(real)^2)``: keeps scores near 0.

    Karras et al. 2018 use epsilon = 0.001 with WGAN-GP. Returns a 0-dim tensor.
    """
    epsilon = float(epsilon)
    if not epsilon >= 0 or epsilon == float("inf"):
        raise ValueError(f"`epsilon` must be a finite number >= 0, got {epsilon}")
    return epsilon * _scores(d_real, "d_real").square().mean()
