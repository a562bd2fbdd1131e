"""fastgp.train.gan.optimizers: Adam's update traced inside a compiled step.

``adam_update_`` compiled by ``fastgp.compile_step`` must move the parameters and the
optimiser's state as ``torch.optim.Adam(fused=True).step()`` does (to float32 rounding:
the fused kernel orders its arithmetic differently), create the state the optimiser's own
first step would, see a ``load_state_dict`` in between, leave a parameter without a
gradient alone, and follow a learning rate that changes every step without recompiling.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import fastgp
from fastgp.train.gan.optimizers import (
    InGraphAdam,
    adam_update_,
    build_optimizer,
    in_graph_unsupported,
)

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),  # torch.jit in dynamo
    pytest.mark.usefixtures("fresh_dynamo"),
]


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 7), nn.ReLU(), nn.Linear(7, 2))


def _grads(net: nn.Module, step: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(p.shape, generator=g) for p in net.parameters()]


def _compiled_update():
    def update(params, grads, adam):
        adam_update_(params, grads, adam)

    return fastgp.compile_step(update)


def _assert_close_state(a: torch.optim.Optimizer, b: torch.optim.Optimizer) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    assert sa["state"].keys() == sb["state"].keys()
    for key, state in sa["state"].items():
        assert state.keys() == sb["state"][key].keys()
        for name, value in state.items():
            other = sb["state"][key][name]
            assert (value.dtype, value.device, value.shape) == (
                other.dtype,
                other.device,
                other.shape,
            ), (key, name)
            torch.testing.assert_close(value, other, rtol=2e-6, atol=1e-9)


def test_compiled_update_equals_fused_adam_step() -> None:
    """Three steps with a new learning rate each: parameters and state as Adam.step's, and
    one graph for all of them (the rate is a tensor input, not a constant)."""
    eager_net, traced_net = _net(), _net()
    eager = build_optimizer("adam", eager_net.parameters(), 1e-2, (0.5, 0.9))
    traced = build_optimizer("adam", traced_net.parameters(), 1e-2, (0.5, 0.9))
    adam, update = InGraphAdam(traced), _compiled_update()
    from torch._dynamo.utils import counters

    before = counters["stats"]["unique_graphs"]
    for step, lr in enumerate((1e-2, 5e-3, 2.5e-3)):
        grads = _grads(eager_net, step)
        for group in (eager.param_groups[0], traced.param_groups[0]):
            group["lr"] = lr
        for p, g in zip(eager_net.parameters(), grads, strict=True):
            p.grad = g.clone()
        eager.step()
        update(list(traced_net.parameters()), grads, adam.tensors())
    assert counters["stats"]["unique_graphs"] - before == 1
    start = list(_net().parameters())
    for a, b, before in zip(eager_net.parameters(), traced_net.parameters(), start, strict=True):
        assert (b - before).abs().min() > 1e-4  # every weight moved
        torch.testing.assert_close(b, a, rtol=2e-6, atol=1e-8)
    _assert_close_state(eager, traced)


def test_state_is_created_as_the_optimizers_first_step_would() -> None:
    net = _net()
    stepped = build_optimizer("adam", copy.deepcopy(net).parameters(), 1e-3, (0.0, 0.9))
    for p in stepped.param_groups[0]["params"]:
        p.grad = torch.zeros_like(p)
    stepped.step()
    fresh = build_optimizer("adam", net.parameters(), 1e-3, (0.0, 0.9))
    tensors = InGraphAdam(fresh).tensors()
    assert len(tensors.steps) == len(list(net.parameters()))
    for theirs, ours in zip(stepped.state.values(), fresh.state.values(), strict=True):
        assert theirs.keys() == ours.keys()
        for name in theirs:
            assert ours[name].dtype == theirs[name].dtype, name
            assert ours[name].device == theirs[name].device, name
            assert ours[name].shape == theirs[name].shape, name
            assert not ours[name].any(), name  # zeros: no step taken yet
    assert tensors.lr.item() == 1e-3 and (tensors.beta1, tensors.beta2) == (0.0, 0.9)


def test_a_loaded_state_is_seen_and_a_missing_gradient_moves_nothing() -> None:
    net = _net()
    opt = build_optimizer("adam", net.parameters(), 1e-2, (0.0, 0.9))
    adam, update = InGraphAdam(opt), _compiled_update()
    params = list(net.parameters())
    update(params, _grads(net, 0), adam.tensors())
    saved, weights = copy.deepcopy(opt.state_dict()), copy.deepcopy(net.state_dict())
    update(params, _grads(net, 1), adam.tensors())
    opt.load_state_dict(saved)  # new state tensors: read again by tensors()
    net.load_state_dict(weights)
    grads = _grads(net, 1)
    grads[0] = None
    first = params[0].detach().clone()
    state0 = {k: v.clone() for k, v in opt.state[params[0]].items()}
    update(params, grads, adam.tensors())
    assert torch.equal(params[0], first)
    assert all(torch.equal(opt.state[params[0]][k], v) for k, v in state0.items())
    assert opt.state[params[1]]["step"].item() == 2.0  # one step from the loaded state


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: torch.optim.RMSprop(p, lr=1e-3), "RMSprop is stepped eagerly"),
        (lambda p: torch.optim.Adam(p, amsgrad=True), "amsgrad=True"),
        (lambda p: torch.optim.Adam(p, weight_decay=0.1), "weight_decay=0.1"),
        (lambda p: torch.optim.Adam(p, maximize=True), "maximize=True"),
        (lambda p: torch.optim.AdamW(p), "AdamW is stepped eagerly"),
        (
            lambda p: torch.optim.Adam([{"params": p[:1]}, {"params": p[1:]}]),
            "several parameter groups",
        ),
    ],
)
def test_optimizers_it_cannot_reproduce_are_refused(make, reason: str) -> None:
    opt = make(list(_net().parameters()))
    assert reason in in_graph_unsupported(opt)
    with pytest.raises(ValueError, match=reason):
        InGraphAdam(opt)


def test_build_optimizer() -> None:
    params = list(_net().parameters())
    adam = build_optimizer("adam", params, 1e-3, (0.0, 0.9))
    assert isinstance(adam, torch.optim.Adam) and adam.param_groups[0]["fused"]
    assert in_graph_unsupported(adam) is None
    assert isinstance(build_optimizer("rmsprop", params, 5e-5, (0.0, 0.9)), torch.optim.RMSprop)
    with pytest.raises(ValueError, match="`kind` must be 'adam' or 'rmsprop'"):
        build_optimizer("sgd", params, 1e-3, (0.0, 0.9))


def test_the_update_also_runs_eagerly() -> None:
    """Uncompiled (a step whose compile is stubbed out, or a user's eager call) it is the
    same update as Adam.step's."""
    eager_net, plain_net = _net(), _net()
    eager = build_optimizer("adam", eager_net.parameters(), 1e-2, (0.5, 0.9))
    plain = build_optimizer("adam", plain_net.parameters(), 1e-2, (0.5, 0.9))
    adam = InGraphAdam(plain)
    for step in range(2):
        grads = _grads(eager_net, step)
        for p, g in zip(eager_net.parameters(), grads, strict=True):
            p.grad = g.clone()
        eager.step()
        adam_update_(list(plain_net.parameters()), grads, adam.tensors())
    for a, b in zip(eager_net.parameters(), plain_net.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=2e-6, atol=1e-8)
    _assert_close_state(eager, plain)
