"""Argument checks shared by the public functions: each error names the argument."""

from __future__ import annotations

import math
import numbers
import operator

import torch
from torch import Tensor


def as_tensor_tuple(
    value: Tensor | tuple[Tensor, ...] | list[Tensor], name: str
) -> tuple[Tensor, ...]:
    """A tensor or a non-empty sequence of tensors, as a tuple."""
    if isinstance(value, Tensor):
        return (value,)
    if isinstance(value, (tuple, list)) and value and all(isinstance(t, Tensor) for t in value):
        return tuple(value)
    raise TypeError(
        f"`{name}` must be a Tensor or a non-empty tuple of Tensors, got {type(value).__name__}"
    )


def _label(name: str, index: int, count: int) -> str:
    return name if count == 1 else f"{name}[{index}]"


def check_batch(tensors: tuple[Tensor, ...], name: str) -> int:
    """Every tensor is floating point, (B, *) with B > 0 and a non-empty sample, same B,
    dtype and device as the first. Returns B."""
    first = tensors[0]
    # The common case in as few tensor attribute reads as possible (this runs on every
    # call; the full walk below is what names a problem).
    if len(tensors) == 1 and first.dim() and first.numel() and first.is_floating_point():
        return first.shape[0]
    for i, t in enumerate(tensors):
        label = _label(name, i, len(tensors))
        if not t.is_floating_point():
            raise TypeError(f"`{label}` must be a floating-point tensor, got dtype {t.dtype}")
        if t.dim() == 0:
            raise ValueError(f"`{label}` must have a batch dimension (B, *), got a 0-dim tensor")
        if t.shape[0] == 0:
            raise ValueError(f"`{label}` is an empty batch (shape {tuple(t.shape)}); need B >= 1")
        if t.numel() == 0:
            raise ValueError(f"`{label}` has samples with no elements (shape {tuple(t.shape)})")
        if t.shape[0] != first.shape[0]:
            raise ValueError(
                f"`{label}` has batch size {t.shape[0]} but `{_label(name, 0, 2)}` has "
                f"{first.shape[0]}; every input needs the same batch size"
            )
        if t.dtype != first.dtype:
            raise TypeError(
                f"`{label}` has dtype {t.dtype} but `{_label(name, 0, 2)}` has {first.dtype}"
            )
        if t.device != first.device:
            raise ValueError(
                f"`{label}` is on {t.device} but `{_label(name, 0, 2)}` is on {first.device}"
            )
    return first.shape[0]


def check_pair(reals: tuple[Tensor, ...], fakes: tuple[Tensor, ...]) -> int:
    """``real`` and ``fake`` agree input by input in shape, dtype and device. Returns B."""
    if len(reals) != len(fakes):
        raise ValueError(f"`real` has {len(reals)} tensors but `fake` has {len(fakes)}")
    b = check_batch(reals, "real")
    if len(reals) == 1:  # fast path; real is floating point, so equal dtypes suffice
        r, f = reals[0], fakes[0]
        if r.shape == f.shape and r.dtype == f.dtype and r.device == f.device:
            return b
    for i, (r, f) in enumerate(zip(reals, fakes, strict=False)):
        rl, fl = _label("real", i, len(reals)), _label("fake", i, len(reals))
        if not f.is_floating_point():
            raise TypeError(f"`{fl}` must be a floating-point tensor, got dtype {f.dtype}")
        if f.shape != r.shape:
            raise ValueError(
                f"`{fl}` must have the shape of `{rl}` {tuple(r.shape)}, got {tuple(f.shape)}"
            )
        if f.dtype != r.dtype:
            raise TypeError(f"`{fl}` must have the dtype of `{rl}` ({r.dtype}), got {f.dtype}")
        if f.device != r.device:
            raise ValueError(f"`{fl}` must be on the device of `{rl}` ({r.device}), got {f.device}")
    return b


