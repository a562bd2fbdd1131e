"""A replay buffer of past generated samples shown to the critic again.

Mixing older fakes into the critic's batch (Shrivastava et al., CVPR 2017) keeps the
critic from forgetting regions the generator has left, which damps mode hopping.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor


class ReplayBuffer:
    """A ring buffer of up to ``capacity`` detached fake samples.

    Storage lives on the device (and in the dtype) of the first batch given to ``mix``:
    no host transfers, and memory is bounded by ``capacity`` samples.

    Args:
        capacity: number of samples kept, >= 1; the oldest are overwritten first.
        prob: chance, in [0, 1], that each sample of a batch is swapped for a stored one.
        generator: a ``torch.Generator`` for every random draw, so the mixing is
            reproducible. Its state is not part of ``state_dict`` (the caller saves it
            with the other RNG states).
    """

    def __init__(self, capacity: int, prob: float, generator: torch.Generator) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"`capacity` must be an integer >= 1, got {capacity!r}")
        prob = float(prob)
        if not (math.isfinite(prob) and 0.0 <= prob <= 1.0):
            raise ValueError(f"`prob` must be in [0, 1], got {prob}")
        if not isinstance(generator, torch.Generator):
            raise TypeError(
                f"`generator` must be a torch.Generator, got {type(generator).__name__}"
            )
        self.capacity = capacity
        self.prob = prob
        self.generator = generator
        self.buffer: Tensor | None = None
        self.filled = 0  # samples stored so far, at most capacity
        self.position = 0  # next ring slot to overwrite

    def __len__(self) -> int:
        return self.filled

    def mix(self, fake: Tensor) -> Tensor:
        """The critic's fake batch: ``fake`` with some samples replaced by stored ones.

        Each sample is independently, with probability ``prob``, replaced by a stored
        sample drawn uniformly (with replacement) from the buffer, if it holds any; then
        the new ``fake`` samples are stored (detached) in the ring.

        Args:
            fake: (B, *) generated samples; every batch must have the same sample shape.

        Returns:
            (B, *) tensor; kept samples carry ``fake``'s autograd history, replayed ones
            are detached.
        """
        if not isinstance(fake, Tensor) or fake.dim() < 1 or fake.shape[0] == 0:
            raise ValueError("`fake` must be a non-empty (B, *) tensor")
        if self.buffer is not None and fake.shape[1:] != self.buffer.shape[1:]:
            raise ValueError(
                f"`fake` samples have shape {tuple(fake.shape[1:])} but the buffer holds "
                f"{tuple(self.buffer.shape[1:])}"
            )
        out = fake
        if self.buffer is not None and self.filled and self.prob > 0:
            out = self._replace(fake, self.buffer)
        self._store(fake.detach())
        return out

    def _replace(self, fake: Tensor, buffer: Tensor) -> Tensor:
        batch, where = fake.shape[0], self.generator.device
        swap = torch.rand(batch, generator=self.generator, device=where) < self.prob
        index = torch.randint(self.filled, (batch,), generator=self.generator, device=where)
        old = buffer[index.to(buffer.device)].to(device=fake.device, dtype=fake.dtype)
        swap = swap.to(fake.device).reshape((batch,) + (1,) * (fake.dim() - 1))
        return torch.where(swap, old, fake)

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
