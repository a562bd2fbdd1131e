"""Procedural images: 1-3 filled circles, squares and triangles on black (no files)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fastgp.train.data.base import Dataset

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
