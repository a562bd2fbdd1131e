"""The random streams of a run: one CPU ``torch.Generator`` per kind of draw, their saved
state, and the draws of every step's random inputs.

Streams (all CPU generators; batches are drawn on the CPU and moved to the device):
    data, noise: seeded identically on every rank; each step draws the *global* batch and
        every rank keeps its own slice, so N ranks see exactly the batch one process would.
    penalty (interpolation weights, DRAGAN's noise), augment (DiffAugment), replay: one
        stream per rank.

``StepSampler`` draws everything random that ``gan.steps.critic_step`` and
``generator_step`` take, in a fixed order per stream, so a run is a deterministic function
of its seed and a resumed run continues bit-identically from the saved generator states.
"""

from __future__ import annotations

import random
import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fastgp.train.data import Dataset
from fastgp.train.gan.augment import AugmentParams, draw_augment
from fastgp.train.gan.objectives import PenaltyDraws, draw_penalty
from fastgp.train.gan.replay import ReplayBuffer
from fastgp.train.gan.steps import CriticInputs, GeneratorInputs
from fastgp.train.run.distributed import DistContext, shard

STREAMS = ("data", "noise", "penalty", "augment", "replay")
PER_RANK_STREAMS = ("penalty", "augment", "replay")


def stream_seed(seed: int, stream: str, rank: int) -> int:
    """A distinct, reproducible seed for each random stream (and rank, where per rank)."""
    index = STREAMS.index(stream)
    rank_part = rank if stream in PER_RANK_STREAMS else 0
    return (seed * 1_000_003 + index * 7_919 + rank_part * 104_729) % (2**63)


class RandomStreams:
    """The run's generators, ``streams["data"]`` etc., seeded by ``stream_seed``."""

    def __init__(self, seed: int, rank: int = 0) -> None:
        self.generators = {
            name: torch.Generator().manual_seed(stream_seed(seed, name, rank)) for name in STREAMS
        }

    def __getitem__(self, name: str) -> torch.Generator:
        return self.generators[name]

    def state_dict(self) -> dict[str, Any]:
        """``rng_state`` of every stream (and of the global RNGs), in ``STREAMS`` order."""
        return rng_state(*(self.generators[n] for n in STREAMS))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        restore_rng_state(state, *(self.generators[n] for n in STREAMS))


def to_device(t: Tensor, device: torch.device) -> Tensor:
    """A CPU tensor on ``device``; to a GPU through pinned memory without waiting for it (a
    plain copy from pageable memory would block until the device caught up)."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


class StepSampler:
    """Draws the random inputs of every critic and generator update.

    Args:
        streams: the run's generators.
        dataset: the training data.
        batch_size: the global batch (every rank keeps ``batch_size / world_size``).
        z_dim: the noise width.
        diffaug: the DiffAugment policy (``"none"``: none).
        penalty: the regulariser (``objectives.PENALTIES``).
        pac: the critic's packing: the penalty draws one interpolation weight per pack.
        ctx: this rank's place in the job; tensors go to ``ctx.device``.
    """

    def __init__(
        self,
        streams: RandomStreams,
        dataset: Dataset,
        *,
        batch_size: int,
        z_dim: int,
        diffaug: str,
        penalty: str,
        ctx: DistContext,
        pac: int = 1,
    ) -> None:
        self.streams, self.dataset, self.ctx = streams, dataset, ctx
        self.batch_size, self.z_dim = batch_size, z_dim
        self.diffaug, self.penalty, self.pac = diffaug, penalty, pac
        self.device = ctx.device

    def _real(self) -> Tensor:
        full = self.dataset.sample(self.batch_size, self.streams["data"], "cpu")
        return shard(full, self.ctx)

    def _noise(self) -> Tensor:
        full = torch.randn(
            self.batch_size, self.z_dim, generator=self.streams["noise"], device="cpu"
        )
        return shard(full, self.ctx)

    def _augment(self, shape: torch.Size) -> AugmentParams:
        params = draw_augment(self.diffaug, shape, self.streams["augment"])
        return {k: to_device(v, self.device) for k, v in params.items()}

    def critic_inputs(self, regularise: bool, replay: ReplayBuffer | None) -> CriticInputs:
        """The inputs of one critic update; ``regularise``: it adds the penalty (lazy
        regularisation decides); ``replay``: the buffer its fakes are mixed from."""
        real, z = self._real(), self._noise()
        replayed = None
        if replay is not None:
            draw = replay.draw(real.shape[0], self.streams["replay"])
            if draw is not None:
                swap, index = to_device(draw.swap, self.device), to_device(draw.index, self.device)
                replayed = (swap, replay.replayed(index))
        augment_real, augment_fake = self._augment(real.shape), self._augment(real.shape)
        penalty = None
        if regularise:
            drawn = draw_penalty(
                self.penalty, real.shape, real.dtype, self.streams["penalty"], pac=self.pac
            )
            penalty = PenaltyDraws(
                *(None if t is None else to_device(t, self.device) for t in drawn)
            )
        return CriticInputs(
            real=to_device(real, self.device),
            z=to_device(z, self.device),
            augment_real=augment_real,
            augment_fake=augment_fake,
            penalty=penalty,
            replay=replayed,
        )

    def generator_inputs(self) -> GeneratorInputs:
        """The inputs of one generator update."""
        z = self._noise()
        return GeneratorInputs(
            z=to_device(z, self.device),
            augment_fake=self._augment(torch.Size((z.shape[0], *self.dataset.sample_shape))),
        )


def rng_state(*generators: torch.Generator) -> dict[str, Any]:
    """Every RNG state a training step can draw from, in a ``weights_only``-loadable form.

    Captures Python's ``random``, NumPy's legacy global RNG, torch's CPU RNG, every CUDA
    device's RNG (when CUDA is initialised), and the given ``torch.Generator``s in order.
    """
    for i, g in enumerate(generators):
        if not isinstance(g, torch.Generator):
            raise TypeError(f"generator {i} must be a torch.Generator, got {type(g).__name__}")
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "generators": [g.get_state() for g in generators],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any], *generators: torch.Generator) -> None:
    """Put back the states ``rng_state`` captured, the generators in the same order.

    CUDA states are restored when present and CUDA is available (a CUDA checkpoint resumed
    on a CPU-only machine warns that the CUDA streams cannot be restored).
    """
    saved = state.get("generators")
    if saved is None or len(saved) != len(generators):
        count = "none" if saved is None else len(saved)
        raise ValueError(
            f"the RNG state holds {count} generator states but {len(generators)} "
            "generators were given; pass the same generators, in the same order, as to "
            "rng_state"
        )
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(
        (
            npy["name"],
            npy["keys"].numpy().astype(np.uint32),
            npy["pos"],
            npy["has_gauss"],
            npy["cached_gaussian"],
        )
    )
    # Generator states are CPU byte tensors whatever the generator's device; a checkpoint
    # loaded with map_location="cuda" would hand them over on the GPU.
    torch.set_rng_state(state["torch"].cpu())
    for g, s in zip(generators, saved, strict=True):
        g.set_state(s.cpu())
    if "cuda" in state:
        if torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
        else:
            warnings.warn(
                "the RNG state holds CUDA generator states but CUDA is not available here; "
                "they are not restored, so GPU-side random draws will differ",
                stacklevel=2,
            )
