"""fastgp.penalty_from_grads: every backend against the reference, forward and backward."""

from __future__ import annotations

import pytest
import torch
from helpers import (
    LOW_PRECISION,
    TOLERANCES,
    assert_close_report,
    assert_layout_of_empty_like,
    assert_no_worse_than_reference,
    grad_leaf,
    kernels,
    make_input,
)

import fastgp
from fastgp.backends import reference

DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)

# Penalty and norms are accumulated in fp32 (fp64) whatever the input dtype, so they are
# compared with the tolerance of the accumulation dtype.
ACC_TOL = {dt: TOLERANCES[reference.accumulation_dtype(dt)] for dt in DTYPES}

CASES = [
    ((1, 1), "contiguous"),
    ((1, 2500), "contiguous"),  # several column chunks for one row
    ((9, 5), "contiguous"),
    ((2049, 1), "contiguous"),  # more one-element rows than one tile holds
    ((4, 3, 7), "transposed"),
    ((3, 3, 5, 6), "channels_last"),
    ((5, 2, 3, 11), "sliced"),
    ((4, 3, 5), "expanded"),  # stride 0 over the batch: autograd's gradient of a sum
]
CASE_IDS = [f"{'x'.join(map(str, s))}-{layout}" for s, layout in CASES]


def _scaler(scale: float) -> torch.amp.GradScaler:
    return torch.amp.GradScaler("cpu", init_scale=scale)


def _reference(grads, *, lambda_gp=10.0, center=1.0, one_sided=False, inv_scale=1.0, pac=1):
    """(penalty, norms, dP/dgrads) from the differentiable reference, upstream grad 1."""
    leaves = [grad_leaf(g) for g in grads]
    penalty, norms = reference.penalty_forward(
        leaves, None, inv_scale, lambda_gp, center, one_sided, pac
    )
    dgrads = torch.autograd.grad(penalty, leaves)
    return penalty.detach(), norms.detach(), dgrads


def _run(grads, backend, **kwargs):
    """(penalty, norms, dP/dgrads) from fastgp, upstream grad 1."""
    leaves = tuple(grad_leaf(g) for g in grads)
    penalty, norms = fastgp.penalty_from_grads(
        leaves if len(leaves) > 1 else leaves[0], return_norms=True, backend=backend, **kwargs
    )
    penalty.backward()
    return penalty, norms, [g.grad for g in leaves]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("shape", "layout"), CASES, ids=CASE_IDS)
def test_matches_reference(backend, shape, layout, dtype):
    grads = [make_input(shape, dtype, seed=11, layout=layout, scale=0.2)]
    assert layout == "contiguous" or not grads[0].is_contiguous(), "layout not exercised"
    penalty, norms, dgrads = _run(grads, backend)
    ref_penalty, ref_norms, ref_dgrads = _reference(grads)
    acc = reference.accumulation_dtype(dtype)
    assert penalty.dtype == acc and penalty.shape == ()
    assert norms.dtype == acc and norms.shape == (shape[0],)
    assert not norms.requires_grad
    assert_close_report(penalty, ref_penalty, *ACC_TOL[dtype], what="penalty")
    assert_close_report(norms, ref_norms, *ACC_TOL[dtype], what="norms")
    assert dgrads[0].dtype == dtype and dgrads[0].shape == shape
    assert_close_report(dgrads[0], ref_dgrads[0], *TOLERANCES[dtype], what="dP/dg")
    if dtype in LOW_PRECISION:
        # The flash-attention rule against the same math in float64 on the same inputs.
        exact_penalty, _, exact_dgrads = _reference([g.double() for g in grads])
        naive = [grad_leaf(g) for g in grads]
        naive_penalty = 10.0 * (naive[0].reshape(shape[0], -1).norm(dim=1) - 1).pow(2).mean()
        (naive_dgrad,) = torch.autograd.grad(naive_penalty, naive)
        assert_no_worse_than_reference(penalty, naive_penalty, exact_penalty, what="penalty")
        assert_no_worse_than_reference(dgrads[0], naive_dgrad, exact_dgrads[0], what="dP/dg")


@pytest.mark.parametrize("dtype", (torch.float64, torch.float32, torch.bfloat16), ids=str)
def test_tuple_of_grads_shares_one_norm(backend, dtype):
    grads = [
        make_input((6, 3, 4, 5), dtype, seed=1, layout="channels_last", scale=0.1),
        make_input((6, 4, 7), dtype, seed=2, layout="sliced", scale=0.1),
        make_input((6, 1), dtype, seed=3),
    ]
    penalty, norms, dgrads = _run(grads, backend)
    ref_penalty, ref_norms, ref_dgrads = _reference(grads)
    joint = torch.cat([g.double().reshape(6, -1) for g in grads], dim=1).norm(dim=1)
    assert_close_report(norms, joint.to(norms.dtype), *ACC_TOL[dtype], what="joint norms")
    assert_close_report(penalty, ref_penalty, *ACC_TOL[dtype], what="penalty")
    assert_close_report(norms, ref_norms, *ACC_TOL[dtype], what="norms")
    for i, (got, want) in enumerate(zip(dgrads, ref_dgrads, strict=True)):
        assert_close_report(got, want, *TOLERANCES[dtype], what=f"dP/dg[{i}]")


