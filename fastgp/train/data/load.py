"""``load_dataset(name, ...)``: every dataset the trainer knows, by name;
``load_dataset_of(cfg)``: the one a config names."""

from __future__ import annotations

from typing import Any

from fastgp.train.data.arrays import load_array
from fastgp.train.data.base import Dataset
from fastgp.train.data.folder import load_folder
from fastgp.train.data.images import check_image_options
from fastgp.train.data.mnist import load_mnist
from fastgp.train.data.shapes import SHAPES_NUM_EXAMPLES, ShapesDataset
from fastgp.train.data.stacked import load_stacked_mnist
from fastgp.train.data.toy import eight_gaussians, swiss_roll, twenty_five_gaussians

DATASETS = (
    "8gaussians",
    "25gaussians",
    "swissroll",
    "mnist",
    "stacked-mnist",
    "folder",
    "npz",
    "npy",
    "shapes",
)
TOY_DATASETS = ("8gaussians", "25gaussians", "swissroll")


def is_toy(name: str) -> bool:
    """True for the 2-D point sets (the others are images)."""
    return name in TOY_DATASETS


def load_dataset(
    name: str,
    *,
    data_dir: str | None = None,
    image_size: int | None = None,
    channels: int | None = None,
    seed: int = 0,
) -> Dataset:
    """Build a dataset by name (see ``DATASETS``).

    Args:
        name: ``8gaussians``, ``25gaussians``, ``swissroll`` (toy, no options);
            ``mnist`` (IDX files in ``data_dir``); ``stacked-mnist`` (three MNIST digits
            as RGB channels, from the same files; ``stacked.py``); ``folder`` (images
            under ``data_dir``);
            ``npz`` / ``npy`` (an array file, or a folder with exactly one);
            ``shapes`` (procedural, no files).
        data_dir: where the files are (required by mnist, stacked-mnist, folder, npz, npy).
        image_size: output height = width. None keeps the native size (mnist: 28,
            npz/npy: as stored) or uses the default (folder: 64, shapes: 32).
        channels: 1 or 3; None keeps the native count (folder: 3, shapes: 3).
        seed: fixes the procedural ``shapes`` examples and the ``stacked-mnist`` digit
            triples (batches come from the
            generator passed to ``sample``).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"`seed` must be an int, got {seed!r}")
    check_image_options(image_size, channels)
    if is_toy(name):
        if image_size is not None or channels is not None:
            raise ValueError(
                f"dataset {name!r} is 2-D points: `image_size` and `channels` must be None"
            )
        return {"8gaussians": eight_gaussians, "25gaussians": twenty_five_gaussians}.get(
            name, swiss_roll
        )()
    if name == "mnist":
        return load_mnist(data_dir, image_size, channels)
    if name == "stacked-mnist":
        return load_stacked_mnist(data_dir, image_size, channels, seed)
    if name == "folder":
        return load_folder(data_dir, image_size, channels)
    if name in ("npz", "npy"):
        return load_array(name, data_dir, image_size, channels)
    return ShapesDataset(
        32 if image_size is None else image_size,
        3 if channels is None else channels,
        seed,
        SHAPES_NUM_EXAMPLES,
    )


def load_dataset_of(cfg: Any) -> Dataset:
    """The dataset a ``TrainConfig`` names, loaded as ``fastgp train`` loads it."""
    return load_dataset(
        cfg.dataset,
        data_dir=cfg.data_dir,
        image_size=cfg.image_size,
        channels=cfg.channels,
        seed=cfg.seed,
    )
