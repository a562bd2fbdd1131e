"""``torch.compile`` and ``torch.library`` checks of the ``torch.ops.fastgp`` operators.

Run on CPU, where the operators' kernels are the C++ ones (``fastgp.backends.cpp``); the
session fixture ``cpp_built`` (tests/conftest.py) builds them once and fails these tests if
the build fails. Compiling is slow, so there are only a few compiles, each checked
thoroughly: no graph break (``fullgraph=True`` raises on one), the fused operators present
in the compiled forward and backward graphs, and values and gradients equal to eager.
"""

from __future__ import annotations

import pytest
import torch
from helpers import TOLERANCES, assert_close_report
from torch import Tensor
from torch._dynamo.testing import AotEagerAndRecordGraphs, InductorAndRecordGraphs
from torch._subclasses.fake_tensor import FakeTensorMode

import fastgp
import fastgp.ops

pytestmark = [
    pytest.mark.usefixtures("cpp_built"),
    # Emitted inside torch (opcheck and dynamo), not by fastgp.
    pytest.mark.filterwarnings("ignore:.*torch.jit.script_method.*:DeprecationWarning"),
]

OPS = torch.ops.fastgp


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test compiles from scratch and leaves no compiled code behind.

    The on-disk FX-graph and AOT-autograd caches are off: a hit from an earlier run skips
    the compiler, and the graphs these tests inspect would never be recorded."""
    torch._dynamo.reset()
    with (
        torch._inductor.config.patch(fx_graph_cache=False),
        torch._functorch.config.patch(enable_autograd_cache=False),
    ):
        yield
    torch._dynamo.reset()


def _graph_code(graphs: list[torch.fx.GraphModule]) -> str:
    """The code of every graph and of every subgraph they call."""
    return "\n".join(
        m.code for g in graphs for m in g.modules() if isinstance(m, torch.fx.GraphModule)
    )


def _randn(*shape: int, seed: int, requires_grad: bool = False, **kwargs) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, **kwargs).requires_grad_(requires_grad)


def _assert_close(actual: Tensor, expected: Tensor, what: str) -> None:
    atol, rtol = TOLERANCES[expected.dtype]
    assert_close_report(actual, expected, atol=atol, rtol=rtol, what=what)


# ---------------------------------------------------------------------------- torch.compile


def test_compiled_penalty_from_grads_matches_eager() -> None:
    """The documented use, compiled by inductor: one graph holding the fused forward op;
    penalty, norms and gradients equal to eager."""
    recorder = InductorAndRecordGraphs()
    compiled = torch.compile(fastgp.penalty_from_grads, backend=recorder, fullgraph=True)
    grads = (
        _randn(6, 3, 8, 8, seed=1, requires_grad=True),
        _randn(6, 5, seed=2, requires_grad=True),
    )
    eager_grads = tuple(g.detach().clone().requires_grad_() for g in grads)

    penalty, norms = compiled(grads, pac=2, return_norms=True, backend="cpp")
    penalty.backward()
    eager_penalty, eager_norms = fastgp.penalty_from_grads(
        eager_grads, pac=2, return_norms=True, backend="cpp"
    )
    eager_penalty.backward()

    _assert_close(penalty, eager_penalty, "penalty")
    _assert_close(norms, eager_norms, "norms")
    for i, (g, e) in enumerate(zip(grads, eager_grads, strict=True)):
        _assert_close(g.grad, e.grad, f"grads[{i}].grad")
    # Inductor compiles the backward graph lazily, after the recorder stopped recording;
    # the backward operator is checked in the aot_eager test below.
    assert "fastgp.penalty_forward" in _graph_code(recorder.inductor_graphs)
    assert type(penalty.grad_fn).__name__ == "CompiledFunctionBackward"


@pytest.mark.filterwarnings("ignore:Your compiler for AOTAutograd:UserWarning")
def test_compiled_penalty_with_float_arguments() -> None:
    """Hyperparameters passed as Python floats to the compiled function (dynamo traces them
    as symbolic floats), with ``one_sided`` and a gradient scale."""
    compiled = torch.compile(fastgp.penalty_from_grads, backend="aot_eager", fullgraph=True)
    g = _randn(4, 2, 5, 5, seed=3, requires_grad=True)
    g_eager = g.detach().clone().requires_grad_()
    for lambda_gp, center in ((3.0, 0.5), (7.5, 2.0)):
        kwargs = dict(lambda_gp=lambda_gp, center=center, one_sided=True, grad_scale=4.0)
        penalty = compiled(g, backend="cpp", **kwargs)
        eager = fastgp.penalty_from_grads(g_eager, backend="cpp", **kwargs)
        _assert_close(penalty, eager, f"penalty (lambda_gp={lambda_gp}, center={center})")
        penalty.backward()
        eager.backward()
        _assert_close(g.grad, g_eager.grad, "grad")


def _interpolate_then_penalty(
    real: Tensor, fake: Tensor, alpha: Tensor, weight: Tensor
) -> tuple[Tensor, Tensor]:
    """All four operators in one function: x_hat, a stand-in for the critic's input
    gradient (that of the critic 0.5 * sum(weight * x**2)), and its penalty."""
    x_hat = fastgp.interpolate(real, fake, alpha, backend="cpp")
    critic_grads = x_hat * weight
    other_input_grads = weight[:1].expand(real.shape[0], *weight.shape[1:]).flatten(1)
    return fastgp.penalty_from_grads(
        (critic_grads, other_input_grads), pac=2, return_norms=True, backend="cpp"
    )


@pytest.mark.filterwarnings("ignore:Your compiler for AOTAutograd:UserWarning")
def test_compiled_interpolate_and_penalty_dynamic_shapes(
    fresh_selection: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Compiled once with dynamic shapes (the fake kernels see a symbolic batch size), then
    run at two batch sizes; channels_last inputs; values and all gradients equal eager."""
    # Cold caches, as in a fresh process whose first call is the compiled one.
    monkeypatch.setattr(fastgp.ops, "_namespaces", {})
    recorder = AotEagerAndRecordGraphs()
    compiled = torch.compile(
        _interpolate_then_penalty, backend=recorder, fullgraph=True, dynamic=True
    )
    graphs_after_first_call = None
    for batch in (4, 6):
        leaves = [
            _randn(batch, 3, 5, 7, seed=batch, requires_grad=True),
            _randn(batch, 3, 5, 7, seed=batch + 1, requires_grad=True),
        ]
        leaves = [t.detach().to(memory_format=torch.channels_last).requires_grad_() for t in leaves]
        alpha = torch.rand(batch, generator=torch.Generator().manual_seed(batch))
        weight = _randn(1, 3, 5, 7, seed=batch + 2, requires_grad=True)
        leaves.append(weight)
        eager_leaves = [t.detach().clone().requires_grad_() for t in leaves]

        penalty, norms = compiled(leaves[0], leaves[1], alpha, leaves[2])
        penalty.backward()
        eager_penalty, eager_norms = _interpolate_then_penalty(
            eager_leaves[0], eager_leaves[1], alpha, eager_leaves[2]
        )
        eager_penalty.backward()
        if graphs_after_first_call is None:
            graphs_after_first_call = len(recorder.graphs)

        _assert_close(penalty, eager_penalty, f"penalty (B={batch})")
        _assert_close(norms, eager_norms, f"norms (B={batch})")
        for name, t, e in zip(("real", "fake", "weight"), leaves, eager_leaves, strict=True):
            _assert_close(t.grad, e.grad, f"{name}.grad (B={batch})")
    # A recompile here would mean a guard on the batch size, or on a cache that the first
    # call filled (run with TORCH_LOGS=recompiles to see which).
    assert len(recorder.graphs) == graphs_after_first_call, "recompiled for another batch size"
    forward = _graph_code(recorder.fw_graphs)
    backward = _graph_code(recorder.bw_graphs)
    assert "fastgp.interpolate.default" in forward and "fastgp.penalty_forward" in forward
    assert "fastgp.penalty_backward" in backward and "fastgp.interpolate_backward" in backward


