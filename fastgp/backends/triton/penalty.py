"""Triton kernels for the gradient penalty from per-sample gradients (forward and backward).

Semantics are those of ``fastgp.backends.reference.penalty_forward`` and
``penalty_backward``. Forward, deterministic by construction (no float atomics):

1. ``_penalty_sum_squares_kernel``, once per input tensor: program (row block, chunk)
   writes the sum of squares of its part of each row into its own cell of a small
   ``partial`` buffer (B, C) (fp32; fp64 for fp64 grads). Input tensor t owns columns
   [col_offset_t, col_offset_t + n_chunks_t), so every cell is written exactly once.
2. ``_penalty_finalize_kernel``, one program: reduces each group of ``pac`` rows of
   ``partial`` in a fixed order, then norms, inv_scale, center, one-sided and the mean.
   One program suffices because ``partial`` stays small: a tensor gets more than one
   column only when its rows are split (BLOCK_B = 1) into fewer than ``_TARGET_PROGRAMS``
   row blocks, so it holds at most B + _TARGET_PROGRAMS cells per input tensor.

The backward is one elementwise pass per input tensor that computes the per-row
coefficient from ``norms`` and ``grad_penalty`` (read from device memory, no host sync).

Float hyperparameters reach the kernels as the int64 bit pattern of the Python float:
Triton types float arguments as fp32, which would round inv_scale/center/lambda before
the fp64 kernels use them. They are runtime arguments (never constexpr), excluded from
value specialization, so new values never trigger a recompile.
"""

from __future__ import annotations

import struct

import torch
import triton
import triton.language as tl
from torch import Tensor

from fastgp.backends.layout import rows_view
from fastgp.backends.reference import accumulation_dtype
from fastgp.backends.triton.interpolate import (
    _finish,
    _kernel_output,
    _on_device,
    _row_tile,
    _rows_like,
    _tile,
    _work_buffer,
)
from fastgp.backends.triton.launch import launch

# The sum-of-squares kernel aims for about this many programs in total: enough to fill a
# GPU several times over, while a program loops over several tiles of a long row rather
# than producing more partial sums than the single-program finalize should read.
_TARGET_PROGRAMS = 1024
# Finalize tile (groups x partial columns): one program, a few KiB of partial sums.
_FINALIZE_TILE = 1024
_FINALIZE_MAX_COLS = 256


def _f64_bits(x: float) -> int:
    """The IEEE-754 binary64 bit pattern of x as a signed int (decoded by ``_decode_f64``)."""
    return struct.unpack("<q", struct.pack("<d", float(x)))[0]


@triton.jit
def _decode_f64(bits, dtype: tl.constexpr):
    # Small patterns (0.0 -> 0) arrive as i32, others as i64; widening keeps the value.
    return bits.to(tl.int64).to(tl.float64, bitcast=True).to(dtype)


@triton.jit
def _sqrt_ieee(x):
    # tl.sqrt on fp32 may lower to an approximate instruction; sqrt_rn is fp32-only and
    # fp64 sqrt is always correctly rounded.
    if x.dtype == tl.float64:
        return tl.sqrt(x)
    else:
        return tl.sqrt_rn(x)


@triton.jit
def _div_ieee(x, y):
    # fp32 `/` may lower to an approximate division; fp64 `/` is correctly rounded.
    if x.dtype == tl.float64:
        return x / y
    else:
        return tl.div_rn(x, y)


