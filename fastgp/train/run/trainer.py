"""Everything one training run holds, and one generator step of it.

``Trainer(cfg, dataset, ctx)`` owns the models, optimisers, EMA, replay buffer, gradient
scalers, the random streams (``streams.RandomStreams``), the non-finite guard and the
interval means, so that ``state_dict()`` captures everything a step depends on and a
resumed run continues bit-identically (same thread count and device assumed).

``train_step()`` draws the random inputs, runs ``n_critic`` critic updates and one
generator update (``gan.steps``), hands their results to the guard and the means, and
reads nothing back to the host: the run loop (``loop.run_training``) calls
``check_finite`` and ``read_interval_means`` when it has something to write.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fastgp.train.config import TrainConfig
from fastgp.train.config.checks import check_packing
from fastgp.train.data import Dataset
from fastgp.train.evaluation.classifier import (
    CLASSIFIER_DIR,
    TrainedClassifier,
    load_or_train_classifier,
)
from fastgp.train.evaluation.metrics import evaluate_generator
from fastgp.train.evaluation.plots import save_image_grid, save_toy_plot
from fastgp.train.gan.ema import EMA
from fastgp.train.gan.optimizers import build_optimizer
from fastgp.train.gan.replay import ReplayBuffer
from fastgp.train.gan.steps import (
    CriticInputs,
    CriticOutput,
    GanSettings,
    GeneratorInputs,
    GeneratorOutput,
    GradientFunctions,
    critic_gradients,
    critic_step,
    critic_step_in_graph,
    generator_gradients,
    generator_step,
    generator_step_in_graph,
)
from fastgp.train.models import build_networks, sample_scores
from fastgp.train.run import checkpoint as ckpt
from fastgp.train.run import distributed as dist_utils
from fastgp.train.run.compiled import compiled_steps, in_graph_optimizers, resolve_compile
from fastgp.train.run.guards import FiniteGuard, NonFiniteError, critic_checks, generator_checks
from fastgp.train.run.run_log import IntervalMeans
from fastgp.train.run.streams import RandomStreams, StepSampler

SAMPLES_DIR = "samples"
CRITIC_SCALARS = ("loss_d", "wdist")  # logged for every critic update
PENALTY_SCALARS = ("gp", "grad_norm_mean", "grad_norm_std")  # ... where a penalty ran
TOY_PLOT_POINTS = 1000  # points per colour in the toy scatter
GRID_IMAGES = 64  # images in a sample grid (8 x 8)
# The EMA copy's batch-norm statistics come from this many noise samples (BigGAN's standing
# statistics); 4 forward passes of 256, a fraction of a second for the image generators here.
EMA_STATISTICS_SAMPLES = 1024
EMA_STATISTICS_BATCH = 256


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


class Trainer:
    """Everything one training run holds; see the module docstring.

    Args:
        cfg: a resolved TrainConfig (no auto fields).
        dataset: from ``load_dataset``.
        ctx: the distributed context (a single process on the CPU by default); the models
            live on ``ctx.device``.
    """

    def __init__(
        self, cfg: TrainConfig, dataset: Dataset, ctx: dist_utils.DistContext | None = None
    ) -> None:
        self.cfg, self.dataset = cfg, dataset
        self.ctx = ctx or dist_utils.DistContext()
        self.device = self.ctx.device
        if cfg.batch_size % self.ctx.world_size:
            raise ValueError(
                f"--batch-size {cfg.batch_size} must be divisible by the number of processes "
                f"({self.ctx.world_size})"
            )
        check_packing(cfg.batch_size, cfg.pac, self.ctx.world_size)
        self.inception_weights = None
        if cfg.fid:  # before any training: a missing library or file is found now
            from fastgp.train.evaluation.fidelity import FidelityUnavailable, check_available

            try:
                self.inception_weights = str(check_available(cfg.inception_weights))
            except FidelityUnavailable as e:
                raise ValueError(f"--fid: {e}") from None
        self.run_dir = Path(cfg.run_dir)
        self.step = 0
        self.critic_steps = 0  # critic updates so far (for lazy regularisation)
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        self.generator, self.critic = build_networks(cfg, dataset.sample_shape)
        self.generator.to(self.device)
        self.critic.to(self.device)
        dist_utils.broadcast_module(self.generator, self.ctx)
        dist_utils.broadcast_module(self.critic, self.ctx)
        self.opt_g = self._optimizer(self.generator, cfg.lr_g)
        self.opt_d = self._optimizer(self.critic, cfg.lr_d)
        self.settings = GanSettings.from_config(cfg, self.device)
        # --compile: "off" or a torch.compile mode, and why (ValueError if refused).
        self.compile_mode, self.compile_reason = resolve_compile(cfg, self.device)
        self.compiled = compiled_steps(self.compile_mode)
        fp16 = cfg.amp == "fp16"
        self.gradients = (
            GradientFunctions(critic_gradients, generator_gradients)
            if self.compiled is None
            else self.compiled.gradients
        )
        # (critic's, generator's) when a compiled update steps Adam inside its graph.
        self.in_graph, how = in_graph_optimizers(
            self.compile_mode, (self.opt_d, self.opt_g), world_size=self.ctx.world_size, fp16=fp16
        )
        if how:
            self.compile_reason += f"; {how}"
        self.scaler_d = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.scaler_g = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.ema = EMA(self.generator, cfg.ema, cfg.ema_start) if cfg.ema > 0 else None
        self.replay = ReplayBuffer(cfg.replay_size, cfg.replay_prob) if cfg.replay_size else None
        self.streams = RandomStreams(cfg.seed, self.ctx.rank)
        self.sampler = StepSampler(
            self.streams,
            dataset,
            batch_size=cfg.batch_size,
            z_dim=cfg.z_dim,
            diffaug=cfg.diffaug,
            penalty=cfg.penalty,
            ctx=self.ctx,
            pac=cfg.pac,
        )
        self.guard = FiniteGuard(self.device)
        self.means = IntervalMeans(self.device)  # since the last log line
        self._critic_means = IntervalMeans(self.device)  # of one generator step
        divisors = [1.0, 1.0, float(cfg.lazy_reg), 1.0, 1.0]
        self._scalar_divisors = torch.tensor(divisors, dtype=torch.float64, device=self.device)
        # Fixed noise and real points for the pictures: their own generator, so drawing
        # them never moves a training stream.
        fixed = torch.Generator().manual_seed(cfg.seed + 12_345)
        count = TOY_PLOT_POINTS if dataset.kind == "toy" else GRID_IMAGES
        self.fixed_z = torch.randn(count, cfg.z_dim, generator=fixed)
        self.fixed_real = dataset.heldout(count, fixed) if dataset.kind == "toy" else None
        self.classifier: TrainedClassifier | None = None  # of a labelled image set

    def _optimizer(self, module: nn.Module, lr: float) -> torch.optim.Optimizer:
        return build_optimizer(
            self.cfg.optimizer, module.parameters(), lr, (self.cfg.beta1, self.cfg.beta2)
        )

    @property
    def sampling_model(self) -> nn.Module:
        """The generator used for pictures and evaluation: the EMA copy when enabled, with
        batch-norm statistics of its own weights."""
        if self.ema is None:
            return self.generator
        self._refresh_ema_statistics()
        return self.ema.model

    def _refresh_ema_statistics(self) -> None:
        """Recompute the EMA copy's batch-norm statistics when ``update`` has copied the
        live ones (at most once per step; a no-op without batch norm), from noise of its own
        generator so that no training stream moves: checkpoints, pictures and evaluations
        all see the same copy."""
        if not self.ema.norm_statistics_stale:
            return
        noise = torch.Generator().manual_seed(self.cfg.seed + 54_321 + self.step)
        shape = (EMA_STATISTICS_BATCH, self.cfg.z_dim)
        batches = (
            torch.randn(shape, generator=noise, device="cpu").to(self.device)
            for _ in range(EMA_STATISTICS_SAMPLES // EMA_STATISTICS_BATCH)
        )
        self.ema.recompute_norm_statistics(batches)

    # ----------------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs (weights_only-loadable). Collective: every rank
        must call it (RNG states and replay buffers are gathered from all ranks)."""
        local = {
            "rng": self.streams.state_dict(),
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
            "ema": self._ema_state(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "scaler_g": self.scaler_g.state_dict(),
            "scaler_d": self.scaler_d.state_dict(),
            "means": self.means.state_dict(),
            "ranks": per_rank,
        }

    def _ema_state(self) -> dict[str, Any] | None:
        if self.ema is None:
            return None
        self._refresh_ema_statistics()  # what `fastgp sample` / `fastgp eval` will use
        return self.ema.state_dict()

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
        self.streams.load_state_dict(mine["rng"])
        if self.replay is not None and mine["replay"] is not None:
            self.replay.load_state_dict(mine["replay"])
            self.replay.to(self.device)

    # ------------------------------------------------------------------------ steps

    def _set_lr(self) -> tuple[float, float]:
        factor = lr_factor(self.cfg, self.step)
        lr_g, lr_d = self.cfg.lr_g * factor, self.cfg.lr_d * factor
        for group in self.opt_g.param_groups:
            group["lr"] = lr_g
        for group in self.opt_d.param_groups:
            group["lr"] = lr_d
        return lr_g, lr_d

    def _reduce_gradients(self, module: nn.Module) -> None:
        dist_utils.average_gradients(module, self.ctx)

    def _add_critic_scalars(self, out: CriticOutput) -> None:
        """The logged scalars of a critic update, into this generator step's means: the
        losses and, when it ran, the penalty per update (``gp``: its weight without the
        lazy-regularisation factor) and the input-gradient norms. With fp16 the penalty's
        are left out when the scaled penalty overflowed (a step the scaler skips)."""
        if out.penalty is None:
            self._critic_means.add_vector(CRITIC_SCALARS, torch.stack([out.loss, out.wdist]))
            return
        norms = out.grad_norms.float()
        spread = norms.std() if len(norms) > 1 else torch.zeros_like(norms[0])
        values = torch.stack([out.loss, out.wdist, out.penalty, norms.mean(), spread])
        # In float64, as the scalars always were: gp = penalty / lazy_reg, the rest / 1.
        values = values.to(torch.float64) / self._scalar_divisors
        valid = None
        if self.scaler_d.is_enabled():
            finite = torch.isfinite(out.penalty).expand(len(PENALTY_SCALARS))
            valid = torch.cat([finite.new_ones(len(CRITIC_SCALARS)), finite])
        self._critic_means.add_vector(CRITIC_SCALARS + PENALTY_SCALARS, values, valid)

    def _critic_update(self, inputs: CriticInputs) -> CriticOutput:
        if self.in_graph is not None:  # compiled, Adam's step inside the graph
            return critic_step_in_graph(
                self.settings,
                self.generator,
                self.critic,
                self.in_graph[0],
                inputs,
                self.compiled.updates.critic,
            )
        return critic_step(
            self.settings,
            self.generator,
            self.critic,
            self.opt_d,
            self.scaler_d,
            inputs,
            self._reduce_gradients,
            self.gradients.critic,
        )

    def _generator_update(self, inputs: GeneratorInputs) -> GeneratorOutput:
        if self.in_graph is not None:
            return generator_step_in_graph(
                self.settings,
                self.generator,
                self.critic,
                self.in_graph[1],
                inputs,
                self.compiled.updates.generator,
            )
        return generator_step(
            self.settings,
            self.generator,
            self.critic,
            self.opt_g,
            self.scaler_g,
            inputs,
            self._reduce_gradients,
            self.gradients.generator,
        )

    def train_step(self) -> dict[str, Tensor | float]:
        """``n_critic`` critic updates and one generator update (generator step
        ``step + 1``); returns the step's scalars (0-dim device tensors; the learning
        rates as floats), having read nothing back to the host."""
        step = self.step + 1  # 1-based, as checkpoint numbers
        lr_g, lr_d = self._set_lr()
        self._critic_means.zero_()
        checks = []  # observed together after the generator update: one record per step
        penalised = False
        for _ in range(self.cfg.n_critic):
            inputs = self.sampler.critic_inputs(
                self.settings.regularises(self.critic_steps), self.replay
            )
            out = self._critic_update(inputs)
            if self.replay is not None:
                self.replay.store(out.fake)
            # After the all-reduce: a NaN on any rank is then in every rank's gradients.
            checks += critic_checks(out, self.settings.penalty, self.scaler_d)
            self._add_critic_scalars(out)
            penalised = penalised or out.penalty is not None
            self.critic_steps += 1
        out_g = self._generator_update(self.sampler.generator_inputs())
        checks += generator_checks(out_g, self.scaler_g)
        self.guard.observe(step, checks)
        dist_utils.average_buffers(self.generator, self.ctx)
        if self.ema is not None:
            self.ema.update(self.generator, self.step)
        # Per generator step the mean over its critic updates, as the log has always shown.
        self.means.add_means(self._critic_means)
        self.means.add({"loss_g": out_g.loss, "lr_g": lr_g, "lr_d": lr_d})
        self.step += 1
        means, _ = self._critic_means.mean_tensors()
        shown = PENALTY_SCALARS if penalised else ()
        critic = {k: v for k, v in means.items() if k in CRITIC_SCALARS + shown}
        return {**critic, "loss_g": out_g.loss, "lr_g": lr_g, "lr_d": lr_d}

    # ---------------------------------------------------------------- host reads

    def take_compile_seconds(self) -> tuple[float, int]:
        """(seconds, graphs) spent compiling since the last call; (0, 0) when eager."""
        return (0.0, 0) if self.compiled is None else self.compiled.take_compile_seconds()

    def check_finite(self) -> None:
        """Raise NonFiniteError for the first check that failed since the run started, on
        any rank (one host read; a collective with several processes)."""
        failure = self.guard.read()
        if self.ctx.enabled:
            failures = [f for f in dist_utils.gather_objects(failure, self.ctx) if f is not None]
            failure = min(failures, key=lambda f: f.order) if failures else None
        if failure is not None:
            raise NonFiniteError(failure.quantity, failure.step, failure.value)

    def read_interval_means(self) -> dict[str, float]:
        """The means since the last call, averaged over the ranks where they counted, by
        key, then reset (one host read; a collective with several processes)."""
        keys, packed = self.means.mean_vector()
        self.means.zero_()  # keeps the slots: the next interval allocates nothing
        if not keys:
            return {}
        values = dist_utils.sum_over_ranks(packed, self.ctx).tolist()
        n = len(keys)
        means = {k: values[i] / values[n + i] for i, k in enumerate(keys) if values[n + i] > 0}
        return dict(sorted(means.items()))

    # ---------------------------------------------------------------------- outputs

    def _params_finite(self) -> bool:
        params = [p for m in (self.generator, self.critic) for p in m.parameters()]
        return bool(torch.stack([torch.isfinite(p).all() for p in params]).all())

    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint of the current step (rank 0). Collective. Raises
        NonFiniteError, writing nothing, if any value so far was not finite."""
        self.check_finite()
        if not self._params_finite():  # every rank: they hold the same weights
            raise NonFiniteError("a model weight", self.step)  # never saved
        state = self.state_dict()
        if not self.ctx.is_main:
            return None
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
                    critic=sample_scores(self.critic),
                    modes=self.dataset.modes,
                    title=f"{self.cfg.dataset}, step {self.step}",
                )
            finally:
                self.critic.train(critic_was)
        else:
            save_image_grid(path, fake, nrow=8)
        return path

    def prepare_classifier(self) -> dict[str, Any] | None:
        """Load (or train, once, into ``RUN/classifier/``) the classifier behind the class
        metrics of a labelled image set; returns the ``classifier`` log record (how long it
        took, whether it was cached, its held-out accuracy), or None when there is nothing
        to prepare. The run loop calls it before its clock starts, so step times leave it out.
        """
        if self.dataset.labelled is None or self.classifier is not None:
            return None
        self.classifier = load_or_train_classifier(
            self.dataset.labelled, self.run_dir / CLASSIFIER_DIR, seed=self.cfg.seed
        )
        return {
            "kind": "classifier",
            "step": self.step,
            "seconds": self.classifier.seconds,
            "cached": self.classifier.cached,
            "heldout_accuracy": self.classifier.heldout_accuracy,
        }

    def evaluate(self) -> dict[str, Any]:
        """``evaluate_generator`` on the sampling model (fixed seed: comparable over steps),
        with the class metrics of a labelled image set."""
        self.prepare_classifier()
        result = evaluate_generator(
            self.sampling_model,
            self.dataset,
            num_samples=self.cfg.eval_samples,
            seed=self.cfg.seed,
            device=self.device,
            critic=self.critic,
            classifier=self.classifier,
            fidelity=self.cfg.fid,
            inception_weights=self.inception_weights,
        )
        return {
            "step": self.step,
            "model": "ema" if self.ema is not None else "generator",
            **{k: v for k, v in result.items() if k != "mode_counts"},
            **({"mode_counts": result["mode_counts"]} if "mode_counts" in result else {}),
        }
