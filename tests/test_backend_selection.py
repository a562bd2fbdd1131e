"""Which backend runs a call: "auto", FASTGP_BACKEND, explicit names, fallback warnings."""

from __future__ import annotations

import warnings

import oracles
import pytest
import torch
from helpers import TOLERANCES, assert_close_report, make_input

import fastgp
from fastgp import backends
from fastgp.backends import BackendUnavailable, cpp, resolve_backend
from fastgp.backends.reference import accumulation_dtype

CPU = torch.device("cpu")

pytestmark = pytest.mark.usefixtures("fresh_selection")


def _fallback_warnings(record) -> list[str]:
    return [
        str(w.message)
        for w in record
        if issubclass(w.category, RuntimeWarning) and "fastgp:" in str(w.message)
    ]


def _check_penalty(backend="auto", dtype=torch.float32, device=CPU):
    """Whatever runs the call, the penalty is the float64 oracle's."""
    g = make_input((4, 5), dtype, seed=1, device=device)
    penalty = fastgp.penalty_from_grads(g, backend=backend)
    expected, _ = oracles.penalty(g)
    tol = TOLERANCES[accumulation_dtype(dtype)]
    assert_close_report(penalty, expected, *tol, what="penalty")


def test_auto_on_cpu_is_cpp_without_warning(cpp_built):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for dtype in backends.KERNEL_DTYPES:
            assert resolve_backend("auto", CPU, dtype) == "cpp"
        _check_penalty()
    assert _fallback_warnings(record) == []


def test_debug_poison_is_on_in_tests(cpp_built):
    """conftest sets FASTGP_DEBUG_POISON=1 before the extension loads: unwritten outputs are NaN."""
    assert cpp.build_info()["debug_poison"] == "True"


def test_auto_on_the_test_device_runs_a_fused_backend_without_warning(request, device):
    """ "auto": cpp for CPU tensors, triton for CUDA tensors (FASTGP_TEST_DEVICE=cuda)."""
    expected = "triton" if device.type == "cuda" else "cpp"
    if expected == "cpp":
        request.getfixturevalue("cpp_built")  # a failed build fails here, not as a warning
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert resolve_backend("auto", device, torch.float32) == expected
        _check_penalty(device=device)
    assert _fallback_warnings(record) == []


def test_environment_replaces_auto(monkeypatch, cpp_built):
    monkeypatch.setenv("FASTGP_BACKEND", "torch")
    assert resolve_backend("auto", CPU, torch.float32) == "torch"
    _check_penalty()
    # An explicit argument in code wins over the environment.
    assert resolve_backend("cpp", CPU, torch.float32) == "cpp"
    backends.clear_cache()
    monkeypatch.setenv("FASTGP_BACKEND", "auto")
    assert resolve_backend("auto", CPU, torch.float32) == "cpp"


def test_environment_names_triton(monkeypatch, device):
    """FASTGP_BACKEND=triton (any case and spacing) on the device Triton runs in this session:
    CPU under the interpreter, CUDA with FASTGP_TEST_DEVICE=cuda."""
    monkeypatch.setenv("FASTGP_BACKEND", " Triton ")
    assert resolve_backend("auto", device, torch.float32) == "triton"
    _check_penalty(device=device)


def test_environment_with_an_unknown_name(monkeypatch):
    monkeypatch.setenv("FASTGP_BACKEND", "gpu")
    with pytest.raises(ValueError, match=r"backend must be one of .*; got 'gpu'"):
        resolve_backend("auto", CPU, torch.float32)


def test_explicit_unavailable_backend_raises_with_reason(monkeypatch):
    monkeypatch.setattr(cpp, "availability", lambda: "no C++ compiler here (test)")
    pattern = r"fastgp backend 'cpp' cannot run: no C\+\+ compiler here \(test\)"
    with pytest.raises(BackendUnavailable, match=pattern):
        resolve_backend("cpp", CPU, torch.float32)
    with pytest.raises(BackendUnavailable, match=pattern):
        fastgp.penalty_from_grads(torch.ones(2, 3), backend="cpp")
    with pytest.raises(BackendUnavailable, match=r"'triton' cannot run: .*meta"):
        resolve_backend("triton", torch.device("meta"), torch.float32)
    with pytest.raises(BackendUnavailable, match=r"'cpp' cannot run: .*run CPU tensors"):
        resolve_backend("cpp", torch.device("meta"), torch.float32)
    with pytest.raises(BackendUnavailable, match=r"dtype torch.float8_e4m3fn is not supported"):
        resolve_backend("triton", CPU, torch.float8_e4m3fn)


def test_fallback_warns_once_per_reason_and_stays_correct(monkeypatch):
    reason = {"text": "the compiler is missing (test A)"}
    calls = []

    def unavailable():
        calls.append(reason["text"])
        return reason["text"]

    monkeypatch.setattr(cpp, "availability", unavailable)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _check_penalty()
        _check_penalty()
        _check_penalty(dtype=torch.float64)
        real, fake = make_input((3, 4), seed=2), make_input((3, 4), seed=3)
        out = fastgp.interpolate(real, fake, 0.25)
        assert_close_report(out, 0.25 * real + 0.75 * fake, *TOLERANCES[torch.float32])
        assert _fallback_warnings(record) == [
            "fastgp: using the PyTorch reference implementation because "
            "the compiler is missing (test A)"
        ]
        # Resolved once per (request, device, dtype): no probe on every call.
        assert len(calls) == 2
        reason["text"] = "ninja is missing (test B)"
        _check_penalty(dtype=torch.bfloat16)
        _check_penalty(dtype=torch.float16)
    messages = _fallback_warnings(record)
    assert len(messages) == 2 and messages[1].endswith("ninja is missing (test B)")


def test_a_probe_that_raises_falls_back(monkeypatch):
    def broken():
        raise RuntimeError("probe exploded (test)")

    monkeypatch.setattr(cpp, "availability", broken)
    with pytest.warns(RuntimeWarning, match=r"checking the cpp backend failed: RuntimeError"):
        assert resolve_backend("auto", CPU, torch.float32) == "torch"
    _check_penalty()


def test_auto_on_a_device_without_kernels_falls_back():
    with pytest.warns(RuntimeWarning, match=r"no fused kernel for meta tensors"):
        assert resolve_backend("auto", torch.device("meta"), torch.float32) == "torch"


def test_clear_cache_forgets_choices_and_warnings(monkeypatch):
    monkeypatch.setattr(cpp, "availability", lambda: "missing (test C)")
    with pytest.warns(RuntimeWarning, match=r"missing \(test C\)"):
        resolve_backend("auto", CPU, torch.float32)
    backends.clear_cache()
    with pytest.warns(RuntimeWarning, match=r"missing \(test C\)"):
        resolve_backend("auto", CPU, torch.float32)
