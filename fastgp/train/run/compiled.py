"""``fastgp train --compile``: which mode a run compiles with, and the compiled updates.

What is compiled is the part of each update that changes no weight (``gan.steps``:
``critic_gradients`` and ``generator_gradients``): the generator's forward for the fakes,
the critic on real and fake, the penalty with its double backward, and the gradients of
the loss. The optimiser steps eagerly after it (PyTorch's optimisers break the graph at
``step()`` on purpose), after the all-reduce and the GradScaler's check. With CUDA graphs
(``--compile reduce-overhead``, ``optimizers.IN_GRAPH_MODES``), where nothing has to happen
between the gradients and the step (one process, no fp16 ``GradScaler``, Adam), Adam's
update is traced into the graph too (``critic_update`` / ``generator_update``), so that a
replay covers the whole update. Weight clipping, EMA and replay stay eager. Each is compiled with
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
from fastgp.train.gan.optimizers import IN_GRAPH_MODES, InGraphAdam, in_graph_unsupported
from fastgp.train.gan.steps import (
    GradientFunctions,
    UpdateFunctions,
    critic_gradients,
    critic_update,
    generator_gradients,
    generator_update,
)

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


class CompiledSteps:
    """The gradient and the update functions compiled with ``mode``, timing the calls that
    compile (``fastgp.compile_step`` compiles on a function's first call, so only the ones
    a run uses are compiled).

    ``compile_seconds`` accumulates the wall time of every call during which dynamo
    compiled a new graph (its first call, a second graph for lazy regularisation, a
    recompile); ``take_compile_seconds()`` returns and clears it, for the run log.
    """

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.compile_seconds = 0.0
        self.graphs = 0
        self.gradients = GradientFunctions(
            critic=self._timed(fastgp.compile_step(critic_gradients, mode=mode)),
            generator=self._timed(fastgp.compile_step(generator_gradients, mode=mode)),
        )
        self.updates = UpdateFunctions(
            critic=self._timed(fastgp.compile_step(critic_update, mode=mode)),
            generator=self._timed(fastgp.compile_step(generator_update, mode=mode)),
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


def compiled_steps(mode: str) -> CompiledSteps | None:
    """The run's compiled functions, or None for "off" (eager)."""
    return None if mode == "off" else CompiledSteps(mode)


def in_graph_optimizers(
    mode: str,
    optimizers: tuple[torch.optim.Optimizer, ...],
    *,
    world_size: int,
    fp16: bool,
) -> tuple[tuple[InGraphAdam, ...] | None, str]:
    """``(adams, why)``: the optimisers' ``InGraphAdam`` when a compiled run steps them inside
    its update graphs (``IN_GRAPH_MODES``), else None, and a few words saying which (for
    the run's header; empty where the optimiser steps eagerly as usual)."""
    if mode not in IN_GRAPH_MODES:
        return None, ""
    if world_size > 1:
        return None, "optimiser steps eager: gradients are all-reduced first"
    if fp16:
        return None, "optimiser steps eager: the fp16 GradScaler checks the gradients first"
    for optimizer in optimizers:
        reason = in_graph_unsupported(optimizer)
        if reason is not None:
            return None, reason
    return tuple(InGraphAdam(o) for o in optimizers), "Adam's update inside the graphs"
