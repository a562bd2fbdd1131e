"""The option table of ``fastgp train`` and the command line built from it.

``OPTIONS`` has one row per ``TrainConfig`` field, in field order: the type its text is
parsed as, the help, the choices, the allowed range, and whether a resumed run may change
it. The parser (``build_parser``) and the checks (``checks.check``) read the same rows, so
adding an option is one row here, one field in ``schema.TrainConfig``, and its use.

Flags: every option defaults to SUPPRESS, so the parsed namespace holds only the flags
actually given (they override the config file and a resumed run). ``auto``/``none`` give
None (auto) for options that are not strings; booleans are ``--x`` / ``--no-x``.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any

from fastgp.backends import BACKENDS
from fastgp.train.config.schema import (
    AMP_MODES,
    COMPILE_MODES,
    FIELD_NAMES,
    OPTIMIZERS,
    PRESETS,
    SCHEDULES,
    TrainConfig,
    flag,
)
from fastgp.train.data import DATASETS
from fastgp.train.gan.objectives import OBJECTIVES, PENALTIES
from fastgp.train.models import ARCHS, CRITIC_NORMS, GENERATOR_NORMS


@dataclass(frozen=True)
class Option:
    """One row of the option table.

    Attributes:
        kind: ``bool``, ``int``, ``float`` or ``str``: what the value must be.
        help: the ``--help`` text (the default is appended when it is not auto).
        choices: the allowed values, or None for any.
        low, high: the allowed range of a number (None: unbounded); integers are checked
            against ``low`` only.
        interval: which ends of ``[low, high]`` are included, as in ``"[)"``.
        resumable: a resumed run may change it (how long, how often to log, where to run).
    """

    kind: type
    help: str
    choices: tuple[str, ...] | None = None
    low: float | None = None
    high: float | None = None
    interval: str = "[]"
    resumable: bool = False


def _count(help: str, low: int = 1, **extra: Any) -> Option:
    """An integer option that must be >= ``low``."""
    return Option(int, help, low=low, **extra)


def _number(help: str, low: float, high: float, interval: str) -> Option:
    """A number option in ``low``..``high``, ``interval`` saying which ends are allowed."""
    return Option(float, help, low=low, high=high, interval=interval)


_POSITIVE, _FRACTION = (0.0, math.inf, "()"), (0.0, 1.0, "[)")

OPTIONS: dict[str, Option] = {
    # data
    "dataset": Option(str, "training data", choices=DATASETS),
    "data_dir": Option(
        str,
        "where the files of mnist/folder/npz/npy are (the MNIST/raw/*-ubyte[.gz] layout "
        "torchvision writes, a folder of images, or an array file)",
    ),
    "image_size": _count(
        "resize/crop images to this height = width (auto: native size; folder 64, shapes 32)"
    ),
    "channels": _count("1 or 3 image channels (auto: the data's own)"),
    # recipe
    "preset": Option(
        str,
        "where the auto options come from: default (toy sets: the tuned toy recipe; images: "
        "the WGAN-GP paper's settings) or quick (images: smaller networks and a step count "
        "measured to finish within 15 minutes on 2 CPU cores; toy sets: the default, which "
        "already takes a few CPU minutes)",
        choices=PRESETS,
    ),
    # models
    "arch": Option(
        str, "model pair (auto: mlp for points, dcgan28/32/64 by image size)", choices=ARCHS
    ),
    "z_dim": _count("noise dimension (auto: 2 toy, 128 images)"),
    "nf": _count("width: MLP hidden size or base conv channels (auto: 128 toy, 64 images)"),
    "nf_g": _count(
        "generator width, if it should differ from the critic's (auto: 256 toy, nf images): "
        "the generator is cheap next to the critic's double backward, and a wide toy "
        "generator learns the sharp jumps between modes sooner"
    ),
    "g_layers": _count(
        "hidden layers of the MLP generator (auto: 4 toy, 3 otherwise; the convnets have "
        "their fixed depth): depth lets a 2-D-noise generator jump between modes more sharply",
        low=3,
    ),
    "spectral_norm": Option(bool, "spectral normalisation on every critic layer"),
    "critic_norm": Option(
        str, "per-sample normalisation in the critic (never batch norm)", choices=CRITIC_NORMS
    ),
    "generator_norm": Option(
        str, "generator normalisation (auto: none toy, batch images)", choices=GENERATOR_NORMS
    ),
    "pac": _count(
        "PacGAN packing: the critic scores packs of PAC consecutive samples (real with real, "
        "fake with fake), concatenated along the features (channels of images); the penalty "
        "takes one interpolation weight and one gradient norm per pack (fastgp's pac). "
        "--batch-size (each process's share) must be a multiple of it; 1: no packing"
    ),
    # objective
    "objective": Option(
        str,
        "GAN objective (auto: wgan-gp; hinge with --penalty r1 for --preset quick on dcgan28, "
        "the recipe measured best there)",
        choices=OBJECTIVES,
    ),
    "penalty": Option(
        str,
        "critic regulariser, computed by fastgp (auto: gp for wgan-gp, lp for wgan-lp, r1 for "
        "--preset quick on dcgan28, none otherwise)",
        choices=PENALTIES,
    ),
    "weight": _number(
        "penalty weight: lambda (gp/lp/dragan) or gamma (r1/r2) (auto: 1 toy, 10 images, 3 "
        "for the r1 of --preset quick on dcgan28)",
        0.0,
        math.inf,
        "[)",
    ),
    "n_critic": _count("critic steps per generator step (auto: 5 for wgan-*, 1 for lsgan/hinge)"),
    "clip": _number("weight clipping bound of wgan-clip", *_POSITIVE),
    "drift": _number("ProGAN drift term epsilon * mean(D(real)^2) (0: off)", 0.0, math.inf, "[)"),
    "lazy_reg": _count(
        "lazy regularisation (StyleGAN2): apply the penalty every k critic steps with weight*k "
        "(auto: 4 with --preset quick for dcgan28, else 1)"
    ),
    # optimisation
    "optimizer": Option(
        str,
        "optimizer of both nets (auto: rmsprop for wgan-clip, adam otherwise)",
        choices=OPTIMIZERS,
    ),
    "lr_g": _number("generator learning rate (auto: preset)", *_POSITIVE),
    "lr_d": _number("critic learning rate (auto: preset)", *_POSITIVE),
    "beta1": _number("Adam beta1 (auto: 0.5 toy, 0.0 images)", *_FRACTION),
    "beta2": _number("Adam beta2 (auto: 0.9)", *_FRACTION),
    "lr_schedule": Option(
        str,
        "learning-rate schedule over the generator steps: constant, linear (decay to 0), "
        "cosine (to 0), exponential (x lr_decay_rate per step after lr_decay_start) "
        "(auto: linear toy, constant images)",
        choices=SCHEDULES,
    ),
    "lr_warmup": _count("linear warm-up steps from 0 to the learning rate", low=0),
    "lr_decay_start": _count("step where the exponential decay starts", low=0),
    "lr_decay_rate": _number("per-step factor of the exponential schedule", 0.0, 1.0, "(]"),
    "batch_size": _count("global batch size (auto: 256 toy, 64 images)"),
    "steps": _count(
        "generator steps to train (auto: 3000 toy, 20000 images)", low=0, resumable=True
    ),
    # practices
    "ema": _number(
        "decay of the generator's exponential moving average used for samples and eval "
        "(0: off; auto: 0.999)",
        *_FRACTION,
    ),
    "ema_start": _count(
        "generator step where the EMA starts averaging; before it the EMA copies the weights "
        "(auto: half the steps, so the average forgets the early, fast-moving weights)",
        low=0,
    ),
    "replay_size": _count("replay buffer of past fakes shown to the critic (0: off)", low=0),
    "replay_prob": _number("chance a fake is swapped for a replayed one", 0.0, 1.0, "[]"),
    "diffaug": Option(
        str,
        "DiffAugment policy applied to real and fake images, e.g. translation,cutout,flip "
        "(none: off)",
    ),
    "amp": Option(
        str,
        "mixed precision: bf16, or fp16 with a GradScaler whose scale fastgp removes inside "
        "the penalty",
        choices=AMP_MODES,
    ),
    # run
    "seed": Option(int, "seed of every random draw (same seed, same run)"),
    "device": Option(
        str,
        "torch device: auto (cuda if available), cpu, cuda, cuda:1...; under torchrun each "
        "process takes cuda:LOCAL_RANK",
        resumable=True,
    ),
    "backend": Option(str, "fastgp penalty backend", choices=("auto", *BACKENDS), resumable=True),
    "compile": Option(
        str,
        "compile each update's gradient computation (fastgp.compile_step; torch.compile's "
        "modes): auto compiles where it was measured faster (the toy MLP on CPU) and says "
        "what it chose; off runs eagerly",
        choices=COMPILE_MODES,
        resumable=True,
    ),
    "threads": _count(
        "CPU threads for torch (auto: 1 for the toy MLP, whose tiny matrix products lose more "
        "to thread synchronisation than they gain; torch's default for images)",
        resumable=True,
    ),
    "deterministic": Option(bool, "torch.use_deterministic_algorithms(True)"),
    "log_every": _count("generator steps between metrics.jsonl lines", resumable=True),
    "sample_every": _count(
        "generator steps between sample pictures (0: end only; auto: 1000 toy, 500 images)",
        low=0,
        resumable=True,
    ),
    "checkpoint_every": _count(
        "generator steps between checkpoints (0: end only)", low=0, resumable=True
    ),
    "eval_every": _count(
        "generator steps between evaluations (0: end only; auto: 3000 toy, whose exact W1 "
        "on 2,500 points takes seconds, 1000 images)",
        low=0,
        resumable=True,
    ),
    "eval_samples": _count("samples drawn per evaluation", resumable=True),
    "fid": Option(
        bool,
        "also FID and KID at every evaluation of an image run (torch-fidelity: pip install "
        "'fastgp[fidelity]', and its Inception weights on this machine, see "
        "--inception-weights; checked before training)",
        resumable=True,
    ),
    "inception_weights": Option(
        str,
        "torch-fidelity's Inception weights file for --fid (auto: $FASTGP_INCEPTION_WEIGHTS, "
        "else torch hub's checkpoints/ cache); never downloaded",
        resumable=True,
    ),
    "keep_last": _count("checkpoints kept", resumable=True),
    "run_dir": Option(
        str,
        "run directory (auto: runs/<dataset>-<timestamp>); re-running into a directory with a "
        "checkpoint resumes it",
        resumable=True,
    ),
    "resume": Option(str, "resume the run in this directory exactly", resumable=True),
    "progress": Option(bool, "show a tqdm progress bar", resumable=True),
    "tensorboard": Option(bool, "also log to TensorBoard (when installed)", resumable=True),
}

if tuple(OPTIONS) != FIELD_NAMES:  # a field without a row (or the reverse) is a bug here
    raise AssertionError(
        f"the option table and TrainConfig disagree: {sorted(set(OPTIONS) ^ set(FIELD_NAMES))}"
    )

RESUMABLE_FIELDS = frozenset(name for name, option in OPTIONS.items() if option.resumable)


def build_parser() -> argparse.ArgumentParser:
    """The ``fastgp train`` parser, one flag per row of ``OPTIONS`` (see the module doc)."""
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
    defaults = TrainConfig().to_dict()
    for name, option in OPTIONS.items():
        default = defaults[name]
        help_text = option.help + (f" (default: {default})" if default is not None else "")
        help_text = help_text.replace("%", "%%")
        if option.kind is bool:
            parser.add_argument(
                flag(name), dest=name, action=argparse.BooleanOptionalAction, help=help_text
            )
            continue
        parser.add_argument(
            flag(name),
            dest=name,
            type=_parser_type(name, option.kind),
            choices=option.choices,
            metavar=None if option.choices else name.upper(),
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
                f"{flag(name)} expects {kind.__name__}, got {text!r}"
            ) from None

    convert.__name__ = kind.__name__
    return convert
