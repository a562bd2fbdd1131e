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

Only rank 0 writes files; ``any_true`` lets every rank agree to stop (Ctrl-C) at the same
step, so no rank waits forever in a collective.

Devices: with nccl every rank owns one GPU, ``cuda:LOCAL_RANK``, made the current device
*before* the process group is created (nccl binds each rank to the current device), and
every collective here takes tensors on ``ctx.device``: nccl rejects CPU tensors.
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
    """Where this process sits in the job: ``rank`` of ``world_size``, on ``device`` (the
    device of its models and of every tensor it hands to a collective)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

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


def rank_device(device: torch.device, local_rank: int, world_size: int) -> torch.device:
    """The device of the process with ``local_rank``: ``cuda:LOCAL_RANK`` for CUDA when
    there are several processes, else ``device`` itself."""
    if device.type != "cuda" or world_size <= 1:
        return device
    if device.index is not None:
        raise ValueError(
            f"--device {device}: with {world_size} processes every process takes its own GPU "
            "(cuda:LOCAL_RANK); pass --device cuda"
        )
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise ValueError(
            f"LOCAL_RANK {local_rank} has no GPU: this machine shows {count} CUDA device(s); "
            "start at most that many processes per node"
        )
    return torch.device("cuda", local_rank)


def init_distributed(device: torch.device) -> DistContext:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``MASTER_ADDR``/``MASTER_PORT``); a plain single-process context on ``device`` without
    them.

    The backend is nccl for CUDA devices and gloo otherwise; on CUDA this process's GPU
    (``rank_device``) becomes the current device before the group is created.
    """
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        if device.type == "cuda" and device.index is None:  # name the GPU tensors land on
            device = torch.device("cuda", torch.cuda.current_device())
        return DistContext(device=device)
    rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    device = rank_device(device, local, world)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistContext(rank=rank, world_size=world, local_rank=local, device=device)


def shutdown(ctx: DistContext) -> None:
    """Leave the process group (if this module joined one)."""
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def _on_device(t: torch.Tensor, ctx: DistContext, what: str) -> torch.Tensor:
    if t.device != ctx.device:
        raise ValueError(
            f"{what} is on {t.device} but this process works on {ctx.device}: every "
            "collective takes tensors on the process's own device"
        )
    return t


def broadcast_module(module: nn.Module, ctx: DistContext) -> None:
    """Copy rank 0's parameters and buffers to every rank (in place; on ``ctx.device``)."""
    if not ctx.enabled:
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(_on_device(t.data, ctx, "a model tensor"), src=0)


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
    flat = _on_device(torch.cat([g.reshape(-1) for g in grads]), ctx, "the gradients")
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
                dist.all_reduce(_on_device(b, ctx, "a model buffer"), op=dist.ReduceOp.SUM)
                b.div_(ctx.world_size)


def sum_over_ranks(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """The elementwise sum of ``t`` (on ``ctx.device``) over ranks; ``t`` itself in one
    process. Nothing is read back to the host."""
    if not ctx.enabled:
        return t
    total = _on_device(t, ctx, "the values to sum").clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def any_true(flag: bool, ctx: DistContext) -> bool:
    """True on every rank if ``flag`` is true on any rank (a host read with several
    processes)."""
    if not ctx.enabled:
        return flag
    t = torch.full((1,), int(flag), dtype=torch.int64, device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (picklable objects; nccl
    moves them through the current device, which ``init_distributed`` set)."""
    if not ctx.enabled:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def shard(batch: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """This rank's contiguous slice of a global batch (B must divide by the world size)."""
    if not ctx.enabled:
        return batch
    size = batch.shape[0] // ctx.world_size
    return batch[ctx.rank * size : (ctx.rank + 1) * size]
