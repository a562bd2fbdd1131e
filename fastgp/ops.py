"""The ``torch.ops.fastgp`` operators: schemas, fake (meta) kernels and the CUDA kernels.

The schemas are defined here, in Python, at import time (cheap), not in C++: the C++
extension is built lazily on first use, and the Triton (CUDA) kernels and the fake kernels
that ``torch.compile`` needs must be registrable without it. ``csrc/fastgp_ops.cpp``
registers the CPU kernels for these same schemas with ``TORCH_LIBRARY_IMPL(fastgp, CPU, m)``
when it is loaded. The semantics of each op are documented in ``fastgp.backends.reference``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastgp.backends.reference import accumulation_dtype

_lib = torch.library.Library("fastgp", "DEF")  # noqa: TOR901 - schemas shared with csrc/
_lib.define("interpolate(Tensor real, Tensor fake, Tensor alpha) -> Tensor")
_lib.define(
    "interpolate_backward(Tensor grad_out, Tensor alpha, bool need_real, bool need_fake)"
    " -> Tensor[]"
)
_lib.define(
    "penalty_forward(Tensor[] grads, float inv_scale, float lambda_gp, float center,"
    " bool one_sided, int pac) -> (Tensor, Tensor)"
)
# penalty_forward with its autograd node in C++ (CPU only: csrc/fastgp_ops.cpp registers
# its CPU and AutogradCPU kernels); penalty_from_grads calls it for the cpp backend.
_lib.define(
    "penalty(Tensor[] grads, float inv_scale, float lambda_gp, float center,"
    " bool one_sided, int pac) -> (Tensor, Tensor)"
)
_lib.define(
    "penalty_backward(Tensor grad_penalty, Tensor[] grads, Tensor norms, float inv_scale,"
    " float lambda_gp, float center, bool one_sided, int pac) -> Tensor[]"
)


@torch.library.register_fake("fastgp::interpolate")
def _interpolate_fake(real: Tensor, fake: Tensor, alpha: Tensor) -> Tensor:
    return torch.empty_like(real)


@torch.library.register_fake("fastgp::interpolate_backward")
def _interpolate_backward_fake(
    grad_out: Tensor, alpha: Tensor, need_real: bool, need_fake: bool
) -> list[Tensor]:
    return [torch.empty_like(grad_out) for _ in range(int(need_real) + int(need_fake))]


@torch.library.register_fake("fastgp::penalty")
@torch.library.register_fake("fastgp::penalty_forward")
def _penalty_forward_fake(
    grads: list[Tensor],
    inv_scale: float,
    lambda_gp: float,
    center: float,
    one_sided: bool,
    pac: int,
) -> tuple[Tensor, Tensor]:
    acc = accumulation_dtype(grads[0].dtype)
    norms = grads[0].new_empty((grads[0].shape[0] // pac,), dtype=acc)
    return grads[0].new_empty((), dtype=acc), norms


@torch.library.register_fake("fastgp::penalty_backward")
def _penalty_backward_fake(
    grad_penalty: Tensor,
    grads: list[Tensor],
    norms: Tensor,
    inv_scale: float,
    lambda_gp: float,
    center: float,
    one_sided: bool,
    pac: int,
) -> list[Tensor]:
    return [torch.empty_like(g) for g in grads]


# CUDA kernels are the Triton launchers. They are imported on first call so that
# `import fastgp` never imports triton (which must see TRITON_INTERPRET before import).
def _triton():
    from fastgp.backends import triton as triton_backend

    return triton_backend


def _interpolate_cuda(real: Tensor, fake: Tensor, alpha: Tensor) -> Tensor:
    return _triton().interpolate(real, fake, alpha)


def _interpolate_backward_cuda(
    grad_out: Tensor, alpha: Tensor, need_real: bool, need_fake: bool
) -> list[Tensor]:
    return _triton().interpolate_backward(grad_out, alpha, need_real, need_fake)


def _penalty_forward_cuda(grads, inv_scale, lambda_gp, center, one_sided, pac):
    return _triton().penalty_forward(list(grads), inv_scale, lambda_gp, center, one_sided, pac)


def _penalty_backward_cuda(
    grad_penalty, grads, norms, inv_scale, lambda_gp, center, one_sided, pac
):
    return _triton().penalty_backward(
        grad_penalty, list(grads), norms, inv_scale, lambda_gp, center, one_sided, pac
    )


_lib.impl("interpolate", _interpolate_cuda, "CUDA")
_lib.impl("interpolate_backward", _interpolate_backward_cuda, "CUDA")
_lib.impl("penalty_forward", _penalty_forward_cuda, "CUDA")
_lib.impl("penalty_backward", _penalty_backward_cuda, "CUDA")
