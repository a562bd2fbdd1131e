"""Ahead-of-time compilation of fastgp's Triton kernels for real GPUs, on a machine without one.

Triton compiles a kernel for a named target (``GPUTarget("cuda", 90, 32)``) with no GPU
present, and its wheel ships ``ptxas`` and ``nvdisasm``. This package

1. drives the ``torch.ops.fastgp`` Triton kernels over a grid of inputs on meta tensors,
   recording their launches without running them (``grid``);
2. binds each launch with Triton's own launch-time binder, into the signature, constexprs
   and divisibility hints Triton compiles, and checks the binder against the rules as
   documented (``binding``);
3. compiles each distinct specialization for sm_80 and sm_90 and reads ptxas's report, the
   PTX and the SASS (``compiled``);
4. does this in worker processes and caches every analysis on disk (``pipeline``).

``tests/test_triton_aot.py`` asserts on the results; ``python -m benchmarks.triton_resources``
writes the resource table of ``benchmarks/README.md`` from them.
"""

from benchmarks.triton_aot.binding import Specialization
from benchmarks.triton_aot.grid import DTYPES, Call, calls, tile_shapes
from benchmarks.triton_aot.pipeline import ARCHS, Result, Run, cache_dir, compile_one, run

__all__ = [
    "ARCHS",
    "DTYPES",
    "Call",
    "Result",
    "Run",
    "Specialization",
    "cache_dir",
    "calls",
    "compile_one",
    "run",
    "tile_shapes",
]
