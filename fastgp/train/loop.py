"""The training loop: n_critic critic steps with a fastgp penalty, then a generator step.

``Trainer(cfg, dataset, ctx, device)`` owns the models, optimisers, EMA, replay buffer,
gradient scalers and one ``torch.Generator`` per random stream, so that
``state_dict()`` captures everything a step depends on and a resumed run continues
bit-identically (same thread count and device assumed). ``Trainer.run()`` trains to
``cfg.steps`` generator steps and returns a ``RunOutcome``.

Random streams (all CPU generators):
    data, noise: seeded identically on every rank; each step draws the *global* batch and
        every rank keeps its own slice, so N ranks see exactly the batch one process would.
    penalty (interpolation weights), augment, replay: one stream per rank.

Stopping: a NaN or inf in a loss, the penalty or a gradient raises ``NonFiniteError``
naming the quantity and the step; nothing is saved after it, so the newest checkpoint is
the last good one. Ctrl-C (SIGINT) sets a flag checked after every generator step: the
step finishes, a checkpoint is written and the run exits cleanly.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fastgp.train import checkpoint as ckpt
from fastgp.train import distributed as dist_utils
from fastgp.train.augment import diff_augment, parse_policy
from fastgp.train.config import TrainConfig
from fastgp.train.data import Dataset
from fastgp.train.ema import EMA
from fastgp.train.metrics import evaluate_generator
from fastgp.train.models import build_models
from fastgp.train.objectives import (
    clip_weights,
    critic_loss,
    drift_penalty,
    generator_loss,
    regularizer,
    wasserstein_estimate,
)
from fastgp.train.plots import save_image_grid, save_loss_curves, save_toy_plot
from fastgp.train.replay import ReplayBuffer
from fastgp.train.run_log import IntervalMeans, RunLog, write_eval

SAMPLES_DIR = "samples"
LOSS_PLOT = "loss_curves.png"
TOY_PLOT_POINTS = 1000  # points per colour in the toy scatter
GRID_IMAGES = 64  # images in a sample grid (8 x 8)
_STREAMS = ("data", "noise", "penalty", "augment", "replay")
_PER_RANK_STREAMS = ("penalty", "augment", "replay")


class NonFiniteError(RuntimeError):
    """A loss, penalty or gradient became NaN/inf; ``quantity`` and ``step`` say where."""

    def __init__(self, quantity: str, step: int, value: float | None = None) -> None:
        self.quantity, self.step = quantity, step
        shown = "" if value is None else f" ({value})"
        super().__init__(f"{quantity} is not finite{shown} in generator step {step}")


@dataclass
class RunOutcome:
    """How ``Trainer.run`` ended: ``status`` is ``finished``, ``interrupted`` or
    ``nonfinite``; ``step`` the last completed generator step."""

    status: str
    step: int
    message: str
    checkpoint: Path | None = None
    evaluation: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return {"finished": 0, "interrupted": 130}.get(self.status, 3)


def stream_seed(seed: int, stream: str, rank: int) -> int:
    """A distinct, reproducible seed for each random stream (and rank, where per rank)."""
    index = _STREAMS.index(stream)
    rank_part = rank if stream in _PER_RANK_STREAMS else 0
    return (seed * 1_000_003 + index * 7_919 + rank_part * 104_729) % (2**63)


def lr_factor(cfg: TrainConfig, step: int) -> float:
    """The learning-rate multiplier at generator step ``step`` (0-based)."""
    factor = 1.0
    if cfg.lr_warmup and step < cfg.lr_warmup:
        factor = (step + 1) / cfg.lr_warmup
    total = max(cfg.steps, 1)
    if cfg.lr_schedule == "linear":
        factor *= max(0.0, 1.0 - step / total)
    elif cfg.lr_schedule == "cosine":
        factor *= 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    elif cfg.lr_schedule == "exponential":
        factor *= cfg.lr_decay_rate ** max(0, step - cfg.lr_decay_start)
    return factor


def build_networks(cfg: TrainConfig, sample_shape: tuple[int, ...]) -> tuple[nn.Module, nn.Module]:
    """``(generator, critic)`` of a resolved config; the generator has width ``nf_g`` (taken
    from a pair built at that width when it differs from the critic's ``nf``)."""
    pair = {
        "spectral_norm": cfg.spectral_norm,
        "critic_norm": cfg.critic_norm,
        "generator_norm": cfg.generator_norm,
    }
    generator, critic = build_models(cfg.arch, sample_shape, cfg.z_dim, cfg.nf, **pair)
    if cfg.nf_g != cfg.nf:
        generator = build_models(cfg.arch, sample_shape, cfg.z_dim, cfg.nf_g, **pair)[0]
    return generator, critic


def _check_finite(quantity: str, value: Tensor, step: int) -> None:
    if not bool(torch.isfinite(value).all()):
        shown = value.detach().float().reshape(-1)[0].item() if value.numel() == 1 else None
        raise NonFiniteError(quantity, step, shown)


def _check_grads(name: str, module: nn.Module, step: int) -> float:
    """Total gradient norm of ``module``; raises NonFiniteError if it is NaN/inf."""
    grads = [p.grad.detach().reshape(-1).float() for p in module.parameters() if p.grad is not None]
    if not grads:
        return 0.0
    norm = torch.linalg.vector_norm(torch.cat(grads))
    if not bool(torch.isfinite(norm)):
        raise NonFiniteError(f"{name} gradient", step)
    return float(norm)


MIN_LOSS_SCALE = 2.0**-16  # below this, fp16 gradients overflow whatever the scale


def _check_scale(name: str, scaler: torch.amp.GradScaler, step: int) -> None:
    """fp16: the scaler skips overflowing steps and halves its scale; a scale that keeps
    falling means the gradients are non-finite at any scale."""
    if scaler.is_enabled() and scaler.get_scale() < MIN_LOSS_SCALE:
        raise NonFiniteError(f"{name} gradient (fp16 loss scale fell below 2**-16)", step)


class _SigintFlag:
    """Catches the first Ctrl-C as a flag (the loop stops cleanly at the next step
    boundary); a second Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        self.raised = False
        self._previous: Any = None

    def _handle(self, signum, frame) -> None:
        self.raised = True
        print(
            "\nCtrl-C: finishing this step and saving a checkpoint (press again to abort)",
            file=sys.stderr,
            flush=True,
        )
        signal.signal(signal.SIGINT, signal.default_int_handler)

    @contextlib.contextmanager
    def installed(self) -> Iterator[_SigintFlag]:
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous = None
        try:
            yield self
        finally:
            if self._previous is not None:
                signal.signal(signal.SIGINT, self._previous)


class Trainer:
    """Everything one training run holds; see the module docstring.

    Args:
        cfg: a resolved TrainConfig (no auto fields).
        dataset: from ``load_dataset``.
        ctx: the distributed context (a single process by default).
        device: where the models live.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        dataset: Dataset,
        ctx: dist_utils.DistContext | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.cfg, self.dataset = cfg, dataset
        self.ctx = ctx or dist_utils.DistContext()
        self.device = torch.device(device)
        if cfg.batch_size % self.ctx.world_size:
            raise ValueError(
                f"--batch-size {cfg.batch_size} must be divisible by the number of processes "
                f"({self.ctx.world_size})"
            )
        self.run_dir = Path(cfg.run_dir)
        self.step = 0
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        self.generator, self.critic = build_networks(cfg, dataset.sample_shape)
        self.generator.to(self.device)
        self.critic.to(self.device)
        dist_utils.broadcast_module(self.generator, self.ctx)
        dist_utils.broadcast_module(self.critic, self.ctx)
        self.opt_g = self._optimizer(self.generator, cfg.lr_g)
        self.opt_d = self._optimizer(self.critic, cfg.lr_d)
        self.rngs = {
            name: torch.Generator().manual_seed(stream_seed(cfg.seed, name, self.ctx.rank))
            for name in _STREAMS
        }
        self.ema = EMA(self.generator, cfg.ema, cfg.ema_start) if cfg.ema > 0 else None
        self.replay = (
            ReplayBuffer(cfg.replay_size, cfg.replay_prob, self.rngs["replay"])
            if cfg.replay_size > 0
            else None
        )
        self.augment = ",".join(parse_policy(cfg.diffaug))
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)
        fp16 = cfg.amp == "fp16"
        self.scaler_d = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.scaler_g = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.means = IntervalMeans()
        self.critic_steps = 0  # critic updates so far (for lazy regularisation)
        # Fixed noise and real points for the pictures: their own generator, so drawing
        # them never moves a training stream.
        fixed = torch.Generator().manual_seed(cfg.seed + 12_345)
        count = TOY_PLOT_POINTS if dataset.kind == "toy" else GRID_IMAGES
        self.fixed_z = torch.randn(count, cfg.z_dim, generator=fixed)
        self.fixed_real = dataset.heldout(count, fixed) if dataset.kind == "toy" else None

    # ------------------------------------------------------------------ construction

    def _optimizer(self, module: nn.Module, lr: float) -> torch.optim.Optimizer:
        if self.cfg.optimizer == "rmsprop":
            return torch.optim.RMSprop(module.parameters(), lr=lr)
        return torch.optim.Adam(module.parameters(), lr=lr, betas=(self.cfg.beta1, self.cfg.beta2))

    @property
    def sampling_model(self) -> nn.Module:
        """The generator used for pictures and evaluation: the EMA copy when enabled."""
        return self.ema.model if self.ema is not None else self.generator

    # ----------------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs (weights_only-loadable). Collective: every rank
        must call it (RNG states and replay buffers are gathered from all ranks)."""
        local = {
            "rng": ckpt.rng_state(*(self.rngs[n] for n in _STREAMS)),
            "replay": self.replay.state_dict() if self.replay is not None else None,
        }
        per_rank = dist_utils.gather_objects(local, self.ctx)
        return {
            "step": self.step,
            "critic_steps": self.critic_steps,
            "world_size": self.ctx.world_size,
            "sample_shape": list(self.dataset.sample_shape),
            "config": self.cfg.to_dict(),
            "generator": self.generator.state_dict(),
            "critic": self.critic.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "scaler_g": self.scaler_g.state_dict(),
            "scaler_d": self.scaler_d.state_dict(),
            "means": self.means.state_dict(),
            "ranks": per_rank,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["world_size"] != self.ctx.world_size:
            raise ValueError(
                f"the checkpoint was written by {state['world_size']} processes, this run has "
                f"{self.ctx.world_size}; resume with the same number of processes"
            )
        self.step = int(state["step"])
        self.critic_steps = int(state["critic_steps"])
        self.generator.load_state_dict(state["generator"])
        self.critic.load_state_dict(state["critic"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        if state["scaler_g"]:
            self.scaler_g.load_state_dict(state["scaler_g"])
        if state["scaler_d"]:
            self.scaler_d.load_state_dict(state["scaler_d"])
        self.means.load_state_dict(state["means"])
        mine = state["ranks"][self.ctx.rank]
        ckpt.restore_rng_state(mine["rng"], *(self.rngs[n] for n in _STREAMS))
        if self.replay is not None and mine["replay"] is not None:
            self.replay.load_state_dict(mine["replay"])

    # ------------------------------------------------------------------------ steps

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _batch_real(self) -> Tensor:
        full = self.dataset.sample(self.cfg.batch_size, self.rngs["data"], "cpu")
        return dist_utils.shard(full, self.ctx).to(self.device)

    def _batch_noise(self) -> Tensor:
        full = torch.randn(self.cfg.batch_size, self.cfg.z_dim, generator=self.rngs["noise"])
        return dist_utils.shard(full, self.ctx).to(self.device)

    def _augmented(self, x: Tensor) -> Tensor:
        return diff_augment(x, self.augment, self.rngs["augment"]) if self.augment else x

    def _set_lr(self) -> tuple[float, float]:
        factor = lr_factor(self.cfg, self.step)
        lr_g, lr_d = self.cfg.lr_g * factor, self.cfg.lr_d * factor
        for group in self.opt_g.param_groups:
            group["lr"] = lr_g
        for group in self.opt_d.param_groups:
            group["lr"] = lr_d
        return lr_g, lr_d

    def critic_step(self) -> dict[str, float]:
        """One critic update on a fresh real batch and fresh fakes; returns its scalars."""
        cfg, step = self.cfg, self.step + 1  # 1-based, as checkpoint numbers
        real = self._batch_real()
        with torch.no_grad(), self._autocast():
            fake = self.generator(self._batch_noise())
        fake = fake.float()
        if self.replay is not None:
            fake = self.replay.mix(fake)
        real_in, fake_in = self._augmented(real), self._augmented(fake)
        with self._autocast():
            d_real, d_fake = self.critic(real_in), self.critic(fake_in)
            loss = critic_loss(cfg.objective, d_real, d_fake)
        scalars = {
            "loss_d": float(loss.detach()),
            "wdist": float(wasserstein_estimate(d_real, d_fake)),
        }
        total = loss
        lazy = cfg.lazy_reg
        if cfg.penalty != "none" and self.critic_steps % lazy == 0:
            with self._autocast():
                penalty, norms = regularizer(
                    cfg.penalty,
                    self.critic,
                    real_in,
                    fake_in,
                    weight=cfg.weight * lazy,
                    grad_scale=self.scaler_d if self.scaler_d.is_enabled() else None,
                    backend=cfg.backend,
                    generator=self.rngs["penalty"],
                )
            total = total + penalty
            # fp16: an overflow of the scaled input gradient is the scaler's to skip.
            if self.scaler_d.is_enabled() and not bool(torch.isfinite(penalty)):
                penalty = None
            else:
                scalars["gp"] = float(penalty.detach()) / lazy
                if norms is not None:
                    scalars["grad_norm_mean"] = float(norms.float().mean())
                    scalars["grad_norm_std"] = float(norms.float().std()) if len(norms) > 1 else 0.0
        else:
            penalty = None
        if cfg.drift > 0:
            total = total + drift_penalty(d_real, cfg.drift)
        self.opt_d.zero_grad(set_to_none=True)
        self.scaler_d.scale(total).backward()
        # Checked after the all-reduce: a NaN on any rank is then in every rank's gradients,
        # so all ranks stop in the same step instead of one waiting in a collective.
        dist_utils.average_gradients(self.critic, self.ctx)
        _check_finite("critic loss", loss, step)
        if penalty is not None:
            _check_finite(f"{cfg.penalty} penalty", penalty, step)
        if not self.scaler_d.is_enabled():  # fp16: inf gradients are the scaler's to skip
            _check_grads("critic", self.critic, step)
        self.scaler_d.step(self.opt_d)
        self.scaler_d.update()
        _check_scale("critic", self.scaler_d, step)
        if cfg.objective == "wgan-clip":
            clip_weights(self.critic, cfg.clip)
        self.critic_steps += 1
        return scalars

    def generator_step(self) -> dict[str, float]:
        """One generator update against the current critic; returns its scalars."""
        step = self.step + 1
        self.critic.requires_grad_(False)  # no critic weight gradients needed here
        try:
            with self._autocast():
                fake = self.generator(self._batch_noise())
                loss = generator_loss(self.cfg.objective, self.critic(self._augmented(fake)))
        finally:
            self.critic.requires_grad_(True)
        self.opt_g.zero_grad(set_to_none=True)
        self.scaler_g.scale(loss).backward()
        dist_utils.average_gradients(self.generator, self.ctx)
        _check_finite("generator loss", loss, step)
        if not self.scaler_g.is_enabled():
            _check_grads("generator", self.generator, step)
        self.scaler_g.step(self.opt_g)
        self.scaler_g.update()
        _check_scale("generator", self.scaler_g, step)
        dist_utils.average_buffers(self.generator, self.ctx)
        if self.ema is not None:
            self.ema.update(self.generator, self.step)
        return {"loss_g": float(loss.detach())}

    def train_step(self) -> dict[str, float]:
        """``n_critic`` critic updates and one generator update (generator step ``step``)."""
        lr_g, lr_d = self._set_lr()
        critic = IntervalMeans()
        for _ in range(self.cfg.n_critic):
            critic.add(self.critic_step())
        scalars = {**critic.means(), **self.generator_step(), "lr_g": lr_g, "lr_d": lr_d}
        self.step += 1
        return scalars

    # ---------------------------------------------------------------------- outputs

    def _params_finite(self) -> bool:
        return all(
            bool(torch.isfinite(p).all())
            for m in (self.generator, self.critic)
            for p in m.parameters()
        )

    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint of the current step (rank 0); refuses non-finite weights."""
        state = self.state_dict()
        if not self.ctx.is_main:
            return None
        if not self._params_finite():
            raise NonFiniteError("a model weight", self.step)  # never saved
        return ckpt.save_checkpoint(self.run_dir, self.step, state, keep_last=self.cfg.keep_last)

    @torch.no_grad()
    def save_pictures(self) -> Path:
        """A sample picture of this step (toy: scatter over the critic's contour)."""
        model = self.sampling_model
        was_training = model.training
        model.eval()
        try:
            fake = model(self.fixed_z.to(self.device)).float().cpu()
        finally:
            model.train(was_training)
        path = self.run_dir / SAMPLES_DIR / f"step-{self.step:08d}.png"
        if self.dataset.kind == "toy":
            critic_was = self.critic.training
            self.critic.eval()
            try:
                save_toy_plot(
                    path,
                    self.fixed_real,
                    fake,
                    critic=self.critic,
                    modes=self.dataset.modes,
                    title=f"{self.cfg.dataset}, step {self.step}",
                )
            finally:
                self.critic.train(critic_was)
        else:
            save_image_grid(path, fake, nrow=8)
        return path

    def evaluate(self) -> dict[str, Any]:
        """``evaluate_generator`` on the sampling model (fixed seed: comparable over steps)."""
        result = evaluate_generator(
            self.sampling_model,
            self.dataset,
            num_samples=self.cfg.eval_samples,
            seed=self.cfg.seed,
            device=self.device,
            critic=self.critic,
        )
        return {
            "step": self.step,
            "model": "ema" if self.ema is not None else "generator",
            **{k: v for k, v in result.items() if k != "mode_counts"},
            **({"mode_counts": result["mode_counts"]} if "mode_counts" in result else {}),
        }

    # -------------------------------------------------------------------------- run

    def run(self, *, resumed: bool = False) -> RunOutcome:
        """Train from ``self.step`` to ``cfg.steps``; see the module docstring."""
        cfg, main = self.cfg, self.ctx.is_main
        log = RunLog(
            self.run_dir,
            enabled=main,
            tensorboard=cfg.tensorboard,
            resume_step=self.step if resumed else None,
        )
        bar = _progress(cfg, self.step, enabled=main and cfg.progress)
        last_saved: Path | None = ckpt.latest_checkpoint(self.run_dir) if main else None
        start_time, start_step = time.perf_counter(), self.step
        interval_time, interval_start = time.perf_counter(), self.step
        evaluation: dict[str, Any] = {}
        sigint = _SigintFlag()
        try:
            with sigint.installed():
                while self.step < cfg.steps:
                    try:
                        scalars = self.train_step()
                    except NonFiniteError as e:  # every rank raises in the same step
                        return self._nonfinite(e, last_saved, log)
                    self.means.add(scalars)
                    step = self.step
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(
                            loss_d=f"{scalars['loss_d']:.3f}",
                            loss_g=f"{scalars['loss_g']:.3f}",
                            w=f"{scalars['wdist']:.3f}",
                            refresh=False,
                        )
                    done = step == cfg.steps
                    if step % cfg.log_every == 0 or done:
                        now = time.perf_counter()
                        rate = (
                            (step - interval_start)
                            * cfg.batch_size
                            / max(now - interval_time, 1e-9)
                        )
                        record = dist_utils.mean_over_ranks(self.means.means(), self.ctx)
                        log.write(
                            {
                                "kind": "train",
                                "step": step,
                                **record,
                                "samples_per_s": rate,
                                "steps_per_s": rate / cfg.batch_size,
                                "time": now - start_time,
                            }
                        )
                        self.means.reset()
                        interval_time, interval_start = now, step
                    if main and ((cfg.sample_every and step % cfg.sample_every == 0) or done):
                        self.save_pictures()
                        save_loss_curves(self.run_dir / LOSS_PLOT, log.records_of("train"))
                    if main and ((cfg.eval_every and step % cfg.eval_every == 0) or done):
                        evaluation = self.evaluate()
                        log.write({"kind": "eval", **evaluation})
                        write_eval(self.run_dir, evaluation)
                    if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or done:
                        last_saved = self.save_checkpoint() or last_saved
                    if dist_utils.any_true(sigint.raised, self.ctx) and not done:
                        last_saved = self.save_checkpoint() or last_saved
                        message = (
                            f"interrupted at step {step}/{cfg.steps}; checkpoint {last_saved}; "
                            f"continue with: fastgp train --resume {self.run_dir}"
                        )
                        return RunOutcome("interrupted", step, message, last_saved, evaluation)
                if start_step == cfg.steps and main:  # nothing left to do
                    last_saved = ckpt.latest_checkpoint(self.run_dir)
        finally:
            if bar is not None:
                bar.close()
            log.close()
        elapsed = time.perf_counter() - start_time
        rate = (self.step - start_step) / max(elapsed, 1e-9)
        message = (
            f"finished {cfg.steps} steps in {elapsed:.1f} s ({rate:.1f} steps/s); "
            f"run directory {self.run_dir}"
        )
        return RunOutcome("finished", self.step, message, last_saved, evaluation)

    def _nonfinite(self, error: NonFiniteError, last_saved: Path | None, log: RunLog) -> RunOutcome:
        kept = f"last good checkpoint kept: {last_saved}" if last_saved else "no checkpoint yet"
        message = (
            f"training stopped: {error}. Nothing was saved after it; {kept}. Lower the learning "
            f"rates, raise the penalty weight, or try --amp none."
        )
        log.write({"kind": "error", "step": error.step, "error": str(error)})
        return RunOutcome("nonfinite", error.step, message, last_saved)


def _progress(cfg: TrainConfig, start: int, *, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=cfg.steps, initial=start, desc="train", unit="step", dynamic_ncols=True)
