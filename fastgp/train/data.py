"""Training data for the trainer: toy 2-D sets, MNIST IDX files, image folders, arrays, shapes.

Nothing is ever downloaded. Every dataset draws its batches from a caller-owned
``torch.Generator``, so a run is reproducible from its seed and resumable from the
generator's saved state (``generator.get_state()``).

``load_dataset(name, ...)`` returns a ``Dataset``:

* toy sets (``kind == "toy"``): samples are (B, 2) float32 points, streamed (infinite);
  ``modes`` / ``mode_std`` describe the Gaussian mixtures for the mode-coverage metrics.
* image sets (``kind == "image"``): samples are (B, C, H, W) float32 in [-1, 1].
  ``mnist``, ``folder``, ``npz``/``npy`` are finite (``num_examples``) and sample
  uniformly *with replacement* (a batch is ``randint`` indices, so the only sampling
  state is the generator's); ``shapes`` is a finite procedural set rendered on the fly.
"""

from __future__ import annotations

import gzip
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

DATASETS = (
    "8gaussians",
    "25gaussians",
    "swissroll",
    "mnist",
    "folder",
    "npz",
    "npy",
    "shapes",
)
TOY_DATASETS = ("8gaussians", "25gaussians", "swissroll")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")

# Scale factors and standard deviations of gan_toy.py (igul222/improved_wgan_training).
# The divisors are the literal 1.414 and 2.828 of that code, not sqrt(2) and 2*sqrt(2).
_EIGHT_SCALE, _EIGHT_STD, _EIGHT_DIVISOR = 2.0, 0.02, 1.414
_GRID_SPACING, _GRID_STD, _GRID_DIVISOR = 2.0, 0.05, 2.828
_SWISSROLL_NOISE, _SWISSROLL_DIVISOR = 0.25, 7.5

MNIST_URLS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/ (the mirror torchvision uses)",
    "http://yann.lecun.com/exdb/mnist/",
)


class Dataset(ABC):
    """What the trainer needs from a dataset.

    Attributes:
        name: the dataset name (one of ``DATASETS``).
        kind: ``"toy"`` (2-D points) or ``"image"``.
        sample_shape: shape of one sample: (2,) for toy sets, (C, H, W) for images.
        modes: toy Gaussian-mixture centres (K, 2) float32, in the same (scaled)
            coordinates as the samples; None for other data.
        mode_std: per-coordinate standard deviation of each mode (scaled); None if no modes.
        num_examples: size of a finite dataset; None for streamed data.
    """

    name: str
    kind: str
    sample_shape: tuple[int, ...]
    modes: Tensor | None = None
    mode_std: float | None = None
    num_examples: int | None = None

    def sample(
        self, batch_size: int, generator: torch.Generator, device: torch.device | str = "cpu"
    ) -> Tensor:
        """A training batch (batch_size, *sample_shape) float32 on ``device``."""
        _check_batch_size(batch_size, "batch_size")
        return self._draw(batch_size, generator).to(device)

    def heldout(self, n: int, generator: torch.Generator) -> Tensor:
        """An evaluation sample (n, *sample_shape) float32 on CPU, drawn with ``generator``.

        Streamed and procedural sets draw fresh samples (independent of training batches);
        MNIST uses the t10k test images when they are present; other finite sets draw
        from the training examples (there is no separate split).
        """
        _check_batch_size(n, "n")
        return self._draw_heldout(n, generator).cpu()

    @abstractmethod
    def _draw(self, batch_size: int, generator: torch.Generator) -> Tensor:
        """(batch_size, *sample_shape) float32, on the generator's device."""

    def _draw_heldout(self, n: int, generator: torch.Generator) -> Tensor:
        return self._draw(n, generator)

    def __repr__(self) -> str:
        size = "streamed" if self.num_examples is None else f"{self.num_examples} examples"
        return f"{type(self).__name__}({self.name!r}, {self.kind}, {self.sample_shape}, {size})"


def _check_batch_size(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}")


# --------------------------------------------------------------------------- toy sets


def eight_gaussians_centres() -> Tensor:
    """The 8 ring centres of gan_toy.py before scaling: (8, 2) float32, radius 1."""
    s = 1.0 / math.sqrt(2.0)
    centres = [(1, 0), (-1, 0), (0, 1), (0, -1), (s, s), (s, -s), (-s, s), (-s, -s)]
    return torch.tensor(centres, dtype=torch.float32)


def twenty_five_gaussians_centres() -> Tensor:
    """The 5x5 grid of gan_toy.py before scaling: (25, 2) float32, points (x, y) in {-2..2}²
    in the code's loop order (x outer, y inner)."""
    grid = [(x, y) for x in range(-2, 3) for y in range(-2, 3)]
    return torch.tensor(grid, dtype=torch.float32)


