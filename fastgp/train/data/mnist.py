"""MNIST from the IDX files torchvision writes (``ROOT/MNIST/raw/*-ubyte[.gz]``), with the
training labels when ``train-labels-idx1-ubyte[.gz]`` is there too."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fastgp.train.data.base import Dataset, LabelledImages
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


def _mnist_root(data_dir: str | None, name: str) -> tuple[Path, Path]:
    """``(root, training-images file)`` of ``data_dir``, or a clear error saying how to get it."""
    if data_dir is None:
        raise ValueError(
            f"dataset {name!r} needs `data_dir` (--data-dir): the folder holding "
            "train-images-idx3-ubyte[.gz] (or torchvision's root, with MNIST/raw/ inside)"
        )
    root = Path(data_dir).expanduser()
    if root.is_file():  # the training-images file itself; the others are looked for beside it
        return root.parent, root
    train_file = find_mnist_file(root, "train-images-idx3-ubyte")
    if train_file is None:
        searched = ", ".join(str(d) for d in _mnist_search_dirs(root))
        raise FileNotFoundError(
            f"MNIST file train-images-idx3-ubyte[.gz] not found; searched {searched}. "
            f"fastgp never downloads data: get the file from {MNIST_URLS[0]} or {MNIST_URLS[1]} "
            "(or run torchvision.datasets.MNIST(ROOT, download=True), which writes "
            "ROOT/MNIST/raw/) and pass --data-dir pointing at that folder or ROOT"
        )
    return root, train_file


def find_labels_file(root: Path, train_file: Path) -> Path | None:
    """``train-labels-idx1-ubyte[.gz]`` beside the training images, else in the usual layouts."""
    beside = find_mnist_file(train_file.parent, "train-labels-idx1-ubyte")
    return beside if beside is not None else find_mnist_file(root, "train-labels-idx1-ubyte")


def load_mnist_digits(
    data_dir: str | None, image_size: int | None, channels: int | None, name: str = "mnist"
) -> tuple[Tensor, Tensor | None, LabelledImages | None, str | None]:
    """The MNIST IDX files of ``data_dir``, fitted to ``image_size`` / ``channels``.

    Returns ``(train, heldout, labelled, label_note)``: the training images (N, C, S, S)
    uint8, the t10k images (or None), the training images with their labels (or None)
    and, when there are no labels, why (for the evaluation output).
    """
    root, train_file = _mnist_root(data_dir, name)
    images = _idx_images(train_file)
    labels_file = find_labels_file(root, train_file)
    labels = _idx_labels(labels_file, images.shape[0]) if labels_file is not None else None
    test_file = find_mnist_file(root, "t10k-images-idx3-ubyte")
    heldout = _idx_images(test_file) if test_file is not None else None
    images = fit_images(images, image_size, channels)
    if heldout is not None:
        heldout = fit_images(heldout, image_size, channels)
    if labels is None:
        note = (
            f"no train-labels-idx1-ubyte[.gz] beside {train_file} (or under {root}): the "
            "class metrics need the training labels"
        )
        return images, heldout, None, note
    files = (train_file, labels_file)
    num_classes = int(labels.max()) + 1
    return images, heldout, LabelledImages(images, labels, num_classes, files), None


def load_mnist(data_dir: str | None, image_size: int | None, channels: int | None) -> Dataset:
    """MNIST training images from IDX files; the t10k images (if present) are the heldout set;
    the training labels (if present) make the class metrics possible.

    ``data_dir`` is the folder with ``train-images-idx3-ubyte[.gz]``, torchvision's root
    (``ROOT/MNIST/raw/``), or the training-images file itself.
    """
    images, heldout, labelled, note = load_mnist_digits(data_dir, image_size, channels)
    return TensorImageDataset("mnist", images, heldout, labelled=labelled, label_note=note)


def _idx_images(path: Path) -> Tensor:
    array = read_idx(path)
    if array.ndim != 3 or array.dtype != np.uint8:
        raise ValueError(
            f"{path}: expected uint8 images (N, H, W), got {array.dtype} {array.shape}"
        )
    return torch.from_numpy(array.copy()).unsqueeze(1)


def _idx_labels(path: Path, num_images: int) -> Tensor:
    """(N,) int64 labels of an IDX1 uint8 file, one per training image."""
    array = read_idx(path)
    if array.ndim != 1 or array.dtype != np.uint8:
        raise ValueError(f"{path}: expected uint8 labels (N,), got {array.dtype} {array.shape}")
    if array.shape[0] != num_images:
        raise ValueError(
            f"{path}: {array.shape[0]} labels for {num_images} training images; the labels "
            "file must belong to the images file"
        )
    return torch.from_numpy(array.astype(np.int64))