# ---------------------------------------------------------------------------- torch.library


def _op_samples(requires_grad: bool) -> list[tuple[object, tuple]]:
    """(operator, arguments) for each of the four operators, awkward but representative:
    channels_last, pac > 1, several gradient tensors of different sizes, one_sided."""
    real = _randn(4, 3, 5, 6, seed=10).to(memory_format=torch.channels_last)
    fake = _randn(4, 3, 5, 6, seed=11).to(memory_format=torch.channels_last)
    other = _randn(4, 7, seed=12)
    norms = torch.rand(2, generator=torch.Generator().manual_seed(13)) + 0.5
    alpha = torch.rand(4, generator=torch.Generator().manual_seed(14))
    if requires_grad:
        for t in (real, fake, other):
            t.requires_grad_()
    return [
        (OPS.interpolate.default, (real, fake, alpha)),
        (OPS.interpolate_backward.default, (real, alpha, True, True)),
        (OPS.interpolate_backward.default, (real, alpha, False, True)),
        (OPS.penalty_forward.default, ([real, other], None, 0.5, 10.0, 1.0, False, 2)),
        (
            OPS.penalty_forward.default,
            ([real, other], torch.tensor(4.0), 0.5, 10.0, 1.0, True, 2),
        ),
        (
            OPS.penalty_backward.default,
            (torch.tensor(1.5), [real, other], norms, None, 0.5, 10.0, 1.0, True, 2),
        ),
    ]


