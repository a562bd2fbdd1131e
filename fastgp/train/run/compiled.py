"""``fastgp train --compile``: which mode a run compiles with, and the compiled gradients.

What is compiled is the part of each update that changes no weight (``gan.steps``:
``critic_gradients`` and ``generator_gradients``): the generator's forward for the fakes,
the critic on real and fake, the penalty with its double backward, and the gradients of
the loss. The optimiser step, the GradScaler's bookkeeping, the distributed all-reduce,
weight clipping, EMA and replay stay eager: PyTorch's optimisers break the graph at
``step()`` on purpose, and none of those is where a step's time goes. Each is compiled with
``fastgp.compile_step`` (``fullgraph=True``, autograd traced into the graph). A run with
lazy regularisation compiles the critic twice (with and without the penalty).

``--compile auto`` compiles only where it was measured faster (``AUTO_COMPILE``; numbers in
README "Benchmarks": the end-to-end row of ``python -m benchmarks.run``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

import fastgp
from fastgp.compile import supports_compiled_steps
from fastgp.train.gan.steps import GradientFunctions, critic_gradients, generator_gradients

# (device type, arch) -> the mode "auto" compiles with. Measured with the default run of
# each (`python -m benchmarks.run`'s end-to-end and critic-step rows): on CPU the toy MLP
# gains from compiling (its steps are many small kernels that Inductor fuses); the conv
# critics do not (their convolutions are the whole cost and compile to the same calls).
# CUDA is unmeasured here (no GPU was available): auto leaves it eager.
AUTO_COMPILE: dict[tuple[str, str], str] = {("cpu", "mlp"): "default"}


def resolve_compile(cfg: Any, device: torch.device) -> tuple[str, str]:
    """``(mode, why)``: the compile mode of this run ("off" for eager) and the reason.

    Every option of ``fastgp train`` runs compiled (tests/test_train_compile.py trains each
    with ``--compile default``). Raises ValueError when ``--compile`` asks for a mode on a
    torch that cannot trace a double backward.
    """
    requested = cfg.compile
    if requested == "off":
        return "off", "--compile off"
    unsupported = supports_compiled_steps()
    if requested != "auto":
        if unsupported is not None:
            raise ValueError(f"--compile {requested}: {unsupported}")
        return requested, f"--compile {requested}"
    if unsupported is not None:
        return "off", f"auto: not compiled, {unsupported}"
    mode = AUTO_COMPILE.get((device.type, cfg.arch))
    if mode is None:
        return "off", (
            f"auto: not compiled ({cfg.arch} on {device.type} was not measured faster "
            "compiled; --compile default forces it)"
        )
    return mode, f"auto: compiled ({cfg.arch} on {device.type} was measured faster compiled)"


class CompiledGradients:
    """``GradientFunctions`` compiled with ``mode``, timing the calls that compile.

    ``compile_seconds`` accumulates the wall time of every call during which dynamo
    compiled a new graph (its first call, a second graph for lazy regularisation, a
    recompile); ``take_compile_seconds()`` returns and clears it, for the run log.
    """

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.compile_seconds = 0.0
        self.graphs = 0
        self.functions = GradientFunctions(
            critic=self._timed(fastgp.compile_step(critic_gradients, mode=mode)),
            generator=self._timed(fastgp.compile_step(generator_gradients, mode=mode)),
        )

    def _timed(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        from torch._dynamo.utils import counters

        def call(*args: Any, **kwargs: Any) -> Any:
            before = counters["stats"]["unique_graphs"]
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            new = counters["stats"]["unique_graphs"] - before
            if new:
                self.graphs += new
                self.compile_seconds += time.perf_counter() - start
            return out

        return call

    def take_compile_seconds(self) -> tuple[float, int]:
        """(seconds spent compiling, graphs compiled) since the last call."""
        seconds, graphs = self.compile_seconds, self.graphs
        self.compile_seconds, self.graphs = 0.0, 0
        return seconds, graphs


def gradient_functions(mode: str) -> tuple[GradientFunctions, CompiledGradients | None]:
    """The run's gradient functions: eager for "off", else compiled (with their timer)."""
    if mode == "off":
        return GradientFunctions(critic_gradients, generator_gradients), None
    compiled = CompiledGradients(mode)
    return compiled.functions, compiled
