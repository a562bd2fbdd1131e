"""The run's optimisers, and Adam's update as a function a compiled step can take whole.

``build_optimizer`` makes the optimiser of a network: PyTorch's Adam (fused), or RMSprop
for ``wgan-clip``. ``Optimizer.step`` applies it after the gradients
(``steps.apply_gradients``), outside any compiled graph: it breaks a ``torch.compile``
graph on purpose (``torch.optim.optimizer._use_grad``). For CUDA graphs, which replay
only what is inside the graph (``IN_GRAPH_MODES``), ``adam_update_`` applies the same
update inside it instead: PyTorch's own Adam formula (the functional
``torch.optim.adam.adam`` that ``Adam.step`` calls, in its ``capturable`` form: tensor
arithmetic throughout, nothing read back to the host, so a CUDA graph can hold it too) on
the optimiser's own state tensors, in place. The optimiser stays the one object of record:
its ``state_dict`` is what checkpoints save, whichever way it was stepped.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import torch
from torch import Tensor
from torch.optim.adam import adam as adam_formula

# The compile modes whose update graphs step Adam inside (``adam_update_``): with CUDA
# graphs ("reduce-overhead") a replay covers the whole update only when the optimiser's
# step is in the graph, and the capturable form reads nothing back to the host. Other modes
# step the optimiser eagerly after the graph. On the CPU (where "reduce-overhead" is an
# ordinary compile with the update inside) it made the default toy run's generator step
# 4.7% faster (12.46 against 13.07 ms, `python -m benchmarks.step_profile --compile
# default,reduce-overhead`) and its first compile 7 s longer (39.8 against 32.3 s, empty
# Inductor cache); the default keeps the eagerly stepped Adam its quality tables were
# measured with (the traced update rounds differently, so a run's trajectory changes).
IN_GRAPH_MODES = frozenset({"reduce-overhead"})


def build_optimizer(
    kind: str, params: Iterable[Tensor], lr: float, betas: tuple[float, float]
) -> torch.optim.Optimizer:
    """The optimiser of a network: ``kind`` "adam" (PyTorch's Adam with ``betas``, fused:
    one kernel for all of a module's parameters; a toy MLP's step is about a dozen small
    tensors, where the per-tensor loop cost 2.0 ms against 0.7 ms fused for the 512-wide
    generator here, 1 thread) or "rmsprop" (``wgan-clip``'s; ``betas`` unused)."""
    if kind == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr)
    if kind != "adam":
        raise ValueError(f"`kind` must be 'adam' or 'rmsprop', got {kind!r}")
    return torch.optim.Adam(params, lr=lr, betas=betas, fused=True)


class AdamTensors(NamedTuple):
    """What ``adam_update_`` reads and writes, one entry per parameter of the optimiser
    (in ``param_groups`` order): the state tensors ``exp_avgs``, ``exp_avg_sqs`` and
    ``steps`` (0-dim float32 on the parameter's device, as fused Adam keeps them), the
    learning rate ``lr`` (0-dim float64 on the parameters' device, so that a new rate
    every step is a new value, not a recompile) and the constants ``beta1``, ``beta2``, ``eps``."""

    exp_avgs: list[Tensor]
    exp_avg_sqs: list[Tensor]
    steps: list[Tensor]
    lr: Tensor
    beta1: float
    beta2: float
    eps: float


def in_graph_unsupported(optimizer: torch.optim.Optimizer) -> str | None:
    """None if ``adam_update_`` reproduces ``optimizer.step()``, else why not."""
    if type(optimizer) is not torch.optim.Adam:
        return f"{type(optimizer).__name__} is stepped eagerly (only Adam's update is traced)"
    if len(optimizer.param_groups) != 1:
        return "an Adam with several parameter groups is stepped eagerly"
    group = optimizer.param_groups[0]
    for key, plain in (("amsgrad", False), ("maximize", False), ("weight_decay", 0.0)):
        if group[key] != plain:
            return f"Adam with {key}={group[key]!r} is stepped eagerly"
    if any(isinstance(group[k], Tensor) for k in ("lr", "betas", "eps")):
        return "Adam with tensor hyperparameters is stepped eagerly"
    return None


class InGraphAdam:
    """The tensors of ``optimizer`` (a ``torch.optim.Adam`` that ``in_graph_unsupported``
    accepts) for ``adam_update_``.

    ``tensors()`` creates any missing state exactly as the optimiser's first ``step()``
    would (fused layout: ``step`` a 0-dim float32 zero on the parameter's device, zero
    moments like the parameter), copies the group's current ``lr`` into the 0-dim tensor
    it passes, and returns the lists, read anew on every call so a ``load_state_dict`` in
    between is seen.

    Raises:
        ValueError: ``optimizer`` is not one ``adam_update_`` can step (the reason).
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        reason = in_graph_unsupported(optimizer)
        if reason is not None:
            raise ValueError(reason)
        self.optimizer = optimizer
        self.group = optimizer.param_groups[0]
        # On the parameters' device: a CUDA graph cannot take a CPU tensor.
        device = self.group["params"][0].device
        self._lr = torch.zeros((), dtype=torch.float64, device=device)

    def tensors(self) -> AdamTensors:
        group, state = self.group, self.optimizer.state
        exp_avgs, exp_avg_sqs, steps = [], [], []
        for p in group["params"]:
            s = state[p]
            if not s:
                s["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                s["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                s["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            exp_avgs.append(s["exp_avg"])
            exp_avg_sqs.append(s["exp_avg_sq"])
            steps.append(s["step"])
        if self._lr.is_cuda:
            # A CUDA graph may update only inputs at fixed addresses (parameters are);
            # torch's own compiled optimiser marks its state the same way. Guarded: a
            # loaded state (new tensors) recompiles instead of writing to the old ones.
            for t in (*exp_avgs, *exp_avg_sqs, *steps, self._lr):
                torch._dynamo.mark_static_address(t, guard=True)
        self._lr.fill_(group["lr"])
        beta1, beta2 = group["betas"]
        return AdamTensors(exp_avgs, exp_avg_sqs, steps, self._lr, beta1, beta2, group["eps"])


def adam_update_(params: list[Tensor], grads: list[Tensor | None], adam: AdamTensors) -> None:
    """Adam's update of ``params`` with ``grads`` (None: the parameter got no gradient and,
    as in ``Adam.step``, neither it nor its state moves), in place on the parameters and
    ``adam``'s state: PyTorch's formula, traceable by ``torch.compile`` (where
    ``Optimizer.step`` is not). Results equal ``Adam.step()``'s to float32 rounding (the
    fused kernel orders its arithmetic differently)."""
    kept = [i for i, g in enumerate(grads) if g is not None]
    # Traced: the capturable form, tensor arithmetic throughout. Run eagerly (a step that
    # is not compiled after all), where that form refuses CPU tensors: the plain one, which
    # reads the step count and the rate on the host.
    traced = torch.compiler.is_compiling()
    with torch.no_grad():
        adam_formula(
            [params[i] for i in kept],
            [grads[i] for i in kept],
            [adam.exp_avgs[i] for i in kept],
            [adam.exp_avg_sqs[i] for i in kept],
            [],
            [adam.steps[i] for i in kept],
            foreach=False,
            capturable=traced,
            differentiable=False,
            fused=None,
            grad_scale=None,
            found_inf=None,
            has_complex=False,
            decoupled_weight_decay=False,
            amsgrad=False,
            beta1=adam.beta1,
            beta2=adam.beta2,
            lr=adam.lr if traced else adam.lr.item(),
            weight_decay=0.0,
            eps=adam.eps,
            maximize=False,
        )
