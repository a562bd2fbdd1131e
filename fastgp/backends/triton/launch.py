"""The one place every fastgp Triton kernel is launched: pinned compile options, a recorder.

Floating-point contraction is off for every launch (``enable_fp_fusion=False``): ``a * x +
b * y`` stays two rounded products and a rounded sum, as in the reference and in eager
PyTorch (one kernel per op, each rounding), and as in the C++ backend (``-ffp-contract=off``,
``fastgp/backends/cpp.py``). The kernels are bound by memory, so an FMA would buy no speed,
only results that change with the compiler: Triton 3.9 warns that its default (contraction
on) is about to change, and pinning the option per launch makes the results the same on
every Triton version.

``recording()`` captures every launch (kernel, grid, arguments, meta-parameters) for the
ahead-of-time compile checks (``tests/test_triton_aot.py``), which derive the compiled
specializations from the launchers themselves; with ``execute=False`` nothing runs, so the
launchers can be driven with meta tensors at sizes the interpreter could never run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

ENABLE_FP_FUSION = False


@dataclass(frozen=True)
class Launch:
    """One recorded kernel launch."""

    kernel: Any  # the @triton.jit function
    grid: tuple[int, ...]
    args: tuple[Any, ...]  # positional kernel arguments (tensors and scalars)
    meta: dict[str, Any]  # constexprs and launch options (num_warps, enable_fp_fusion)


_recorders: list[list[Launch]] = []
_execute = [True]


def launch(kernel: Any, grid: tuple[int, ...], *args: Any, **meta: Any) -> None:
    """``kernel[grid](*args, **meta)`` with fastgp's pinned options (see the module docstring)."""
    meta["enable_fp_fusion"] = ENABLE_FP_FUSION
    for recorder in _recorders:
        recorder.append(Launch(kernel, tuple(grid), args, dict(meta)))
    if _execute[-1]:
        kernel[grid](*args, **meta)


@contextlib.contextmanager
def recording(execute: bool = True) -> Iterator[list[Launch]]:
    """Collect the launches made inside the block; ``execute=False`` skips running them."""
    launches: list[Launch] = []
    _recorders.append(launches)
    _execute.append(execute)
    try:
        yield launches
    finally:
        _execute.pop()
        _recorders.remove(launches)
