"""The common base of the trainer's datasets: what the trainer needs from one.

Every dataset draws its batches from a caller-owned ``torch.Generator``, so a run is
reproducible from its seed and resumable from the generator's saved state
(``generator.get_state()``). Nothing is ever downloaded.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor


@dataclass(frozen=True)
class LabelledImages:
    """Labelled images a dataset's class metrics are judged with (its digit classifier's
    training data).

    Attributes:
        images: (N, C, H, W) uint8 in [0, 255] or float32 in [-1, 1], at the size and
            channel count the dataset serves (for Stacked MNIST: single 1-channel digits).
        labels: (N,) int64 in [0, num_classes).
        num_classes: the number of classes K of one image of ``images``.
        files: the files they were read from (the classifier cache compares their hashes).
    """

    images: Tensor
    labels: Tensor
    num_classes: int
    files: tuple[Path, ...]


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
        labelled: the labelled images behind the class metrics (MNIST with its labels
            file, Stacked MNIST); None when the data has no labels.
        label_note: why ``labelled`` is None, said in the evaluation output.
        stacked: each channel of a sample is one image of ``labelled`` (Stacked MNIST):
            a sample's class is the base-K number of its channels' classes, channel 0
            the most significant, so K**C classes.
    """

    name: str
    kind: str
    sample_shape: tuple[int, ...]
    modes: Tensor | None = None
    mode_std: float | None = None
    num_examples: int | None = None
    labelled: LabelledImages | None = None
    label_note: str | None = None
    stacked: bool = False

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
