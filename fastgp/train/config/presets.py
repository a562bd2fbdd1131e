"""The presets and ``resolve``: how the auto (None) options get their values.

``resolve`` fills every auto field once the dataset is known, so ``config.json`` in a run
directory always holds concrete values:

* toy 2-D sets get the tuned toy preset (``TOY_PRESET``: a small MLP, lambda 0.1 as in the
  WGAN-GP paper's toy code, a faster learning rate decayed linearly to 0, EMA);
* image sets get the paper's image settings (``IMAGE_PRESET``: lambda 10, Adam 1e-4,
  betas (0.0, 0.9), batch 64);
* ``--preset quick`` on images first takes ``QUICK_IMAGE_PRESET`` of the architecture
  (smaller networks, and a step count measured to finish within 15 minutes on 2 CPU
  cores), then the image preset for what it leaves open; toy sets have no quick recipe
  of their own (their default already takes a few CPU minutes);
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

# Tuned on 25gaussians (see README "Training"): gan_toy.py's 512-wide generator, but a
# 128-wide critic (16x cheaper, and the critic's double backward is most of a step);
# lambda 0.1 as gan_toy.py; Adam 1e-3 decayed linearly to 0 (5e-4 reached 51% high-quality
# samples in 3000 steps, 1e-3 about 75%); EMA over the second half.
TOY_PRESET: dict[str, Any] = {
    "arch": "mlp",
    "z_dim": 2,
    "nf": 128,
    "generator_norm": "none",
    "weight": 0.1,
    "lr_g": 1e-3,
    "lr_d": 1e-3,
    "beta1": 0.5,
    "beta2": 0.9,
    "lr_schedule": "linear",
    "batch_size": 256,
    "steps": 3000,
    "ema": 0.999,
}
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
}

# --preset quick on images, per architecture: WGAN-GP (lambda 10, 5 critic steps) with
# half the paper's widths and a step count measured on 2 CPU cores (README "Quick
# preset": the command, the time and the samples).
QUICK_IMAGE_PRESET: dict[str, dict[str, Any]] = {
    "dcgan28": {
        "nf": 32,
        "lr_g": 2e-4,
        "lr_d": 2e-4,
        "beta1": 0.5,
        "lr_schedule": "linear",
        "steps": 1500,
    },
    "dcgan32": {
        "nf": 32,
        "lr_g": 2e-4,
        "lr_d": 2e-4,
        "beta1": 0.5,
        "lr_schedule": "linear",
        "steps": 1500,
    },
    "dcgan64": {
        "nf": 16,
        "lr_g": 2e-4,
        "lr_d": 2e-4,
        "beta1": 0.5,
        "lr_schedule": "linear",
        "steps": 1500,
    },
    "mlp": {"steps": 1500},
}


def _preset_values(cfg: TrainConfig, arch: str) -> dict[str, Any]:
    """The auto values of ``cfg``'s dataset, preset and architecture, most specific first."""
    if is_toy(cfg.dataset):
        return dict(TOY_PRESET)
    if cfg.preset == "quick":
        return {**IMAGE_PRESET, **QUICK_IMAGE_PRESET[arch]}
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
    if values["penalty"] is None:
        values["penalty"] = default_penalty(cfg.objective)
    if values["n_critic"] is None:
        values["n_critic"] = 5 if cfg.objective.startswith("wgan") else 1
    if values["optimizer"] is None:
        values["optimizer"] = "rmsprop" if cfg.objective == "wgan-clip" else "adam"
    if cfg.objective == "wgan-clip":
        # The original WGAN: RMSprop 5e-5 (Arjovsky et al. 2017, Algorithm 1).
        for key in ("lr_g", "lr_d"):
            if cfg.to_dict()[key] is None:
                values[key] = 5e-5
    if values["nf_g"] is None:
        values["nf_g"] = 512 if is_toy(cfg.dataset) else values["nf"]
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
