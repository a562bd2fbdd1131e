"""The common base of the trainer's datasets: what the trainer needs from one.

Every dataset draws its batches from a caller-owned ``torch.Generator``, so a run is
reproducible from its seed and resumable from the generator's saved state
(``generator.get_state()``). Nothing is ever downloaded.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor


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
