"""Triton kernels for the per-sample interpolation x_hat = alpha * real + (1 - alpha) * fake.

Semantics are those of ``fastgp.backends.reference.interpolate`` and
``interpolate_backward``. Every tensor is handled as a (B, D) row view (``rows_view``):
one sample is one contiguous run of D elements, so contiguous and channels_last tensors
need no copy, and outputs keep the layout of ``torch.empty_like(input)``.

Launch shape, shared with ``penalty.py``: a program handles a (BLOCK_B, BLOCK_D) tile of
rows x columns. Long rows are split into chunks of BLOCK_D columns (BLOCK_B = 1) so a
single sample is spread over many programs; short rows are packed BLOCK_B to a tile so a
program still moves a useful amount of memory. The logical (row block, chunk) grid is
flattened onto grid axis 0 because CUDA caps grid axes 1 and 2 at 65,535 programs, which
a large batch of small samples would exceed.

Integer kernel arguments: D stays specialized (Triton then knows when every row starts
16-element aligned and can vectorize the loads); the other sizes and counts are in
``do_not_specialize`` since specializing them buys nothing but extra compiled variants.
"""

from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from fastgp.backends.layout import rows_view
from fastgp.backends.triton.launch import launch

# Elements per program: a small fixed set, so shapes map onto a handful of compiled
# variants. Small problems take the smaller tile so they still spread over ~200 programs
# (B=1 with 196,608 elements: 192 programs); large ones take the larger tile to cut the
# per-program overhead (16 KiB of fp32 per program).
_SMALL_TILE = 1024
_LARGE_TILE = 4096
_LARGE_TILE_FROM = _LARGE_TILE * 256  # elements in the problem
_ELEMENTS_PER_WARP = 256  # 8 a thread


# Debug aid, read once at import (tests set it): every buffer a kernel writes is first
# filled with NaN, so an element a kernel forgets to write fails a comparison instead of
# passing on whatever the allocator left there.
_POISON = os.environ.get("FASTGP_DEBUG_POISON", "") == "1"


def _kernel_output(t: Tensor) -> Tensor:
    """``t``, NaN-filled when FASTGP_DEBUG_POISON=1; call on every buffer a kernel writes."""
    if _POISON:
        t.fill_(float("nan"))
    return t


