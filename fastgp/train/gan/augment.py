"""DiffAugment (Zhao et al., NeurIPS 2020): differentiable augmentation for GAN training.

The same kind of random transformations, drawn independently per call, are applied to the
real batch and to the generated batch before the critic sees them; because every operation
is differentiable in the pixels, the generator's gradient passes through the augmentation.

Policies follow the authors' ``DiffAugment_pytorch.py``:
    ``color``: ``brightness`` (add U[-0.5, 0.5)), ``saturation`` (scale the deviation from
    the channel mean by U[0, 2)), ``contrast`` (scale the deviation from the image mean by
    U[0.5, 1.5)), one draw per sample each.
    ``translation``: shift by up to 1/8 of the image size in each direction (integer
    pixels, zero fill), independently per sample.
    ``cutout``: zero a square of half the image size at a random centre per sample.
plus ``flip``: mirror each sample left-right with probability 1/2 (not in the paper; the
trainer issue asks for flips, and a flip is exactly differentiable).

Drawing and applying are separate, so the trainer's step functions take the random
parameters as tensors and never touch a ``torch.Generator``:
``params = draw_augment(policy, x.shape, generator)`` (CPU draws, on the generator's
device) and ``augment(x, params)`` (no random numbers, no host synchronisation).
``diff_augment(x, policy, generator)`` does both.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

POLICIES = ("color", "translation", "cutout", "flip")
TRANSLATION_RATIO = 0.125
CUTOUT_RATIO = 0.5

AugmentParams = dict[str, Tensor]
"""Policy entry -> its random parameters, in the order they are applied:

* ``color``: (3, B, 1, 1, 1) float32 U[0, 1): brightness, saturation, contrast;
* ``translation``: (2, B, 1, 1) int64 row and column shifts;
* ``cutout``: (2, B, 1, 1) int64 row and column of the square's centre;
* ``flip``: (B, 1, 1, 1) float32 U[0, 1) (flip where < 0.5).
"""


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


def _check_images(x: Tensor) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"`x` must be a Tensor of images, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(
            f"DiffAugment needs image batches of shape (B, C, H, W); got `x` of shape "
            f"{tuple(x.shape)}. Toy 2-D data (B, 2) cannot be augmented: use policy 'none'."
        )
    if not x.is_floating_point():
        raise TypeError(f"`x` must be a floating-point tensor, got dtype {x.dtype}")


def _shift_range(size: int, ratio: float) -> int:
    return int(size * ratio + 0.5)


def draw_augment(
    policy: str,
    shape: Sequence[int],
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> AugmentParams:
    """The random parameters of ``policy`` for a batch of images of ``shape``.

    Args:
        policy: as in ``diff_augment``.
        shape: (B, C, H, W) of the batch they will be applied to.
        generator: source of every draw; None uses torch's global RNG.
        device: where to draw with the global RNG (default CPU); a generator draws on its
            own device.

    Returns:
        ``AugmentParams`` (see there), on the generator's (or ``device``) device; an empty
        dict for ``"none"``.
    """
    names = parse_policy(policy)
    if not names:
        return {}
    if len(shape) != 4:
        raise ValueError(f"`shape` must be (B, C, H, W), got {tuple(shape)}")
    batch, _, height, width = (int(s) for s in shape)
    where = generator.device if generator is not None else device

    def uniform() -> Tensor:
        return torch.rand(batch, 1, 1, 1, generator=generator, device=where)

    def integers(low: int, high: int) -> Tensor:
        return torch.randint(low, high, (batch, 1, 1), generator=generator, device=where)

    params: AugmentParams = {}
    for name in names:
        if name == "color":
            params[name] = torch.stack([uniform(), uniform(), uniform()])
        elif name == "translation":
            shift_h = _shift_range(height, TRANSLATION_RATIO)
            shift_w = _shift_range(width, TRANSLATION_RATIO)
            rows = integers(-shift_h, shift_h + 1)
            params[name] = torch.stack([rows, integers(-shift_w, shift_w + 1)])
        elif name == "cutout":
            size_h = _shift_range(height, CUTOUT_RATIO)
            size_w = _shift_range(width, CUTOUT_RATIO)
            # The paper's offsets: for an even cutout size the centre may also sit one past
            # the last pixel, so the square can touch every border equally often.
            rows = integers(0, height + (1 - size_h % 2))
            params[name] = torch.stack([rows, integers(0, width + (1 - size_w % 2))])
        else:
            params[name] = uniform()
    return params


def augment(x: Tensor, params: AugmentParams) -> Tensor:
    """Apply drawn DiffAugment parameters to a batch (no random draws).

    Args:
        x: (B, C, H, W) floating-point images (any value range; the colour operations
            assume roughly [-1, 1] as in the paper).
        params: from ``draw_augment`` for this batch's shape; an empty dict returns ``x``.

    Returns:
        (B, C, H, W) contiguous tensor of x's dtype and device, differentiable in x.
    """
    if not params:
        return x
    _check_images(x)
    for name, p in params.items():
        if name == "color":
            x = contrast(saturation(brightness(x, p[0]), p[1]), p[2])
        elif name == "translation":
            x = translate(x, p[0], p[1])
        elif name == "cutout":
            x = cutout(x, p[0], p[1])
        elif name == "flip":
            x = flip(x, p)
        else:
            raise ValueError(f"unknown DiffAugment parameters {name!r}; expected {POLICIES}")
    return x.contiguous()


def diff_augment(x: Tensor, policy: str, generator: torch.Generator | None = None) -> Tensor:
    """Draw and apply the DiffAugment ``policy`` to a batch of images.

    Args:
        x: (B, C, H, W) floating-point images.
        policy: comma-separated entries of ``POLICIES`` in the order to apply them, or
            ``""``/``"none"`` for no augmentation (x is returned as it is).
        generator: source of all random draws; None uses torch's global RNG (on x's
            device).

    Returns:
        (B, C, H, W) tensor of x's dtype and device, differentiable with respect to x.
    """
    names = parse_policy(policy)
    _check_images(x)
    if not names:
        return x
    return augment(x, draw_augment(policy, x.shape, generator, device=x.device))


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


def _per_sample(u: Tensor, x: Tensor) -> Tensor:
    """Drawn uniforms (B, 1, 1, 1) in x's dtype and device."""
    return u.to(device=x.device, dtype=x.dtype)


