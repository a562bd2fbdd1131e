"""Every argument check of fastgp's Python side, each error naming the argument.

Two kinds of check live here, once each:

* **Public arguments** (``as_tensor_tuple``, ``check_inputs``, ``check_pac``,
  ``check_number``, ``check_weight``, ``grad_scale_of``, ``per_sample_alpha``): what the
  public functions accept before anything reaches an op (tuples, Python numbers, a
  ``GradScaler``, alpha in its several shapes).
* **Op contracts** (``check_interpolate``, ``check_interpolate_backward``,
  ``check_penalty``, ``check_penalty_backward``): the tensor arguments of the
  ``torch.ops.fastgp`` operators. They run in the CUDA (Triton) kernels, in the fake
  kernels that ``torch.compile`` traces (so a compiled call raises the same error at trace
  time), and before the pure PyTorch reference. ``csrc/fastgp_checks.h`` is the same
  contract for the C++ CPU kernels, message for message (``tests/test_checks_agree.py``
  compares them on every bad input). A public call is checked by the op it reaches, not
  again here: the Python checks cost microseconds per call, the C++ ones nanoseconds.

Messages print shapes as lists and dtypes as ``torch.float32``, as the C++ side does.
Shape and device problems raise ``ValueError``, dtype problems ``TypeError``.
"""

from __future__ import annotations

import math
import numbers
import operator

import torch
from torch import Tensor

from fastgp.backends.reference import KERNEL_DTYPES, accumulation_dtype

_KERNEL_DTYPE_NAMES = "float32, float64, float16 or bfloat16"


def _shape(t: Tensor) -> list[int]:
    return list(t.shape)


# ------------------------------------------------------------------ op contracts


def _fail(error: type[Exception], message: str):
    raise error(f"fastgp: {message}")


def check_rows(t: Tensor, name: str, kernel: bool = True) -> None:
    """``t`` is a floating (B, *) tensor with B >= 1 and at least one element per sample.

    ``kernel``: the dtype must be one the fused kernels implement (else any floating dtype).
    """
    if kernel:
        if t.dtype not in KERNEL_DTYPES:
            _fail(TypeError, f"`{name}` must be {_KERNEL_DTYPE_NAMES}, got {t.dtype}")
    elif not t.is_floating_point():
        _fail(TypeError, f"`{name}` must be a floating-point tensor, got {t.dtype}")
    if t.dim() == 0:
        _fail(ValueError, f"`{name}` must have a batch dimension (B, *), got a 0-dim tensor")
    if t.shape[0] == 0:
        _fail(ValueError, f"`{name}` is an empty batch (shape {_shape(t)}); need B >= 1")
    if t.numel() == 0:
        _fail(ValueError, f"`{name}` has samples with no elements (shape {_shape(t)})")


def _check_per_sample(values: Tensor, name: str, count: int, like: Tensor, like_name: str):
    """``values`` is (count,) in the accumulation dtype of ``like``, on its device."""
    if values.device != like.device:
        _fail(
            ValueError,
            f"`{name}` must be on the device of `{like_name}` ({like.device}), got {values.device}",
        )
    if values.dim() != 1 or values.shape[0] != count:
        _fail(ValueError, f"`{name}` must have shape ({count},), got {_shape(values)}")
    acc = accumulation_dtype(like.dtype)
    if values.dtype != acc:
        _fail(
            TypeError,
            f"`{name}` must be {acc} for {like.dtype} `{like_name}` (the "
            f"accumulation dtype), got {values.dtype}",
        )


def check_interpolate(real: Tensor, fake: Tensor, alpha: Tensor, kernel: bool = True) -> None:
    """Contract of ``fastgp::interpolate``: real and fake (B, *) alike, alpha (B,)."""
    check_rows(real, "real", kernel)
    if fake.device != real.device:
        _fail(
            ValueError, f"`fake` must be on the device of `real` ({real.device}), got {fake.device}"
        )
    if fake.dtype != real.dtype:
        _fail(TypeError, f"`fake` must have the dtype of `real` ({real.dtype}), got {fake.dtype}")
    if fake.shape != real.shape:
        _fail(
            ValueError, f"`fake` must have the shape of `real` {_shape(real)}, got {_shape(fake)}"
        )
    _check_per_sample(alpha, "alpha", real.shape[0], real, "real")


def check_interpolate_backward(grad_out: Tensor, alpha: Tensor, kernel: bool = True) -> None:
    """Contract of ``fastgp::interpolate_backward``."""
    check_rows(grad_out, "grad_out", kernel)
    _check_per_sample(alpha, "alpha", grad_out.shape[0], grad_out, "grad_out")


def _grads_name(index: int, count: int) -> str:
    return "grads" if count == 1 else f"grads[{index}]"


