"""Timers: warm up, repeat many times, keep every sample, summarise by median and spread.

CPU: ``time.perf_counter`` around a block of back-to-back calls lasting at least
``min_sample_s`` (1 ms; one call per sample when a call is longer), as
``torch.utils.benchmark``'s ``blocked_autorange`` does; the callable receives the call
index, which providers use to rotate through several input sets. The competitors of one
case are timed *interleaved* (one block of each in turn, in a rotating order), so a burst
of load from other processes on a shared machine hits all of them alike instead of skewing
whichever happened to run at that moment.

Why blocks: a sample of a single call, taken right after another provider's call, measures
a cold call (the other provider's code and data have just evicted this one's from the
caches and branch predictors). For calls of a few microseconds that costs every provider
tens of microseconds on this machine (eager's 1x2 interpolation: 39.9 us cold, 12.1 us in
blocks), which says nothing about the operation and squeezes every ratio towards 1.
Blocks measure the steady state of repeated calls, the quantity every standard
microbenchmark timer reports.
CUDA: ``triton.testing.do_bench`` (median, it also flushes L2 between calls) when Triton is
importable, else CUDA events around each call after ``torch.cuda.synchronize``.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TimingConfig:
    """How long to measure one (case, provider) pair.

    warmup_s / min_warmup: warm-up time and calls (compilation, allocator, page faults);
    min_time_s / min_repeats / max_repeats: measure until both minimums are reached, at
    most max_repeats samples; min_sample_s: shortest sample (calls are batched below it).
    """

    warmup_s: float = 0.1
    min_warmup: int = 3
    min_time_s: float = 0.3
    min_repeats: int = 10
    max_repeats: int = 2000
    min_sample_s: float = 1e-3

    def __post_init__(self) -> None:
        for name in ("warmup_s", "min_time_s", "min_sample_s"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"TimingConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not 1 <= self.min_repeats <= self.max_repeats:
            raise ValueError(
                "TimingConfig needs 1 <= min_repeats <= max_repeats, got "
                f"{self.min_repeats} and {self.max_repeats}"
            )


@dataclass(frozen=True)
class Timing:
    """Summary of the per-call times of one measurement, in seconds.

    repeats: samples taken (-1 when ``triton.testing.do_bench`` chose the count itself);
    calls_per_sample: calls timed together in one sample; method: the clock used.
    """

    median_s: float
    p20_s: float
    p80_s: float
    repeats: int
    calls_per_sample: int
    method: str


def quantile(sorted_samples: list[float], q: float) -> float:
    """Linear-interpolated quantile ``q`` in [0, 1] of already sorted samples."""
    if not sorted_samples:
        raise ValueError("quantile needs at least one sample")
    pos = q * (len(sorted_samples) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_samples) - 1)
    return sorted_samples[lo] + (sorted_samples[hi] - sorted_samples[lo]) * (pos - lo)


def summarize(samples: list[float], calls_per_sample: int, method: str) -> Timing:
    """Median, p20 and p80 of per-call times (each sample divided by its call count)."""
    per_call = sorted(s / calls_per_sample for s in samples)
    return Timing(
        median_s=statistics.median(per_call),
        p20_s=quantile(per_call, 0.2),
        p80_s=quantile(per_call, 0.8),
        repeats=len(per_call),
        calls_per_sample=calls_per_sample,
        method=method,
    )


ESTIMATE_CALLS = 5


def estimate_call(fn: Callable[[int], object], calls: int) -> tuple[float, int]:
    """Seconds per call of warmed-up ``fn``, from ``ESTIMATE_CALLS`` calls timed together
    (one call alone is at the mercy of a single interruption), and the next call index."""
    t0 = time.perf_counter()
    for _ in range(ESTIMATE_CALLS):
        fn(calls)
        calls += 1
    return (time.perf_counter() - t0) / ESTIMATE_CALLS, calls


def calls_per_sample(one_call: float, config: TimingConfig) -> int:
    """Calls per timed block: enough to last ``min_sample_s``, at least one."""
    return max(1, math.ceil(config.min_sample_s / max(one_call, 1e-9)))


def time_cpu(fn: Callable[[int], object], config: TimingConfig) -> Timing:
    """Time ``fn(i)`` (i = call index) on the CPU; see the module docstring."""
    calls = 0
    start = time.perf_counter()
    while calls < config.min_warmup or time.perf_counter() - start < config.warmup_s:
        fn(calls)
        calls += 1
    one_call, calls = estimate_call(fn, calls)
    per_sample = calls_per_sample(one_call, config)
    samples: list[float] = []
    begin = time.perf_counter()
    while len(samples) < config.max_repeats and (
        len(samples) < config.min_repeats or time.perf_counter() - begin < config.min_time_s
    ):
        t = time.perf_counter()
        for _ in range(per_sample):
            fn(calls)
            calls += 1
        samples.append(time.perf_counter() - t)
    return summarize(samples, per_sample, "perf_counter")


def time_cpu_interleaved(
    fns: dict[str, Callable[[int], object]], config: TimingConfig
) -> dict[str, Timing]:
    """Time several ``fn(i)`` on the CPU, one sample of each in turn; see the module doc."""
    names = list(fns)
    calls = dict.fromkeys(names, 0)
    per_sample: dict[str, int] = {}
    for name, fn in fns.items():
        start = time.perf_counter()
        while calls[name] < config.min_warmup or time.perf_counter() - start < config.warmup_s:
            fn(calls[name])
            calls[name] += 1
        one_call, calls[name] = estimate_call(fn, calls[name])
        per_sample[name] = calls_per_sample(one_call, config)
    samples: dict[str, list[float]] = {name: [] for name in names}
    rounds = 0
    begin = time.perf_counter()
    while rounds < config.max_repeats and (
        rounds < config.min_repeats or time.perf_counter() - begin < config.min_time_s * len(names)
    ):
        shift = rounds % len(names)
        for name in names[shift:] + names[:shift]:
            fn, k = fns[name], per_sample[name]
            t = time.perf_counter()
            for _ in range(k):
                fn(calls[name])
                calls[name] += 1
            samples[name].append(time.perf_counter() - t)
        rounds += 1
    return {
        name: summarize(samples[name], per_sample[name], "perf_counter, interleaved")
        for name in names
    }


def time_cuda(fn: Callable[[int], object], config: TimingConfig) -> Timing:
    """Time ``fn(i)`` on the current CUDA device (do_bench, else CUDA events)."""
    counter = iter(range(1 << 62))
    call = lambda: fn(next(counter))
    try:
        from triton.testing import do_bench
    except ImportError:
        do_bench = None
    if do_bench is not None:
        median, p20, p80 = do_bench(
            call,
            warmup=max(1, int(config.warmup_s * 1e3)),
            rep=max(1, int(config.min_time_s * 1e3)),
            quantiles=[0.5, 0.2, 0.8],
        )
        return Timing(median * 1e-3, p20 * 1e-3, p80 * 1e-3, -1, 1, "triton.do_bench")
    for _ in range(config.min_warmup):
        call()
    torch.cuda.synchronize()
    samples: list[float] = []
    begin = time.perf_counter()
    while len(samples) < config.max_repeats and (
        len(samples) < config.min_repeats or time.perf_counter() - begin < config.min_time_s
    ):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) * 1e-3)
    return summarize(samples, 1, "cuda events")


def time_call(fn: Callable[[int], object], device: torch.device, config: TimingConfig) -> Timing:
    """Time ``fn(i)`` on ``device`` with ``config``."""
    if device.type == "cuda":
        return time_cuda(fn, config)
    if device.type != "cpu":
        raise ValueError(f"device must be cpu or cuda, got {device}")
    return time_cpu(fn, config)


def time_competitors(
    fns: dict[str, Callable[[int], object]], device: torch.device, config: TimingConfig
) -> dict[str, Timing]:
    """Time the competitors of one case on ``device``: interleaved on the CPU, one after
    the other on CUDA (where ``do_bench`` owns the device while it measures)."""
    if device.type == "cuda":
        return {name: time_cuda(fn, config) for name, fn in fns.items()}
    if device.type != "cpu":
        raise ValueError(f"device must be cpu or cuda, got {device}")
    return time_cpu_interleaved(fns, config)
