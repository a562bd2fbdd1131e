"""``fastgp sample`` and ``fastgp eval``: load a finished (or running) run and use it.

A run is named by its directory (the newest readable checkpoint is used) or by one
checkpoint file; the checkpoint carries the resolved config and the sample shape, so no
other file is needed to rebuild the generator. Checkpoints are read with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from fastgp.train.config import TrainConfig, merge
from fastgp.train.data import Dataset, load_dataset_of
from fastgp.train.evaluation.classifier import CLASSIFIER_DIR, load_or_train_classifier
from fastgp.train.evaluation.image_metrics import MNIST_EVAL_SAMPLES, STACKED_EVAL_SAMPLES
from fastgp.train.evaluation.metrics import evaluate_generator, generate
from fastgp.train.evaluation.plots import save_image_grid, save_toy_plot
from fastgp.train.models import build_networks as build_untrained
from fastgp.train.run.checkpoint import atomic_write, latest_checkpoint, load_checkpoint

SAMPLE_FORMATS = (".png", ".npy", ".npz", ".pt")


@dataclass
class LoadedRun:
    """A checkpoint and the config it was trained with."""

    cfg: TrainConfig
    state: dict[str, Any]
    checkpoint: Path

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.state["sample_shape"])

    @property
    def has_ema(self) -> bool:
        return self.state.get("ema") is not None


def load_run(path: str | os.PathLike) -> LoadedRun:
    """The newest checkpoint of run directory ``path``, or the checkpoint file ``path``."""
    path = Path(path)
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"{path} has no checkpoint (is it a fastgp run directory?)")
        path = found
    elif not path.exists():
        raise FileNotFoundError(f"{path} is neither a run directory nor a checkpoint file")
    state = load_checkpoint(path)
    for key in ("config", "generator", "critic", "sample_shape"):
        if key not in state:
            raise ValueError(f"{path} is not a fastgp train checkpoint: it has no {key!r}")
    return LoadedRun(merge(state["config"]), state, path)


def build_networks(run: LoadedRun, *, ema: bool | None = None) -> tuple[nn.Module, nn.Module]:
    """``(generator, critic)`` with the run's weights, in eval mode on the CPU.

    ``ema``: use the EMA generator (None: when the run has one; True without one is an
    error).
    """
    generator, critic = build_untrained(run.cfg, run.sample_shape)
    use_ema = run.has_ema if ema is None else ema
    if use_ema and not run.has_ema:
        raise ValueError(f"--ema: {run.checkpoint} has no EMA generator (trained with --ema 0)")
    generator.load_state_dict(run.state["ema"]["model"] if use_ema else run.state["generator"])
    critic.load_state_dict(run.state["critic"])
    return generator.eval(), critic.eval()


def run_dataset(run: LoadedRun) -> Dataset:
    """The run's dataset, loaded as it was for training."""
    return load_dataset_of(run.cfg)


def draw(generator: nn.Module, num: int, seed: int, device: str = "cpu") -> Tensor:
    """``num`` samples (num, *sample_shape) float32 on the CPU from noise seeded by ``seed``."""
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ValueError(f"--num must be a positive integer, got {num!r}")
    return generate(generator, num, seed, device).float().cpu()


def write_samples(path: str | os.PathLike, samples: Tensor, run: LoadedRun) -> Path:
    """Write samples by extension: ``.png`` (image grid, or a toy scatter over the real
    data), ``.npy``, ``.npz`` (key ``samples``) or ``.pt`` (a tensor)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SAMPLE_FORMATS:
        raise ValueError(f"--out must end in one of {', '.join(SAMPLE_FORMATS)}; got {path.name!r}")
    if suffix == ".npy":
        return atomic_write(path, lambda f: np.save(f, samples.numpy()))
    if suffix == ".npz":
        return atomic_write(path, lambda f: np.savez(f, samples=samples.numpy()))
    if suffix == ".pt":
        return atomic_write(path, lambda f: torch.save(samples, f))
    if samples.dim() == 2:
        dataset = run_dataset(run)
        real = dataset.heldout(samples.shape[0], torch.Generator().manual_seed(run.cfg.seed))
        return save_toy_plot(
            path, real, samples, modes=dataset.modes, title=f"{run.cfg.dataset} samples"
        )
    return save_image_grid(path, samples, nrow=max(1, math.isqrt(samples.shape[0] - 1) + 1))


def run_directory(run: LoadedRun) -> Path:
    """The run directory holding the checkpoint (``RUN/checkpoints/step-*.pt``)."""
    return run.checkpoint.parent.parent


def default_eval_samples(run: LoadedRun, dataset: Dataset) -> int:
    """Samples ``fastgp eval`` draws by default: 26,000 for Stacked MNIST (its protocol),
    10,000 for other labelled image sets, the run's ``eval_samples`` otherwise."""
    if dataset.labelled is not None:
        return STACKED_EVAL_SAMPLES if dataset.stacked else MNIST_EVAL_SAMPLES
    return run.cfg.eval_samples


def evaluate_run(
    run: LoadedRun,
    *,
    num: int | None = None,
    seed: int | None = None,
    ema: bool | None = None,
    fidelity: bool = False,
    inception_weights: str | None = None,
) -> dict[str, Any]:
    """``evaluate_generator`` on the run's (EMA) generator, with the class metrics of a
    labelled dataset (its classifier loaded from, or trained into, ``RUN/classifier/``) and,
    with ``fidelity``, FID/KID. ``num`` None: ``default_eval_samples``."""
    generator, critic = build_networks(run, ema=ema)
    dataset = run_dataset(run)
    num = default_eval_samples(run, dataset) if num is None else num
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ValueError(f"--num must be a positive integer, got {num!r}")
    classifier, about = None, {}
    if dataset.labelled is not None:
        classifier = load_or_train_classifier(
            dataset.labelled, run_directory(run) / CLASSIFIER_DIR, seed=run.cfg.seed
        )
        about = {"classifier_cached": classifier.cached, "classifier_seconds": classifier.seconds}
    result = evaluate_generator(
        generator,
        dataset,
        num_samples=num,
        seed=run.cfg.seed if seed is None else seed,
        device="cpu",
        critic=critic,
        classifier=classifier,
        fidelity=fidelity,
        inception_weights=inception_weights,
    )
    use_ema = run.has_ema if ema is None else ema
    return {
        "step": int(run.state["step"]),
        "checkpoint": str(run.checkpoint),
        "model": "ema" if use_ema else "generator",
        **result,
        **about,
    }


def format_metrics(result: dict[str, Any]) -> str:
    """One ``name: value`` line per metric (floats to 4 significant digits)."""
    lines = []
    for key, value in result.items():
        if isinstance(value, float):
            value = f"{value:.4g}"
        elif isinstance(value, list):
            value = " ".join(str(v) for v in value)
        lines.append(f"{key}: {value}")
    return "\n".join(lines)
