"""Images from a NumPy array file (.npz or .npy) in any common layout and value range."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fastgp.train.data.base import Dataset
from fastgp.train.data.images import TensorImageDataset, fit_images


def find_array_file(data_dir: str | None, name: str) -> Path:
    """``data_dir`` itself if it is a .npz/.npy file, else the only such file inside it."""
    if data_dir is None:
        raise ValueError(
            f"dataset {name!r} needs `data_dir` (--data-dir): a .npz/.npy file or a folder "
            "holding exactly one"
        )
    path = Path(data_dir).expanduser()
    if path.is_file():
        if path.suffix.lower() not in (".npz", ".npy"):
            raise ValueError(f"dataset {name!r}: {path} is not a .npz or .npy file")
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"dataset {name!r}: `data_dir` {path} does not exist")
    found = sorted(p for p in path.iterdir() if p.suffix.lower() in (".npz", ".npy"))
    if len(found) != 1:
        raise ValueError(
            f"dataset {name!r}: expected exactly one .npz/.npy file in {path}, found "
            f"{[p.name for p in found]}; pass the file itself as `data_dir`"
        )
    return found[0]


def read_array(path: Path) -> np.ndarray:
    """The array ``x`` of a .npz (or its only array), or the array of a .npy."""
    if path.suffix.lower() == ".npy":
        return np.load(path, allow_pickle=False)
    with np.load(path, allow_pickle=False) as archive:
        keys = list(archive.keys())
        if "x" in keys:
            return archive["x"]
        if len(keys) == 1:
            return archive[keys[0]]
        raise ValueError(f"{path}: has arrays {keys}; expected one named 'x' or a single array")


def array_to_images(array: np.ndarray, source: str) -> Tensor:
    """(N, H, W), (N, C, H, W) or (N, H, W, C) images -> (N, C, H, W) uint8 or float32 [-1, 1].

    Layout: a 4-D array is NHWC when only its last axis has size 1, 3 or 4, NCHW when only
    axis 1 does; when both do, the reading that gives square images wins; otherwise it is
    an error. A 4th (alpha) channel is dropped.
    Range: integer arrays must lie in [0, 255] (kept as uint8); float arrays in [0, 1] are
    mapped to [-1, 1], float arrays in [-1, 1] with negative values are kept. A float array
    with no negative value is read as [0, 1].
    """
    if array.ndim == 3:
        array = array[:, None]
    elif array.ndim == 4:
        channel_sizes = (1, 3, 4)
        first, last = array.shape[1] in channel_sizes, array.shape[3] in channel_sizes
        if first and last:  # e.g. (N, 3, 32, 3): trust the reading with square images
            first = array.shape[2] == array.shape[3]
            last = array.shape[1] == array.shape[2]
        if last and not first:
            array = array.transpose(0, 3, 1, 2)
        elif first == last:
            raise ValueError(
                f"{source}: cannot tell NCHW from NHWC for shape {array.shape}; "
                "save it as (N, C, H, W) with C in {1, 3}"
            )
    else:
        raise ValueError(f"{source}: expected (N, H, W) or 4-D images, got shape {array.shape}")
    if array.shape[1] == 4:
        array = array[:, :3]
    if array.shape[0] == 0:
        raise ValueError(f"{source}: the array holds no images")
    if np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_:
        lo, hi = int(array.min()), int(array.max())
        if lo < 0 or hi > 255:
            raise ValueError(f"{source}: integer images must be in [0, 255], got [{lo}, {hi}]")
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.uint8))
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{source}: unsupported array dtype {array.dtype}")
    x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    lo, hi = float(x.min()), float(x.max())
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo < -1.0 or hi > 1.0:
        raise ValueError(
            f"{source}: float images must be in [0, 1] or [-1, 1], got [{lo:.4g}, {hi:.4g}]"
        )
    return x * 2.0 - 1.0 if lo >= 0.0 else x


def load_array(
    name: str, data_dir: str | None, image_size: int | None, channels: int | None
) -> Dataset:
    """Images from a .npz (array ``x`` or its only array) or .npy file."""
    path = find_array_file(data_dir, name)
    images = array_to_images(read_array(path), str(path))
    return TensorImageDataset(name, fit_images(images, image_size, channels))
