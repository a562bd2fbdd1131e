"""Triton backend: the four ops of ``fastgp.backends.reference`` as Triton kernels.

On CUDA tensors these launchers are the ``torch.ops.fastgp`` CUDA kernels (``fastgp.ops``).
On CPU tensors they run under Triton's interpreter, which is selected by setting
``TRITON_INTERPRET=1`` before this package is first imported (Triton decides
compiled-vs-interpreted when the kernels are defined). Importing this package imports
triton; nothing else in fastgp does so at import time.
"""

from __future__ import annotations

import torch

try:
    import triton
except ImportError as exc:  # keep the package importable so `availability` can say why
    _import_error: ImportError | None = exc
else:
    _import_error = None
    from fastgp.backends.triton.interpolate import (
        _interpolate_kernel,
        interpolate,
        interpolate_backward,
    )
    from fastgp.backends.triton.penalty import penalty_backward, penalty_forward

__all__ = [
    "availability",
    "interpolate",
    "interpolate_backward",
    "penalty_backward",
    "penalty_forward",
]

_LAUNCHERS = frozenset(__all__) - {"availability"}


def __getattr__(name: str):
    # Only reached when triton failed to import (otherwise the launchers are module globals).
    if name in _LAUNCHERS:
        from fastgp.backends.errors import BackendUnavailable

        raise BackendUnavailable(f"fastgp backend 'triton' cannot run: {availability(None)}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def interpreted() -> bool:
    """True if the kernels were defined under ``TRITON_INTERPRET=1`` (CPU interpreter)."""
    if _import_error is not None:
        return False
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_interpolate_kernel, InterpretedFunction)


def availability(device: torch.device | str | None) -> str | None:
    """None if the Triton kernels can run tensors on ``device``, else the reason why not."""
    if _import_error is not None:
        return f"triton is not installed ({_import_error}); pip install triton"
    device = torch.device(device if device is not None else "cuda")
    if interpreted():
        if device.type == "cpu":
            return None
        return (
            f"TRITON_INTERPRET=1 was set when fastgp's Triton kernels were defined, so they run "
            f"in the slow CPU interpreter, not on {device.type}; unset TRITON_INTERPRET to use "
            "the GPU"
        )
    if device.type == "cpu":
        return (
            "tensor is on CPU and TRITON_INTERPRET=1 is not set (Triton runs CUDA tensors; "
            "the interpreter runs CPU tensors)"
        )
    if device.type != "cuda":
        return f"fastgp's Triton kernels run CUDA tensors, got a tensor on {device.type}"
    if not torch.cuda.is_available():
        return "no CUDA device is available (torch.cuda.is_available() is False)"
    if torch.version.hip is None:
        major, minor = torch.cuda.get_device_capability(device)
        if major < 7:
            name = torch.cuda.get_device_name(device)
            return f"Triton needs compute capability 7.0 or newer; {name} has {major}.{minor}"
    try:
        triton.runtime.driver.active.get_current_target()
    except Exception as exc:  # a missing or broken driver surfaces here, not at import
        return f"Triton found no usable GPU driver ({type(exc).__name__}: {exc})"
    return None
