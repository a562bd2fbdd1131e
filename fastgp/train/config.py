"""The trainer's configuration: one dataclass, its command line, its file and its checks.

``TrainConfig`` holds every option of ``fastgp train``. Options whose best value depends on
the data or the objective default to None ("auto") and are filled in by ``resolve`` once
the dataset is known, so ``config.json`` in a run directory always holds concrete values:

* toy 2-D sets get the tuned toy preset (``TOY_PRESET``: a small MLP, lambda 0.1 as in the
  WGAN-GP paper's toy code, a faster learning rate decayed linearly to 0, EMA);
* image sets get the paper's image settings (``IMAGE_PRESET``: lambda 10, Adam 1e-4,
  betas (0.0, 0.9), batch 64);
* ``wgan-clip`` gets the original WGAN's RMSprop 5e-5 and clipping at 0.01; ``lsgan`` and
  ``hinge`` one critic step per generator step.

Precedence, lowest first: these defaults, ``--config FILE`` (TOML or JSON with the same
names as the fields), the saved ``config.json`` of a run being resumed, the flags given on
the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from fastgp.backends import BACKENDS
from fastgp.train.augment import parse_policy
from fastgp.train.data import DATASETS, TOY_DATASETS
from fastgp.train.models import ARCHS, CRITIC_NORMS, GENERATOR_NORMS
from fastgp.train.objectives import OBJECTIVES, PENALTIES, check_combination, default_penalty

CONFIG_FILE = "config.json"
SCHEDULES = ("constant", "linear", "cosine", "exponential")
AMP_MODES = ("none", "bf16", "fp16")
OPTIMIZERS = ("adam", "rmsprop")

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
# Fields that may change when a run is resumed: how long, how often to log, where to run.
RESUMABLE_FIELDS = frozenset(
    {
        "steps",
        "device",
        "backend",
        "threads",
        "log_every",
        "sample_every",
        "checkpoint_every",
        "eval_every",
        "eval_samples",
        "keep_last",
        "progress",
        "tensorboard",
        "run_dir",
        "resume",
    }
)


def _opt(help: str, **extra: Any) -> Any:
    """A dataclass field whose metadata carries the command-line help (and choices)."""
    default = extra.pop("default")
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class TrainConfig:
    """Every option of ``fastgp train``; None means "auto" (see ``resolve``)."""

    # data
    dataset: str = _opt("training data", default="25gaussians", choices=DATASETS)
    data_dir: str | None = _opt(
        "where the files of mnist/folder/npz/npy are (the MNIST/raw/*-ubyte[.gz] layout "
        "torchvision writes, a folder of images, or an array file)",
        default=None,
    )
    image_size: int | None = _opt(
        "resize/crop images to this height = width (auto: native size; folder 64, shapes 32)",
        default=None,
    )
    channels: int | None = _opt("1 or 3 image channels (auto: the data's own)", default=None)
    # models
    arch: str | None = _opt(
        "model pair (auto: mlp for points, dcgan28/32/64 by image size)",
        default=None,
        choices=ARCHS,
    )
    z_dim: int | None = _opt("noise dimension (auto: 2 toy, 128 images)", default=None)
    nf: int | None = _opt(
        "width: MLP hidden size or base conv channels (auto: 128 toy, 64 images)", default=None
    )
    nf_g: int | None = _opt(
        "generator width, if it should differ from the critic's (auto: 512 toy, nf images): "
        "the generator is cheap next to the critic's double backward, and a wide toy "
        "generator learns the sharp jumps between modes sooner",
        default=None,
    )
    spectral_norm: bool = _opt("spectral normalisation on every critic layer", default=False)
    critic_norm: str = _opt(
        "per-sample normalisation in the critic (never batch norm)",
        default="none",
        choices=CRITIC_NORMS,
    )
    generator_norm: str | None = _opt(
        "generator normalisation (auto: none toy, batch images)",
        default=None,
        choices=GENERATOR_NORMS,
    )
    # objective
    objective: str = _opt("GAN objective", default="wgan-gp", choices=OBJECTIVES)
    penalty: str | None = _opt(
        "critic regulariser, computed by fastgp (auto: gp for wgan-gp, lp for wgan-lp, none "
        "otherwise)",
        default=None,
        choices=PENALTIES,
    )
    weight: float | None = _opt(
        "penalty weight: lambda (gp/lp/dragan) or gamma (r1/r2) (auto: 0.1 toy, 10 images)",
        default=None,
    )
    n_critic: int | None = _opt(
        "critic steps per generator step (auto: 5 for wgan-*, 1 for lsgan/hinge)", default=None
    )
    clip: float = _opt("weight clipping bound of wgan-clip", default=0.01)
    drift: float = _opt("ProGAN drift term epsilon * mean(D(real)^2) (0: off)", default=0.0)
    lazy_reg: int = _opt(
        "lazy regularisation (StyleGAN2): apply the penalty every k critic steps with weight*k",
        default=1,
    )
    # optimisation
    optimizer: str | None = _opt(
        "optimizer of both nets (auto: rmsprop for wgan-clip, adam otherwise)",
        default=None,
        choices=OPTIMIZERS,
    )
    lr_g: float | None = _opt("generator learning rate (auto: preset)", default=None)
    lr_d: float | None = _opt("critic learning rate (auto: preset)", default=None)
    beta1: float | None = _opt("Adam beta1 (auto: 0.5 toy, 0.0 images)", default=None)
    beta2: float | None = _opt("Adam beta2 (auto: 0.9)", default=None)
    lr_schedule: str | None = _opt(
        "learning-rate schedule over the generator steps: constant, linear (decay to 0), "
        "cosine (to 0), exponential (x lr_decay_rate per step after lr_decay_start) "
        "(auto: linear toy, constant images)",
        default=None,
        choices=SCHEDULES,
    )
    lr_warmup: int = _opt("linear warm-up steps from 0 to the learning rate", default=0)
    lr_decay_start: int = _opt("step where the exponential decay starts", default=0)
    lr_decay_rate: float = _opt("per-step factor of the exponential schedule", default=0.9995)
    batch_size: int | None = _opt("global batch size (auto: 256 toy, 64 images)", default=None)
    steps: int | None = _opt(
        "generator steps to train (auto: 3000 toy, 20000 images)", default=None
    )
    # practices
    ema: float | None = _opt(
        "decay of the generator's exponential moving average used for samples and eval "
        "(0: off; auto: 0.999)",
        default=None,
    )
    ema_start: int | None = _opt(
        "generator step where the EMA starts averaging; before it the EMA copies the weights "
        "(auto: half the steps, so the average forgets the early, fast-moving weights)",
        default=None,
    )
    replay_size: int = _opt("replay buffer of past fakes shown to the critic (0: off)", default=0)
    replay_prob: float = _opt("chance a fake is swapped for a replayed one", default=0.5)
    diffaug: str = _opt(
        "DiffAugment policy applied to real and fake images, e.g. translation,cutout,flip "
        "(none: off)",
        default="none",
    )
    amp: str = _opt(
        "mixed precision: bf16, or fp16 with a GradScaler whose scale fastgp removes inside "
        "the penalty",
        default="none",
        choices=AMP_MODES,
    )
    # run
    seed: int = _opt("seed of every random draw (same seed, same run)", default=0)
    device: str = _opt(
        "torch device: auto (cuda if available), cpu, cuda, cuda:1...", default="auto"
    )
    backend: str = _opt("fastgp penalty backend", default="auto", choices=("auto", *BACKENDS))
    threads: int | None = _opt(
        "CPU threads for torch (auto: 1 for the toy MLP, whose tiny matrix products lose more "
        "to thread synchronisation than they gain; torch's default for images)",
        default=None,
    )
    deterministic: bool = _opt("torch.use_deterministic_algorithms(True)", default=False)
    log_every: int = _opt("generator steps between metrics.jsonl lines", default=100)
    sample_every: int = _opt("generator steps between sample pictures (0: end only)", default=500)
    checkpoint_every: int = _opt("generator steps between checkpoints (0: end only)", default=1000)
    eval_every: int = _opt("generator steps between evaluations (0: end only)", default=1000)
    eval_samples: int = _opt("samples drawn per evaluation", default=2500)
    keep_last: int = _opt("checkpoints kept", default=3)
    run_dir: str | None = _opt(
        "run directory (auto: runs/<dataset>-<timestamp>); re-running into a directory with a "
        "checkpoint resumes it",
        default=None,
    )
    resume: str | None = _opt("resume the run in this directory exactly", default=None)
    progress: bool = _opt("show a tqdm progress bar", default=True)
    tensorboard: bool = _opt("also log to TensorBoard (when installed)", default=True)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELD_NAMES = tuple(f.name for f in fields(TrainConfig))
_TYPES = {
    f.name: (
        bool
        if "bool" in str(f.type)
        else int
        if "int" in str(f.type)
        else float
        if "float" in str(f.type)
        else str
    )
    for f in fields(TrainConfig)
}


class ConfigError(ValueError):
    """A bad option value or config file; the message names the option."""


# ---------------------------------------------------------------------------- parsing


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    """The ``fastgp train`` parser. Every option defaults to SUPPRESS, so the namespace
    holds only the flags actually given (they override the config file and a resumed run)."""
    parser = argparse.ArgumentParser(
        prog="fastgp train",
        description="Train a GAN with WGAN-GP (or another objective) using fastgp's fused "
        "penalties. With no arguments: 25gaussians, MLP, WGAN-GP, a few minutes on a CPU.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument(
        "--config", metavar="FILE", help="TOML or JSON file of options (field names as below)"
    )
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        kind, default = _TYPES[f.name], getattr(defaults, f.name)
        help_text = f.metadata["help"] + (f" (default: {default})" if default is not None else "")
        help_text = help_text.replace("%", "%%")
        if kind is bool:
            parser.add_argument(
                _flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction, help=help_text
            )
            continue
        parser.add_argument(
            _flag(f.name),
            dest=f.name,
            type=_parser_type(f.name, kind),
            choices=f.metadata.get("choices"),
            metavar=None if "choices" in f.metadata else f.name.upper(),
            help=help_text,
        )
    return parser


def _parser_type(name: str, kind: type):
    def convert(text: str):
        if text.lower() in ("auto", "none") and kind is not str:
            return None
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{_flag(name)} expects {kind.__name__}, got {text!r}"
            ) from None

    convert.__name__ = kind.__name__
    return convert


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Options from a TOML (``.toml``) or JSON file; unknown names are an error."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config: file {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                raise ConfigError(
                    f"--config {path}: TOML needs Python 3.11+; use a JSON file"
                ) from None
            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"--config {path}: cannot parse it: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a table/object of options")
    data = {k.replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(data) - set(FIELD_NAMES))
    if unknown:
        raise ConfigError(f"--config {path}: unknown options {unknown}")
    return data


def parse_args(argv: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(file_options, flag_options)`` from the command line; argparse exits on bad input."""
    namespace = vars(build_parser().parse_args(argv))
    config_file = namespace.pop("config", None)
    file_options = read_config_file(config_file) if config_file else {}
    return file_options, namespace


