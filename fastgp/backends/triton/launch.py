"""The one place every fastgp Triton kernel is launched: pinned compile options, a recorder.

Floating-point contraction is off for every launch (``enable_fp_fusion=False``): ``a * x +
b * y`` stays two rounded products and a rounded sum, as in the reference and in eager
PyTorch (one kernel per op, each rounding), and as in the C++ backend (``-ffp-contract=off``,
``fastgp/backends/cpp.py``). The kernels are bound by memory, so an FMA would buy no speed,
only results that change with the compiler: Triton 3.9 warns that its default (contraction
on) is about to change, and pinning the option per launch makes the results the same on
every Triton version.

Under Triton's CPU interpreter, ``range()`` over a runtime integer (the penalty kernels'
loops) fails in Triton 3.6 with NumPy >= 2.4; ``launch`` applies Triton 3.9's fix to older
interpreters (``_fix_interpreter_index``). Compiled kernels are not affected.

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
        if not _index_fixed and not hasattr(kernel, "params"):  # an InterpretedFunction
            _fix_interpreter_index()
        kernel[grid](*args, **meta)


_index_fixed = False


def _fix_interpreter_index() -> None:
    """Make Triton's interpreter convert a scalar to an index as Triton 3.9 does.

    The interpreter holds a scalar kernel argument as a NumPy array of shape (1,) and gives
    ``tl.tensor`` an ``__index__`` (what ``range(n)`` calls) of ``int(array)``, which NumPy
    2.4 refuses for arrays that are not 0-dimensional ("only 0-dimensional arrays can be
    converted to Python scalars", triton-lang/triton#9171). Triton 3.9 squeezes the array
    first; this installs the same conversion on every launch of an older interpreter (3.6,
    the GPU image's), where the interpreter patches ``tl.tensor`` for the launch. Only the
    interpreter is touched: a compiled kernel's loop bound never calls ``__index__``.
    """
    global _index_fixed
    from triton.runtime import interpreter

    patch_tensor = getattr(interpreter, "_patch_lang_tensor", None)
    if patch_tensor is not None:

        def patch_tensor_with_index(tensor, scope) -> None:
            patch_tensor(tensor, scope)
            scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

        interpreter._patch_lang_tensor = patch_tensor_with_index
    _index_fixed = True


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
