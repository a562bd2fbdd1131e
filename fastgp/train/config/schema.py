"""``TrainConfig``: every option of ``fastgp train`` and its default, as plain fields.

None means "auto": the value depends on the data or the objective and is filled in by
``presets.resolve`` once the dataset is known. What each option means, its command-line
type, its choices and its allowed range are in the option table (``options.OPTIONS``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any

SCHEDULES = ("constant", "linear", "cosine", "exponential")
COMPILE_MODES = ("auto", "off", "default", "reduce-overhead", "max-autotune")
AMP_MODES = ("none", "bf16", "fp16")
OPTIMIZERS = ("adam", "rmsprop")
PRESETS = ("default", "quick")


class ConfigError(ValueError):
    """A bad option value or config file; the message names the option."""


@dataclass
class TrainConfig:
    """Every option of ``fastgp train``; None means "auto" (see ``presets.resolve``)."""

    # data
    dataset: str = "25gaussians"
    data_dir: str | None = None
    image_size: int | None = None
    channels: int | None = None
    # recipe of the auto options (presets.py)
    preset: str = "default"
    # models
    arch: str | None = None
    z_dim: int | None = None
    nf: int | None = None
    nf_g: int | None = None
    g_layers: int | None = None
    spectral_norm: bool = False
    critic_norm: str = "none"
    generator_norm: str | None = None
    pac: int = 1
    # objective
    objective: str | None = None
    penalty: str | None = None
    weight: float | None = None
    n_critic: int | None = None
    clip: float = 0.01
    drift: float = 0.0
    lazy_reg: int | None = None
    # optimisation
    optimizer: str | None = None
    lr_g: float | None = None
    lr_d: float | None = None
    beta1: float | None = None
    beta2: float | None = None
    lr_schedule: str | None = None
    lr_warmup: int = 0
    lr_decay_start: int = 0
    lr_decay_rate: float = 0.9995
    batch_size: int | None = None
    steps: int | None = None
    # practices
    ema: float | None = None
    ema_start: int | None = None
    replay_size: int = 0
    replay_prob: float = 0.5
    diffaug: str = "none"
    amp: str = "none"
    # run
    seed: int = 0
    device: str = "auto"
    backend: str = "auto"
    compile: str = "auto"
    threads: int | None = None
    deterministic: bool = False
    log_every: int = 100
    sample_every: int | None = None
    checkpoint_every: int = 1000
    eval_every: int | None = None
    eval_samples: int = 2500
    fid: bool = False
    inception_weights: str | None = None
    keep_last: int = 3
    run_dir: str | None = None
    resume: str | None = None
    progress: bool = True
    tensorboard: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELD_NAMES = tuple(f.name for f in fields(TrainConfig))


def flag(name: str) -> str:
    """The command-line flag of a field: ``lr_g`` -> ``--lr-g``."""
    return "--" + name.replace("_", "-")