def check_pac(pac: int, batch: int) -> int:
    """``pac`` as an int >= 1 that divides ``batch`` (numpy and 0-dim torch integers accepted)."""
    try:
        value = operator.index(pac) if not isinstance(pac, bool) else None
    except TypeError:
        value = None
    if value is None or value < 1:
        raise ValueError(f"`pac` must be a positive integer, got {pac!r}")
    pac = value
    if batch % pac:
        raise ValueError(f"`pac`={pac} must divide the batch size B={batch}")
    return pac


def check_number(value: float, name: str) -> float:
    """A finite real number (Python, numpy or 0-dim tensor) as a float."""
    if type(value) is float and -math.inf < value < math.inf:
        return value
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, Tensor)):
        raise TypeError(f"`{name}` must be a real number, got {type(value).__name__}")
    if isinstance(value, Tensor) and value.numel() != 1:
        shape = tuple(value.shape)
        raise TypeError(f"`{name}` must be a real number, got a tensor of shape {shape}")
    value = float(value)
    # Comparisons rather than math.isfinite: torch.compile traces them on symbolic floats.
    if not -math.inf < value < math.inf:
        raise ValueError(f"`{name}` must be finite, got {value}")
    return value


def check_weight(value: float, name: str) -> float:
    """A finite real number >= 0 (a penalty weight) as a float."""
    value = check_number(value, name)
    if value < 0:
        raise ValueError(f"`{name}` must be a finite number >= 0, got {value}")
    return value


def inverse_scale(grad_scale) -> float:
    """1 / scale for ``grad_scale``: None, a positive float, or a ``torch.amp.GradScaler``."""
    if grad_scale is None:
        return 1.0
    scale = grad_scale.get_scale() if hasattr(grad_scale, "get_scale") else grad_scale
    scale = float(scale) if isinstance(scale, Tensor) else scale
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"`grad_scale` must be None, a number or a GradScaler, got {scale!r}")
    scale = float(scale)
    if not 0 < scale < math.inf:
        raise ValueError(f"`grad_scale` must be a positive finite scale, got {scale}")
    return 1.0 / scale


def per_sample_alpha(
    alpha: Tensor | float | None,
    batch: int,
    pac: int,
    like: Tensor,
    dtype: torch.dtype,
    generator: torch.Generator | None,
) -> Tensor:
    """The interpolation weight of every sample, contiguous (B,) in ``dtype``.

    ``None`` draws U[0, 1) once per group of ``pac`` samples (per sample when pac = 1) from
    ``generator``; a tensor may have shape (B,), (B, 1, ..., 1), or with pac > 1 also
    (B // pac,) / (B // pac, 1, ..., 1), one value per group as in CTGAN.
    """
    groups = batch // pac
    if (
        isinstance(alpha, Tensor)
        and alpha.dtype == dtype
        and alpha.shape == (batch,)
        and alpha.device == like.device
        and alpha.is_contiguous()
    ):
        return alpha  # already what the kernels take
    if alpha is None:
        where = generator.device if generator is not None else like.device
        alpha = torch.rand(groups, generator=generator, device=where, dtype=dtype).to(like.device)
    elif isinstance(alpha, (int, float)):
        return torch.full((batch,), float(alpha), dtype=dtype, device=like.device)
    elif isinstance(alpha, Tensor):
        n = alpha.shape[0] if alpha.dim() else 0
        if alpha.dim() == 0 or alpha.numel() != n or n not in (batch, groups):
            expected = f"(B,) = ({batch},) or (B, 1, ..., 1)"
            if pac > 1:
                expected += f", or per group (B // pac,) = ({groups},)"
            raise ValueError(f"`alpha` must have shape {expected}; got {tuple(alpha.shape)}")
        if alpha.device != like.device:
            raise ValueError(f"`alpha` is on {alpha.device} but the inputs are on {like.device}")
        alpha = alpha.reshape(n).to(dtype)
        if n == batch:
            return alpha.contiguous()
    else:
        raise TypeError(f"`alpha` must be None, a float or a Tensor, got {type(alpha).__name__}")
    return alpha.repeat_interleave(pac) if pac > 1 else alpha.contiguous()
