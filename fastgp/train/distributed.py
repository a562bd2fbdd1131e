"""Data-parallel training with ``torch.distributed`` (``torchrun``): gloo on CPU, nccl on GPU.

Why gradients are averaged by hand instead of by ``DistributedDataParallel``: the WGAN-GP
critic step differentiates the critic twice (``autograd.grad(..., create_graph=True)`` for
the penalty, then ``backward`` through that gradient). DDP's documentation says it works
only when gradients are accumulated into ``.grad`` and not with ``torch.autograd.grad``; its
reducer hooks would also see the penalty's inner gradient pass, which is not a parameter
gradient at all. Averaging ``.grad`` after the complete ``backward`` is simple and exactly
right: every rank ends the step with the mean of all ranks' gradients, which for losses that
are means over the batch (with equal shards) is the gradient of the global batch. One flat
buffer per model keeps it to one collective per optimizer step.

Only rank 0 writes files; ``any_true`` lets every rank agree to stop (NaN, Ctrl-C) at the
same step, so no rank waits forever in a collective.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job: ``rank`` of ``world_size``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """True on the process that logs, samples and checkpoints (rank 0)."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def init_distributed(device: torch.device) -> DistContext:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``MASTER_ADDR``/``MASTER_PORT``); a plain single-process context without them.

    The backend is nccl for CUDA devices and gloo otherwise.
    """
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return DistContext()
    rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistContext(rank=rank, world_size=world, local_rank=local)


def shutdown(ctx: DistContext) -> None:
    """Leave the process group (if this module joined one)."""
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_module(module: nn.Module, ctx: DistContext) -> None:
    """Copy rank 0's parameters and buffers to every rank (in place)."""
    if not ctx.enabled:
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


def average_gradients(module: nn.Module, ctx: DistContext) -> None:
    """Replace every parameter's ``.grad`` by its mean over ranks (one flat all-reduce).

    Parameters without a gradient on this rank contribute zeros, so every rank joins the
    same collective with the same buffer size.
    """
    if not ctx.enabled:
        return
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat.div_(ctx.world_size)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


def average_buffers(module: nn.Module, ctx: DistContext) -> None:
    """Average floating-point buffers (batch-norm running statistics) over ranks."""
    if not ctx.enabled:
        return
    with torch.no_grad():
        for b in module.buffers():
            if b.is_floating_point():
                dist.all_reduce(b, op=dist.ReduceOp.SUM)
                b.div_(ctx.world_size)


def mean_over_ranks(values: dict[str, float], ctx: DistContext) -> dict[str, float]:
    """Average a dict of scalars over ranks (same keys on every rank), for logging."""
    if not ctx.enabled or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    t.div_(ctx.world_size)
    return dict(zip(keys, t.tolist(), strict=True))


def any_true(flag: bool, ctx: DistContext) -> bool:
    """True on every rank if ``flag`` is true on any rank."""
    if not ctx.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (picklable objects)."""
    if not ctx.enabled:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def shard(batch: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """This rank's contiguous slice of a global batch (B must divide by the world size)."""
    if not ctx.enabled:
        return batch
    size = batch.shape[0] // ctx.world_size
    return batch[ctx.rank * size : (ctx.rank + 1) * size]