def brightness(x: Tensor, u: Tensor) -> Tensor:
    """Add ``u - 0.5`` per sample (u: (B, 1, 1, 1) in [0, 1))."""
    return x + (_per_sample(u, x) - 0.5)


def saturation(x: Tensor, u: Tensor) -> Tensor:
    """Scale each pixel's deviation from its channel mean by ``2u`` (no-op for C = 1)."""
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * (_per_sample(u, x) * 2) + mean


def contrast(x: Tensor, u: Tensor) -> Tensor:
    """Scale the deviation from each sample's mean by ``u + 0.5``."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_per_sample(u, x) + 0.5) + mean


def translate(x: Tensor, dy: Tensor, dx: Tensor) -> Tensor:
    """Shift sample i by ``dy[i]`` rows and ``dx[i]`` columns ((B, 1, 1) ints), zero fill."""
    b, _, h, w = x.shape
    batch, rows, cols = torch.meshgrid(
        torch.arange(b, device=x.device),
        torch.arange(h, device=x.device),
        torch.arange(w, device=x.device),
        indexing="ij",
    )
    # Index into a copy padded by one zero pixel: every shifted coordinate is clamped onto
    # the border, which reads zero, so the result is the image moved with zero fill.
    rows = torch.clamp(rows + dy.to(x.device) + 1, 0, h + 1)
    cols = torch.clamp(cols + dx.to(x.device) + 1, 0, w + 1)
    padded = F.pad(x, [1, 1, 1, 1])
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def cutout(x: Tensor, cy: Tensor, cx: Tensor) -> Tensor:
    """Zero a rectangle of ``CUTOUT_RATIO`` of H by W centred at ``(cy[i], cx[i])`` ((B, 1, 1)
    ints; the centre may lie one past the last pixel, see ``draw_augment``)."""
    b, _, h, w = x.shape
    size_h, size_w = _shift_range(h, CUTOUT_RATIO), _shift_range(w, CUTOUT_RATIO)
    batch, rows, cols = torch.meshgrid(
        torch.arange(b, device=x.device),
        torch.arange(size_h, device=x.device),
        torch.arange(size_w, device=x.device),
        indexing="ij",
    )
    rows = torch.clamp(rows + cy.to(x.device) - size_h // 2, min=0, max=h - 1)
    cols = torch.clamp(cols + cx.to(x.device) - size_w // 2, min=0, max=w - 1)
    mask = torch.ones(b, h, w, dtype=x.dtype, device=x.device)
    mask[batch, rows, cols] = 0
    return x * mask.unsqueeze(1)


def flip(x: Tensor, u: Tensor) -> Tensor:
    """Mirror sample i left-right where ``u[i] < 0.5``."""
    return torch.where(_per_sample(u, x) < 0.5, x.flip(3), x)
