"""A replay buffer of past generated samples shown to the critic again.

Mixing older fakes into the critic's batch (Shrivastava et al., CVPR 2017) keeps the
critic from forgetting regions the generator has left, which damps mode hopping.

The random choices are drawn apart from the mixing (``ReplayBuffer.draw``, from a
caller-owned generator), so the trainer's critic step receives them as tensors: it calls
``replace_samples(fake, swap, replayed)`` and the trainer ``store``s the new fakes after.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import Tensor


class ReplayDraw(NamedTuple):
    """The random choices of one mix, (B,) each: ``swap[i]`` replaces sample i by the
    stored sample ``index[i]``."""

    swap: Tensor  # (B,) bool
    index: Tensor  # (B,) int64 in [0, len(buffer))


def replace_samples(fake: Tensor, swap: Tensor, replayed: Tensor) -> Tensor:
    """``fake`` with sample i replaced by ``replayed[i]`` where ``swap[i]``.

    fake, replayed: (B, *) (replayed is cast to fake's dtype); swap: (B,) bool. Kept samples
    carry ``fake``'s autograd history.
    """
    swap = swap.to(fake.device).reshape((fake.shape[0],) + (1,) * (fake.dim() - 1))
    return torch.where(swap, replayed.to(device=fake.device, dtype=fake.dtype), fake)


class ReplayBuffer:
    """A ring buffer of up to ``capacity`` detached fake samples.

    Storage lives on the device (and in the dtype) of the first batch stored: no host
    transfers, and memory is bounded by ``capacity`` samples. Which ring slots are filled
    depends only on the batch sizes, so ``draw`` needs no device read.

    Args:
        capacity: number of samples kept, >= 1; the oldest are overwritten first.
        prob: chance, in [0, 1], that each sample of a batch is swapped for a stored one.
    """

    def __init__(self, capacity: int, prob: float) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"`capacity` must be an integer >= 1, got {capacity!r}")
        prob = float(prob)
        if not (math.isfinite(prob) and 0.0 <= prob <= 1.0):
            raise ValueError(f"`prob` must be in [0, 1], got {prob}")
        self.capacity = capacity
        self.prob = prob
        self.buffer: Tensor | None = None
        self.filled = 0  # samples stored so far, at most capacity
        self.position = 0  # next ring slot to overwrite

    def __len__(self) -> int:
        return self.filled

    def draw(self, batch: int, generator: torch.Generator) -> ReplayDraw | None:
        """The random choices of the next mix of a (batch, *) fake batch, drawn from
        ``generator`` on its device; None while there is nothing to mix (an empty buffer,
        or ``prob`` 0), in which case nothing is drawn.

        Each sample is independently, with probability ``prob``, replaced by a stored
        sample drawn uniformly (with replacement) from the buffer.
        """
        if not isinstance(generator, torch.Generator):
            raise TypeError(
                f"`generator` must be a torch.Generator, got {type(generator).__name__}"
            )
        if not self.filled or self.prob <= 0:
            return None
        where = generator.device
        swap = torch.rand(batch, generator=generator, device=where) < self.prob
        index = torch.randint(self.filled, (batch,), generator=generator, device=where)
        return ReplayDraw(swap, index)

    def replayed(self, index: Tensor) -> Tensor:
        """The stored samples ``buffer[index]`` (B, *), on the buffer's device."""
        if self.buffer is None:
            raise ValueError("the replay buffer is empty: there is nothing to replay")
        return self.buffer[index.to(self.buffer.device)]

    def mix(self, fake: Tensor, draw: ReplayDraw | None) -> Tensor:
        """The critic's fake batch: ``fake`` mixed per ``draw`` (see ``draw``), then the new
        ``fake`` samples are stored (detached) in the ring.

        Args:
            fake: (B, *) generated samples; every batch must have the same sample shape.
            draw: from ``draw(B, generator)`` just before; None mixes nothing.

        Returns:
            (B, *) tensor; kept samples carry ``fake``'s autograd history, replayed ones
            are detached.
        """
        self._check(fake)
        out = fake
        if draw is not None:
            out = replace_samples(fake, draw.swap, self.replayed(draw.index))
        self._store(fake.detach())
        return out

    def _check(self, fake: Tensor) -> None:
        if not isinstance(fake, Tensor) or fake.dim() < 1 or fake.shape[0] == 0:
            raise ValueError("`fake` must be a non-empty (B, *) tensor")
        if self.buffer is not None and fake.shape[1:] != self.buffer.shape[1:]:
            raise ValueError(
                f"`fake` samples have shape {tuple(fake.shape[1:])} but the buffer holds "
                f"{tuple(self.buffer.shape[1:])}"
            )

    def store(self, fake: Tensor) -> None:
        """Write the (B, *) samples ``fake`` (detached) into the ring, oldest slots first."""
        self._check(fake)
        self._store(fake.detach())

    def to(self, device: torch.device | str) -> ReplayBuffer:
        """Move the stored samples to ``device`` (a resumed run's buffer is loaded on the
        CPU); returns self."""
        if self.buffer is not None:
            self.buffer = self.buffer.to(device)
        return self

    def _store(self, fake: Tensor) -> None:
        if self.buffer is None:
            self.buffer = fake.new_empty((self.capacity,) + tuple(fake.shape[1:]))
        # A batch larger than the buffer: only its last `capacity` samples survive anyway.
        fake = fake[-self.capacity :].to(device=self.buffer.device, dtype=self.buffer.dtype)
        n = fake.shape[0]
        first = min(n, self.capacity - self.position)
        self.buffer[self.position : self.position + first] = fake[:first]
        self.buffer[: n - first] = fake[first:]
        self.position = (self.position + n) % self.capacity
        self.filled = min(self.capacity, self.filled + n)

    def state_dict(self) -> dict[str, Any]:
        """``{"capacity", "prob", "filled", "position", "samples"}``; ``samples`` is the
        (filled, *) stored part of the buffer (None when empty)."""
        samples = None if self.buffer is None else self.buffer[: self.filled].clone()
        return {
            "capacity": self.capacity,
            "prob": self.prob,
            "filled": self.filled,
            "position": self.position,
            "samples": samples,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state from ``state_dict`` (capacity must match this buffer's)."""
        missing = {"capacity", "prob", "filled", "position", "samples"} - set(state)
        if missing:
            raise KeyError(f"ReplayBuffer state is missing {sorted(missing)}")
        if state["capacity"] != self.capacity:
            raise ValueError(
                f"ReplayBuffer state has capacity {state['capacity']}, this buffer {self.capacity}"
            )
        filled, position, samples = int(state["filled"]), int(state["position"]), state["samples"]
        if not (0 <= filled <= self.capacity and 0 <= position < self.capacity):
            raise ValueError(f"ReplayBuffer state has filled={filled}, position={position}")
        if (samples is None) != (filled == 0) or (samples is not None and len(samples) != filled):
            raise ValueError("ReplayBuffer state `samples` does not match `filled`")
        self.prob = float(state["prob"])
        self.filled, self.position = filled, position
        if samples is None:
            self.buffer = None
            return
        self.buffer = samples.new_empty((self.capacity,) + tuple(samples.shape[1:]))
        self.buffer[:filled] = samples