def make_swiss_roll(n: int, noise: float, generator: torch.Generator) -> Tensor:
    """``sklearn.datasets.make_swiss_roll`` (n, 3) float32, re-implemented with torch.

    ``t = 1.5 pi (1 + 2u)``, ``(x, y, z) = (t cos t, 21 v, t sin t)`` with u, v ~ U[0, 1),
    plus N(0, noise²) on every coordinate.
    """
    dev = generator.device
    u = torch.rand(n, generator=generator, device=dev, dtype=torch.float64)
    v = torch.rand(n, generator=generator, device=dev, dtype=torch.float64)
    t = 1.5 * math.pi * (1.0 + 2.0 * u)
    points = torch.stack([t * torch.cos(t), 21.0 * v, t * torch.sin(t)], dim=1)
    points = points + noise * torch.randn(n, 3, generator=generator, device=dev, dtype=points.dtype)
    return points.float()


class ToyDataset(Dataset):
    """A streamed 2-D toy set: ``draw(batch_size, generator) -> (B, 2)`` float32."""

    kind = "toy"
    sample_shape = (2,)

    def __init__(
        self,
        name: str,
        draw: Callable[[int, torch.Generator], Tensor],
        modes: Tensor | None,
        mode_std: float | None,
    ) -> None:
        self.name = name
        self._draw_fn = draw
        self.modes = modes
        self.mode_std = mode_std

    def _draw(self, batch_size: int, generator: torch.Generator) -> Tensor:
        return self._draw_fn(batch_size, generator)


def _mixture_dataset(
    name: str, centres: Tensor, scale: float, std: float, divisor: float
) -> ToyDataset:
    """``(scale * centres[k] + std * N(0, I)) / divisor`` with k uniform over the centres."""
    centres = centres * scale

    def draw(batch_size: int, generator: torch.Generator) -> Tensor:
        dev = generator.device
        index = torch.randint(len(centres), (batch_size,), generator=generator, device=dev)
        noise = torch.randn(batch_size, 2, generator=generator, device=dev)
        return (centres.to(dev)[index] + std * noise) / divisor

    return ToyDataset(name, draw, modes=centres / divisor, mode_std=std / divisor)


def eight_gaussians() -> ToyDataset:
    """gan_toy.py's ``8gaussians``: ring of radius 2, std 0.02, everything divided by 1.414.

    Streamed like the paper code (a fresh uniform centre per point).
    """
    return _mixture_dataset(
        "8gaussians", eight_gaussians_centres(), _EIGHT_SCALE, _EIGHT_STD, _EIGHT_DIVISOR
    )


def twenty_five_gaussians() -> ToyDataset:
    """gan_toy.py's ``25gaussians``: grid {-4,-2,0,2,4}², std 0.05, divided by 2.828.

    The paper code builds a fixed set of 100,000 points (4,000 per mode), shuffles it once
    and cycles through it; this streams fresh points with a uniform mode per point, which
    is the same distribution without the fixed-set reuse.
    """
    return _mixture_dataset(
        "25gaussians", twenty_five_gaussians_centres(), _GRID_SPACING, _GRID_STD, _GRID_DIVISOR
    )


def swiss_roll() -> ToyDataset:
    """gan_toy.py's ``swissroll``: ``make_swiss_roll(noise=0.25)[:, [0, 2]] / 7.5``, streamed."""

    def draw(batch_size: int, generator: torch.Generator) -> Tensor:
        return make_swiss_roll(batch_size, _SWISSROLL_NOISE, generator)[:, [0, 2]] / (
            _SWISSROLL_DIVISOR
        )

    return ToyDataset("swissroll", draw, modes=None, mode_std=None)


# ------------------------------------------------------------------- finite image sets


class TensorImageDataset(Dataset):
    """Images held in memory as (N, C, H, W): uint8 in [0, 255] or float32 in [-1, 1].

    Batches are ``images[randint(N, (B,))]`` converted to float32 in [-1, 1].
    ``heldout_images`` (same layout) is used for ``heldout`` when given.
    """

    kind = "image"

    def __init__(self, name: str, images: Tensor, heldout_images: Tensor | None = None) -> None:
        if images.dim() != 4 or images.shape[0] == 0:
            raise ValueError(f"{name}: expected a non-empty (N, C, H, W) image tensor")
        self.name = name
        self.images = images
        self.heldout_images = heldout_images
        self.sample_shape = tuple(images.shape[1:])
        self.num_examples = int(images.shape[0])

    def _draw(self, batch_size: int, generator: torch.Generator) -> Tensor:
        return _pick(self.images, batch_size, generator)

    def _draw_heldout(self, n: int, generator: torch.Generator) -> Tensor:
        source = self.images if self.heldout_images is None else self.heldout_images
        return _pick(source, n, generator)


