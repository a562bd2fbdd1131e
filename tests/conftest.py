"""Shared fixtures: every backend under test, the one-per-run C++ build, clean selection state.

The environment is set before anything imports triton or fastgp: Triton decides between
compiled and interpreted kernels when they are defined, and the backends read
``FASTGP_DEBUG_POISON`` once when loaded (outputs pre-filled with NaN, so an element a
kernel forgets to write fails the comparison instead of passing on stale memory).
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ["FASTGP_DEBUG_POISON"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

import fastgp  # noqa: E402, F401  (defines the torch.ops.fastgp schemas)
from fastgp import backends  # noqa: E402

BACKEND_NAMES = ("torch", "cpp", "triton")


@pytest.fixture(scope="session")
def cpp_build_outcome() -> str | None:
    """Build (or load the cached build of) the C++ extension once; None or why it failed.

    The outcome is recorded rather than raised so each cpp test reports the same reason.
    """
    try:
        from fastgp.backends import cpp

        cpp.load()
    except Exception as exc:  # any failure is reported by every test that needs cpp
        return f"{type(exc).__name__}: {exc}"
    return None


@pytest.fixture(scope="session")
def cpp_built(cpp_build_outcome: str | None) -> None:
    """The C++ extension is loaded; a failed build fails (never skips) the test."""
    if cpp_build_outcome is not None:
        pytest.fail(f"the C++ extension did not build or load: {cpp_build_outcome}", pytrace=False)


def _require_triton_interpreter() -> None:
    from fastgp.backends import triton as triton_backend

    reason = triton_backend.availability(torch.device("cpu"))
    if reason is not None:
        pytest.fail(f"the Triton backend cannot run CPU tensors here: {reason}", pytrace=False)


@pytest.fixture(params=BACKEND_NAMES, ids=BACKEND_NAMES)
def backend(request: pytest.FixtureRequest) -> str:
    """A backend name; the backend is ready (cpp built, Triton interpreter active)."""
    name = request.param
    if name == "cpp":
        request.getfixturevalue("cpp_built")
    elif name == "triton":
        _require_triton_interpreter()
    return name


@pytest.fixture(params=("cpp", "triton"), ids=("cpp", "triton"))
def kernel_backend(request: pytest.FixtureRequest) -> str:
    """The fused backends only (for checks where the reference is the expected value)."""
    name = request.param
    if name == "cpp":
        request.getfixturevalue("cpp_built")
    else:
        _require_triton_interpreter()
    return name


@pytest.fixture
def fresh_selection(monkeypatch: pytest.MonkeyPatch):
    """No cached backend choices or warnings, and no FASTGP_BACKEND, before and after."""
    monkeypatch.delenv("FASTGP_BACKEND", raising=False)
    backends.clear_cache()
    yield
    backends.clear_cache()
