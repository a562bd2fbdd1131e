"""fastgp inside whole compiled training steps (``fastgp.compile_step``) and ``torch.func``.

A compiled step holds the critic's forward, the input gradient with ``create_graph=True``,
the penalty, and the backward of the loss through all of it in one graph. Each test
compares the parameter gradients with the same step run eagerly (equal within fp32
rounding). Compiling is slow (seconds per graph), so the default run compiles a few steps
that cover every backend and every penalty once; the full matrix is behind ``slow``.
"""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import TOLERANCES, assert_close_report
from torch import Tensor, nn

import fastgp
from fastgp import compile as fastgp_compile

pytestmark = [
    pytest.mark.usefixtures("cpp_built"),
    pytest.mark.filterwarnings("ignore:.*torch.jit.script_method.*:DeprecationWarning"),
    pytest.mark.skipif(
        fastgp_compile.supports_compiled_steps() is not None,
        reason=str(fastgp_compile.supports_compiled_steps()),
    ),
]

B, D = 8, 3
F32 = TOLERANCES[torch.float32]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """A fresh compile per test, no on-disk caches, and random numbers drawn as eager
    draws them (so steps that draw inside can be compared with eager)."""
    torch._dynamo.reset()
    with (
        torch._inductor.config.patch(fx_graph_cache=False, fallback_random=True),
        torch._functorch.config.patch(enable_autograd_cache=False),
    ):
        yield
    torch._dynamo.reset()


def _critic() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(D, 16), nn.Tanh(), nn.Linear(16, 1))


def _inputs(seed: int = 1) -> tuple[Tensor, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randn(B, D, generator=gen),
        torch.randn(B, D, generator=gen),
        torch.rand(B, generator=gen),
    )


def _penalty(kind: str, critic: nn.Module, real: Tensor, fake: Tensor, alpha: Tensor, backend):
    if kind == "gradient_penalty":
        return fastgp.gradient_penalty(critic, real, fake, alpha=alpha, backend=backend)
    if kind == "one_sided_pac":
        return fastgp.gradient_penalty(
            critic, real, fake, alpha=alpha, one_sided=True, pac=2, backend=backend
        )
    if kind == "r1":
        return fastgp.r1_penalty(critic, real, gamma=5.0, backend=backend)
    if kind == "r2":
        return fastgp.r2_penalty(critic, fake, gamma=5.0, backend=backend)
    if kind == "dragan":  # draws its perturbation inside: _compare seeds torch before each step
        return fastgp.dragan_penalty(critic, real, alpha=alpha, backend=backend)
    if kind == "penalty_from_grads":
        x_hat = fastgp.interpolate(real, fake, alpha, backend=backend)
        total, vjp = torch.func.vjp(lambda x: critic(x).sum(), x_hat)
        (grads,) = vjp(torch.ones_like(total))
        return fastgp.penalty_from_grads(grads, backend=backend)
    raise ValueError(kind)


def _step(kind: str, backend: str):
    """A critic step on its own copy of the critic: W loss + penalty, backward; returns the
    critic (whose .grad fields the step fills) and the step."""
    critic = copy.deepcopy(_critic())

    def step(real: Tensor, fake: Tensor, alpha: Tensor) -> Tensor:
        loss = critic(fake).mean() - critic(real).mean()
        loss = loss + _penalty(kind, critic, real, fake, alpha, backend)
        loss.backward()
        return loss.detach()

    return critic, step


def _compare(kind: str, backend: str) -> None:
    eager_critic, eager_step = _step(kind, backend)
    compiled_critic, step = _step(kind, backend)
    compiled = fastgp.compile_step(step)
    for seed in (1, 2):  # the second call runs the cached graph
        inputs = _inputs(seed)
        for net in (eager_critic, compiled_critic):
            net.zero_grad(set_to_none=True)
        torch.manual_seed(seed)
        want = eager_step(*inputs)
        torch.manual_seed(seed)
        got = compiled(*inputs)
        assert_close_report(got, want, *F32, what=f"{kind} loss (seed {seed})")
        for (name, p), q in zip(
            compiled_critic.named_parameters(), eager_critic.parameters(), strict=True
        ):
            assert p.grad is not None, f"{kind}: no gradient for {name} in the compiled step"
            assert_close_report(p.grad, q.grad, *F32, what=f"{kind}: grad of {name}")


# Every backend and every way of reaching the kernels once (r2 is r1 on the fakes; the
# rest of the matrix is slow).
FAST_CASES = [
    ("gradient_penalty", "torch"),
    ("gradient_penalty", "cpp"),
    ("one_sided_pac", "triton"),
    ("r1", "cpp"),
    ("dragan", "torch"),
    ("penalty_from_grads", "triton"),
]
KINDS = ("gradient_penalty", "one_sided_pac", "r1", "r2", "dragan", "penalty_from_grads")
SLOW_CASES = [
    (kind, backend)
    for kind in KINDS
    for backend in ("torch", "cpp", "triton")
    if (kind, backend) not in FAST_CASES
]


@pytest.mark.parametrize(("kind", "backend"), FAST_CASES)
def test_compiled_step_matches_eager(kind: str, backend: str) -> None:
    _compare(kind, backend)


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "backend"), SLOW_CASES)
def test_compiled_step_matches_eager_full_matrix(kind: str, backend: str) -> None:
    _compare(kind, backend)


