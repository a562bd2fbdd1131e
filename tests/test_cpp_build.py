"""Building and loading the C++ extension: lazily, once, cached, and failing clearly.

Subprocess tests reuse the session's build (they inherit FASTGP_CACHE_DIR and run after the
``cpp_built`` fixture has built or loaded it), except the broken-compiler test, which uses
a fresh cache directory and fails before any compilation starts.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fastgp.backends import cpp

REPO = Path(__file__).resolve().parent.parent


def _run_python(code: str, env_updates: dict[str, str] | None = None) -> str:
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
    return result.stdout


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
    assert cpp.load() is first  # in-process: loaded once
    assert Path(first["library"]).is_file()
    # A second process finds the session's build in the cache and does not rebuild.
    out = _run_python("from fastgp.cli import main; raise SystemExit(main(['build']))")
    info = dict(line.split(": ", 1) for line in out.strip().splitlines())
    assert info["library"] == first["library"]
    assert info["status"] == "cached"


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


def test_stale_lock_is_removed_with_a_message(tmp_path, capsys):
    lock = tmp_path / "lock"
    lock.touch()
    old = time.time() - 2 * cpp.STALE_LOCK_SECONDS
    os.utime(lock, (old, old))
    cpp._clear_stale_lock(tmp_path)
    assert not lock.exists()
    assert "stale build lock" in capsys.readouterr().err


def test_fresh_lock_is_waited_for_then_treated_as_stale(tmp_path, monkeypatch, capsys):
    # A lock younger than the limit may be a build in progress: wait, never hang forever.
    monkeypatch.setattr(cpp, "STALE_LOCK_SECONDS", 0.3)
    monkeypatch.setattr(cpp, "_LOCK_POLL_SECONDS", 0.05)
    lock = tmp_path / "lock"
    lock.touch()
    start = time.monotonic()
    cpp._clear_stale_lock(tmp_path)
    assert 0.25 <= time.monotonic() - start < 5
    assert not lock.exists()
    assert "stale build lock" in capsys.readouterr().err


def test_no_lock_returns_immediately(tmp_path):
    start = time.monotonic()
    cpp._clear_stale_lock(tmp_path)
    assert time.monotonic() - start < 0.1


def test_build_directory_is_keyed_by_versions_and_sources(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTGP_CACHE_DIR", str(tmp_path))
    directory = cpp.build_dir(cpp.csrc_dir())
    assert directory.parent.parent == tmp_path
    assert f"py{sys.version_info.major}{sys.version_info.minor}" in directory.parent.name
    import torch

    assert torch.__version__ in directory.parent.name
    monkeypatch.setenv("CXX", "clang++")
    assert cpp.build_dir(cpp.csrc_dir()) != directory


def test_compile_error_is_reported_with_the_compiler_output(tmp_path, monkeypatch):
    # A source that fails on its first line: the compiler stops before parsing any header.
    sources = tmp_path / "csrc"
    sources.mkdir()
    (sources / "fastgp_ops.cpp").write_text("#error fastgp deliberately broken source\n")
    for header in cpp.SOURCES[1:]:
        (sources / header).write_text("")
    monkeypatch.setenv("FASTGP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(cpp, "csrc_dir", lambda: sources)
    monkeypatch.setattr(cpp, "_loaded", None)
    monkeypatch.setattr(cpp, "_failure", None)
    with pytest.raises(cpp.BackendUnavailable, match="deliberately broken") as caught:
        cpp.load()
    assert "building fastgp's C++ extension" in str(caught.value)
    assert cpp.availability() == str(caught.value)  # remembered, not rebuilt
