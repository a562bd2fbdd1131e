"""Images held in memory, and the resizing and channel conversion every image source shares.

Samples are (B, C, H, W) float32 in [-1, 1]. Finite sets sample uniformly *with
replacement* (a batch is ``randint`` indices), so the only sampling state is the generator's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fastgp.train.data.base import Dataset, LabelledImages


class TensorImageDataset(Dataset):
    """Images held in memory as (N, C, H, W): uint8 in [0, 255] or float32 in [-1, 1].

    Batches are ``images[randint(N, (B,))]`` converted to float32 in [-1, 1].
    ``heldout_images`` (same layout) is used for ``heldout`` when given. ``labelled``
    (the same images with their labels) and ``label_note`` are as in ``Dataset``.
    """

    kind = "image"

    def __init__(
        self,
        name: str,
        images: Tensor,
        heldout_images: Tensor | None = None,
        *,
        labelled: LabelledImages | None = None,
        label_note: str | None = None,
    ) -> None:
        if images.dim() != 4 or images.shape[0] == 0:
            raise ValueError(f"{name}: expected a non-empty (N, C, H, W) image tensor")
        self.name = name
        self.labelled, self.label_note = labelled, label_note
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


def check_image_options(image_size: int | None, channels: int | None) -> None:
    """ValueError unless ``image_size`` is None or an int >= 4, and ``channels`` None, 1 or 3."""
    if image_size is not None and (
        isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 4
    ):
        raise ValueError(f"`image_size` must be an int >= 4 or None, got {image_size!r}")
    if channels is not None and channels not in (1, 3):
        raise ValueError(f"`channels` must be 1 or 3 (or None), got {channels!r}")
