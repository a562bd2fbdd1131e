"""The 2-D toy sets of the WGAN-GP paper's ``gan_toy.py``: 8 Gaussians, 25 Gaussians, swiss roll.

Samples are (B, 2) float32 points, streamed (infinite); ``modes`` / ``mode_std`` describe the
Gaussian mixtures for the mode-coverage metrics.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from fastgp.train.data.base import Dataset

# Scale factors and standard deviations of gan_toy.py (igul222/improved_wgan_training).
# The divisors are the literal 1.414 and 2.828 of that code, not sqrt(2) and 2*sqrt(2).
_EIGHT_SCALE, _EIGHT_STD, _EIGHT_DIVISOR = 2.0, 0.02, 1.414
_GRID_SPACING, _GRID_STD, _GRID_DIVISOR = 2.0, 0.05, 2.828
_SWISSROLL_NOISE, _SWISSROLL_DIVISOR = 0.25, 7.5


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
