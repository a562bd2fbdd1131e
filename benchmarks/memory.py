"""Peak memory of one call, as bytes allocated on top of what was live before it.

CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (the caching
allocator's exact high-water mark of tensor memory).
CPU: ``tracemalloc`` does not see torch's allocations and resident-set growth mostly
measures the C allocator's caching, so the call runs once under ``torch.profiler`` with
``profile_memory=True``: every tensor allocation and free made by torch is an event with a
signed size; the running sum of those events in time order, maximised, is the peak of
torch-allocated bytes during the call.
"""

from __future__ import annotations

import gc
from collections.abc import Callable

import torch

CPU_METHOD = "torch.profiler memory events (peak of live torch-allocated bytes)"
CUDA_METHOD = "torch.cuda.max_memory_allocated - memory_allocated before the call"


def peak_bytes_cpu(fn: Callable[[], object]) -> int:
    """Peak torch-allocated bytes above the starting point while ``fn()`` runs on the CPU."""
    from torch._C._autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == DeviceType.CPU
    ]
    events.sort()
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def peak_bytes_cuda(fn: Callable[[], object], device: torch.device) -> int:
    """Peak CUDA tensor bytes above the starting point while ``fn()`` runs."""
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def peak_bytes(fn: Callable[[], object], device: torch.device, repeats: int = 3) -> tuple[int, str]:
    """(peak bytes, how they were measured): the smallest peak over ``repeats`` calls of
    ``fn`` on ``device``, each after ``gc.collect()``.

    One call can be inflated by work that is not the call's own (an optimiser's state
    created on first use, tensors of an earlier call freed late); the steady-state step is
    the quantity compared between providers, and the smallest peak is its best estimate.
    """
    cuda = device.type == "cuda"
    peaks = []
    for _ in range(max(1, repeats)):
        gc.collect()
        peaks.append(peak_bytes_cuda(fn, device) if cuda else peak_bytes_cpu(fn))
    method = CUDA_METHOD if cuda else CPU_METHOD
    return min(peaks), f"{method}; smallest of {len(peaks)} calls"