def _pick(images: Tensor, n: int, generator: torch.Generator) -> Tensor:
    index = torch.randint(images.shape[0], (n,), generator=generator, device=generator.device)
    return to_unit_range(images[index.to(images.device)])


def to_unit_range(images: Tensor) -> Tensor:
    """uint8 [0, 255] -> float32 [-1, 1]; float tensors are returned as float32 unchanged."""
    if images.dtype == torch.uint8:
        return images.float() / 127.5 - 1.0
    return images.float()


def fit_images(images: Tensor, image_size: int | None, channels: int | None) -> Tensor:
    """Resize (shorter side to ``image_size``, then centre crop) and convert the channels.

    images: (N, C, H, W) uint8 or float32, C in {1, 3}. The dtype is kept (uint8 is rounded
    back after an antialiased bilinear resize). channels 1 <- 3 uses ITU-R 601 luma
    weights; 3 <- 1 repeats the plane.
    """
    if channels is not None and channels != images.shape[1]:
        images = _convert_channels(images, channels)
    if image_size is None or images.shape[-2:] == (image_size, image_size):
        return images
    height, width = images.shape[-2:]
    scale = image_size / min(height, width)
    new_h, new_w = max(image_size, round(height * scale)), max(image_size, round(width * scale))
    resized = []
    for chunk in images.split(1024):
        out = F.interpolate(
            chunk.float(), size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False
        )
        top, left = (new_h - image_size) // 2, (new_w - image_size) // 2
        out = out[:, :, top : top + image_size, left : left + image_size]
        if images.dtype == torch.uint8:
            out = out.round().clamp(0, 255).to(torch.uint8)
        resized.append(out)
    return torch.cat(resized).contiguous()


def _convert_channels(images: Tensor, channels: int) -> Tensor:
    have = images.shape[1]
    if have == 1 and channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    if have == 3 and channels == 1:
        weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        gray = (images.float() * weights).sum(dim=1, keepdim=True)
        if images.dtype == torch.uint8:
            return gray.round().clamp(0, 255).to(torch.uint8)
        return gray
    raise ValueError(f"cannot convert images with {have} channels to {channels} channels")


def _check_image_options(image_size: int | None, channels: int | None) -> None:
    if image_size is not None and (
        isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 4
    ):
        raise ValueError(f"`image_size` must be an int >= 4 or None, got {image_size!r}")
    if channels is not None and channels not in (1, 3):
        raise ValueError(f"`channels` must be 1 or 3 (or None), got {channels!r}")


# ----------------------------------------------------------------------------- MNIST

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


# ---------------------------------------------------------------------------- folder


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


# ------------------------------------------------------------------------- npz / npy


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


# ---------------------------------------------------------------------------- shapes

SHAPES_NUM_EXAMPLES = 10_000
_SHAPE_SLOTS = 3  # up to three shapes per image, painted in order
_SHAPE_PARAMS = 9  # active, kind, cx, cy, radius, angle, r, g, b


def draw_shape_params(n: int, generator: torch.Generator) -> Tensor:
    """Random parameters (n, slots, 9) float32 for ``render_shapes``.

    Per slot: active (the first slot always is, the others with probability 1/2), kind
    (0 circle, 1 square, 2 triangle), centre (cx, cy) in [0.2, 0.8] of the image, radius in
    [0.12, 0.3], rotation angle, and an RGB colour with each channel in [0.25, 1].
    """
    shape = (n, _SHAPE_SLOTS)
    dev = generator.device
    uniform = lambda lo, hi: lo + (hi - lo) * torch.rand(shape, generator=generator, device=dev)
    active = torch.rand(shape, generator=generator, device=dev) < 0.5
    active[:, 0] = True
    kind = torch.randint(3, shape, generator=generator, device=dev)
    params = [
        active.float(),
        kind.float(),
        uniform(0.2, 0.8),
        uniform(0.2, 0.8),
        uniform(0.12, 0.3),
        uniform(0.0, 2.0 * math.pi),
        uniform(0.25, 1.0),
        uniform(0.25, 1.0),
        uniform(0.25, 1.0),
    ]
    return torch.stack(params, dim=-1).cpu()