def test_loss_scale_inside_a_compiled_step() -> None:
    """A GradScaler's scale, taken outside as a tensor (fastgp.loss_scale), scales a compiled
    step exactly as the GradScaler does an eager one; the scaler itself cannot be traced and
    is refused with a message that says what to do."""
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    eager_critic, _ = _step("gradient_penalty", "cpp")
    compiled_critic, _ = _step("gradient_penalty", "cpp")
    real, fake, alpha = _inputs()

    gp = fastgp.gradient_penalty(eager_critic, real, fake, alpha=alpha, grad_scale=scaler)
    scaler.scale(eager_critic(fake).mean() - eager_critic(real).mean() + gp).backward()

    def step(real, fake, alpha, scale):
        gp = fastgp.gradient_penalty(compiled_critic, real, fake, alpha=alpha, grad_scale=scale)
        loss = compiled_critic(fake).mean() - compiled_critic(real).mean() + gp
        (loss * scale).backward()
        return gp.detach()

    got = fastgp.compile_step(step)(real, fake, alpha, fastgp.loss_scale(scaler, "cpu"))
    assert_close_report(got, gp.detach(), *F32, what="penalty")
    for p, q in zip(compiled_critic.parameters(), eager_critic.parameters(), strict=True):
        assert_close_report(p.grad, q.grad, 1e-3, F32[1], what="scaled gradient")

    def with_scaler(real, fake, alpha):
        return fastgp.gradient_penalty(compiled_critic, real, fake, alpha=alpha, grad_scale=scaler)

    with pytest.raises(Exception, match=r"fastgp.loss_scale\(scaler, device\)"):
        fastgp.compile_step(with_scaler)(real, fake, alpha)


def test_compile_step_leaves_the_dynamo_flag_alone() -> None:
    before = torch._dynamo.config.trace_autograd_ops
    critic, step = _step("gradient_penalty", "torch")
    fastgp.compile_step(step)(*_inputs())
    assert torch._dynamo.config.trace_autograd_ops == before


def test_compile_step_rejects_an_unknown_mode() -> None:
    with pytest.raises(ValueError, match=r"`mode` must be one of"):
        fastgp.compile_step(lambda: None, mode="fastest")


def test_compile_step_names_the_torch_it_needs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(torch._dynamo.config, "trace_autograd_ops", raising=False)
    with pytest.raises(RuntimeError, match=r"needs torch >= 2\.11"):
        fastgp.compile_step(lambda: None)


def test_argument_errors_name_the_argument_when_compiled() -> None:
    """Checks run at trace time, in the public layer and in the fake kernels."""
    compiled = torch.compile(fastgp.penalty_from_grads, fullgraph=True)
    with pytest.raises(Exception, match=r"`pac`=3 must divide the batch size B=8"):
        compiled(torch.randn(B, D), pac=3, backend="cpp")
    interpolate = torch.compile(fastgp.interpolate, fullgraph=True)
    with pytest.raises(Exception, match=r"`fake` must have the shape of `real` \[8, 3\]"):
        interpolate(torch.randn(B, D), torch.randn(B, 2), 0.5, backend="cpp")
    ops = fastgp.ops.op_namespace("cpp", torch.device("cpu"))
    raw = torch.compile(
        lambda g, n: ops.penalty_backward.default(
            torch.tensor(1.0), [g], n, None, 1.0, 1.0, 1.0, False, 1
        ),
        fullgraph=True,
    )
    with pytest.raises(Exception, match=r"`norms` must have shape \(8,\), got \[3\]"):
        raw(torch.randn(B, D), torch.ones(3))


# ------------------------------------------------------------------------- torch.func


@pytest.mark.parametrize("backend", ["torch", "cpp", "triton"])
def test_building_blocks_under_torch_func_grad(backend: str) -> None:
    """``torch.func.grad`` of a loss built from interpolate and penalty_from_grads, first
    and second order, equals autograd's."""
    real, fake, alpha = (t.double() for t in _inputs())
    weight = torch.randn(D, dtype=torch.float64, generator=torch.Generator().manual_seed(3))

    def loss(real, fake):
        x_hat = fastgp.interpolate(real, fake, alpha, backend=backend)
        return fastgp.penalty_from_grads(x_hat * weight, lambda_gp=2.0, backend=backend)

    got_real, got_fake = torch.func.grad(loss, argnums=(0, 1))(real, fake)
    leaves = (real.clone().requires_grad_(), fake.clone().requires_grad_())
    want_real, want_fake = torch.autograd.grad(loss(*leaves), leaves, create_graph=True)
    tol = TOLERANCES[torch.float64]
    assert_close_report(got_real, want_real, *tol, what="d/d real")
    assert_close_report(got_fake, want_fake, *tol, what="d/d fake")
    # Second order: the Functions' backward uses the differentiable formula under grad.
    hess = torch.func.grad(lambda r: torch.func.grad(loss)(r, fake).sum())(real)
    (want_hess,) = torch.autograd.grad(want_real.sum(), leaves[0])
    assert_close_report(hess, want_hess, *tol, what="second derivative")


@pytest.mark.parametrize("backend", ["torch", "cpp", "triton"])
def test_gradient_penalty_under_torch_func_grad(backend: str) -> None:
    """The whole penalty as a function of the critic's parameters (torch.func.functional_call
    inside torch.func.grad) equals autograd's parameter gradient."""
    critic = _critic().double()
    real, fake, alpha = (t.double() for t in _inputs())
    params = dict(critic.named_parameters())

    def penalty_of(p):
        net = lambda x: torch.func.functional_call(critic, p, (x,))
        return fastgp.gradient_penalty(net, real, fake, alpha=alpha, backend=backend)

    got = torch.func.grad(penalty_of)(params)
    want = torch.autograd.grad(
        fastgp.gradient_penalty(critic, real, fake, alpha=alpha, backend=backend),
        list(params.values()),
        allow_unused=True,
    )
    for (name, g), w in zip(got.items(), want, strict=True):
        expected = torch.zeros_like(g) if w is None else w
        assert_close_report(g, expected, *TOLERANCES[torch.float64], what=f"grad of {name}")
