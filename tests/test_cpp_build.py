"""Building and loading the C++ extension: lazily, once, cached, failing clearly, and safely
when several processes (torchrun ranks) start at once.

Subprocess tests reuse the session's build (they inherit FASTGP_CACHE_DIR and run after the
``cpp_built`` fixture has built or loaded it), except those with a fresh cache directory:
the broken-compiler tests, which fail before or instead of compiling, and the concurrent
build, which is the one real build of a run whose cache already holds the session's (as in
CI, where ``fastgp build`` runs first).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from fastgp.backends import cpp

REPO = Path(__file__).resolve().parent.parent


def _run_python(code: str, env_updates: dict[str, str] | None = None) -> str:
    return _run_python_full(code, env_updates).stdout


def _run_python_full(
    code: str, env_updates: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.update(env_updates or {})
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


def test_importing_fastgp_builds_nothing(tmp_path):
    out = _run_python(
        """
        import sys
        import fastgp, fastgp.functional, fastgp.penalties, fastgp.ops
        import fastgp.backends.cpp as cpp
        print("loaded" if cpp._loaded is not None else "not loaded")
        """,
        {"FASTGP_CACHE_DIR": str(tmp_path / "cache")},
    )
    assert out.strip() == "not loaded"
    assert not (tmp_path / "cache").exists()


@pytest.mark.usefixtures("cpp_built")
def test_fastgp_build_loads_the_cached_build_and_prints_the_library_path():
    first = cpp.load()
    assert cpp.load() == first  # in-process: loaded once
    assert Path(first["library"]).is_file()
    # A second process finds the session's build in the cache, does not rebuild, and says
    # nothing about it on stderr.
    done = _run_python_full("from fastgp.cli import main; raise SystemExit(main(['build']))")
    info = dict(line.split(": ", 1) for line in done.stdout.strip().splitlines())
    assert info["library"] == first["library"]
    assert info["status"] == "cached"
    assert "fastgp:" not in done.stderr, done.stderr


def test_broken_compiler_fails_clearly_once_and_auto_falls_back(tmp_path):
    out = _run_python(
        """
        import warnings
        import torch
        from fastgp import functional
        from fastgp.backends import BackendUnavailable, cpp, reference

        g = torch.randn(4, 3)
        try:
            functional.penalty_from_grads(g, backend="cpp")
        except BackendUnavailable as exc:
            assert "/nonexistent/c++" in str(exc), exc
            assert "CXX" in str(exc), exc
        else:
            raise AssertionError("backend='cpp' did not raise")
        def retried():
            raise AssertionError("the failed build was attempted again")

        cpp._check_tools = retried  # the outcome is cached: no second attempt
        assert "/nonexistent/c++" in cpp.availability()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            first = functional.penalty_from_grads(g, backend="auto")
            second = functional.penalty_from_grads(g, backend="auto")
        messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
        assert len(messages) == 1 and "/nonexistent/c++" in messages[0], messages
        expected, _ = reference.penalty_forward([g], None, 1.0, 10.0, 1.0, False, 1)
        assert torch.equal(first, expected) and torch.equal(second, expected)
        print("ok")
        """,
        {"CXX": "/nonexistent/c++", "FASTGP_CACHE_DIR": str(tmp_path / "cache")},
    )
    assert out.strip() == "ok"


def test_build_directory_is_keyed_by_versions_and_sources(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTGP_CACHE_DIR", str(tmp_path))
    directory = cpp.build_dir(cpp.csrc_dir())
    assert directory.parent.parent == tmp_path
    assert f"py{sys.version_info.major}{sys.version_info.minor}" in directory.parent.name
    import torch

    assert torch.__version__ in directory.parent.name
    monkeypatch.setenv("CXX", "clang++")
    assert cpp.build_dir(cpp.csrc_dir()) != directory


def _broken_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Sources that fail on their first line (the compiler stops before parsing any header,
    so a "build" takes a second), in a fresh cache; this process's load state reset.
    Returns the build directory they map to."""
    sources = tmp_path / "csrc"
    sources.mkdir()
    (sources / "fastgp_ops.cpp").write_text("#error fastgp deliberately broken source\n")
    for header in cpp.SOURCES[1:]:
        (sources / header).write_text("")
    monkeypatch.setenv("FASTGP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(cpp, "csrc_dir", lambda: sources)
    monkeypatch.setattr(cpp, "_loaded", None)
    monkeypatch.setattr(cpp, "_failure", None)
    return cpp.build_dir(sources)


def test_compile_error_is_reported_with_the_compiler_output(tmp_path, monkeypatch, capsys):
    directory = _broken_sources(tmp_path, monkeypatch)
    with pytest.raises(cpp.BackendUnavailable, match="deliberately broken") as caught:
        cpp.load()
    message = str(caught.value)
    assert "building fastgp's C++ extension" in message
    assert cpp.availability() == message  # remembered, not rebuilt
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"fastgp: building the C++ CPU kernels in {directory} (one-off")
    # What processes waiting for this build will raise; no private build directory is left.
    assert (directory / cpp.FAILURE_NAME).read_text() == message
    assert sorted(p.name for p in directory.iterdir()) == [cpp.FAILURE_NAME, cpp.LOCK_NAME]
    # A process started after the failure (here: this one, its memory reset) tries again
    # rather than inheriting a failure it did not wait for.
    attempts = []
    compile_once = cpp._compile
    monkeypatch.setattr(cpp, "_compile", lambda *a: (attempts.append(a), compile_once(*a)))
    monkeypatch.setattr(cpp, "_failure", None)
    with pytest.raises(cpp.BackendUnavailable) as again:
        cpp.load()
    assert len(attempts) == 1 and "deliberately broken" in str(again.value)
    assert (directory / cpp.FAILURE_NAME).read_text() == str(again.value)


