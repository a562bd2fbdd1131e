"""DiffAugment (Zhao et al., NeurIPS 2020): differentiable augmentation for GAN training.

The same random transformations, drawn independently per call, are applied to the real
batch and to the generated batch before the critic sees them; because every operation is
differentiable in the pixels, the generator's gradient passes through the augmentation.

Policies follow the authors' ``DiffAugment_pytorch.py``:
    ``color``: ``rand_brightness`` (add U[-0.5, 0.5)), ``rand_saturation`` (scale the
    deviation from the channel mean by U[0, 2)), ``rand_contrast`` (scale the deviation
    from the image mean by U[0.5, 1.5)), one draw per sample each.
    ``translation``: shift by up to 1/8 of the image size in each direction (integer
    pixels, zero fill), independently per sample.
    ``cutout``: zero a square of half the image size at a random centre per sample.
plus ``flip``: mirror each sample left-right with probability 1/2 (not in the paper; the
trainer issue asks for flips, and a flip is exactly differentiable).

Randomness comes from the ``generator`` given (on its own device, then moved to the
images' device), so a seeded generator reproduces the augmentation exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

POLICIES = ("color", "translation", "cutout", "flip")
TRANSLATION_RATIO = 0.125
CUTOUT_RATIO = 0.5


def parse_policy(policy: str) -> tuple[str, ...]:
    """``"color,translation"`` -> ``("color", "translation")``; ``""``/``"none"`` -> ``()``.

    Raises ValueError naming any unknown or repeated entry.
    """
    if not isinstance(policy, str):
        raise TypeError(f"`policy` must be a string like 'color,translation', got {policy!r}")
    if policy.strip().lower() in ("", "none"):
        return ()
    names = tuple(p.strip() for p in policy.split(","))
    for name in names:
        if name not in POLICIES:
            raise ValueError(
                f"`policy` entry {name!r} is unknown; use a comma-separated subset of "
                f"{', '.join(POLICIES)} (or 'none'); got {policy!r}"
            )
    if len(set(names)) != len(names):
        raise ValueError(f"`policy` repeats an entry: {policy!r}")
    return names


def diff_augment(x: Tensor, policy: str, generator: torch.Generator | None = None) -> Tensor:
    """Apply the DiffAugment ``policy`` to a batch of images.

    Args:
        x: (B, C, H, W) floating-point images (any value range; the colour operations
            assume roughly [-1, 1] as in the paper).
        policy: comma-separated entries of ``POLICIES`` in the order to apply them, or
            ``""``/``"none"`` for no augmentation (x is returned as it is).
        generator: source of all random draws; None uses torch's global RNG.

    Returns:
        (B, C, H, W) tensor of x's dtype and device, differentiable with respect to x.
    """
    names = parse_policy(policy)
    if not isinstance(x, Tensor):
        raise TypeError(f"`x` must be a Tensor of images, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(
            f"DiffAugment needs image batches of shape (B, C, H, W); got `x` of shape "
            f"{tuple(x.shape)}. Toy 2-D data (B, 2) cannot be augmented: use policy 'none'."
        )
    if not x.is_floating_point():
        raise TypeError(f"`x` must be a floating-point tensor, got dtype {x.dtype}")
    for name in names:
        for op in _OPS[name]:
            x = op(x, generator)
    return x.contiguous() if names else x


class DiffAugment(nn.Module):
    """``diff_augment`` as a module with a fixed policy and generator.

    Args:
        policy: see ``diff_augment``.
        generator: source of the random draws; None uses torch's global RNG.
    """

    def __init__(self, policy: str, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.names = parse_policy(policy)
        self.policy = ",".join(self.names)
        self.generator = generator

    def forward(self, x: Tensor) -> Tensor:
        return diff_augment(x, self.policy, self.generator)

    def extra_repr(self) -> str:
        return f"policy={self.policy!r}"


def _uniform(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """One U[0, 1) per sample, (B, 1, 1, 1), in x's dtype and device."""
    where = generator.device if generator is not None else x.device
    u = torch.rand(x.shape[0], 1, 1, 1, generator=generator, device=where)
    return u.to(device=x.device, dtype=x.dtype)


def _integers(low: int, high: int, x: Tensor, generator: torch.Generator | None) -> Tensor:
    """One integer in [low, high) per sample, (B, 1, 1), on x's device."""
    where = generator.device if generator is not None else x.device
    n = torch.randint(low, high, (x.shape[0], 1, 1), generator=generator, device=where)
    return n.to(x.device)


def rand_brightness(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Add one U[-0.5, 0.5) offset per sample."""
    return x + (_uniform(x, generator) - 0.5)


def rand_saturation(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Scale each pixel's deviation from its channel mean by U[0, 2) (no-op for C = 1)."""
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * (_uniform(x, generator) * 2) + mean


def rand_contrast(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Scale the deviation from each sample's mean by U[0.5, 1.5)."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_uniform(x, generator) + 0.5) + mean


def rand_translation(
    x: Tensor, generator: torch.Generator | None = None, ratio: float = TRANSLATION_RATIO
) -> Tensor:
    """Shift each sample by up to ``ratio`` of H and of W pixels, filling with zeros."""
    b, _, h, w = x.shape
    shift_h, shift_w = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = _integers(-shift_h, shift_h + 1, x, generator)
    dx = _integers(-shift_w, shift_w + 1, x, generator)
    batch, rows, cols = torch.meshgrid(
        torch.arange(b, device=x.device),
        torch.arange(h, device=x.device),
        torch.arange(w, device=x.device),
        indexing="ij",
    )
    # Index into a copy padded by one zero pixel: every shifted coordinate is clamped onto
    # the border, which reads zero, so the result is the image moved with zero fill.
    rows = torch.clamp(rows + dy + 1, 0, h + 1)
    cols = torch.clamp(cols + dx + 1, 0, w + 1)
    padded = F.pad(x, [1, 1, 1, 1])
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def rand_cutout(
    x: Tensor, generator: torch.Generator | None = None, ratio: float = CUTOUT_RATIO
) -> Tensor:
    """Zero a ``ratio * H`` by ``ratio * W`` rectangle at a random centre per sample."""
    b, _, h, w = x.shape
    size_h, size_w = int(h * ratio + 0.5), int(w * ratio + 0.5)
    # The paper's offsets: for an even cutout size the centre may also sit one past the
    # last pixel, so the square can touch every border equally often.
    cy = _integers(0, h + (1 - size_h % 2), x, generator)
    cx = _integers(0, w + (1 - size_w % 2), x, generator)
    batch, rows, cols = torch.meshgrid(
        torch.arange(b, device=x.device),
        torch.arange(size_h, device=x.device),
        torch.arange(size_w, device=x.device),
        indexing="ij",
    )
    rows = torch.clamp(rows + cy - size_h // 2, min=0, max=h - 1)
    cols = torch.clamp(cols + cx - size_w // 2, min=0, max=w - 1)
    mask = torch.ones(b, h, w, dtype=x.dtype, device=x.device)
    mask[batch, rows, cols] = 0
    return x * mask.unsqueeze(1)


def rand_flip(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Mirror each sample left-right with probability 1/2."""
    flip = _uniform(x, generator) < 0.5
    return torch.where(flip, x.flip(3), x)


_OPS = {
    "color": (rand_brightness, rand_saturation, rand_contrast),
    "translation": (rand_translation,),
    "cutout": (rand_cutout,),
    "flip": (rand_flip,),
}