def check_penalty(
    grads: list[Tensor] | tuple[Tensor, ...],
    grad_scale: Tensor | None,
    pac: int,
    kernel: bool = True,
) -> None:
    """Contract of ``fastgp::penalty_forward``: gradients alike in B, dtype and device;
    ``pac`` divides B; ``grad_scale`` None or a one-element floating tensor beside them."""
    if len(grads) == 0:
        _fail(ValueError, "`grads` must hold at least one tensor")
    first = grads[0]
    for k, g in enumerate(grads):
        name = _grads_name(k, len(grads))
        check_rows(g, name, kernel)
        if k == 0:
            continue
        if g.device != first.device:
            _fail(ValueError, f"`{name}` is on {g.device} but `grads[0]` is on {first.device}")
        if g.dtype != first.dtype:
            _fail(TypeError, f"`{name}` has dtype {g.dtype} but `grads[0]` has {first.dtype}")
        if g.shape[0] != first.shape[0]:
            _fail(
                ValueError,
                f"`{name}` has batch size {g.shape[0]} but `grads[0]` has "
                f"{first.shape[0]}; every gradient needs the same batch size",
            )
    if pac < 1:
        _fail(ValueError, f"`pac` must be a positive integer, got {pac}")
    if first.shape[0] % pac != 0:
        _fail(ValueError, f"`pac`={pac} must divide the batch size B={first.shape[0]}")
    if grad_scale is not None:
        if grad_scale.device != first.device:
            _fail(
                ValueError,
                f"`grad_scale` must be on the device of the gradients "
                f"({first.device}), got {grad_scale.device}",
            )
        if not grad_scale.is_floating_point():
            _fail(
                TypeError, f"`grad_scale` must be a floating-point tensor, got {grad_scale.dtype}"
            )
        if grad_scale.numel() != 1:
            _fail(ValueError, f"`grad_scale` must have one element, got shape {_shape(grad_scale)}")


