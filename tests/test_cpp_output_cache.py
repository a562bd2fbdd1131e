"""The C++ kernels' cache of large output buffers (csrc/fastgp_output_cache.h).

A reused buffer still holds the previous call's values, so these tests check that a second
call into the same memory is still exactly right, that layouts survive, that the limit is
honoured, and that torch's profiler still sees the allocations the cache serves.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from benchmarks.memory import peak_bytes_cpu
from fastgp.backends import cpp
from fastgp.backends import reference as ref

pytestmark = pytest.mark.usefixtures("cpp_built")

ops = torch.ops.fastgp
# 8 MiB of fp32 per tensor: above the cache's 4 MiB threshold.
BIG = (8, 2, 256, 512)
MIB = 1 << 20


@pytest.fixture(autouse=True)
def _fresh_cache():
    """Each test starts from an empty cache with the default limit, and leaves it so."""
    limit = cpp.output_cache_info()["limit_bytes"]
    cpp.set_output_cache_limit(1024 * MIB)
    cpp.empty_output_cache()
    yield
    cpp.set_output_cache_limit(limit)
    cpp.empty_output_cache()


def _rand(shape: tuple[int, ...], seed: int) -> Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_a_freed_output_is_reused_and_rewritten_completely() -> None:
    real, fake = _rand(BIG, 1), _rand(BIG, 2)
    alpha = torch.rand(BIG[0], generator=torch.Generator().manual_seed(3))
    first = ops.interpolate.default(real, fake, alpha)
    address = first.data_ptr()
    assert cpp.output_cache_info()["cached_bytes"] == 0
    del first
    assert cpp.output_cache_info()["cached_bytes"] == real.numel() * 4
    # Other inputs into the same memory: every element must be overwritten.
    second = ops.interpolate.default(fake, real, 1 - alpha)
    assert second.data_ptr() == address
    assert cpp.output_cache_info()["cached_bytes"] == 0
    assert torch.equal(second, ref.interpolate(fake, real, 1 - alpha))
    (grad,) = ops.penalty_backward.default(
        torch.tensor(1.0), [second], torch.ones(BIG[0]), None, 1.0, 10.0, 0.5, False, 1
    )
    del second
    (again,) = ops.penalty_backward.default(
        torch.tensor(1.0), [real], torch.ones(BIG[0]), None, 1.0, 10.0, 0.5, False, 1
    )
    assert again.data_ptr() == address
    (expected,) = ref.penalty_backward(
        torch.tensor(1.0), [real], torch.ones(BIG[0]), None, 1.0, 10.0, 0.5, False, 1
    )
    assert torch.equal(again, expected)
    assert grad.data_ptr() != address  # both alive: two buffers


def test_channels_last_outputs_keep_their_layout() -> None:
    real = _rand(BIG, 4).to(memory_format=torch.channels_last)
    fake = _rand(BIG, 5).to(memory_format=torch.channels_last)
    alpha = torch.rand(BIG[0], generator=torch.Generator().manual_seed(6))
    ops.interpolate.default(real.contiguous(), fake.contiguous(), alpha)  # freed: cached
    out = ops.interpolate.default(real, fake, alpha)
    assert out.stride() == real.stride()
    assert torch.equal(out, ref.interpolate(real, fake, alpha))


def test_small_outputs_and_a_zero_limit_bypass_the_cache() -> None:
    small = _rand((4, 1000), 7)
    ops.interpolate.default(small, small, torch.rand(4))
    assert cpp.output_cache_info()["cached_bytes"] == 0
    real = _rand(BIG, 8)
    ops.interpolate.default(real, real, torch.rand(BIG[0]))
    assert cpp.output_cache_info()["cached_bytes"] == real.numel() * 4
    cpp.set_output_cache_limit(0)  # returns what is held, and caches nothing more
    assert cpp.output_cache_info() == {"cached_bytes": 0, "limit_bytes": 0}
    ops.interpolate.default(real, real, torch.rand(BIG[0]))
    assert cpp.output_cache_info()["cached_bytes"] == 0


def test_the_limit_bounds_the_bytes_held() -> None:
    cpp.set_output_cache_limit(12 * MIB)  # room for one 8 MiB buffer, not two
    real = _rand(BIG, 9)
    outs = [ops.interpolate.default(real, real, torch.rand(BIG[0])) for _ in range(3)]
    del outs
    assert cpp.output_cache_info()["cached_bytes"] == 8 * MIB
    with pytest.raises(RuntimeError, match="limit must be >= 0"):
        torch.ops.fastgp_cpp.set_output_cache_limit(-1)


def test_the_profiler_sees_cached_allocations() -> None:
    """Peak-memory measurements (benchmarks/memory.py) count fastgp's outputs whether the
    buffer is fresh or reused."""
    real = _rand(BIG, 10)
    alpha = torch.rand(BIG[0])
    nbytes = real.numel() * 4
    fresh = peak_bytes_cpu(lambda: ops.interpolate.default(real, real, alpha))
    assert cpp.output_cache_info()["cached_bytes"] == nbytes
    reused = peak_bytes_cpu(lambda: ops.interpolate.default(real, real, alpha))
    assert fresh >= nbytes and reused >= nbytes
