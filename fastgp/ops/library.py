"""The ``torch.ops.fastgp`` operators: schemas, fake kernels, and the Triton registrations.

Each fused op is defined here once: its schema (``SCHEMAS``), its fake kernel (output
metadata plus the op contract's checks of ``fastgp.validation``, so ``torch.compile``
raises the same named errors at trace time), and its kernels:

* CPU: the C++ kernels of ``csrc/fastgp_ops.cpp`` (``TORCH_LIBRARY_IMPL(fastgp, CPU, m)``),
  registered when the lazily built extension is loaded. The schemas live here, in Python,
  because the fake and Triton kernels must be registrable without that extension.
* CUDA: the Triton launchers of ``fastgp.backends.triton``, behind the same Python checks.

Triton's CPU interpreter (tests, no GPU) cannot take the ``CPU`` key of ``fastgp``, which
belongs to the C++ kernels. ``define_interpreter_namespace`` therefore defines the same ops
a second time under ``fastgp_interpret``, from the same schemas, fake kernels and Triton
registration, with the launchers as CPU kernels: a test of the Triton backend goes through
the dispatcher, the fake kernels and the autograd of ``fastgp.ops.autograd`` exactly as a
GPU user's call does.

Four ops exist only in ``fastgp``, for the CPU fast paths of ``fastgp.ops``:
``penalty`` and ``interpolate_autograd`` (``penalty_forward`` and ``interpolate`` with their
autograd nodes in C++), and ``penalty_grads`` and ``interpolate_grads`` (the differentiable
reference formulas those nodes call under ``create_graph``, registered as composites of
``reference.penalty_grads`` and ``reference.interpolate_backward`` so each formula exists
once).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastgp import validation
from fastgp.backends import reference

NAMESPACE = "fastgp"
INTERPRETER_NAMESPACE = "fastgp_interpret"

SCHEMAS = {
    "interpolate": "interpolate(Tensor real, Tensor fake, Tensor alpha) -> Tensor",
    "interpolate_backward": (
        "interpolate_backward(Tensor grad_out, Tensor alpha, bool need_real, bool need_fake)"
        " -> Tensor[]"
    ),
    "penalty_forward": (
        "penalty_forward(Tensor[] grads, Tensor? grad_scale, float inv_scale, float lambda_gp,"
        " float center, bool one_sided, int pac) -> (Tensor, Tensor)"
    ),
    "penalty_backward": (
        "penalty_backward(Tensor grad_penalty, Tensor[] grads, Tensor norms, Tensor? grad_scale,"
        " float inv_scale, float lambda_gp, float center, bool one_sided, int pac) -> Tensor[]"
    ),
}
CPU_FAST_PATH_SCHEMAS = {
    "interpolate_autograd": SCHEMAS["interpolate"].replace(
        "interpolate(", "interpolate_autograd(", 1
    ),
    "interpolate_grads": SCHEMAS["interpolate_backward"].replace(
        "interpolate_backward(", "interpolate_grads(", 1
    ),
    "penalty": SCHEMAS["penalty_forward"].replace("penalty_forward(", "penalty(", 1),
    "penalty_grads": (
        "penalty_grads(Tensor grad_penalty, Tensor[] grads, Tensor? grad_scale, float inv_scale,"
        " float lambda_gp, float center, bool one_sided, int pac) -> Tensor[]"
    ),
}


# ------------------------------------------------------------------------ fake kernels


def _interpolate_fake(real: Tensor, fake: Tensor, alpha: Tensor) -> Tensor:
    validation.check_interpolate(real, fake, alpha)
    return torch.empty_like(real)


def _interpolate_backward_fake(
    grad_out: Tensor, alpha: Tensor, need_real: bool, need_fake: bool
) -> list[Tensor]:
    validation.check_interpolate_backward(grad_out, alpha)
    return [torch.empty_like(grad_out) for _ in range(int(need_real) + int(need_fake))]


def _penalty_forward_fake(
    grads: list[Tensor],
    grad_scale: Tensor | None,
    inv_scale: float,
    lambda_gp: float,
    center: float,
    one_sided: bool,
    pac: int,
) -> tuple[Tensor, Tensor]:
    validation.check_penalty(grads, grad_scale, pac)
    acc = reference.accumulation_dtype(grads[0].dtype)
    norms = grads[0].new_empty((grads[0].shape[0] // pac,), dtype=acc)
    return grads[0].new_empty((), dtype=acc), norms


def _penalty_backward_fake(
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
    validation.check_penalty_backward(grad_penalty, grads, norms, grad_scale, pac)
    return [torch.empty_like(g) for g in grads]


_FAKE_KERNELS = {
    "interpolate": _interpolate_fake,
    "interpolate_backward": _interpolate_backward_fake,
    "penalty_forward": _penalty_forward_fake,
    "penalty_backward": _penalty_backward_fake,
}


# ---------------------------------------------------------------------- Triton kernels
# The launchers are imported on first call, so that `import fastgp` never imports triton
# (which must see TRITON_INTERPRET before it is imported). Each checks the op contract first:
# a launcher must never read memory an argument does not have.


def _triton():
    from fastgp.backends import triton as triton_backend

    return triton_backend


def _interpolate_triton(real: Tensor, fake: Tensor, alpha: Tensor) -> Tensor:
    validation.check_interpolate(real, fake, alpha)
    return _triton().interpolate(real, fake, alpha)


def _interpolate_backward_triton(
    grad_out: Tensor, alpha: Tensor, need_real: bool, need_fake: bool
) -> list[Tensor]:
    validation.check_interpolate_backward(grad_out, alpha)
    return _triton().interpolate_backward(grad_out, alpha, need_real, need_fake)


def _penalty_forward_triton(grads, grad_scale, inv_scale, lambda_gp, center, one_sided, pac):
    validation.check_penalty(grads, grad_scale, pac)
    return _triton().penalty_forward(
        list(grads), grad_scale, inv_scale, lambda_gp, center, one_sided, pac
    )


def _penalty_backward_triton(
    grad_penalty, grads, norms, grad_scale, inv_scale, lambda_gp, center, one_sided, pac
):
    validation.check_penalty_backward(grad_penalty, grads, norms, grad_scale, pac)
    return _triton().penalty_backward(
        grad_penalty, list(grads), norms, grad_scale, inv_scale, lambda_gp, center, one_sided, pac
    )


_TRITON_KERNELS = {
    "interpolate": _interpolate_triton,
    "interpolate_backward": _interpolate_backward_triton,
    "penalty_forward": _penalty_forward_triton,
    "penalty_backward": _penalty_backward_triton,
}


# ----------------------------------------------------------------------- definitions

_libraries: dict[str, torch.library.Library] = {}


def _define(namespace: str, triton_keys: tuple[str, ...]) -> torch.library.Library:
    """The four ops under ``namespace``, with fake kernels and the Triton launchers
    registered for ``triton_keys``."""
    lib = torch.library.Library(namespace, "DEF")  # noqa: TOR901 - schemas shared with csrc/
    for name, schema in SCHEMAS.items():
        lib.define(schema)
        torch.library.register_fake(f"{namespace}::{name}", _FAKE_KERNELS[name], lib=lib)
        for key in triton_keys:
            lib.impl(name, _TRITON_KERNELS[name], key)
    _libraries[namespace] = lib
    return lib


def _define_cpu_fast_path(lib: torch.library.Library) -> None:
    for schema in CPU_FAST_PATH_SCHEMAS.values():
        lib.define(schema)
    torch.library.register_fake(f"{NAMESPACE}::penalty", _penalty_forward_fake, lib=lib)
    torch.library.register_fake(f"{NAMESPACE}::interpolate_autograd", _interpolate_fake, lib=lib)
    # Composites: autograd records the reference ops they run, so the C++ nodes'
    # create_graph backwards are differentiated exactly, with each formula written once.
    lib.impl("penalty_grads", reference.penalty_grads, "CompositeImplicitAutograd")
    lib.impl("interpolate_grads", reference.interpolate_backward, "CompositeImplicitAutograd")


def define_interpreter_namespace() -> None:
    """Define ``torch.ops.fastgp_interpret`` (Triton's CPU interpreter); idempotent."""
    if INTERPRETER_NAMESPACE not in _libraries:
        _define(INTERPRETER_NAMESPACE, ("CPU",))


_define_cpu_fast_path(_define(NAMESPACE, ("CUDA",)))
