"""MNIST from the IDX files torchvision writes (``ROOT/MNIST/raw/*-ubyte[.gz]``)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fastgp.train.data.base import Dataset
from fastgp.train.data.images import TensorImageDataset, fit_images

MNIST_URLS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/ (the mirror torchvision uses)",
    "http://yann.lecun.com/exdb/mnist/",
)

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse an IDX file (plain or gzip, detected from its first bytes) into a numpy array.

    Format: 2 zero bytes, a type code (0x08 uint8 ... 0x0E float64), the number of
    dimensions, then each dimension as a big-endian int32, then the data (big-endian).
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()})")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"{path}: IDX header promises shape {shape} ({expected} data bytes) but the file "
            f"has {len(raw) - header}"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def _mnist_search_dirs(data_dir: Path) -> list[Path]:
    # torchvision writes <root>/MNIST/raw/*-ubyte[.gz]; people also point at raw/ directly.
    return [data_dir, data_dir / "MNIST" / "raw", data_dir / "raw", data_dir / "mnist"]


def find_mnist_file(data_dir: Path, stem: str) -> Path | None:
    """The first existing ``stem`` (e.g. ``train-images-idx3-ubyte``), ``stem.gz`` or the
    dotted variant (``train-images.idx3-ubyte``) in the usual MNIST layouts."""
    dotted = stem.replace("-idx", ".idx")
    for folder in _mnist_search_dirs(data_dir):
        for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
            candidate = folder / name
            if candidate.is_file():
                return candidate
    return None


def load_mnist(data_dir: str | None, image_size: int | None, channels: int | None) -> Dataset:
    """MNIST training images from IDX files; the t10k images (if present) are the heldout set.

    ``data_dir`` is the folder with ``train-images-idx3-ubyte[.gz]``, torchvision's root
    (``ROOT/MNIST/raw/``), or the training-images file itself.
    """
    if data_dir is None:
        raise ValueError(
            "dataset 'mnist' needs `data_dir` (--data-dir): the folder holding "
            "train-images-idx3-ubyte[.gz] (or torchvision's root, with MNIST/raw/ inside)"
        )
    root = Path(data_dir).expanduser()
    if root.is_file():  # the training-images file itself; t10k is looked for beside it
        train_file, root = root, root.parent
    else:
        train_file = find_mnist_file(root, "train-images-idx3-ubyte")
    if train_file is None:
        searched = ", ".join(str(d) for d in _mnist_search_dirs(root))
        raise FileNotFoundError(
            f"MNIST file train-images-idx3-ubyte[.gz] not found; searched {searched}. "
            f"fastgp never downloads data: get the file from {MNIST_URLS[0]} or {MNIST_URLS[1]} "
            "(or run torchvision.datasets.MNIST(ROOT, download=True), which writes "
            "ROOT/MNIST/raw/) and pass --data-dir pointing at that folder or ROOT"
        )
    images = _idx_images(train_file)
    test_file = find_mnist_file(root, "t10k-images-idx3-ubyte")
    heldout = _idx_images(test_file) if test_file is not None else None
    images = fit_images(images, image_size, channels)
    if heldout is not None:
        heldout = fit_images(heldout, image_size, channels)
    return TensorImageDataset("mnist", images, heldout)


def _idx_images(path: Path) -> Tensor:
    array = read_idx(path)
    if array.ndim != 3 or array.dtype != np.uint8:
        raise ValueError(
            f"{path}: expected uint8 images (N, H, W), got {array.dtype} {array.shape}"
        )
    return torch.from_numpy(array.copy()).unsqueeze(1)