def _sample_id(sample: tuple[object, tuple]) -> str:
    op, args = sample
    return str(op).split(".")[1] + (
        "_" + str(args[2:4]) if "interpolate_backward" in str(op) else ""
    )


@pytest.mark.parametrize("sample", _op_samples(requires_grad=False), ids=_sample_id)
def test_opcheck(sample: tuple[object, tuple]) -> None:
    """Schema (no aliasing or mutation), fake kernel vs real kernel, and AOT dispatch with
    dynamic shapes.

    ``test_autograd_registration`` runs in ``test_opcheck_autograd_registration`` on inputs
    that require grad (it needs them). With such inputs ``test_aot_dispatch_dynamic`` would
    backpropagate through the raw operators, which have no derivative formula by design:
    differentiation belongs to ``fastgp.ops.autograd``'s Functions, whose backward calls the
    ``*_backward`` operators (covered by the compile tests above).
    """
    op, args = sample
    torch.library.opcheck(
        op, args, test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic")
    )


@pytest.mark.parametrize("sample", _op_samples(requires_grad=True), ids=_sample_id)
def test_opcheck_autograd_registration(sample: tuple[object, tuple]) -> None:
    """The kernels do not record autograd history (outputs of inputs requiring grad do not
    themselves require grad): the operators are the opaque primitives that
    ``fastgp.ops.autograd`` wraps."""
    op, args = sample
    torch.library.opcheck(op, args, test_utils=("test_autograd_registration",))


def test_opcheck_penalty_with_autograd() -> None:
    """``fastgp::penalty`` carries its own autograd (a C++ node), so every opcheck utility
    applies, including AOT dispatch through its backward."""
    real = _randn(4, 3, 5, 6, seed=15).to(memory_format=torch.channels_last).requires_grad_()
    other = _randn(4, 7, seed=16).requires_grad_()
    for one_sided in (False, True):
        torch.library.opcheck(
            OPS.penalty.default, ([real, other], None, 0.5, 10.0, 1.0, one_sided, 2)
        )
        torch.library.opcheck(
            OPS.penalty.default, ([real, other], torch.tensor(2.0), 1.0, 10.0, 1.0, one_sided, 2)
        )


