"""The C++ kernels' cache of large output buffers (csrc/fastgp_output_cache.h).

A reused buffer still holds the previous call's values, so these tests check that a second
call into the same memory is still exactly right, that layouts survive, that the limit is
honoured, that torch's profiler still sees the allocations the cache serves, that the cache
is off unless FASTGP_CPU_CACHE_MB turns it on, that buffers nobody asks for any more are
returned after the idle bound while those still in use stay, and that a forked child (a
DataLoader worker) neither hangs on the cache's lock nor disturbs the parent's cache.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch
from torch import Tensor

from benchmarks.memory import peak_bytes_cpu
from fastgp import info as fastgp_info
from fastgp.backends import cpp
from fastgp.backends import reference as ref

pytestmark = pytest.mark.usefixtures("cpp_built")

ops = torch.ops.fastgp
REPO = Path(__file__).resolve().parent.parent
MIB = 1 << 20
# 8 MiB of fp32 per tensor: above the cache's 4 MiB threshold.
BIG = (8, 2, 256, 512)
# Exactly the threshold: the smallest size the cache serves.
SMALLEST = (4, 1 << 18)


@pytest.fixture(autouse=True)
def _fresh_cache():
    """Each test starts from an empty cache with a 1 GiB limit, and leaves it as it was."""
    limit = cpp.output_cache_info()["limit_bytes"]
    cpp.set_output_cache_limit(1024 * MIB)
    cpp.empty_output_cache()
    yield
    cpp.set_output_cache_limit(limit)
    cpp.empty_output_cache()


def _rand(shape: tuple[int, ...], seed: int) -> Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _alpha(batch: int, seed: int) -> Tensor:
    return torch.rand(batch, generator=torch.Generator().manual_seed(seed))


def _cached() -> int:
    return cpp.output_cache_info()["cached_bytes"]


def _requests() -> int:
    return cpp.output_cache_info()["requests"]


def test_the_threshold_is_the_one_the_tests_assume() -> None:
    info = cpp.output_cache_info()
    assert info["min_bytes"] == 4 * MIB == torch.Size(SMALLEST).numel() * 4
    assert info["max_idle_requests"] > 0


def test_a_freed_output_is_reused_and_rewritten_completely() -> None:
    real, fake = _rand(BIG, 1), _rand(BIG, 2)
    alpha = _alpha(BIG[0], 3)
    first = ops.interpolate.default(real, fake, alpha)
    address = first.data_ptr()
    assert _cached() == 0
    del first
    assert _cached() == real.numel() * 4
    # Other inputs into the same memory: every element must be overwritten.
    second = ops.interpolate.default(fake, real, 1 - alpha)
    assert second.data_ptr() == address
    assert _cached() == 0
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
    alpha = _alpha(BIG[0], 6)
    ops.interpolate.default(real.contiguous(), fake.contiguous(), alpha)  # freed: cached
    out = ops.interpolate.default(real, fake, alpha)
    assert out.stride() == real.stride()
    assert torch.equal(out, ref.interpolate(real, fake, alpha))


def test_small_outputs_and_a_zero_limit_bypass_the_cache() -> None:
    small = _rand((4, 1000), 7)
    before = _requests()
    ops.interpolate.default(small, small, torch.rand(4))
    assert _cached() == 0 and _requests() == before
    real = _rand(BIG, 8)
    ops.interpolate.default(real, real, torch.rand(BIG[0]))
    assert _cached() == real.numel() * 4 and _requests() == before + 1
    cpp.set_output_cache_limit(0)  # returns what is held, and caches nothing more
    info = cpp.output_cache_info()
    assert (info["cached_bytes"], info["limit_bytes"]) == (0, 0)
    out = ops.interpolate.default(real, real, torch.rand(BIG[0]))
    del out
    assert _cached() == 0 and _requests() == before + 1  # not even asked


def test_the_limit_bounds_the_bytes_held() -> None:
    cpp.set_output_cache_limit(12 * MIB)  # room for one 8 MiB buffer, not two
    real = _rand(BIG, 9)
    outs = [ops.interpolate.default(real, real, torch.rand(BIG[0])) for _ in range(3)]
    del outs
    assert _cached() == 8 * MIB
    with pytest.raises(RuntimeError, match="limit must be >= 0"):
        torch.ops.fastgp_cpp.set_output_cache_limit(-1)


def test_the_profiler_sees_cached_allocations() -> None:
    """Peak-memory measurements (benchmarks/memory.py) count fastgp's outputs whether the
    buffer is fresh or reused."""
    real = _rand(BIG, 10)
    alpha = torch.rand(BIG[0])
    nbytes = real.numel() * 4
    fresh = peak_bytes_cpu(lambda: ops.interpolate.default(real, real, alpha))
    assert _cached() == nbytes
    reused = peak_bytes_cpu(lambda: ops.interpolate.default(real, real, alpha))
    assert fresh >= nbytes and reused >= nbytes


def test_a_size_no_longer_requested_is_returned_after_the_idle_bound() -> None:
    bound = cpp.output_cache_info()["max_idle_requests"]
    stale_in = _rand(BIG, 11)
    ops.interpolate.default(stale_in, stale_in, _alpha(BIG[0], 12))  # 8 MiB, freed: cached
    kept_in = _rand(SMALLEST, 13)
    alpha = _alpha(SMALLEST[0], 14)
    kept_bytes, stale_bytes = kept_in.numel() * 4, stale_in.numel() * 4
    start = _requests()
    addresses = set()
    for _ in range(bound):  # requests of another size only
        out = ops.interpolate.default(kept_in, kept_in, alpha)
        addresses.add(out.data_ptr())
        del out
    assert _requests() == start + bound
    assert _cached() == stale_bytes + kept_bytes  # idle for exactly the bound: still held
    ops.interpolate.default(kept_in, kept_in, alpha)
    assert _cached() == kept_bytes  # one request more: the 8 MiB buffer is returned
    for _ in range(3 * bound):  # a size that keeps coming stays, in one buffer
        out = ops.interpolate.default(kept_in, kept_in, alpha)
        addresses.add(out.data_ptr())
        assert torch.equal(out, kept_in)
        del out
    assert _cached() == kept_bytes and len(addresses) == 1
    # The idle size comes back: a fresh buffer, written completely.
    again = ops.interpolate.default(stale_in, -stale_in, _alpha(BIG[0], 15))
    assert torch.equal(again, ref.interpolate(stale_in, -stale_in, _alpha(BIG[0], 15)))


def test_surplus_buffers_of_a_size_still_in_use_are_returned() -> None:
    """After a burst (three outputs alive at once) a loop that needs one buffer at a time
    keeps one; the two it never reuses go after the idle bound."""
    bound = cpp.output_cache_info()["max_idle_requests"]
    x = _rand(SMALLEST, 16)
    alpha = _alpha(SMALLEST[0], 17)
    burst = [ops.interpolate.default(x, x, alpha) for _ in range(3)]
    del burst
    assert _cached() == 3 * x.numel() * 4
    for _ in range(bound + 1):
        ops.interpolate.default(x, x, alpha)
    assert _cached() == x.numel() * 4


def test_threads_share_the_cache_safely() -> None:
    """Two threads allocating and freeing two sizes through the cache at once: every output
    right, and the bookkeeping consistent afterwards."""
    inputs = [
        (_rand(shape, 20 + i), _alpha(shape[0], 30 + i)) for i, shape in enumerate((BIG, SMALLEST))
    ]
    errors: list[str] = []

    def work(x: Tensor, alpha: Tensor) -> None:
        for i in range(40):
            out = ops.interpolate.default(x, -x, alpha)
            if not torch.equal(out, ref.interpolate(x, -x, alpha)):
                errors.append(f"wrong output at iteration {i} for shape {tuple(x.shape)}")
                return

    threads = [threading.Thread(target=work, args=pair) for pair in inputs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert 0 < _cached() <= 2 * (BIG[0] * 2 * 256 * 512 + SMALLEST[0] * SMALLEST[1]) * 4
    cpp.empty_output_cache()
    assert _cached() == 0


def _fork_and_check(child_check, timeout_s: float = 60.0) -> None:
    """Run ``child_check()`` in a forked child (as a DataLoader worker is started); fail
    with its message if it raised, and if it did not exit within ``timeout_s``, which is
    what a lock inherited in the locked state does."""
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        # Python >= 3.12 warns about fork() in a process with threads: that is the point.
        warnings.filterwarnings("ignore", message=".*fork.*", category=DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: report through the pipe, never return into pytest
        os.close(read_end)
        status = 1
        try:
            torch.set_num_threads(1)  # as DataLoader workers do
            child_check()
            message, status = b"", 0
        except BaseException as exc:  # noqa: BLE001  (anything must reach the parent)
            message = f"{type(exc).__name__}: {exc}".encode()
        os.write(write_end, message)
        os._exit(status)
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], timeout_s)
        if not ready:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"the forked child did not finish within {timeout_s} s (deadlock?)")
        message = os.read(read_end, 1 << 16).decode()
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(read_end)
    assert os.waitstatus_to_exitcode(status) == 0, f"forked child failed: {message}"


def test_a_forked_child_gets_an_empty_cache_and_the_parent_keeps_its_own() -> None:
    x = _rand(BIG, 40)
    alpha = _alpha(BIG[0], 41)
    out = ops.interpolate.default(x, x, alpha)
    address, nbytes = out.data_ptr(), out.numel() * 4
    del out
    assert _cached() == nbytes

    def child() -> None:
        info = cpp.output_cache_info()
        assert info["cached_bytes"] == 0, info  # the inherited free buffers were returned
        assert info["limit_bytes"] == 1024 * MIB, info
        y = ops.interpolate.default(x, -x, alpha)
        assert torch.equal(y, ref.interpolate(x, -x, alpha))
        del y
        assert cpp.output_cache_info()["cached_bytes"] == nbytes
        cpp.empty_output_cache()

    _fork_and_check(child)
    assert _cached() == nbytes
    again = ops.interpolate.default(x, 0.5 * x, alpha)
    assert again.data_ptr() == address
    assert torch.equal(again, ref.interpolate(x, 0.5 * x, alpha))


def test_fork_while_another_thread_uses_the_cache() -> None:
    """The Python path of a DataLoader worker: os.fork() while a second thread runs fastgp
    operators through the cache (with the GIL released); each child computes through the
    cache and exits, and the parent's cache keeps working. The operators hold the cache's
    mutex for a tiny share of their time, so the race itself is exercised by the C++ test
    below."""
    shapes = (BIG, SMALLEST)
    inputs = [(_rand(s, 50 + i), _alpha(s[0], 60 + i)) for i, s in enumerate(shapes)]
    stop = threading.Event()
    errors: list[str] = []

    def hammer() -> None:
        i = 0
        while not stop.is_set():
            x, alpha = inputs[i % 2]
            out = ops.interpolate.default(x, x, alpha)
            if not torch.equal(out, x):
                errors.append(f"wrong output at iteration {i}")
                return
            i += 1

    def child() -> None:
        x, alpha = inputs[0]
        assert torch.equal(ops.interpolate.default(x, -x, alpha), ref.interpolate(x, -x, alpha))
        assert 0 < cpp.output_cache_info()["cached_bytes"] <= 1024 * MIB

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        start = _requests()
        for _ in range(6):
            _fork_and_check(child, timeout_s=30.0)
            time.sleep(0.002)
        assert _requests() > start + 6, "the other thread never used the cache"
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not errors, errors
    x, alpha = inputs[0]
    assert torch.equal(ops.interpolate.default(x, -x, alpha), ref.interpolate(x, -x, alpha))
    assert _cached() <= 1024 * MIB


def test_fork_handlers_under_a_cpp_thread_that_holds_the_lock_often(tmp_path: Path) -> None:
    """tests/cpp/output_cache_fork.cpp: 200 forks while a C++ thread allocates and frees
    through the cache in a tight loop (holding its mutex much of the time, which Python
    calls cannot do). Every child must find an empty cache, allocate, and exit; the parent's
    cache must hold exactly the other thread's buffers afterwards. Without the fork
    handlers most children hang or see the parent's buffers."""
    from torch.utils.cpp_extension import include_paths, library_paths

    program = tmp_path / "output_cache_fork"
    libs = library_paths()[0]
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    compile_cmd = [
        cpp.compiler(), "-O2", "-std=c++17", f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
        f"-I{cpp.csrc_dir()}", *(f"-I{p}" for p in include_paths()),
        str(REPO / "tests" / "cpp" / "output_cache_fork.cpp"),
        f"-L{libs}", f"-Wl,-rpath,{libs}", "-lc10", "-pthread", "-o", str(program),
    ]  # fmt: skip
    built = subprocess.run(compile_cmd, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    done = subprocess.run([str(program)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("forks 200 hung 0 wrong 0 parent_ok 1"), done.stdout


def test_fastgp_info_shows_the_setting(capsys: pytest.CaptureFixture[str]) -> None:
    cpp.set_output_cache_limit(256 * MIB)
    assert cpp.build_info()["cpu_output_cache"] == "on, limit 256 MiB"
    fastgp_info.main(["--no-build"])
    assert "C++ CPU output cache: on, limit 256 MiB" in capsys.readouterr().out
    cpp.set_output_cache_limit(0)
    assert cpp.build_info()["cpu_output_cache"] == "off"


def test_the_environment_value_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    for text, expected in (("", 0), ("0", 0), ("512", 512 * MIB), (" 8 ", 8 * MIB)):
        monkeypatch.setenv("FASTGP_CPU_CACHE_MB", text)
        assert cpp.cpu_cache_limit_from_environment() == expected
    monkeypatch.delenv("FASTGP_CPU_CACHE_MB")
    assert cpp.cpu_cache_limit_from_environment() == 0
    for bad in ("-1", "1.5", "lots"):
        monkeypatch.setenv("FASTGP_CPU_CACHE_MB", bad)
        with pytest.raises(cpp.BackendUnavailable, match=r"FASTGP_CPU_CACHE_MB must be a whole"):
            cpp.cpu_cache_limit_from_environment()


_SETTING_PROBE = """
import json
import torch
from fastgp.backends import cpp

cpp.load()
x = torch.rand(8, 2, 256, 512)
before = cpp.output_cache_info()
torch.ops.fastgp.interpolate.default(x, x, torch.rand(8))
after = cpp.output_cache_info()
setting = cpp.build_info()["cpu_output_cache"]
print(json.dumps({"before": before, "after": after, "setting": setting}))
"""


@pytest.mark.parametrize(("value", "limit_mb"), [(None, 0), ("256", 256)], ids=["unset", "256"])
def test_the_cache_is_off_unless_the_environment_turns_it_on(
    value: str | None, limit_mb: int
) -> None:
    import json

    env = {k: v for k, v in os.environ.items() if k != "FASTGP_CPU_CACHE_MB"}
    if value is not None:
        env["FASTGP_CPU_CACHE_MB"] = value
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_SETTING_PROBE)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    before, after = result["before"], result["after"]
    assert before["limit_bytes"] == limit_mb * MIB
    if limit_mb == 0:
        assert result["setting"] == "off"
        assert after["cached_bytes"] == 0 and after["requests"] == before["requests"]
    else:
        assert result["setting"] == f"on, limit {limit_mb} MiB"
        assert after["cached_bytes"] == 8 * 2 * 256 * 512 * 4
        assert after["requests"] == before["requests"] + 1