def merge(*layers: dict[str, Any]) -> TrainConfig:
    """A TrainConfig from the defaults overridden by each layer in turn."""
    values = TrainConfig().to_dict()
    for layer in layers:
        values.update(layer)
    return TrainConfig(**values)


# -------------------------------------------------------------------------- resolution


def is_toy(dataset: str) -> bool:
    return dataset in TOY_DATASETS


def resolve(cfg: TrainConfig, sample_shape: tuple[int, ...] | None = None) -> TrainConfig:
    """Fill every auto (None) field from the presets; ``sample_shape`` picks the arch.

    Returns a new TrainConfig; the input is not changed.
    """
    from fastgp.train.models import default_arch

    values = cfg.to_dict()
    preset = TOY_PRESET if is_toy(cfg.dataset) else IMAGE_PRESET
    for key, value in preset.items():
        if values.get(key) is None:
            values[key] = value
    if values["arch"] is None:
        values["arch"] = default_arch(tuple(sample_shape)) if sample_shape else "mlp"
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


def check(cfg: TrainConfig) -> None:
    """Raise ConfigError naming the first option with a bad value (None = still auto)."""

    def positive(name: str, allow_zero: bool = False) -> None:
        value = getattr(cfg, name)
        if value is None:
            return
        low = 0 if allow_zero else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{_flag(name)} must be an integer >= {low}, got {value!r}")

    def number(name: str, low: float, high: float, *, low_open=False, high_open=False) -> None:
        value = getattr(cfg, name)
        if value is None:
            return
        ok = (
            isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        )
        ok = ok and (value > low if low_open else value >= low)
        ok = ok and (value < high if high_open else value <= high)
        if not ok:
            lo, hi = ("(" if low_open else "[") + f"{low}", f"{high}" + (")" if high_open else "]")
            raise ConfigError(f"{_flag(name)} must be a number in {lo}, {hi}, got {value!r}")

    for name, choices in (
        ("dataset", DATASETS),
        ("arch", ARCHS),
        ("critic_norm", CRITIC_NORMS),
        ("generator_norm", GENERATOR_NORMS),
        ("objective", OBJECTIVES),
        ("penalty", PENALTIES),
        ("optimizer", OPTIMIZERS),
        ("lr_schedule", SCHEDULES),
        ("amp", AMP_MODES),
        ("backend", ("auto", *BACKENDS)),
    ):
        value = getattr(cfg, name)
        if value is not None and value not in choices:
            raise ConfigError(f"{_flag(name)} must be one of {', '.join(choices)}; got {value!r}")
    for name in (
        "image_size", "channels", "z_dim", "nf", "nf_g", "n_critic", "lazy_reg", "batch_size",
        "log_every", "eval_samples", "keep_last", "threads",
    ):  # fmt: skip
        positive(name)
    for name in (
        "steps", "lr_warmup", "lr_decay_start", "ema_start", "replay_size", "sample_every",
        "checkpoint_every", "eval_every",
    ):  # fmt: skip
        positive(name, allow_zero=True)
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int):
        raise ConfigError(f"--seed must be an integer, got {cfg.seed!r}")
    if cfg.channels is not None and cfg.channels not in (1, 3):
        raise ConfigError(f"--channels must be 1 or 3, got {cfg.channels!r}")
    number("weight", 0.0, math.inf, high_open=True)
    number("clip", 0.0, math.inf, low_open=True, high_open=True)
    number("drift", 0.0, math.inf, high_open=True)
    for name in ("lr_g", "lr_d"):
        number(name, 0.0, math.inf, low_open=True, high_open=True)
    for name in ("beta1", "beta2", "ema"):
        number(name, 0.0, 1.0, high_open=True)
    number("lr_decay_rate", 0.0, 1.0, low_open=True)
    number("replay_prob", 0.0, 1.0)
    try:
        parse_policy(cfg.diffaug)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"--diffaug: {e}") from None
    if cfg.diffaug not in ("", "none") and is_toy(cfg.dataset):
        raise ConfigError(
            f"--diffaug {cfg.diffaug!r} needs images; dataset {cfg.dataset!r} is 2-D points"
        )
    if cfg.dataset in ("mnist", "folder", "npz", "npy") and not cfg.data_dir:
        raise ConfigError(f"--data-dir is required for dataset {cfg.dataset!r}")
    if is_toy(cfg.dataset) and (cfg.image_size is not None or cfg.channels is not None):
        raise ConfigError(
            f"--image-size/--channels apply to images; dataset {cfg.dataset!r} is 2-D points"
        )
    if cfg.penalty is not None:
        check_combination(cfg.objective, cfg.penalty, warn=False)


