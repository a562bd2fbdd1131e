"""The grid of inputs whose Triton launches the ahead-of-time checks compile.

Each ``Call`` is one call of a ``torch.ops.fastgp`` Triton kernel (the registration of
``fastgp.ops.library``: the op contract's checks, then the launcher) on meta tensors, so
nothing runs and sizes can be large. The grid picks shapes from the launchers' own tiling
(``interpolate._tile``'s constants) and crosses dtypes and flags; the specializations it
leads to are whatever the launchers request for those inputs.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass

DTYPES = ("float32", "float16", "bfloat16", "float64")


@dataclass(frozen=True)
class Call:
    """One call of a ``torch.ops.fastgp`` Triton kernel, on meta tensors.

    shapes: one (B, *) shape per input (interpolate: real and fake; penalty: each gradient).
    offset: the first input is a view starting this many elements into its allocation
    (1: its address is not 16-byte aligned). scale: dtype of a one-element ``grad_scale``,
    or None.
    """

    op: str  # interpolate | interpolate_backward | penalty_forward | penalty_backward
    dtype: str
    shapes: tuple[tuple[int, ...], ...]
    need_real: bool = True
    need_fake: bool = True
    one_sided: bool = False
    pac: int = 1
    scale: str | None = None
    offset: int = 0
    center: float = 1.0

    @property
    def label(self) -> str:
        parts = [self.op, self.dtype, "+".join("x".join(map(str, s)) for s in self.shapes)]
        if self.op == "interpolate_backward":
            parts.append(
                {(1, 1): "real+fake", (1, 0): "real", (0, 1): "fake"}[
                    (int(self.need_real), int(self.need_fake))
                ]
            )
        if self.one_sided:
            parts.append("one-sided")
        if self.pac > 1:
            parts.append(f"pac{self.pac}")
        if self.scale is not None:
            parts.append(f"scale:{self.scale}")
        if self.offset:
            parts.append(f"offset{self.offset}")
        if self.center != 1.0:
            parts.append(f"center{self.center:g}")
        return " ".join(parts)

    def run(self) -> None:
        """Call the registered CUDA kernel of ``op`` (contract checks, then the launcher)."""
        import torch

        from fastgp.ops import library

        dtype = getattr(torch, self.dtype)
        acc = torch.float64 if dtype == torch.float64 else torch.float32

        def tensor(shape: tuple[int, ...], offset: int = 0, dt: torch.dtype = dtype):
            flat = torch.empty(math.prod(shape) + offset, dtype=dt, device="meta")
            return flat[offset:].view(shape)

        first = tensor(self.shapes[0], self.offset)
        inputs = [first] + [tensor(s) for s in self.shapes[1:]]
        b = first.shape[0]
        scale = None if self.scale is None else tensor((1,), dt=getattr(torch, self.scale))
        kernels = library._TRITON_KERNELS
        if self.op == "interpolate":
            kernels["interpolate"](inputs[0], inputs[1], tensor((b,), dt=acc))
        elif self.op == "interpolate_backward":
            kernels["interpolate_backward"](
                inputs[0], tensor((b,), dt=acc), self.need_real, self.need_fake
            )
        elif self.op == "penalty_forward":
            kernels["penalty_forward"](
                inputs, scale, 1.0, 10.0, self.center, self.one_sided, self.pac
            )
        elif self.op == "penalty_backward":
            norms = tensor((b // self.pac,), dt=acc)
            kernels["penalty_backward"](
                tensor((), dt=acc),
                inputs,
                norms,
                scale,
                1.0,
                10.0,
                self.center,
                self.one_sided,
                self.pac,
            )
        else:
            raise ValueError(f"unknown op {self.op!r}")


def tile_shapes(full: bool) -> list[tuple[int, int]]:
    """(B, D) row shapes that reach the tile configurations of ``interpolate._tile``.

    Full: for both tiles (small, large) and every power-of-two BLOCK_D ``_tile`` can choose,
    a D that is a multiple of 16 where one exists (Triton then knows every row starts
    16-byte aligned) and one that is not; D = 1 is a constexpr after Triton's specialization;
    BLOCK_D = tile means rows split over several programs. Representative: D = 1, packed
    rows with and without D % 16 == 0, split rows, on both tiles.
    """
    # The package re-exports functions named like its modules: fetch the module by path.
    interpolate_module = importlib.import_module("fastgp.backends.triton.interpolate")
    small = interpolate_module._SMALL_TILE
    large = interpolate_module._LARGE_TILE
    threshold = interpolate_module._LARGE_TILE_FROM

    def batch(tile: int, d: int) -> int:
        return 3 if tile == small else math.ceil(threshold / d)

    if not full:
        picks = [(small, 1), (small, 63), (small, 64), (small, 3 * small)]
        picks += [(large, 1), (large, 64), (large, 3 * large + 5)]
        return [(batch(tile, d), d) for tile, d in picks]
    shapes = []
    for tile in (small, large):
        for block_d in (2**k for k in range(int(math.log2(tile)) + 1)):
            if block_d == 1:
                ds = [1]
            elif block_d < tile:
                ds = ([block_d] if block_d >= 16 else []) + [max(block_d - 1, 2)]
            else:
                ds = [3 * tile, 3 * tile + 5]
            shapes += [(batch(tile, d), d) for d in ds]
    return shapes


def _rotate(options: list, index: int, heaviest: bool) -> list:
    """One of ``options`` (rotating with ``index``), plus the last (the one with the most
    code) when ``heaviest``."""
    picked = [options[index % len(options)]]
    return picked + [options[-1]] if heaviest and picked[0] != options[-1] else picked


def calls(full: bool) -> list[Call]:
    """The grid of inputs to the four Triton kernels.

    Row shapes from ``tile_shapes(full)``. float32 (whose aligned rows must load 128 bits
    at a time) takes every shape; the other dtypes take every shape in the full grid and
    one in the representative grid. Flag combinations (need_real/need_fake; one_sided x
    grad_scale): full grid, every combination for float32 and, for the other dtypes, one in
    rotation plus the heaviest; representative grid, one in rotation. Then (every dtype in
    the full grid, float32 in the representative one) an unaligned first input (a view
    starting one element in) and several inputs with pac > 1 and a scale tensor (GradScaler's
    float32; in the full grid also none and the gradients' dtype); and the finalize
    program's partial-sum tile from pac * columns = 1 (a constexpr) to beyond its
    256-column cap (full grid; the representative one takes the cap); center = 0, whose
    bit pattern binds as an i32.
    """
    shapes = tile_shapes(full)
    backward_flags = [(True, False), (False, True), (True, True)]
    penalty_flags = [(False, None), (True, None), (False, "float32"), (True, "float32")]
    grid: list[Call] = []
    for index, dtype in enumerate(DTYPES):
        fp32 = dtype == "float32"
        # Representative: float32 over every shape; the others over one each (a large tile
        # for fp16 and fp64, whose registers per thread are highest; split rows for bf16).
        dtype_shapes = shapes if full or fp32 else [[shapes[-2], shapes[3], shapes[-1]][index - 1]]
        for i, (b, d) in enumerate(dtype_shapes):
            rows = ((b, d),)
            if full and fp32:
                bwd, pen = backward_flags, penalty_flags
            else:
                bwd = _rotate(backward_flags, i + index, heaviest=full)
                pen = _rotate(penalty_flags, i + index, heaviest=full)
            grid.append(Call("interpolate", dtype, ((b, d), (b, d))))
            grid += [Call("interpolate_backward", dtype, rows, r, f) for r, f in bwd]
            for op in ("penalty_forward", "penalty_backward"):
                grid += [Call(op, dtype, rows, one_sided=o, scale=s) for o, s in pen]
        if not (full or fp32):
            continue
        # The first input 4 bytes (fp64: 8, half: 2) past an aligned address: a view.
        unaligned = ((8, 1024), (8, 1024))
        grid.append(Call("interpolate", dtype, unaligned, offset=1))
        for op in ("interpolate_backward", "penalty_forward", "penalty_backward"):
            grid.append(Call(op, dtype, unaligned[:1], offset=1))
        # center = 0 (zero-centred penalties): its float64 bit pattern 0 binds as i32, not i64.
        for op in ("penalty_forward", "penalty_backward"):
            grid.append(Call(op, dtype, ((3, 64),), center=0.0))
        several = ((8, 3, 9, 9), (8, 10), (8,))
        scales = (None, "float32", dtype) if full else ("float32",)
        for one_sided in (False, True) if full else (True,):
            for scale in dict.fromkeys(scales):
                for op in ("penalty_forward", "penalty_backward"):
                    grid.append(Call(op, dtype, several, one_sided=one_sided, pac=4, scale=scale))
    for dtype in ("float32", "float64"):
        # 320 columns: past the cap, and L a multiple of 16 (a divisibility hint).
        columns = (1, 2, 3, 5, 9, 16, 17, 33, 65, 129, 300, 320) if full else (320,)
        for k in columns:
            for one_sided, scale in penalty_flags if full else penalty_flags[-1:]:
                shape = ((1, 1024 * k),)
                grid.append(Call("penalty_forward", dtype, shape, one_sided=one_sided, scale=scale))
        if full:
            grid.append(Call("penalty_forward", dtype, ((4, 16),), pac=4))
    return grid