def render_shapes(params: Tensor, image_size: int, channels: int) -> Tensor:
    """Antialiased filled shapes on black: (n, channels, S, S) float32 in [-1, 1].

    params: (n, slots, 9) from ``draw_shape_params``. Each shape's coverage is
    ``clamp(0.5 - signed_distance_in_pixels, 0, 1)`` (a one-pixel soft edge); later slots
    paint over earlier ones. With one channel the colour is its luma.
    """
    n = params.shape[0]
    coords = (torch.arange(image_size, dtype=torch.float32) + 0.5) / image_size
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")  # (S, S)
    canvas = torch.zeros(n, 3, image_size, image_size)
    for slot in range(params.shape[1]):
        p = params[:, slot].view(n, _SHAPE_PARAMS, 1, 1)
        active, kind, cx, cy, radius, angle = (p[:, i] for i in range(6))
        colour = p[:, 6:9]  # (n, 3, 1, 1)
        # Rotate pixel offsets into the shape's frame.
        dx, dy = xs - cx, ys - cy
        cos, sin = torch.cos(angle), torch.sin(angle)
        u, v = cos * dx + sin * dy, -sin * dx + cos * dy
        circle = torch.sqrt(u * u + v * v) - radius
        square = torch.maximum(u.abs(), v.abs()) - radius * 0.8
        triangle = _triangle_distance(u, v, radius)
        distance = torch.where(kind == 0, circle, torch.where(kind == 1, square, triangle))
        coverage = (0.5 - distance * image_size).clamp(0.0, 1.0) * active  # (n, S, S)
        canvas = canvas * (1.0 - coverage[:, None]) + colour * coverage[:, None]
    if channels == 1:
        weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        canvas = (canvas * weights).sum(dim=1, keepdim=True)
    return canvas * 2.0 - 1.0


def _triangle_distance(u: Tensor, v: Tensor, radius: Tensor) -> Tensor:
    """Max over the three edge half-planes of an equilateral triangle with circumradius
    ``radius``: negative inside (exact inside, a bound outside: fine for a 1-pixel edge)."""
    inradius = radius * 0.5
    distances = []
    for k in range(3):
        theta = math.pi / 2 + k * 2.0 * math.pi / 3  # outward normals at 90, 210, 330 degrees
        distances.append(-(u * math.cos(theta) + v * math.sin(theta)) - inradius)
    return torch.maximum(torch.maximum(distances[0], distances[1]), distances[2])


class ShapesDataset(Dataset):
    """Procedural images: 1-3 filled circles, squares and triangles on black.

    A finite set of ``num_examples`` images fixed by ``seed`` (their parameters are drawn
    once; images are rendered on the fly, so memory does not grow with the image size).
    ``heldout`` renders fresh parameters from the caller's generator.
    """

    name = "shapes"
    kind = "image"

    def __init__(self, image_size: int, channels: int, seed: int, num_examples: int) -> None:
        self.image_size, self.channels = image_size, channels
        self.sample_shape = (channels, image_size, image_size)
        self.num_examples = num_examples
        self.params = draw_shape_params(num_examples, torch.Generator().manual_seed(seed))

    def _draw(self, batch_size: int, generator: torch.Generator) -> Tensor:
        index = torch.randint(
            self.num_examples, (batch_size,), generator=generator, device=generator.device
        )
        return render_shapes(self.params[index.cpu()], self.image_size, self.channels)

    def _draw_heldout(self, n: int, generator: torch.Generator) -> Tensor:
        return render_shapes(draw_shape_params(n, generator), self.image_size, self.channels)


# ------------------------------------------------------------------------------ entry


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
            ``mnist`` (IDX files in ``data_dir``); ``folder`` (images under ``data_dir``);
            ``npz`` / ``npy`` (an array file, or a folder with exactly one);
            ``shapes`` (procedural, no files).
        data_dir: where the files are (required by mnist, folder, npz, npy).
        image_size: output height = width. None keeps the native size (mnist: 28,
            npz/npy: as stored) or uses the default (folder: 64, shapes: 32).
        channels: 1 or 3; None keeps the native count (folder: 3, shapes: 3).
        seed: fixes the procedural ``shapes`` examples (batches come from the
            generator passed to ``sample``).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"`seed` must be an int, got {seed!r}")
    _check_image_options(image_size, channels)
    if name in TOY_DATASETS:
        if image_size is not None or channels is not None:
            raise ValueError(
                f"dataset {name!r} is 2-D points: `image_size` and `channels` must be None"
            )
        return {"8gaussians": eight_gaussians, "25gaussians": twenty_five_gaussians}.get(
            name, swiss_roll
        )()
    if name == "mnist":
        return load_mnist(data_dir, image_size, channels)
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
