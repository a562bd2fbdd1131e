"""Backend selection: which implementation runs a call, and why the others do not.

Backends (``name``: what runs):
- ``"triton"``: Triton kernels; CUDA tensors (CPU tensors only under ``TRITON_INTERPRET=1``).
- ``"cpp"``: C++ kernels from ``csrc/``, built with ninja on first use; CPU tensors.
- ``"torch"``: the pure PyTorch reference (``fastgp.backends.reference``); anything.

``"auto"`` picks Triton for CUDA tensors and C++ for CPU tensors, and falls back to the
reference when the pick cannot run, with one warning that names the reason (cached per
reason: no retry on every call). Inside ``torch.compile`` it picks by ``AUTO_WHEN_COMPILED``
instead: what was measured faster inside whole compiled critic steps on that device. An
explicitly requested backend that cannot run raises ``BackendUnavailable`` with the
underlying reason. The environment variable
``FASTGP_BACKEND`` replaces ``"auto"`` (an explicit ``backend=`` argument in code wins).
"""

from __future__ import annotations

import os
import warnings

import torch

from fastgp.backends.errors import BackendUnavailable
from fastgp.backends.reference import KERNEL_DTYPES

BACKENDS = ("triton", "cpp", "torch")

# What "auto" runs, per device type.
AUTO = {"cuda": "triton", "cpu": "cpp"}
# What "auto" runs inside torch.compile, per device type. Inductor cannot fuse across an
# opaque op, but it fuses the reference formula (a handful of pointwise ops and a row
# reduction) into the kernels of the critic's double backward around it. Measured inside
# whole compiled critic steps (`python -m benchmarks.run --steps mlp`, providers
# fastgp_compile_reference and fastgp_compile_kernels, README "Benchmarks"): on CPU the
# reference formula is the faster of the two (1 thread, 2026-12-06, results/*2026-12-06*:
# toy MLP nf128 B256 3.95 against 4.19 ms, nf512 35.4 against 35.7 ms). CUDA has not
# been measured yet (no GPU was available); it keeps fastgp's Triton kernels until
# `bash benchmarks/gpu_check.sh` measures both.
AUTO_WHEN_COMPILED = {"cpu": "torch", "cuda": "triton"}

__all__ = ["BACKENDS", "BackendUnavailable", "resolve_backend", "unavailable_reason"]

# (requested, device, dtype, compiling) -> resolved backend name; filled on first use. Keyed by the
# device itself: reading ``device.type`` on every call costs more than the lookup.
_resolved: dict[tuple[str, torch.device, torch.dtype, bool], str] = {}
_warned: set[str] = set()


def unavailable_reason(name: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """None if backend ``name`` can run on tensors of this device and dtype, else why not.

    Asking about ``"cpp"`` builds the C++ extension if it has not been built yet.
    """
    if name == "torch":
        return None
    if dtype not in KERNEL_DTYPES:
        return f"dtype {dtype} is not supported by the {name} kernels"
    if name == "cpp":
        if device.type != "cpu":
            return f"the C++ kernels run CPU tensors, got a tensor on {device.type}"
        try:
            from fastgp.backends import cpp
        except ImportError as exc:
            return f"the C++ backend cannot be imported ({exc})"
        return cpp.availability()
    if name == "triton":
        try:
            from fastgp.backends import triton as triton_backend
        except ImportError as exc:
            return f"triton cannot be imported ({exc}); pip install triton"
        return triton_backend.availability(device)
    raise ValueError(
        f"backend must be one of 'auto', {', '.join(map(repr, BACKENDS))}; got {name!r}"
    )


@torch.compiler.assume_constant_result
def resolve_backend(
    backend: str, device: torch.device, dtype: torch.dtype, compiling: bool = False
) -> str:
    """The backend that will run a call on tensors of this device and dtype.

    ``compiling``: the call is being traced by ``torch.compile`` (pass
    ``torch.compiler.is_compiling()``; this function itself runs eagerly at trace time).
    """
    key = (backend, device, dtype, compiling)
    name = _resolved.get(key)
    if name is not None:
        return name
    requested = backend
    if requested == "auto":
        requested = os.environ.get("FASTGP_BACKEND", "auto").strip().lower() or "auto"
    if requested == "auto":
        preferred = (AUTO_WHEN_COMPILED if compiling else AUTO).get(device.type)
        if preferred is None:
            reason = f"fastgp has no fused kernel for {device.type} tensors"
        else:
            try:  # (None for "torch")
                reason = unavailable_reason(preferred, device, dtype)
            except Exception as exc:  # a probe must never turn "auto" into a crash
                reason = f"checking the {preferred} backend failed: {type(exc).__name__}: {exc}"
        name = preferred if reason is None else "torch"
        if reason is not None and reason not in _warned:
            _warned.add(reason)
            warnings.warn(
                f"fastgp: using the PyTorch reference implementation because {reason}",
                RuntimeWarning,
                stacklevel=3,
            )
    else:
        reason = unavailable_reason(requested, device, dtype)
        if reason is not None:
            raise BackendUnavailable(f"fastgp backend {requested!r} cannot run: {reason}")
        name = requested
    _resolved[key] = name
    return name


def clear_cache() -> None:
    """Forget resolved backends and emitted warnings (tests; after installing a compiler)."""
    _resolved.clear()
    _warned.clear()