def check_penalty_backward(
    grad_penalty: Tensor,
    grads: list[Tensor] | tuple[Tensor, ...],
    norms: Tensor,
    grad_scale: Tensor | None,
    pac: int,
    kernel: bool = True,
) -> None:
    """Contract of ``fastgp::penalty_backward``: that of the forward, plus ``grad_penalty``
    (one element) and ``norms`` (B // pac,) in the accumulation dtype, beside the gradients."""
    check_penalty(grads, grad_scale, pac, kernel)
    first = grads[0]
    acc = accumulation_dtype(first.dtype)
    if grad_penalty.device != first.device:
        _fail(
            ValueError,
            f"`grad_penalty` must be on the device of the gradients "
            f"({first.device}), got {grad_penalty.device}",
        )
    if grad_penalty.numel() != 1:
        _fail(ValueError, f"`grad_penalty` must have one element, got shape {_shape(grad_penalty)}")
    if grad_penalty.dtype != acc:
        _fail(
            TypeError,
            f"`grad_penalty` must be {acc} for {first.dtype} `grads`, got {grad_penalty.dtype}",
        )
    _check_per_sample(norms, "norms", first.shape[0] // pac, first, "grads")


# ---------------------------------------------------------------- public arguments


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


def batch_size(t: Tensor, name: str) -> int:
    """B of a (B, *) tensor; the rest of ``t`` is checked by the op it reaches."""
    if t.dim() == 0:
        check_rows(t, name, kernel=False)
    return t.shape[0]


def check_inputs(reals: tuple[Tensor, ...], fakes: tuple[Tensor, ...] | None = None) -> int:
    """The batch size B of a public call's inputs, for drawing alpha.

    A single tensor (the common case) is checked by the op it reaches (``check_interpolate``
    or its C++ twin). Tuples (a critic with several inputs) are checked here across their
    members, which no single op sees: the same count in ``real`` and ``fake``, and one batch
    size, dtype and device.
    """
    first = reals[0]
    if fakes is not None and len(fakes) != len(reals):
        raise ValueError(f"`real` has {len(reals)} tensors but `fake` has {len(fakes)}")
    if len(reals) == 1:
        return batch_size(first, "real")
    groups = (("real", reals),) if fakes is None else (("real", reals), ("fake", fakes))
    for name, tensors in groups:
        for i, t in enumerate(tensors):
            label = _label(name, i, len(tensors))
            check_rows(t, label, kernel=False)
            if t.shape[0] != first.shape[0]:
                raise ValueError(
                    f"`{label}` has batch size {t.shape[0]} but `real[0]` has {first.shape[0]}; "
                    "every input needs the same batch size"
                )
            if t.dtype != first.dtype:
                raise TypeError(f"`{label}` has dtype {t.dtype} but `real[0]` has {first.dtype}")
            if t.device != first.device:
                raise ValueError(f"`{label}` is on {t.device} but `real[0]` is on {first.device}")
    if fakes is not None:
        for i, (r, f) in enumerate(zip(reals, fakes, strict=True)):
            if f.shape != r.shape:
                raise ValueError(
                    f"`fake[{i}]` must have the shape of `real[{i}]` {_shape(r)}, got {_shape(f)}"
                )
    return first.shape[0]


def check_pac(pac: int, batch: int) -> int:
    """``pac`` as an int >= 1 that divides ``batch`` (numpy and 0-dim torch integers accepted)."""
    if type(pac) is int and pac >= 1 and batch % pac == 0:
        return pac
    try:
        value = operator.index(pac) if not isinstance(pac, bool) else None
    except TypeError:
        value = None
    if value is None or value < 1:
        raise ValueError(f"`pac` must be a positive integer, got {pac!r}")
    if batch % value:
        raise ValueError(f"`pac`={value} must divide the batch size B={batch}")
    return value


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


def grad_scale_of(grad_scale, device: torch.device) -> tuple[Tensor | None, float]:
    """``(scale_tensor, inv_scale)`` for the ``grad_scale`` argument of the penalties.

    The gradients handed to the kernels are those of the critic output times the loss scale;
    the kernels divide it out inside the norm: ``||g|| * inv_scale / scale_tensor``.
    None -> (None, 1.0); a positive number s -> (None, 1 / s); a one-element floating
    tensor -> (that tensor, 1.0); a ``torch.amp.GradScaler`` -> its scale tensor, read on
    its device (``GradScaler.get_scale()`` would synchronise with the host on every call;
    a scaler that has not scaled anything yet creates it on ``device`` with its initial
    scale, as ``GradScaler.scale`` would), or (None, 1.0) when it is disabled.
    """
    if grad_scale is None:
        return None, 1.0
    if isinstance(grad_scale, torch.amp.GradScaler):
        scale = loss_scale(grad_scale, device)
        return (None, 1.0) if scale is None else (scale, 1.0)
    if isinstance(grad_scale, Tensor):
        if not grad_scale.is_floating_point() or grad_scale.numel() != 1:
            raise TypeError(
                "`grad_scale` must be None, a number, a one-element floating tensor or a "
                f"GradScaler, got a {grad_scale.dtype} tensor of shape {_shape(grad_scale)}"
            )
        return grad_scale.detach().reshape(()), 1.0
    if isinstance(grad_scale, bool) or not isinstance(grad_scale, numbers.Real):
        raise TypeError(
            f"`grad_scale` must be None, a number, a tensor or a GradScaler, got {grad_scale!r}"
        )
    scale = float(grad_scale)
    if not 0 < scale < math.inf:
        raise ValueError(f"`grad_scale` must be a positive finite scale, got {scale}")
    return None, 1.0 / scale


def loss_scale(scaler: torch.amp.GradScaler, device: torch.device | str) -> Tensor | None:
    """A ``GradScaler``'s current scale as a 0-dim tensor, without a host synchronisation.

    None when the scaler is disabled. A scaler that has not scaled anything yet creates its
    scale on ``device`` with its initial value, as ``GradScaler.scale`` would. Inside a
    compiled step (``fastgp.compile_step``), where no ``GradScaler`` method can be traced,
    take this tensor outside and pass it in: ``grad_scale=scale`` and ``loss * scale``.
    """
    if torch.compiler.is_compiling():
        raise TypeError(
            "`grad_scale`: a GradScaler cannot be used inside torch.compile (its methods are "
            "not traceable); get its scale outside with fastgp.loss_scale(scaler, device) "
            "and pass that tensor as grad_scale (and multiply the loss by it)"
        )
    if not scaler.is_enabled():
        return None
    if scaler._get_scale_async() is None:
        scaler._lazy_init_scale_growth_tracker(torch.device(device))
    return scaler._get_scale_async().detach().reshape(())


def scaled_output(total: Tensor, grad_scale) -> tuple[Tensor, Tensor | None, float]:
    """``total`` times the loss scale, and ``(scale_tensor, inv_scale)`` that remove it.

    The scale is a tensor multiplied on the device (a ``GradScaler``'s own, see
    ``loss_scale``), so a penalty call never synchronises with the host and a CUDA-graph
    capture of a whole step can include it.
    """
    scale, inv_scale = grad_scale_of(grad_scale, total.device)
    if scale is not None:
        # No cast to total's dtype: a GradScaler's 2**16 is inf in fp16; the product
        # promotes to the scale's dtype, as GradScaler.scale's does.
        return total * scale, scale, inv_scale
    if inv_scale != 1.0:
        return total * (1.0 / inv_scale), None, inv_scale
    return total, None, 1.0


def per_sample_alpha(
    alpha: Tensor | float | None,
    batch: int,
    pac: int,
    like: Tensor,
    generator: torch.Generator | None,
) -> Tensor:
    """The interpolation weight of every sample, contiguous (B,) in the accumulation dtype.

    ``None`` draws U[0, 1) once per group of ``pac`` samples (per sample when pac = 1) from
    ``generator``; a tensor may have shape (B,), (B, 1, ..., 1), or with pac > 1 also
    (B // pac,) / (B // pac, 1, ..., 1), one value per group as in CTGAN.
    """
    dtype = accumulation_dtype(like.dtype)
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
    elif isinstance(alpha, (int, float)) and not isinstance(alpha, bool):
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