def _on_device(t: Tensor):
    """Make t's GPU the current device: Triton launches on the current device, which need
    not be the one holding the tensors (e.g. inputs on cuda:1 while cuda:0 is current)."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def _tile(b: int, d: int) -> tuple[int, int, int]:
    """(BLOCK_B, BLOCK_D, num_warps) for a (B, D) problem; powers of two only.

    Both tiles give each thread 8 elements (1024 over 4 warps, 4096 over 16): with 16 per
    thread (4096 over 8 warps) ptxas spilled 4-16 bytes in several configurations, short
    rows and fp16 among them (tests/test_triton_aot.py compiles every one and forbids it).
    """
    tile = _LARGE_TILE if b * d >= _LARGE_TILE_FROM else _SMALL_TILE
    block_d = min(triton.next_power_of_2(d), tile)
    return tile // block_d, block_d, tile // _ELEMENTS_PER_WARP


def _same_layout(a: Tensor, b: Tensor) -> bool:
    """True if a and b (same shape) lay out their elements in the same memory order."""
    return all(a.stride(i) == b.stride(i) for i in range(a.dim()) if a.shape[i] != 1)


def _work_buffer(out: Tensor) -> Tensor:
    """``out`` itself if it has a (B, D) row view, else a contiguous buffer to compute into.

    ``torch.empty_like`` keeps any dense layout, including ones whose batch dimension is
    not outermost (e.g. a transposed input); those are computed contiguously and copied.
    """
    if rows_view(out) is not None:
        return _kernel_output(out)
    return _kernel_output(torch.empty_like(out, memory_format=torch.contiguous_format))


def _rows_like(t: Tensor, work: Tensor) -> Tensor:
    """(B, D) rows of ``t`` in the element order of ``rows_view(work)``; copies only if needed."""
    if _same_layout(t, work):
        view = rows_view(t)
        if view is not None:
            return view
    copy = torch.empty_like(work)
    copy.copy_(t)
    return rows_view(copy)


def _finish(out: Tensor, work: Tensor) -> Tensor:
    if work is not out:
        out.copy_(work)
    return out


@triton.jit
def _row_tile(B, D, n_chunks, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr):
    # The (BLOCK_B, BLOCK_D) tile of a (B, D) row-major view owned by this program of a flat
    # grid of cdiv(B, BLOCK_B) * n_chunks programs: rows, their mask, the tile mask and the
    # int64 element offsets (row * D + col overflows int32 past 2**31 - 1 elements).
    pid = tl.program_id(0).to(tl.int64)
    rows = (pid // n_chunks) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = (pid % n_chunks) * BLOCK_D + tl.arange(0, BLOCK_D)
    row_mask = rows < B
    mask = row_mask[:, None] & (cols < D)[None, :]
    return rows, row_mask, mask, rows[:, None] * D + cols[None, :]


@triton.jit(do_not_specialize=["B", "n_chunks"])
def _interpolate_kernel(
    real_ptr,  # (B, D) rows, any float dtype
    fake_ptr,  # (B, D) rows, same dtype and row layout as real
    alpha_ptr,  # (B,) float32 (float64 for float64 inputs): the compute dtype
    out_ptr,  # (B, D) rows, dtype of real, written here
    B,
    D,
    n_chunks,  # column chunks per row block
    BLOCK_B: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # Bytes: reads 2*B*D*sizeof(x) + B*sizeof(alpha), writes B*D*sizeof(x): one pass.
    # d x_hat / d real = alpha, d x_hat / d fake = 1 - alpha (see _interpolate_backward_kernel).
    # 64-bit program ids and offsets: row * D + col overflows int32 once a tensor has more
    # than 2**31 - 1 elements (8 GiB of fp32), and the wrapped offset would address memory
    # silently instead of failing.
    rows, row_mask, mask, offsets = _row_tile(B, D, n_chunks, BLOCK_B, BLOCK_D)
    a = tl.load(alpha_ptr + rows, mask=row_mask, other=0.0)[:, None]
    r = tl.load(real_ptr + offsets, mask=mask, other=0.0).to(a.dtype)
    f = tl.load(fake_ptr + offsets, mask=mask, other=0.0).to(a.dtype)
    # Same expression as the reference (not a lerp rewrite), in alpha's dtype, cast once.
    x = a * r + (1 - a) * f
    tl.store(out_ptr + offsets, x.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["B", "n_chunks"])
def _interpolate_backward_kernel(
    grad_out_ptr,  # (B, D) rows, any float dtype
    alpha_ptr,  # (B,) float32 (float64 for float64 grad_out)
    grad_real_ptr,  # (B, D) rows, dtype of grad_out; written iff HAS_REAL
    grad_fake_ptr,  # (B, D) rows, dtype of grad_out; written iff HAS_FAKE
    B,
    D,
    n_chunks,
    HAS_REAL: tl.constexpr,
    HAS_FAKE: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # Bytes: reads B*D*sizeof(g) + B*sizeof(alpha), writes (HAS_REAL + HAS_FAKE)*B*D*sizeof(g):
    # both gradients from one read of grad_out.
    # Derivative: dL/d real = alpha * dL/d x_hat, dL/d fake = (1 - alpha) * dL/d x_hat.
    # 64-bit ids and offsets for the same reason as _interpolate_kernel (> 2**31 elements).
    rows, row_mask, mask, offsets = _row_tile(B, D, n_chunks, BLOCK_B, BLOCK_D)
    a = tl.load(alpha_ptr + rows, mask=row_mask, other=0.0)[:, None]
    g = tl.load(grad_out_ptr + offsets, mask=mask, other=0.0).to(a.dtype)
    if HAS_REAL:
        tl.store(grad_real_ptr + offsets, (a * g).to(grad_real_ptr.dtype.element_ty), mask=mask)
    if HAS_FAKE:
        tl.store(
            grad_fake_ptr + offsets, ((1 - a) * g).to(grad_fake_ptr.dtype.element_ty), mask=mask
        )


def interpolate(real: Tensor, fake: Tensor, alpha: Tensor) -> Tensor:
    """x_hat[i] = alpha[i] * real[i] + (1 - alpha[i]) * fake[i].

    real, fake: (B, *) same shape/dtype/device, any strides. alpha: (B,) float32 (float64
    for float64 inputs). Returns (B, *) in real's dtype, laid out as ``empty_like(real)``;
    no copy when real and fake share a dense, batch-outermost layout.
    """
    out = torch.empty_like(real)
    work = _work_buffer(out)
    real_rows = _rows_like(real, work)
    fake_rows = _rows_like(fake, work)
    out_rows = rows_view(work)
    b, d = out_rows.shape
    block_b, block_d, num_warps = _tile(b, d)
    n_chunks = triton.cdiv(d, block_d)
    grid = (triton.cdiv(b, block_b) * n_chunks,)
    with _on_device(real):
        launch(
            _interpolate_kernel,
            grid,
            real_rows,
            fake_rows,
            alpha.contiguous(),
            out_rows,
            b,
            d,
            n_chunks,
            BLOCK_B=block_b,
            BLOCK_D=block_d,
            num_warps=num_warps,
        )
    return _finish(out, work)


def interpolate_backward(
    grad_out: Tensor, alpha: Tensor, need_real: bool, need_fake: bool
) -> list[Tensor]:
    """[grad_real] + [grad_fake] (each only if needed) from one read of grad_out.

    grad_out: (B, *) any strides; alpha: (B,) float32 (float64 for float64 grad_out).
    grad_real = alpha * grad_out, grad_fake = (1 - alpha) * grad_out, dtype of grad_out,
    each laid out as ``empty_like(grad_out)``.
    """
    if not (need_real or need_fake):
        return []
    outs = [torch.empty_like(grad_out) for _ in range(int(need_real) + int(need_fake))]
    works = [_work_buffer(o) for o in outs]
    go_rows = _rows_like(grad_out, works[0])
    out_rows = [rows_view(w) for w in works]
    grad_real_rows = out_rows[0] if need_real else go_rows
    grad_fake_rows = out_rows[-1] if need_fake else go_rows
    b, d = go_rows.shape
    block_b, block_d, num_warps = _tile(b, d)
    n_chunks = triton.cdiv(d, block_d)
    grid = (triton.cdiv(b, block_b) * n_chunks,)
    with _on_device(grad_out):
        launch(
            _interpolate_backward_kernel,
            grid,
            go_rows,
            alpha.contiguous(),
            grad_real_rows,
            grad_fake_rows,
            b,
            d,
            n_chunks,
            HAS_REAL=bool(need_real),
            HAS_FAKE=bool(need_fake),
            BLOCK_B=block_b,
            BLOCK_D=block_d,
            num_warps=num_warps,
        )
    return [_finish(o, w) for o, w in zip(outs, works, strict=False)]