def test_a_held_lock_is_waited_for_and_released_when_its_holder_dies(tmp_path, monkeypatch, capsys):
    """A process holding the build lock is waited for (with one line saying so); killing
    it releases the lock (flock), and the leftovers of its build are removed."""
    directory = _broken_sources(tmp_path, monkeypatch)
    directory.mkdir(parents=True)
    leftover = directory / f"{cpp.PRIVATE_BUILD_PREFIX}killed"
    leftover.mkdir()
    (leftover / "fastgp_cpp_ops.so").write_bytes(b"half a library")
    holder = subprocess.Popen(
        [
            sys.executable, "-c",
            "import fcntl, sys, time\n"
            "f = open(sys.argv[1], 'a')\n"
            "fcntl.flock(f, fcntl.LOCK_EX)\n"
            "print('locked', flush=True)\n"
            "time.sleep(600)\n",
            str(directory / cpp.LOCK_NAME),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        killer = threading.Timer(1.0, holder.kill)
        killer.start()
        start = time.monotonic()
        with pytest.raises(cpp.BackendUnavailable, match="deliberately broken"):
            cpp.load()
        assert time.monotonic() - start >= 0.9
    finally:
        holder.kill()
        holder.wait()
    waiting, building = capsys.readouterr().err.splitlines()
    assert waiting.startswith("fastgp: waiting for another process building")
    assert building.startswith("fastgp: building the C++ CPU kernels")
    assert not leftover.exists()


# Started N times at once against one fresh cache directory; meets the others at a barrier
# right before load(), then prints one JSON line with what it got.
_RANK = """
import json
import sys
import time
from pathlib import Path

import torch
from fastgp import functional
from fastgp.backends import BackendUnavailable, cpp, reference

barrier, index, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
(barrier / f"ready-{index}").touch()
deadline = time.monotonic() + 120
while len(list(barrier.glob("ready-*"))) < count:
    if time.monotonic() > deadline:
        raise SystemExit("the other processes never reached the barrier")
    time.sleep(0.01)
try:
    info = cpp.load()
except BackendUnavailable as exc:
    print(json.dumps({"failure": str(exc)}))
    raise SystemExit(0)
g = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
penalty = functional.penalty_from_grads(g, backend="cpp")  # raises if cpp is not usable
expected, _ = reference.penalty_forward([g], None, 1.0, 10.0, 1.0, False, 1)
print(json.dumps({
    "status": info["status"],
    "library": info["library"],
    "correct": bool(torch.allclose(penalty, expected)),
}))
"""


def _start_ranks(count: int, tmp_path: Path, **env_updates: str) -> list[tuple[dict, str]]:
    """Start ``count`` processes that call ``cpp.load()`` at the same moment against a fresh
    cache directory; returns each one's (JSON result, stderr)."""
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = {**os.environ, "FASTGP_CACHE_DIR": str(tmp_path / "cache"), **env_updates}
    ranks = [
        subprocess.Popen(
            [sys.executable, "-c", _RANK, str(barrier), str(i), str(count)],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(count)
    ]
    results = []
    for rank in ranks:
        out, err = rank.communicate(timeout=600)
        assert rank.returncode == 0, f"stdout:\n{out}\nstderr:\n{err}"
        results.append((json.loads(out.strip().splitlines()[-1]), err))
    return results


def _building_lines(results: list[tuple[dict, str]]) -> list[str]:
    return [
        line
        for _, err in results
        for line in err.splitlines()
        if line.startswith("fastgp: building the C++ CPU kernels")
    ]


def test_concurrent_first_use_builds_once_and_every_process_loads_it(tmp_path):
    """Three "ranks" load() at once from an empty cache: one builds (one line), the others
    wait and load the same complete library; none falls back."""
    results = _start_ranks(3, tmp_path)
    outcomes = [result for result, _ in results]
    assert len(_building_lines(results)) == 1, [err for _, err in results]
    assert sorted(r["status"] for r in outcomes) == ["built", "cached", "cached"], outcomes
    assert len({r["library"] for r in outcomes}) == 1
    assert all(r["correct"] for r in outcomes)
    directory = Path(outcomes[0]["library"]).parent
    assert sorted(p.name for p in directory.iterdir()) == [
        cpp.LOCK_NAME,
        f"{cpp.EXTENSION_NAME}.so",
    ]


def test_concurrent_first_use_reports_one_failed_build_identically(tmp_path):
    """The compiler fails (after 3 s, so the others are waiting by then): it ran once,
    and all three processes report the same failure, word for word."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    failing = bin_dir / "g++"  # a name torch accepts without probing it further
    failing.write_text(
        "#!/bin/sh\n"
        'case "$*" in *-dumpversion*) echo 12.2.0; exit 0;; esac\n'
        "sleep 3\n"
        'echo "fastgp test: this compiler always fails" >&2\n'
        "exit 1\n"
    )
    failing.chmod(0o755)
    results = _start_ranks(3, tmp_path, CXX=str(failing))
    failures = {result.get("failure") for result, _ in results}
    assert len(_building_lines(results)) == 1, [err for _, err in results]
    assert len(failures) == 1, failures
    (message,) = failures
    assert message is not None and "this compiler always fails" in message
    assert str(failing) in message
