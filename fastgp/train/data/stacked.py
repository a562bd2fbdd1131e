"""Stacked MNIST (VEEGAN, PacGAN): three MNIST digits as the R, G and B channels, 1,000 modes.

Built from the user's MNIST IDX files (nothing is downloaded). The training set is a fixed
list of ``STACKED_NUM_EXAMPLES`` digit triples drawn once from the seed, each digit
independently and uniformly from the MNIST training images; images are stacked on the fly,
so memory holds the digits and the (N, 3) index triples only. A sample's label is
``100 * d0 + 10 * d1 + d2`` (the digits of channels 0, 1, 2). ``heldout`` stacks fresh
triples of the t10k digits (the training digits when t10k is absent).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastgp.train.data.base import Dataset
from fastgp.train.data.images import to_unit_range
from fastgp.train.data.mnist import load_mnist_digits

STACKED_NUM_EXAMPLES = 128_000  # the fixed training-set size of the stacked-MNIST protocol
STACKED_CHANNELS = 3
_TRIPLES_SEED_OFFSET = 31_337  # the triples get their own stream of the seed


def stack_digits(digits: Tensor, triples: Tensor) -> Tensor:
    """(B, 3, H, W) float32 in [-1, 1]: channel c of sample b is ``digits[triples[b, c]]``.

    digits: (N, 1, H, W) uint8 or float32 [-1, 1]; triples: (B, 3) int64 indices into it.
    """
    return to_unit_range(digits[triples.reshape(-1), 0].reshape(*triples.shape, *digits.shape[2:]))


def stacked_labels(digit_labels: Tensor, triples: Tensor, num_classes: int = 10) -> Tensor:
    """(B,) int64 label ``d0 * K**2 + d1 * K + d2`` of each triple (K = ``num_classes``)."""
    digits = digit_labels[triples]  # (B, 3)
    weights = torch.tensor([num_classes**2, num_classes, 1], dtype=torch.int64)
    return (digits * weights).sum(dim=1)


class StackedMnistDataset(Dataset):
    """Stacked MNIST: (3, S, S) samples whose channels are three MNIST digits (module doc).

    Args:
        digits: (N, 1, S, S) uint8 MNIST training digits.
        heldout_digits: (M, 1, S, S) t10k digits, or None.
        triples: (num_examples, 3) int64 indices into ``digits``: the training set.
        labelled, label_note: the single digits with their labels (``Dataset``).
    """

    name = "stacked-mnist"
    kind = "image"
    stacked = True

    def __init__(self, digits, heldout_digits, triples, labelled, label_note) -> None:
        self.digits, self.heldout_digits, self.triples = digits, heldout_digits, triples
        self.labelled, self.label_note = labelled, label_note
        self.sample_shape = (STACKED_CHANNELS, *digits.shape[2:])
        self.num_examples = int(triples.shape[0])

    def labels_of(self, triples: Tensor) -> Tensor:
        """(B,) int64 stacked labels of index triples into the training digits."""
        if self.labelled is None:
            raise ValueError(f"stacked-mnist has no labels: {self.label_note}")
        return stacked_labels(self.labelled.labels, triples, self.labelled.num_classes)

    def _draw(self, batch_size: int, generator: torch.Generator) -> Tensor:
        index = torch.randint(
            self.num_examples, (batch_size,), generator=generator, device=generator.device
        )
        return stack_digits(self.digits, self.triples[index.cpu()]).to(generator.device)

    def _draw_heldout(self, n: int, generator: torch.Generator) -> Tensor:
        source = self.digits if self.heldout_digits is None else self.heldout_digits
        triples = torch.randint(source.shape[0], (n, STACKED_CHANNELS), generator=generator)
        return stack_digits(source, triples.cpu())


def load_stacked_mnist(
    data_dir: str | None, image_size: int | None, channels: int | None, seed: int
) -> Dataset:
    """Stacked MNIST from the MNIST IDX files in ``data_dir`` (found as for ``mnist``).

    ``channels`` must be None or 3 (the three digits are the channels); ``image_size``
    resizes the digits. The ``STACKED_NUM_EXAMPLES`` training triples are fixed by ``seed``.
    """
    if channels not in (None, STACKED_CHANNELS):
        raise ValueError(
            f"dataset 'stacked-mnist' has 3 channels (one digit each); got `channels` {channels}"
        )
    digits, heldout, labelled, note = load_mnist_digits(data_dir, image_size, 1, "stacked-mnist")
    generator = torch.Generator().manual_seed(seed + _TRIPLES_SEED_OFFSET)
    triples = torch.randint(
        digits.shape[0], (STACKED_NUM_EXAMPLES, STACKED_CHANNELS), generator=generator
    )
    return StackedMnistDataset(digits, heldout, triples, labelled, note)
