"""A folder of image files of any size, decoded with pillow, resized and centre-cropped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fastgp.train.data.base import Dataset
from fastgp.train.data.images import TensorImageDataset

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive, sorted, by extension)."""
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def load_folder(data_dir: str | None, image_size: int | None, channels: int | None) -> Dataset:
    """Every image under ``data_dir`` (recursive), decoded with pillow, resized so the
    shorter side is ``image_size`` (default 64) and centre-cropped, as ``channels``
    (default 3) uint8 planes held in memory."""
    from PIL import Image

    if data_dir is None:
        raise ValueError("dataset 'folder' needs `data_dir` (--data-dir): a folder of images")
    folder = Path(data_dir).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"dataset 'folder': `data_dir` {folder} is not a directory")
    files = list_images(folder)
    if not files:
        raise FileNotFoundError(
            f"dataset 'folder': no images ({', '.join(IMAGE_EXTENSIONS)}) under {folder}"
        )
    size = 64 if image_size is None else image_size
    mode = "L" if channels == 1 else "RGB"
    images = []
    for path in files:
        try:
            with Image.open(path) as img:
                img = _resize_crop(img.convert(mode), size)
                array = np.asarray(img, dtype=np.uint8)
        except OSError as err:
            raise ValueError(f"dataset 'folder': cannot read image {path}: {err}") from err
        images.append(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
    return TensorImageDataset("folder", torch.from_numpy(np.stack(images)))


def _resize_crop(img, size: int):
    from PIL import Image

    width, height = img.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    img = img.resize((new_w, new_h), Image.Resampling.LANCZOS)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return img.crop((left, top, left + size, top + size))
