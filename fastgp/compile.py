"""``compile_step``: ``torch.compile`` for a whole GAN training step with a gradient penalty.

A WGAN-GP critic step differentiates twice: the input gradient with ``create_graph=True``,
then the loss (which contains the penalty of that gradient) with respect to the critic's
parameters. ``torch.compile`` of the critic alone refuses that double backward; compiling
the *whole step* works when dynamo traces the ``autograd.grad`` calls themselves into the
graph (``torch._dynamo.config.trace_autograd_ops``, torch >= 2.11). ``compile_step`` turns
that on for the one function it compiles (never globally) and compiles with
``fullgraph=True``, so a graph break is an error rather than a silent eager fallback around
the double backward.

Inside a compiled step the penalties take the input gradient with ``torch.func.vjp``
(``fastgp.penalties``): torch 2.11 cannot trace ``requires_grad_()`` on the interpolates.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch

__all__ = ["MODES", "compile_step", "supports_compiled_steps"]

F = TypeVar("F", bound=Callable[..., Any])

# torch.compile's modes, plus None for its default.
MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
_MINIMUM_TORCH = "2.11"


def supports_compiled_steps() -> str | None:
    """None if this torch can compile a step with a double backward, else why not."""
    if not hasattr(torch._dynamo.config, "trace_autograd_ops"):
        return (
            f"compiling a step with a double backward needs torch >= {_MINIMUM_TORCH} "
            f"(torch._dynamo.config.trace_autograd_ops); this is torch {torch.__version__}. "
            "Run the step eagerly (fastgp's kernels are fused either way), or compile only "
            "the part after autograd.grad, e.g. torch.compile(fastgp.penalty_from_grads)"
        )
    return None


def compile_step(
    fn: F,
    *,
    mode: str | None = None,
    dynamic: bool | None = None,
    backend: str = "inductor",
    options: dict[str, Any] | None = None,
) -> F:
    """Compile ``fn``, a whole training step, with autograd traced into one graph.

    ``fn`` may interpolate, call the critic, take ``torch.autograd.grad(...,
    create_graph=True)`` (or call ``fastgp.gradient_penalty`` and friends), form the loss,
    differentiate it (``loss.backward()`` or ``torch.autograd.grad``) and step an optimiser.
    Random numbers drawn inside ``fn`` come from the compiled graph's generator (not equal
    to eager's, and no ``torch.Generator`` argument can be traced): draw them outside and
    pass them in (``gradient_penalty(..., alpha=alpha)``) when a run must be reproducible.

    Args:
        fn: the step.
        mode: ``torch.compile``'s mode: None/"default", "reduce-overhead" (CUDA graphs on
            CUDA), "max-autotune", "max-autotune-no-cudagraphs".
        dynamic, backend, options: passed to ``torch.compile``.

    Returns:
        A function with ``fn``'s signature. It compiles on its first call (seconds to a
        minute) and whenever dynamo's guards fail (a new shape, say).

    Raises:
        RuntimeError: this torch cannot trace autograd into a graph (it names the version).
        ValueError: an unknown ``mode``.
    """
    reason = supports_compiled_steps()
    if reason is not None:
        raise RuntimeError(f"fastgp.compile_step: {reason}")
    if mode not in MODES:
        raise ValueError(f"`mode` must be one of {MODES}, got {mode!r}")
    compiled = torch.compile(
        fn,
        fullgraph=True,
        dynamic=dynamic,
        backend=backend,
        mode=None if mode == "default" else mode,
        options=options,
    )

    @functools.wraps(fn)
    def step(*args: Any, **kwargs: Any) -> Any:
        # Dynamo reads its config while tracing, so the flag is on for this function's
        # (re)compiles only; patching costs a few microseconds per call.
        with torch._dynamo.config.patch(trace_autograd_ops=True):
            return compiled(*args, **kwargs)

    return step  # type: ignore[return-value]
