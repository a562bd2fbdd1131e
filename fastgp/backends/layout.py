"""Memory-layout helpers shared by the kernel launchers."""

from __future__ import annotations

from torch import Tensor


def rows_view(t: Tensor) -> Tensor | None:
    """A (B, D) view of ``t`` (B, *) where each sample's D elements are one contiguous run.

    Returns None when no such view exists without a copy. Works for contiguous and
    channels_last tensors (and any other dense layout whose batch stride is outermost):
    the element order inside a row is then the memory order, which is all a per-sample
    norm or an elementwise kernel needs, as long as every tensor it pairs with shares
    the same strides.
    """
    b = t.shape[0]
    n = t.numel()
    if b == 0 or n == 0:
        return None
    d = n // b
    if t.dim() == 1:
        return t.view(b, 1) if t.stride(0) == 1 else None
    if b > 1 and t.stride(0) != d:
        return None
    # Non-overlapping and dense within a sample: strides of the non-unit dims, sorted,
    # must be the running products of their sizes.
    dims = sorted(
        ((t.stride(i), t.shape[i]) for i in range(1, t.dim()) if t.shape[i] != 1),
    )
    expected = 1
    for stride, size in dims:
        if stride != expected:
            return None
        expected *= size
    return t.as_strided((b, d), (d, 1))