# ------------------------------------------------------------------------- persistence


def save(cfg: TrainConfig, run_dir: str | os.PathLike) -> Path:
    """Write ``run_dir/config.json`` atomically; returns its path."""
    from fastgp.train.checkpoint import atomic_write

    text = json.dumps(cfg.to_dict(), indent=2, sort_keys=True).encode() + b"\n"
    return atomic_write(Path(run_dir) / CONFIG_FILE, lambda f: f.write(text))


def load(run_dir: str | os.PathLike) -> TrainConfig:
    """The TrainConfig saved in ``run_dir/config.json``."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a run directory: it has no {CONFIG_FILE}")
    data = json.loads(path.read_text())
    unknown = sorted(set(data) - set(FIELD_NAMES))
    if unknown:
        raise ConfigError(f"{path}: unknown options {unknown} (written by another version?)")
    return merge(data)


def resume_conflicts(saved: TrainConfig, requested: dict[str, Any]) -> list[str]:
    """Options in ``requested`` that differ from the saved run's and may not change."""
    saved_values = saved.to_dict()
    return [
        f"{_flag(k)}: run has {saved_values[k]!r}, requested {v!r}"
        for k, v in sorted(requested.items())
        if k not in RESUMABLE_FIELDS and v is not None and v != saved_values[k]
    ]
