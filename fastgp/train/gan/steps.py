"""The GAN math of training: one critic update and one generator update.

``critic_step`` and ``generator_step`` are the whole objective: losses, the fastgp
regulariser with lazy regularisation, the ProGAN drift term, weight clipping, mixed
precision (autocast, and fp16's ``GradScaler``), replay mixing and DiffAugment. The run
loop (``fastgp.train.run``) owns everything else: cadence, checkpoints, logging, the
non-finite guards, the random streams and the distributed reduction.

Every random tensor a step uses arrives already drawn (``CriticInputs``,
``GeneratorInputs``), so a step uses no ``torch.Generator``; it reads nothing back to the
host (no ``.item()``, ``float(t)`` or ``if tensor:``), and every scalar it reports is a
0-dim tensor on the models' device. (fp16 is the exception: ``GradScaler.step`` reads its
overflow flag on the host, and fastgp reads the scale to remove it in the penalty.)

Each update is two parts: ``critic_gradients`` / ``generator_gradients`` run the networks,
form the losses and return the parameter gradients (``torch.autograd.grad``) without
changing a weight; ``apply_gradients`` sets them, reduces them across processes and steps
the optimiser. The first part is what a compiler can take as one graph (torch 2.13 traces
``autograd.grad`` with ``torch._dynamo.config.trace_autograd_ops``; ``optimizer.step`` and
``zero_grad`` break the graph). ``critic_update`` / ``generator_update`` are both parts in
one function, Adam's update included (``optimizers.adam_update_``), for a CUDA-graph run to
take whole where nothing has to happen between the two (one process, no fp16
``GradScaler``, Adam): ``critic_step_in_graph`` / ``generator_step_in_graph``.

A trainer calls, per generator step (``run.trainer.Trainer.train_step``, with the inputs
drawn by ``run.streams.StepSampler``)::

    for _ in range(n_critic):
        inputs = sampler.critic_inputs(settings.regularises(critic_updates), replay)
        out = critic_step(settings, G, D, opt_d, scaler_d, inputs)
    out = generator_step(settings, G, D, opt_g, scaler_g, sampler.generator_inputs())
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

import fastgp
from fastgp.train.gan.augment import AugmentParams, augment
from fastgp.train.gan.objectives import (
    PenaltyDraws,
    clip_weights,
    critic_loss,
    drift_penalty,
    generator_loss,
    regularizer,
    wasserstein_estimate,
)
from fastgp.train.gan.optimizers import AdamTensors, InGraphAdam, adam_update_
from fastgp.train.gan.replay import replace_samples

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class GanSettings:
    """The constants of a run that the two steps use.

    Attributes:
        objective: one of ``objectives.OBJECTIVES``.
        penalty: one of ``objectives.PENALTIES`` (``none``: no regulariser).
        weight: the penalty's lambda (gp, lp, dragan) or gamma (r1, r2).
        lazy_reg: the penalty is added every ``lazy_reg`` critic updates with weight
            ``weight * lazy_reg`` (StyleGAN2's lazy regularisation; 1: every update).
        drift: ProGAN's epsilon (0: off).
        clip: the weight-clipping bound of ``wgan-clip``; None for other objectives.
        backend: the fastgp backend of the penalty.
        amp_dtype: autocast dtype (bfloat16 or float16), or None for fp32.
        device_type: the models' device type (``cpu``, ``cuda``), for autocast.
        pac: the critic's packing (``models.Critic``): the penalty groups the samples as the
            critic packs them (``objectives.regularizer``'s ``pac``); 1: no packing.
    """

    objective: str
    penalty: str
    weight: float
    lazy_reg: int = 1
    drift: float = 0.0
    clip: float | None = None
    backend: str = "auto"
    amp_dtype: torch.dtype | None = None
    device_type: str = "cpu"
    pac: int = 1

    @classmethod
    def from_config(cls, cfg: Any, device: torch.device) -> GanSettings:
        """The settings of a resolved ``TrainConfig`` for models on ``device``."""
        return cls(
            objective=cfg.objective,
            penalty=cfg.penalty,
            weight=cfg.weight,
            lazy_reg=cfg.lazy_reg,
            drift=cfg.drift,
            clip=cfg.clip if cfg.objective == "wgan-clip" else None,
            backend=cfg.backend,
            amp_dtype=AMP_DTYPES.get(cfg.amp),
            device_type=torch.device(device).type,
            pac=cfg.pac,
        )

    def regularises(self, critic_update: int) -> bool:
        """Whether critic update ``critic_update`` (0-based, counted over the run) adds the
        penalty: every ``lazy_reg``-th one, none with penalty ``none``."""
        return self.penalty != "none" and critic_update % self.lazy_reg == 0

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.amp_dtype)


class CriticInputs(NamedTuple):
    """Everything random a critic update uses, on the models' device.

    Attributes:
        real: (B, *sample_shape) float32 real batch.
        z: (B, z_dim) noise for this update's fakes.
        augment_real, augment_fake: DiffAugment parameters for the real and the fake batch
            (``augment.draw_augment``; empty dicts: no augmentation).
        penalty: the regulariser's draws (``objectives.draw_penalty``); None: no
            regulariser in this update (lazy regularisation, or penalty ``none``).
        replay: ``(swap (B,) bool, replayed (B, *sample_shape))``: the stored fakes that
            replace this update's fakes where ``swap``; None: no replay.
    """

    real: Tensor
    z: Tensor
    augment_real: AugmentParams
    augment_fake: AugmentParams
    penalty: PenaltyDraws | None
    replay: tuple[Tensor, Tensor] | None


class GeneratorInputs(NamedTuple):
    """Everything random a generator update uses: ``z`` (B, z_dim) and the DiffAugment
    parameters ``augment_fake`` of its fakes (empty: none)."""

    z: Tensor
    augment_fake: AugmentParams


class CriticOutput(NamedTuple):
    """What a critic update reports; every tensor is detached, on the models' device.

    Attributes:
        loss: 0-dim fp32, the objective's critic loss (without regulariser or drift).
        wdist: 0-dim fp32, ``mean D(real) - mean D(fake)``.
        penalty: 0-dim fp32, the regulariser as added to the loss (weight x lazy_reg), or
            None when this update had none.
        grad_norms: (B // pac,) per-pack input-gradient norms at the regulariser's points
            (per sample without packing), or None.
        param_grad_norm: 0-dim fp32, the L2 norm of the gradients of the parameters the
            optimiser updates (after ``reduce_gradients``; with fp16 it includes the loss
            scale); None from ``critic_gradients``, which applies nothing.
        fake: (B, *sample_shape) float32, this update's generated samples before replay
            mixing (for the replay buffer).
    """

    loss: Tensor
    wdist: Tensor
    penalty: Tensor | None
    grad_norms: Tensor | None
    param_grad_norm: Tensor | None
    fake: Tensor


class GeneratorOutput(NamedTuple):
    """What a generator update reports: ``loss`` (0-dim fp32) and ``param_grad_norm``
    (0-dim fp32, the generator's, as in ``CriticOutput``), detached."""

    loss: Tensor
    param_grad_norm: Tensor


Gradients = tuple[Tensor | None, ...]  # one per parameter, None where it has none


def no_reduction(module: nn.Module) -> None:
    """The gradient reduction of a single process: nothing to do."""


def critic_gradients(
    settings: GanSettings,
    generator: nn.Module,
    critic: nn.Module,
    params: list[Tensor],
    inputs: CriticInputs,
    loss_scale: Tensor | None = None,
) -> tuple[Gradients, CriticOutput]:
    """The critic's loss on ``inputs.real`` against fresh fakes ``generator(inputs.z)``, its
    regulariser and drift, and the gradients of their sum with respect to ``params`` (the
    critic's), multiplied by ``loss_scale`` (fp16: the GradScaler's scale as a 0-dim tensor,
    ``fastgp.loss_scale``; None: no scaling). Changes no weight and calls no GradScaler
    method: the part of an update ``fastgp.compile_step`` can take whole. The output's
    ``param_grad_norm`` is None (``critic_step`` fills it in)."""
    with torch.no_grad(), settings.autocast():
        fake = generator(inputs.z)
    fake = fake.float()
    shown = fake if inputs.replay is None else replace_samples(fake, *inputs.replay)
    real_in = augment(inputs.real, inputs.augment_real)
    fake_in = augment(shown, inputs.augment_fake)
    with settings.autocast():
        d_real, d_fake = critic(real_in), critic(fake_in)
        loss = critic_loss(settings.objective, d_real, d_fake)
    total = loss
    penalty = grad_norms = None
    if inputs.penalty is not None:
        with settings.autocast():
            penalty, grad_norms = regularizer(
                settings.penalty,
                critic,
                real_in,
                fake_in,
                weight=settings.weight * settings.lazy_reg,
                grad_scale=loss_scale,
                backend=settings.backend,
                draws=inputs.penalty,
                pac=settings.pac,
            )
        total = total + penalty
    if settings.drift > 0:
        total = total + drift_penalty(d_real, settings.drift)
    grads = torch.autograd.grad(_scaled(total, loss_scale), params, allow_unused=True)
    out = CriticOutput(
        loss=loss.detach(),
        wdist=wasserstein_estimate(d_real, d_fake),
        penalty=None if penalty is None else penalty.detach(),
        grad_norms=grad_norms,
        param_grad_norm=None,
        fake=fake,
    )
    return grads, out


def generator_gradients(
    settings: GanSettings,
    generator: nn.Module,
    critic: nn.Module,
    params: list[Tensor],
    inputs: GeneratorInputs,
    loss_scale: Tensor | None = None,
) -> tuple[Gradients, Tensor]:
    """The generator's loss against the current critic and its gradients with respect to
    ``params`` (the generator's), times ``loss_scale`` (as in ``critic_gradients``): ``(gradients,
    loss)``. Only these gradients are computed; the critic's weights get none. Changes no
    weight."""
    with settings.autocast():
        fake = generator(inputs.z)
        loss = generator_loss(settings.objective, critic(augment(fake, inputs.augment_fake)))
    grads = torch.autograd.grad(_scaled(loss, loss_scale), params, allow_unused=True)
    return grads, loss.detach()


def _scaled(loss: Tensor, loss_scale: Tensor | None) -> Tensor:
    # What GradScaler.scale computes, with the scale passed in: torch.compile cannot trace
    # GradScaler's methods.
    return loss if loss_scale is None else loss * loss_scale


def _loss_scale_of(scaler: torch.amp.GradScaler, like: nn.Module) -> Tensor | None:
    """The scaler's scale on ``like``'s device (None: fp32/bf16, no scaling)."""
    if not scaler.is_enabled():
        return None
    return fastgp.loss_scale(scaler, next(like.parameters()).device)


class GradientFunctions(NamedTuple):
    """The two gradient computations a run uses: ``critic_gradients`` and
    ``generator_gradients`` themselves, or their compiled versions (``fastgp train
    --compile``, see ``fastgp.train.run.compiled``)."""

    critic: Callable[..., tuple[Gradients, CriticOutput]]
    generator: Callable[..., tuple[Gradients, Tensor]]


def critic_update(
    settings: GanSettings,
    generator: nn.Module,
    critic: nn.Module,
    params: list[Tensor],
    inputs: CriticInputs,
    adam: AdamTensors,
) -> CriticOutput:
    """``critic_gradients`` and Adam's update of ``params`` with them (``adam``: the
    critic's optimiser's tensors), in one function: a whole critic update that
    ``fastgp.compile_step`` can take as one graph. For one process without a GradScaler
    (nothing has to happen between the gradients and the step). Returns the output with
    ``param_grad_norm`` filled in."""
    grads, out = critic_gradients(settings, generator, critic, params, inputs)
    grad_norm = gradients_norm(grads)
    adam_update_(params, grads, adam)
    return out._replace(param_grad_norm=grad_norm)


def generator_update(
    settings: GanSettings,
    generator: nn.Module,
    critic: nn.Module,
    params: list[Tensor],
    inputs: GeneratorInputs,
    adam: AdamTensors,
) -> GeneratorOutput:
    """``generator_gradients`` and Adam's update of ``params`` with them, in one function
    (as ``critic_update``)."""
    grads, loss = generator_gradients(settings, generator, critic, params, inputs)
    grad_norm = gradients_norm(grads)
    adam_update_(params, grads, adam)
    return GeneratorOutput(loss=loss, param_grad_norm=grad_norm)


class UpdateFunctions(NamedTuple):
    """``critic_update`` and ``generator_update`` as a run calls them: compiled (``fastgp
    train --compile``, see ``fastgp.train.run.compiled``)."""

    critic: Callable[..., CriticOutput]
    generator: Callable[..., GeneratorOutput]


def apply_gradients(
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    params: list[Tensor],
    grads: Gradients,
    module: nn.Module,
    reduce_gradients: Callable[[nn.Module], None] = no_reduction,
) -> Tensor:
    """Set the gradients of ``params`` (``module``'s), reduce them, and step: returns the
    norm of the gradients applied (0-dim fp32; with fp16 it includes the loss scale).

    ``reduce_gradients(module)`` runs between setting the gradients and the optimiser step
    (the distributed all-reduce; nothing in one process).
    """
    for p, g in zip(params, grads, strict=True):
        p.grad = g
    reduce_gradients(module)
    grad_norm = parameter_grad_norm(params)
    scaler.step(optimizer)  # fp16: skipped when the scaled gradients overflowed
    scaler.update()
    return grad_norm


def critic_step(
    settings: GanSettings,
    generator: nn.Module,
    critic: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    inputs: CriticInputs,
    reduce_gradients: Callable[[nn.Module], None] = no_reduction,
    gradients: Callable[..., tuple[Gradients, CriticOutput]] = critic_gradients,
) -> CriticOutput:
    """One critic update: ``gradients`` (``critic_gradients`` or a compiled version), then
    ``apply_gradients``, then (wgan-clip) weight clipping."""
    params = optimized_parameters(optimizer)
    loss_scale = _loss_scale_of(scaler, critic)
    grads, out = gradients(settings, generator, critic, params, inputs, loss_scale)
    grad_norm = apply_gradients(optimizer, scaler, params, grads, critic, reduce_gradients)
    if settings.clip is not None:
        clip_weights(critic, settings.clip)
    return out._replace(param_grad_norm=grad_norm)


def generator_step(
    settings: GanSettings,
    generator: nn.Module,
    critic: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    inputs: GeneratorInputs,
    reduce_gradients: Callable[[nn.Module], None] = no_reduction,
    gradients: Callable[..., tuple[Gradients, Tensor]] = generator_gradients,
) -> GeneratorOutput:
    """One generator update against the current critic (whose weights are not changed):
    ``gradients`` (``generator_gradients`` or a compiled version), then
    ``apply_gradients``."""
    params = optimized_parameters(optimizer)
    loss_scale = _loss_scale_of(scaler, generator)
    grads, loss = gradients(settings, generator, critic, params, inputs, loss_scale)
    grad_norm = apply_gradients(optimizer, scaler, params, grads, generator, reduce_gradients)
    return GeneratorOutput(loss=loss, param_grad_norm=grad_norm)


def critic_step_in_graph(
    settings: GanSettings,
    generator: nn.Module,
    critic: nn.Module,
    adam: InGraphAdam,
    inputs: CriticInputs,
    update: Callable[..., CriticOutput] = critic_update,
) -> CriticOutput:
    """One critic update by ``update`` (``critic_update`` compiled), which steps ``adam``'s
    optimiser itself, then (wgan-clip) weight clipping."""
    params = optimized_parameters(adam.optimizer)
    out = update(settings, generator, critic, params, inputs, adam.tensors())
    if settings.clip is not None:
        clip_weights(critic, settings.clip)
    return out


def generator_step_in_graph(
    settings: GanSettings,
    generator: nn.Module,
    critic: nn.Module,
    adam: InGraphAdam,
    inputs: GeneratorInputs,
    update: Callable[..., GeneratorOutput] = generator_update,
) -> GeneratorOutput:
    """One generator update by ``update`` (``generator_update`` compiled)."""
    params = optimized_parameters(adam.optimizer)
    return update(settings, generator, critic, params, inputs, adam.tensors())


def optimized_parameters(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    """The parameters ``optimizer`` updates (a list walk: cheaper than ``module.parameters``,
    which recurses through the modules on every call)."""
    return [p for group in optimizer.param_groups for p in group["params"]]


def parameter_grad_norm(params: list[Tensor]) -> Tensor:
    """The L2 norm of the gradients of ``params``, 0-dim fp32 on their device (0 when none
    has a gradient), computed without reading anything back to the host."""
    return gradients_norm([p.grad for p in params], params[0].device)


def gradients_norm(grads: Gradients, device: torch.device | None = None) -> Tensor:
    """The L2 norm of ``grads`` taken together (Nones left out), 0-dim fp32 (0 on
    ``device`` when all are None), computed without reading anything back to the host."""
    present = [g for g in grads if g is not None]
    if not present:
        return torch.zeros((), device=device)
    # The norm of the per-tensor norms (one fused kernel per device and dtype on a GPU);
    # torch.nn.utils.get_total_norm computes the same with more Python around it.
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(present))).float()
