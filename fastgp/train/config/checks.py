"""``check(cfg)``: every option's value against its row of the option table, then the rules
that tie options together. The first bad option is reported, by its flag."""

from __future__ import annotations

import math
from typing import Any

from fastgp.train.config.options import OPTIONS, Option
from fastgp.train.config.schema import ConfigError, TrainConfig, flag
from fastgp.train.data import is_toy
from fastgp.train.gan.augment import parse_policy
from fastgp.train.gan.objectives import check_combination

FILE_DATASETS = (
    "mnist",
    "stacked-mnist",
    "folder",
    "npz",
    "npy",
)  # the datasets read from --data-dir


def check(cfg: TrainConfig) -> None:
    """Raise ConfigError naming the first option with a bad value.

    None is accepted where the default is None (auto, or "not given").
    """
    defaults = TrainConfig().to_dict()
    for name, option in OPTIONS.items():
        value = getattr(cfg, name)
        if value is None and defaults[name] is None:
            continue
        _check_value(name, option, value)
    if cfg.channels is not None and cfg.channels not in (1, 3):
        raise ConfigError(f"--channels must be 1 or 3, got {cfg.channels!r}")
    try:
        parse_policy(cfg.diffaug)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"--diffaug: {e}") from None
    toy = is_toy(cfg.dataset)
    if cfg.diffaug not in ("", "none") and toy:
        raise ConfigError(
            f"--diffaug {cfg.diffaug!r} needs images; dataset {cfg.dataset!r} is 2-D points"
        )
    if cfg.fid and toy:
        raise ConfigError(f"--fid needs images; dataset {cfg.dataset!r} is 2-D points")
    if cfg.dataset in FILE_DATASETS and not cfg.data_dir:
        raise ConfigError(f"--data-dir is required for dataset {cfg.dataset!r}")
    if toy and (cfg.image_size is not None or cfg.channels is not None):
        raise ConfigError(
            f"--image-size/--channels apply to images; dataset {cfg.dataset!r} is 2-D points"
        )
    if cfg.arch not in (None, "mlp") and cfg.g_layers not in (None, 3):
        raise ConfigError(
            f"--g-layers applies to --arch mlp (the convnets have a fixed depth); got "
            f"--g-layers {cfg.g_layers} with --arch {cfg.arch}"
        )
    if cfg.penalty is not None and cfg.objective is not None:
        check_combination(cfg.objective, cfg.penalty, warn=False)
    if cfg.batch_size is not None:
        check_packing(cfg.batch_size, cfg.pac)
    if cfg.eval_samples < cfg.pac:
        raise ConfigError(
            f"--eval-samples {cfg.eval_samples} is fewer than one pack of --pac {cfg.pac}: the "
            "evaluation scores the samples with the packed critic"
        )


def check_packing(batch_size: int, pac: int, processes: int = 1) -> None:
    """Raise ConfigError unless each process's share of ``batch_size`` is a whole number of
    packs of ``pac`` samples (the packed critic and the penalty's ``pac`` need it)."""
    per_process = batch_size // processes
    if per_process % pac:
        share = (
            "" if processes == 1 else f"'s share per process ({processes} processes: {per_process})"
        )
        raise ConfigError(
            f"--batch-size {batch_size}{share} must be a multiple of --pac {pac}: the critic "
            f"scores packs of {pac} samples"
        )


def _check_value(name: str, option: Option, value: Any) -> None:
    """One value against its row: type, then choices, then range."""
    if option.choices is not None:
        if value not in option.choices:
            raise ConfigError(
                f"{flag(name)} must be one of {', '.join(option.choices)}; got {value!r}"
            )
    elif option.kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{flag(name)} must be true or false, got {value!r}")
    elif option.kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            low = "" if option.low is None else f" >= {option.low}"
            raise ConfigError(f"{flag(name)} must be an integer{low}, got {value!r}")
        if option.low is not None and value < option.low:
            raise ConfigError(f"{flag(name)} must be an integer >= {option.low}, got {value!r}")
    elif option.kind is float:
        if not _in_range(value, option):
            low, high = option.interval[0] + f"{option.low}", f"{option.high}" + option.interval[1]
            raise ConfigError(f"{flag(name)} must be a number in {low}, {high}, got {value!r}")
    elif not isinstance(value, str):
        raise ConfigError(f"{flag(name)} must be a string, got {value!r}")


def _in_range(value: Any, option: Option) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    low = -math.inf if option.low is None else option.low
    high = math.inf if option.high is None else option.high
    above = value > low if option.interval[0] == "(" else value >= low
    below = value < high if option.interval[1] == ")" else value <= high
    return above and below
