"""pytest-benchmark versions of the main cases of ``python -m benchmarks.run``.

Not collected by the default ``python -m pytest`` (testpaths = tests). Run with
``python -m pytest benchmarks/test_bench.py`` (or ``pytest benchmarks --benchmark-only``);
group and compare with pytest-benchmark's own options, e.g. ``--benchmark-group-by=param:case``.
"""

import itertools

import pytest
import torch

from benchmarks.cases import OpCase
from benchmarks.critic_step import (
    STEP_CASES,
    STEP_PROVIDERS,
    build_critic,
    step_callable,
    step_inputs,
)
from benchmarks.providers import PROVIDERS, input_sets, op_callable

CPU = torch.device("cpu")
# A small MNIST batch, a CIFAR-sized one, and a 64x64 RGB batch of 3M elements.
SIZES = ((64, (1, 28, 28)), (256, (3, 32, 32)), (256, (3, 64, 64)))
OP_CASES = [
    OpCase(op, mode, b, s)
    for op, mode in (("interpolate", "fwd"), ("penalty", "fwd"), ("penalty", "fwdbwd"))
    for b, s in SIZES
]


def bench(benchmark, fn) -> None:
    """Time ``fn(i)`` with a fresh call index each call (the providers rotate inputs on it)."""
    counter = itertools.count()
    benchmark(lambda: fn(next(counter)))


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("case", OP_CASES, ids=lambda c: c.name)
def test_op(benchmark, case, provider):
    sets = input_sets(case, torch.float32, CPU, rotate_bytes=64 << 20)
    fn = op_callable(case, provider, sets, backend="auto")
    fn(0)  # compile / load outside the timed rounds
    bench(benchmark, fn)


@pytest.mark.parametrize("provider", STEP_PROVIDERS)
@pytest.mark.parametrize("case", STEP_CASES[:2], ids=lambda c: c.name)
def test_critic_step(benchmark, case, provider):
    critic = build_critic(case, CPU)
    fn = step_callable(case, provider, critic, step_inputs(case, CPU, count=2), "auto")
    fn(0)
    benchmark.pedantic(fn, args=(1,), rounds=5, warmup_rounds=1)