def test_cpp_penalty_backward_is_a_cpp_node() -> None:
    """The CPU path records a C++ autograd node (no Python on the backward path) whose
    gradient equals the reference's, and whose norms output carries no gradient."""
    g = _randn(6, 5, seed=17, dtype=torch.float64).requires_grad_()
    penalty, norms = fastgp.penalty_from_grads(g, pac=2, return_norms=True, backend="cpp")
    assert "CppNode" in penalty.grad_fn.name() and "PenaltyFunction" in penalty.grad_fn.name()
    assert not norms.requires_grad
    (grad,) = torch.autograd.grad(penalty, g)
    expected = fastgp.penalty_from_grads(g, pac=2, backend="torch")
    (expected_grad,) = torch.autograd.grad(expected, g)
    torch.testing.assert_close(penalty, expected, rtol=0, atol=1e-14)
    torch.testing.assert_close(grad, expected_grad, rtol=0, atol=1e-14)


def test_cpp_penalty_in_inference_mode() -> None:
    """Below autograd (inference mode) the op runs its CPU kernel directly."""
    g = _randn(4, 9, seed=18)
    with torch.inference_mode():
        penalty = fastgp.penalty_from_grads(g, backend="cpp")
    torch.testing.assert_close(penalty, fastgp.penalty_from_grads(g, backend="torch"))


def test_opcheck_interpolate_with_autograd() -> None:
    """``fastgp::interpolate_autograd`` carries its own autograd (a C++ node), so every
    opcheck utility applies, including AOT dispatch through its backward, for each input
    that requires grad."""
    alpha = torch.rand(4, generator=torch.Generator().manual_seed(21))
    base = _randn(4, 3, 5, 6, seed=22).to(memory_format=torch.channels_last)
    for needs in ((True, True), (True, False), (False, True)):
        real = base.clone().requires_grad_(needs[0])
        fake = _randn(4, 3, 5, 6, seed=23).requires_grad_(needs[1])
        torch.library.opcheck(OPS.interpolate_autograd.default, (real, fake, alpha))


@pytest.mark.parametrize("which", ["both", "real", "fake"])
def test_cpp_interpolate_backward_is_a_cpp_node(which: str) -> None:
    """The CPU path records a C++ autograd node whose gradients are the closed form
    (alpha * w, (1 - alpha) * w) for exactly the inputs that require grad, and whose
    create_graph backward is differentiable (second derivative through the weights)."""
    alpha = torch.rand(5, generator=torch.Generator().manual_seed(24), dtype=torch.float64)
    real = _randn(5, 7, seed=25, dtype=torch.float64).requires_grad_(which != "fake")
    fake = _randn(5, 7, seed=26, dtype=torch.float64).requires_grad_(which != "real")
    x_hat = fastgp.interpolate(real, fake, alpha, backend="cpp")
    assert "CppNode" in x_hat.grad_fn.name() and "InterpolateFunction" in x_hat.grad_fn.name()
    weights = _randn(5, 7, seed=27, dtype=torch.float64).requires_grad_()
    inputs = [t for t in (real, fake) if t.requires_grad]
    grads = torch.autograd.grad((x_hat * weights).sum(), inputs, create_graph=True)
    a = alpha[:, None]
    expected = {"real": a * weights, "fake": (1 - a) * weights}
    names = [n for n, t in (("real", real), ("fake", fake)) if t.requires_grad]
    for name, grad in zip(names, grads, strict=True):
        torch.testing.assert_close(grad, expected[name], rtol=0, atol=1e-15)
    # d/dw of sum(grad_real) = alpha per sample (and 1 - alpha for fake): exact in fp64.
    (dw,) = torch.autograd.grad(sum(g.sum() for g in grads), weights)
    coeff = sum(a if n == "real" else 1 - a for n in names)
    torch.testing.assert_close(dw, coeff.expand(5, 7), rtol=0, atol=1e-15)