@pytest.mark.parametrize(
    "options",
    [
        {"pac": 3},
        {"pac": 6},
        {"one_sided": True},
        {"one_sided": True, "pac": 2, "center": 0.9},
        {"center": 0.0},
        {"center": 2.5, "lambda_gp": 0.3},
        {"lambda_gp": 0.0},
    ],
    ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()),
)
def test_options_match_reference(backend, options):
    # Rows of very different size put norms on both sides of the centre.
    scales = torch.tensor([0.05, 0.3, 0.5, 1.0, 2.0, 4.0], dtype=torch.float64)
    grads = [make_input((6, 4, 5), torch.float64, seed=5) * scales[:, None, None] / 4]
    penalty, norms, dgrads = _run(grads, backend, **options)
    ref_penalty, ref_norms, ref_dgrads = _reference(grads, **options)
    tol = TOLERANCES[torch.float64]
    assert norms.shape == (6 // options.get("pac", 1),)
    assert_close_report(penalty, ref_penalty, *tol, what="penalty")
    assert_close_report(norms, ref_norms, *tol, what="norms")
    assert_close_report(dgrads[0], ref_dgrads[0], *tol, what="dP/dg")
    if options.get("one_sided"):
        center = options.get("center", 1.0)
        below = (ref_norms < center).repeat_interleave(options.get("pac", 1))
        assert below.any() and not below.all(), "the test must cover both sides"
        assert torch.all(dgrads[0][below] == 0)


@pytest.mark.parametrize("layout", ["channels_last", "transposed", "sliced", "expanded"])
def test_backward_kernel_output_layout(backend, layout):
    """dP/dg is laid out as empty_like(g) (the op contract), for every input layout."""
    g = make_input((3, 4, 5, 6), seed=1, layout=layout)
    k = kernels(backend)
    _, norms = k.penalty_forward([g], None, 1.0, 10.0, 1.0, False, 1)
    (dgrad,) = k.penalty_backward(torch.tensor(1.0), [g], norms, None, 1.0, 10.0, 1.0, False, 1)
    assert_layout_of_empty_like(dgrad, g, what="dP/dg")


def test_manual_formula(backend):
    """Independent of the reference: lambda * mean((||g_i|| - 1)^2), grouped by pac."""
    g = make_input((6, 5), torch.float64, seed=4)
    penalty = fastgp.penalty_from_grads(g, lambda_gp=3.0, pac=2, backend=backend)
    expected = 3.0 * (g.reshape(3, 10).norm(dim=1) - 1).pow(2).mean()
    assert_close_report(penalty, expected, *TOLERANCES[torch.float64])


@pytest.mark.parametrize(
    "scale",
    [1024.0, torch.tensor(512.0), _scaler(2.0**16)],
    ids=["float", "tensor", "scaler"],
)
def test_grad_scale_is_removed(backend, scale):
    value = scale.get_scale() if isinstance(scale, torch.amp.GradScaler) else float(scale)
    g = make_input((5, 3, 4), torch.float32, seed=6, scale=0.1)
    penalty, norms, (dgrad,) = _run([g * value], backend, grad_scale=scale)
    ref_penalty, ref_norms, (ref_dgrad,) = _reference([g * value], inv_scale=1.0 / value)
    tol = TOLERANCES[torch.float32]
    assert_close_report(penalty, ref_penalty, *tol, what="penalty")
    assert_close_report(norms, ref_norms, *tol, what="norms")
    assert_close_report(dgrad, ref_dgrad, *tol, what="dP/d(scaled g)")
    unscaled_penalty, unscaled_norms, (unscaled_dgrad,) = _run([g], backend)
    assert_close_report(penalty, unscaled_penalty, *tol, what="penalty vs unscaled")
    assert_close_report(norms, unscaled_norms, *tol, what="norms vs unscaled")
    # d/d(s g) of P(g) is dP/dg / s.
    assert_close_report(dgrad * value, unscaled_dgrad, *tol, what="chain rule of the scale")


def test_return_norms_off_returns_penalty_only(backend):
    g = make_input((4, 3), seed=1)
    penalty = fastgp.penalty_from_grads(g, backend=backend)
    assert isinstance(penalty, torch.Tensor) and penalty.shape == ()


def test_upstream_gradient_scales_backward(backend):
    g = make_input((4, 9), torch.float64, seed=2).requires_grad_()
    (2.5 * fastgp.penalty_from_grads(g, backend=backend)).backward()
    _, _, (ref_dgrad,) = _reference([g])
    assert_close_report(g.grad, 2.5 * ref_dgrad, *TOLERANCES[torch.float64])


@pytest.mark.parametrize("one_sided", [False, True])
def test_zero_rows_get_zero_gradient(backend, one_sided):
    """Convention (reference docstring): coefficient 0 where a norm is 0, no NaN."""
    g = make_input((6, 2, 5), torch.float32, seed=3)
    g[1] = 0
    g[4:6] = 0  # a whole group when pac = 2
    for pac in (1, 2):
        penalty, norms, (dgrad,) = _run([g], backend, pac=pac, one_sided=one_sided, center=0.5)
        ref_penalty, ref_norms, (ref_dgrad,) = _reference(
            [g], pac=pac, one_sided=one_sided, center=0.5
        )
        assert torch.isfinite(dgrad).all()
        assert torch.all(dgrad[4:6] == 0)
        if pac == 1:
            assert torch.all(dgrad[1] == 0)
        assert norms[-1] == 0
        tol = TOLERANCES[torch.float32]
        assert_close_report(penalty, ref_penalty, *tol, what=f"penalty pac={pac}")
        assert_close_report(dgrad, ref_dgrad, *tol, what=f"dP/dg pac={pac}")


def test_all_zero_gradients(backend):
    g = torch.zeros(3, 4, requires_grad=True)
    penalty = fastgp.penalty_from_grads(g, lambda_gp=2.0, backend=backend)
    penalty.backward()
    assert penalty.item() == 2.0  # every norm 0: (0 - 1)^2 per sample
    assert torch.equal(g.grad, torch.zeros(3, 4))


def test_half_inputs_give_fp32_outputs(backend):
    for dtype in LOW_PRECISION:
        g = make_input((3, 4), dtype, seed=1)
        penalty, norms = fastgp.penalty_from_grads(g, return_norms=True, backend=backend)
        assert penalty.dtype == torch.float32 and norms.dtype == torch.float32


def test_large_half_gradients_do_not_overflow(backend):
    """Squares of fp16 values above 256 overflow fp16; the fp32 accumulation must not."""
    g = torch.full((2, 64), 300.0, dtype=torch.float16)
    penalty, norms = fastgp.penalty_from_grads(g, return_norms=True, backend=backend)
    assert_close_report(norms, torch.full((2,), 2400.0), 0, 1e-6, what="norms")
    assert torch.isfinite(penalty)


def test_bitwise_deterministic(kernel_backend):
    """Same inputs, same bits; for cpp also across thread counts (csrc/fastgp_ops.cpp)."""
    # Long enough rows that cpp splits them over threads and Triton over several programs.
    shape = (3, 40_001) if kernel_backend == "cpp" else (2, 3001)
    g = make_input(shape, torch.float32, seed=12)
    first = fastgp.penalty_from_grads(g, return_norms=True, backend=kernel_backend)
    threads = torch.get_num_threads()
    try:
        if kernel_backend == "cpp":
            torch.set_num_threads(1 if threads > 1 else 2)
        second = fastgp.penalty_from_grads(g, return_norms=True, backend=kernel_backend)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


@pytest.mark.slow
# More than 256 (Triton's finalize tile width) partial sums per group of pac rows.
@pytest.mark.parametrize(
    ("shape", "pac"), [((1, 270_001), 1), ((3, 90_001), 3)], ids=["pac1", "pac3"]
)
def test_many_partial_sums(backend, shape, pac):
    """Rows long enough that the Triton finalize loops over several column tiles.

    Judged against float64: PyTorch's own fp32 norm over ~10**6 elements is off by about
    1e-5 relative here, while the kernels' blocked sums are closer to exact.
    """
    g = make_input(shape, torch.float32, seed=8, scale=1e-3)
    penalty, norms, (dgrad,) = _run([g], backend, pac=pac)
    ref_penalty, ref_norms, (ref_dgrad,) = _reference([g], pac=pac)
    exact_penalty, exact_norms, (exact_dgrad,) = _reference([g.double()], pac=pac)
    assert_no_worse_than_reference(penalty, ref_penalty, exact_penalty, what="penalty")
    assert_no_worse_than_reference(norms, ref_norms, exact_norms, what="norms")
    assert_no_worse_than_reference(dgrad, ref_dgrad, exact_dgrad, what="dP/dg")
