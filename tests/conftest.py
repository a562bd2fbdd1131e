"""Shared fixtures: the test device, every backend under test, the one-per-run C++ build,
clean selection state.

``FASTGP_TEST_DEVICE`` chooses where the backend matrix runs (README, Tests):

* ``cpu`` (the default): ``torch``, ``cpp`` and ``triton`` on CPU tensors, Triton through
  its interpreter (``TRITON_INTERPRET=1``, set here).
* ``cuda``: ``torch`` and ``triton`` on CUDA tensors through the compiled Triton kernels and
  the ``torch.ops.fastgp`` CUDA registrations; ``cpp`` (CPU-only) on CPU tensors.
  ``TRITON_INTERPRET`` must not be set. Without a CUDA device every test that needs one
  skips, saying so; the CPU-only tests still run.

The environment is set before anything imports triton or fastgp: Triton decides between
compiled and interpreted kernels when they are defined, and the backends read
``FASTGP_DEBUG_POISON`` once when loaded (outputs pre-filled with NaN, so an element a
kernel forgets to write fails the comparison instead of passing on stale memory).
"""

import os

DEVICE_VARIABLE = "FASTGP_TEST_DEVICE"
TEST_DEVICES = ("cpu", "cuda")
TEST_DEVICE = os.environ.get(DEVICE_VARIABLE, "").strip().lower() or "cpu"
_INTERPRET_SET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

if TEST_DEVICE == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"
os.environ["FASTGP_DEBUG_POISON"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

import fastgp  # noqa: E402, F401  (defines the torch.ops.fastgp schemas)
from fastgp import backends  # noqa: E402

BACKEND_NAMES = ("torch", "cpp", "triton")
CPU = torch.device("cpu")


def pytest_configure(config: pytest.Config) -> None:
    if TEST_DEVICE not in TEST_DEVICES:
        raise pytest.UsageError(
            f"{DEVICE_VARIABLE} must be one of {', '.join(TEST_DEVICES)}; got {TEST_DEVICE!r}"
        )
    if TEST_DEVICE == "cuda" and _INTERPRET_SET:
        raise pytest.UsageError(
            f"{DEVICE_VARIABLE}=cuda runs the compiled Triton kernels, but TRITON_INTERPRET="
            f"{os.environ['TRITON_INTERPRET']} would make Triton interpret them; unset it"
        )
    if TEST_DEVICE == "cuda":
        # fp32 results are compared at 1e-5: no TF32 in the critics' matmuls and convolutions.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def pytest_report_header(config: pytest.Config) -> str:
    if TEST_DEVICE == "cpu":
        return f"{DEVICE_VARIABLE}=cpu: torch, cpp and triton (interpreted) on CPU tensors"
    found = "a CUDA device" if torch.cuda.is_available() else "NO CUDA device (those tests skip)"
    return f"{DEVICE_VARIABLE}=cuda: torch and triton (compiled) on CUDA, cpp on CPU; {found}"


def _session_device() -> torch.device:
    """The test device; skips the calling test when it is CUDA and there is none."""
    if TEST_DEVICE == "cuda":
        if not torch.cuda.is_available():
            pytest.skip(
                f"no CUDA device ({DEVICE_VARIABLE}=cuda; torch.cuda.is_available() is False)"
            )
        return torch.device("cuda", torch.cuda.current_device())
    return CPU


def backend_device(name: str) -> torch.device:
    """Where backend ``name`` runs in this session: cpp on CPU, the others on the test device."""
    return CPU if name == "cpp" else _session_device()


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


def _require_triton(device: torch.device) -> None:
    """Triton runs ``device``'s tensors, or the test fails (never skips) with the reason."""
    from fastgp.backends import triton as triton_backend

    reason = triton_backend.availability(device)
    if reason is not None:
        pytest.fail(f"the Triton backend cannot run {device} tensors here: {reason}", pytrace=False)


def _ready(request: pytest.FixtureRequest, name: str) -> str:
    if "device" not in request.fixturenames:
        pytest.fail(
            f"{request.node.nodeid} is parametrized over backends but does not take the "
            "`device` fixture: create its tensors on `device` (FASTGP_TEST_DEVICE)",
            pytrace=False,
        )
    device = backend_device(name)  # skips when the test device is missing
    if name == "cpp":
        request.getfixturevalue("cpp_built")
    elif name == "triton":
        _require_triton(device)
    return name


@pytest.fixture(params=BACKEND_NAMES, ids=BACKEND_NAMES)
def backend(request: pytest.FixtureRequest) -> str:
    """A backend name; the backend is ready (cpp built, Triton runs the test device)."""
    return _ready(request, request.param)


@pytest.fixture(params=("cpp", "triton"), ids=("cpp", "triton"))
def kernel_backend(request: pytest.FixtureRequest) -> str:
    """The fused backends only (for checks that only a fused kernel can fail)."""
    return _ready(request, request.param)


@pytest.fixture
def device(request: pytest.FixtureRequest) -> torch.device:
    """The device of the test's tensors: that of its backend (``backend``/``kernel_backend``:
    CPU for cpp), else the test device. Skips when that is CUDA and there is none."""
    for name in ("backend", "kernel_backend"):
        if name in request.fixturenames:
            return backend_device(request.getfixturevalue(name))
    return _session_device()


@pytest.fixture
def fresh_dynamo():
    """Dynamo's caches empty before and after: every Trainer or step has new modules, so
    dynamo would keep adding graphs to the shared cache of a compiled function."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture
def fresh_selection(monkeypatch: pytest.MonkeyPatch):
    """No cached backend choices or warnings, and no FASTGP_BACKEND, before and after."""
    monkeypatch.delenv("FASTGP_BACKEND", raising=False)
    backends.clear_cache()
    yield
    backends.clear_cache()


@pytest.fixture(autouse=True)
def _eager_training_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """``fastgp train --compile auto`` compiles the toy trainer on CPU: seconds per graph,
    and dynamo keeps one cache per function for every Trainer of the process, which the
    many Trainers of a test run would exhaust. In-process trainer tests therefore resolve
    "auto" to eager; the tests of compiled training ask for a mode (tests/test_train_compile.py)
    or restore the table themselves."""
    from fastgp.train.run import compiled

    monkeypatch.setattr(compiled, "AUTO_COMPILE", {})