def test_cpp_interpolate_in_inference_mode() -> None:
    """Below autograd (inference mode) the op runs its CPU kernel directly."""
    real, fake = _randn(3, 8, seed=28), _randn(3, 8, seed=29)
    with torch.inference_mode():
        out = OPS.interpolate_autograd.default(real, fake, torch.full((3,), 0.25))
    torch.testing.assert_close(out, 0.25 * real + 0.75 * fake)


def _layouts(dtype: torch.dtype) -> dict[str, Tensor]:
    base = _randn(4, 3, 6, 5, seed=20, dtype=torch.float64).to(dtype)
    return {
        "contiguous": base,
        "channels_last": base.to(memory_format=torch.channels_last),
        "sliced": base[:, :, ::2],
        "batch_not_outermost": base.transpose(0, 1).contiguous().transpose(0, 1),
    }


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str
)
def test_fake_kernels_match_real_outputs(dtype: torch.dtype) -> None:
    """Shape, dtype, strides and device of every output: fake kernel == C++ kernel."""
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    alpha = torch.rand(4, dtype=acc)
    calls = []
    for layout, x in _layouts(dtype).items():
        norms = torch.rand(2, dtype=acc) + 0.5
        calls += [
            (layout, OPS.interpolate.default, (x, x.detach().clone(), alpha)),
            (layout, OPS.interpolate_backward.default, (x, alpha, True, True)),
            (layout, OPS.penalty_forward.default, ([x, x[:, 0]], None, 1.0, 10.0, 1.0, False, 2)),
            (
                layout,
                OPS.penalty_backward.default,
                (torch.tensor(1.0, dtype=acc), [x, x[:, 0]], norms, None, 1.0, 10.0, 1.0, False, 2),
            ),
        ]
    for layout, op, args in calls:
        real = op(*args)
        with FakeTensorMode(allow_non_fake_inputs=False) as mode:
            fake_args = torch.utils._pytree.tree_map_only(Tensor, mode.from_tensor, args)
            fake = op(*fake_args)
        real_flat = torch.utils._pytree.tree_leaves(real)
        fake_flat = torch.utils._pytree.tree_leaves(fake)
        assert len(real_flat) == len(fake_flat), f"{op} {layout}: output count"
        for i, (r, f) in enumerate(zip(real_flat, fake_flat, strict=True)):
            where = f"{op} ({layout}) output {i}"
            assert (f.shape, f.dtype, f.device) == (r.shape, r.dtype, r.device), where
            assert f.stride() == r.stride(), f"{where}: fake strides {f.stride()} != {r.stride()}"


@pytest.mark.filterwarnings("ignore:Your compiler for AOTAutograd:UserWarning")
def test_auto_under_compile_follows_the_measured_rule(fresh_selection: None) -> None:
    """Inside torch.compile, "auto" runs AUTO_WHEN_COMPILED's choice for the device (the
    reference formula on CPU, which Inductor can fuse), an explicit backend its kernels."""
    from fastgp.backends import AUTO_WHEN_COMPILED

    g = _randn(6, 5, seed=30, requires_grad=True)
    code = {}
    for backend in ("auto", "cpp"):
        torch._dynamo.reset()
        recorder = AotEagerAndRecordGraphs()
        compiled = torch.compile(fastgp.penalty_from_grads, backend=recorder, fullgraph=True)
        penalty = compiled(g, backend=backend)
        _assert_close(penalty, fastgp.penalty_from_grads(g, backend="torch"), backend)
        code[backend] = _graph_code(recorder.fw_graphs)
    fused_under_auto = AUTO_WHEN_COMPILED["cpu"] != "torch"
    assert ("fastgp.penalty_forward" in code["auto"]) == fused_under_auto
    assert "fastgp.penalty_forward" in code["cpp"]