@triton.jit(do_not_specialize=["B", "n_chunks", "iters", "col_offset", "partial_cols"])
def _penalty_sum_squares_kernel(
    grad_ptr,  # (B, D) rows of one gradient tensor, any float dtype
    partial_ptr,  # (B, partial_cols) fp32 (fp64 for fp64 grads); this tensor's columns
    B,
    D,
    n_chunks,  # column chunks per row block for this tensor (columns it owns in partial)
    iters,  # BLOCK_D-wide tiles summed by one program (a chunk is iters * BLOCK_D columns)
    col_offset,  # first column of partial owned by this tensor
    partial_cols,
    BLOCK_B: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # Bytes: reads B*D*sizeof(g), writes B*n_chunks*sizeof(acc): one read of the gradient.
    # Computes s[row, chunk] = sum over the chunk of g**2 (the forward of ||g||**2);
    # its derivative 2*g is applied in _penalty_backward_kernel.
    # 64-bit ids and offsets: row * D + col overflows int32 once a tensor has more than
    # 2**31 - 1 elements (8 GiB of fp32); a wrapped offset would read the wrong memory.
    acc_dtype: tl.constexpr = partial_ptr.dtype.element_ty
    pid = tl.program_id(0).to(tl.int64)
    pid_b = pid // n_chunks
    pid_c = pid % n_chunks
    rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    row_mask = rows < B
    row_offsets = rows[:, None] * D
    start = pid_c * iters * BLOCK_D
    acc = tl.zeros((BLOCK_B, BLOCK_D), dtype=acc_dtype)
    for it in range(iters):
        cols = start + it * BLOCK_D + tl.arange(0, BLOCK_D)
        mask = row_mask[:, None] & (cols < D)[None, :]
        g = tl.load(grad_ptr + row_offsets + cols[None, :], mask=mask, other=0.0).to(acc_dtype)
        acc += g * g
    # Fixed tile shape and loop order: the same inputs give bitwise the same sums.
    total = tl.sum(acc, axis=1)
    tl.store(partial_ptr + rows * partial_cols + col_offset + pid_c, total, mask=row_mask)


@triton.jit
def _clamp_at_zero(d):
    # max(d, 0) that keeps a NaN a NaN (tl.maximum returns the number): a non-finite
    # gradient must make the one-sided penalty non-finite too, as in the reference.
    return tl.where(d < 0, 0.0, d)


@triton.jit(do_not_specialize=["G", "inv_scale_bits", "center_bits", "lambda_bits"])
def _penalty_finalize_kernel(
    partial_ptr,  # (G, L) = (B, C) viewed per group: L = pac * C partial sums per group
    scale_ptr,  # () loss scale, any float dtype, read iff HAS_SCALE (no host sync)
    norms_ptr,  # (G,) fp32 (fp64 for fp64 grads), written here
    penalty_ptr,  # () same dtype, written here
    G,
    L,
    inv_scale_bits,  # float64 bit patterns, see _f64_bits
    center_bits,
    lambda_bits,
    ONE_SIDED: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    # Bytes: reads G*L*sizeof(acc), writes (G + 1)*sizeof(acc); one program, a tiny launch.
    # Computes norms[i] = sqrt(sum_{j<L} partial[i, j]) * (inv_scale / scale) and
    # penalty = lambda * mean_i h(norms[i] - center), h(d) = d**2 (max(d, 0)**2 one-sided).
    acc_dtype: tl.constexpr = partial_ptr.dtype.element_ty
    inv_scale = _decode_f64(inv_scale_bits, acc_dtype)
    center = _decode_f64(center_bits, acc_dtype)
    lambda_gp = _decode_f64(lambda_bits, acc_dtype)
    if HAS_SCALE:  # once, outside the loop (see reference.penalty_forward)
        inv_scale = _div_ieee(inv_scale, tl.load(scale_ptr).to(acc_dtype))
    h_acc = tl.zeros((BLOCK_G,), dtype=acc_dtype)
    for g0 in range(0, G, BLOCK_G):
        # 64-bit: group * L indexes the partial buffer; kept wide like every offset here.
        groups = g0 + tl.arange(0, BLOCK_G).to(tl.int64)
        group_mask = groups < G
        ss = tl.zeros((BLOCK_G, BLOCK_L), dtype=acc_dtype)
        for l0 in range(0, L, BLOCK_L):
            cols = l0 + tl.arange(0, BLOCK_L)
            mask = group_mask[:, None] & (cols < L)[None, :]
            ss += tl.load(partial_ptr + groups[:, None] * L + cols[None, :], mask=mask, other=0.0)
        norms = _sqrt_ieee(tl.sum(ss, axis=1)) * inv_scale
        tl.store(norms_ptr + groups, norms, mask=group_mask)
        d = norms - center
        if ONE_SIDED:
            d = _clamp_at_zero(d)
        h_acc += tl.where(group_mask, d * d, 0.0)
    penalty = lambda_gp * _div_ieee(tl.sum(h_acc, axis=0), G.to(acc_dtype))
    tl.store(penalty_ptr, penalty)


@triton.jit(do_not_specialize=["B", "pac", "n_chunks", "factor_bits", "center_bits"])
def _penalty_backward_kernel(
    grad_ptr,  # (B, D) rows of one gradient tensor, any float dtype
    norms_ptr,  # (B // pac,) fp32 (fp64 for fp64 grads)
    grad_penalty_ptr,  # () upstream gradient of the penalty, read here (no host sync)
    scale_ptr,  # () loss scale, any float dtype, read iff HAS_SCALE
    out_ptr,  # (B, D) rows, dtype of grad, written here
    B,
    D,
    pac,
    n_chunks,
    factor_bits,  # float64 bits of 2 * lambda * inv_scale**2 / G
    center_bits,  # float64 bits of center
    ONE_SIDED: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # Bytes: reads B*D*sizeof(g) + (B // pac + 1)*sizeof(acc), writes B*D*sizeof(g).
    # Derivative: dP/dg = d_i / n_i * u * g with u = grad_penalty * 2 lambda inv_scale**2 / G
    # (/ scale**2), i = row // pac, d_i = n_i - center (clamped at 0 one-sided), and
    # coefficient 0 at n_i == 0 exactly (a NaN norm gives a NaN coefficient).
    # 64-bit ids and offsets for the same reason as _penalty_sum_squares_kernel.
    acc_dtype: tl.constexpr = norms_ptr.dtype.element_ty
    rows, row_mask, mask, offsets = _row_tile(B, D, n_chunks, BLOCK_B, BLOCK_D)
    # Per-row coefficient: BLOCK_B scalars per program, negligible next to the tile.
    n = tl.load(norms_ptr + rows // pac, mask=row_mask, other=0.0)
    d = n - _decode_f64(center_bits, acc_dtype)
    if ONE_SIDED:
        d = _clamp_at_zero(d)
    zero = n == 0
    ratio = tl.where(zero, 0.0, _div_ieee(d, tl.where(zero, 1.0, n)))
    upstream = tl.load(grad_penalty_ptr).to(acc_dtype) * _decode_f64(factor_bits, acc_dtype)
    if HAS_SCALE:
        loss_scale = tl.load(scale_ptr).to(acc_dtype)
        upstream = _div_ieee(upstream, loss_scale * loss_scale)
    coef = (ratio * upstream)[:, None]
    g = tl.load(grad_ptr + offsets, mask=mask, other=0.0).to(acc_dtype)
    tl.store(out_ptr + offsets, (coef * g).to(out_ptr.dtype.element_ty), mask=mask)


def _rows(t: Tensor) -> Tensor:
    """(B, D) rows of t: a view when one exists, else a contiguous copy."""
    view = rows_view(t)
    return view if view is not None else t.reshape(t.shape[0], -1).contiguous()


def penalty_forward(
    grads: list[Tensor],
    grad_scale: Tensor | None,
    inv_scale: float,
    lambda_gp: float,
    center: float,
    one_sided: bool,
    pac: int,
) -> tuple[Tensor, Tensor]:
    """(penalty, norms) from per-sample gradients; deterministic.

    grads: list of (B, *) tensors, same B, dtype (fp16/bf16/fp32/fp64) and device, any
    strides. grad_scale: None or a one-element tensor (read on the device).
    norms[i] = ||g of group i|| * inv_scale (/ grad_scale) over groups of ``pac`` consecutive
    samples, shape (B // pac,); penalty = lambda_gp * mean h(norms - center), 0-dim. Both
    are float32 (float64 for float64 grads).
    """
    acc = accumulation_dtype(grads[0].dtype)
    rows = [_rows(g) for g in grads]
    b = rows[0].shape[0]
    groups = b // pac
    plans = []
    cols = 0
    for r in rows:
        d = r.shape[1]
        block_b, block_d, num_warps = _tile(b, d)
        row_blocks = triton.cdiv(b, block_b)
        tiles = triton.cdiv(d, block_d)
        chunks = min(tiles, max(1, triton.cdiv(_TARGET_PROGRAMS, row_blocks)))
        iters = triton.cdiv(tiles, chunks)
        chunks = triton.cdiv(tiles, iters)
        plans.append((r, d, block_b, block_d, num_warps, row_blocks, chunks, iters, cols))
        cols += chunks
    device = rows[0].device
    # Every cell is written exactly once by the launches below.
    partial = _kernel_output(torch.empty((b, cols), dtype=acc, device=device))
    norms = _kernel_output(torch.empty((groups,), dtype=acc, device=device))
    penalty = _kernel_output(torch.empty((), dtype=acc, device=device))
    length = pac * cols
    block_l = min(triton.next_power_of_2(length), _FINALIZE_MAX_COLS)
    scale = grad_scale.reshape(()) if grad_scale is not None else penalty
    with _on_device(partial):
        for r, d, block_b, block_d, num_warps, row_blocks, chunks, iters, col_offset in plans:
            launch(
                _penalty_sum_squares_kernel,
                (row_blocks * chunks,),
                r,
                partial,
                b,
                d,
                chunks,
                iters,
                col_offset,
                cols,
                BLOCK_B=block_b,
                BLOCK_D=block_d,
                num_warps=num_warps,
            )
        launch(
            _penalty_finalize_kernel,
            (1,),
            partial,
            scale,
            norms,
            penalty,
            groups,
            length,
            _f64_bits(inv_scale),
            _f64_bits(center),
            _f64_bits(lambda_gp),
            ONE_SIDED=bool(one_sided),
            HAS_SCALE=grad_scale is not None,
            BLOCK_G=_FINALIZE_TILE // block_l,
            BLOCK_L=block_l,
            # 8 warps: with 4, ptxas spilled the fp64 finalize (1024 groups, one column).
            num_warps=8,
        )
    return penalty, norms


def penalty_backward(
    grad_penalty: Tensor,
    grads: list[Tensor],
    norms: Tensor,
    grad_scale: Tensor | None,
    inv_scale: float,
    lambda_gp: float,
    center: float,
    one_sided: bool,
    pac: int,
) -> list[Tensor]:
    """dP/dg for every tensor of ``grads``, one pass each.

    grad_penalty: 0-dim (read on the device). grads, grad_scale: as in ``penalty_forward``. norms:
    (B // pac,) from ``penalty_forward``. Returns one tensor per grad, same shape and
    dtype, laid out as ``empty_like(grad)``. The coefficient is 0 where norms == 0.
    """
    groups = norms.shape[0]
    factor = 2.0 * lambda_gp * inv_scale * inv_scale / groups
    norms = norms.contiguous()
    scale = grad_scale.reshape(()) if grad_scale is not None else norms
    results = []
    for g in grads:
        out = torch.empty_like(g)
        work = _work_buffer(out)
        g_rows = _rows_like(g, work)
        b, d = g_rows.shape
        block_b, block_d, num_warps = _tile(b, d)
        n_chunks = triton.cdiv(d, block_d)
        with _on_device(g_rows):
            launch(
                _penalty_backward_kernel,
                (triton.cdiv(b, block_b) * n_chunks,),
                g_rows,
                norms,
                grad_penalty,
                scale,
                rows_view(work),
                b,
                d,
                pac,
                n_chunks,
                _f64_bits(factor),
                _f64_bits(center),
                ONE_SIDED=bool(one_sided),
                HAS_SCALE=grad_scale is not None,
                BLOCK_B=block_b,
                BLOCK_D=block_d,
                num_warps=num_warps,
            )
        results.append(_finish(out, work))
    return results
