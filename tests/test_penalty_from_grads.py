"""fastgp.penalty_from_grads: every backend against the float64 oracles, forward and backward.

The expected values come from tests/oracles.py (the penalty and its gradient written out in
float64), never from ``fastgp.backends.reference``, which is the ``torch`` backend under test.
"""

from __future__ import annotations

import oracles
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
from fastgp.backends.reference import accumulation_dtype

DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)

# Penalty and norms are accumulated in fp32 (fp64) whatever the input dtype, so they are
# compared with the tolerance of the accumulation dtype.
ACC_TOL = {dt: TOLERANCES[accumulation_dtype(dt)] for dt in DTYPES}

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


def _scaler(scale: float, device: torch.device) -> torch.amp.GradScaler:
    return torch.amp.GradScaler(device.type, init_scale=scale)


def _oracle(grads, *, lambda_gp=10.0, center=1.0, one_sided=False, scale=1.0, pac=1):
    """(penalty, norms, dP/dgrads) in float64 from tests/oracles.py, upstream grad 1."""
    options = dict(lambda_gp=lambda_gp, center=center, one_sided=one_sided, pac=pac, scale=scale)
    penalty, norms = oracles.penalty(grads, **options)
    return penalty, norms, oracles.penalty_gradient(grads, **options)


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
def test_matches_oracle(backend, device, shape, layout, dtype):
    grads = [make_input(shape, dtype, seed=11, layout=layout, scale=0.2, device=device)]
    assert layout == "contiguous" or not grads[0].is_contiguous(), "layout not exercised"
    penalty, norms, dgrads = _run(grads, backend)
    exact_penalty, exact_norms, exact_dgrads = _oracle(grads)
    acc = accumulation_dtype(dtype)
    assert penalty.dtype == acc and penalty.shape == () and penalty.device == device
    assert norms.dtype == acc and norms.shape == (shape[0],)
    assert not norms.requires_grad
    assert_close_report(penalty, exact_penalty, *ACC_TOL[dtype], what="penalty")
    assert_close_report(norms, exact_norms, *ACC_TOL[dtype], what="norms")
    assert dgrads[0].dtype == dtype and dgrads[0].shape == shape
    assert_close_report(dgrads[0], exact_dgrads[0], *TOLERANCES[dtype], what="dP/dg")
    if dtype in LOW_PRECISION:
        # The flash-attention rule: no worse than twice eager PyTorch in the same precision.
        naive = [grad_leaf(g) for g in grads]
        naive_penalty = 10.0 * (naive[0].reshape(shape[0], -1).norm(dim=1) - 1).pow(2).mean()
        (naive_dgrad,) = torch.autograd.grad(naive_penalty, naive)
        assert_no_worse_than_reference(penalty, naive_penalty, exact_penalty, what="penalty")
        assert_no_worse_than_reference(dgrads[0], naive_dgrad, exact_dgrads[0], what="dP/dg")


@pytest.mark.parametrize("dtype", (torch.float64, torch.float32, torch.bfloat16), ids=str)
def test_tuple_of_grads_shares_one_norm(backend, device, dtype):
    grads = [
        make_input((6, 3, 4, 5), dtype, seed=1, layout="channels_last", scale=0.1, device=device),
        make_input((6, 4, 7), dtype, seed=2, layout="sliced", scale=0.1, device=device),
        make_input((6, 1), dtype, seed=3, device=device),
    ]
    penalty, norms, dgrads = _run(grads, backend)
    exact_penalty, exact_norms, exact_dgrads = _oracle(grads)
    joint = torch.cat([g.double().reshape(6, -1) for g in grads], dim=1).norm(dim=1)
    assert_close_report(exact_norms, joint, *TOLERANCES[torch.float64], what="oracle norms")
    assert_close_report(penalty, exact_penalty, *ACC_TOL[dtype], what="penalty")
    assert_close_report(norms, exact_norms, *ACC_TOL[dtype], what="joint norms")
    for i, (got, want) in enumerate(zip(dgrads, exact_dgrads, strict=True)):
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
def test_options_match_oracle(backend, device, options):
    # Rows of very different size put norms on both sides of the centre.
    scales = torch.tensor([0.05, 0.3, 0.5, 1.0, 2.0, 4.0], dtype=torch.float64, device=device)
    grads = [
        make_input((6, 4, 5), torch.float64, seed=5, device=device) * scales[:, None, None] / 4
    ]
    penalty, norms, dgrads = _run(grads, backend, **options)
    exact_penalty, exact_norms, exact_dgrads = _oracle(grads, **options)
    tol = TOLERANCES[torch.float64]
    assert norms.shape == (6 // options.get("pac", 1),)
    assert_close_report(penalty, exact_penalty, *tol, what="penalty")
    assert_close_report(norms, exact_norms, *tol, what="norms")
    assert_close_report(dgrads[0], exact_dgrads[0], *tol, what="dP/dg")
    if options.get("lambda_gp") == 0.0:
        assert penalty == 0 and torch.all(dgrads[0] == 0)
    if options.get("one_sided"):
        center = options.get("center", 1.0)
        below = (exact_norms < center).repeat_interleave(options.get("pac", 1))
        assert below.any() and not below.all(), "the test must cover both sides"
        assert torch.all(dgrads[0][below] == 0)
        assert torch.all(dgrads[0][~below] != 0)


@pytest.mark.parametrize("layout", ["channels_last", "transposed", "sliced", "expanded"])
def test_backward_kernel_output_layout(backend, device, layout):
    """dP/dg is laid out as empty_like(g) (the op contract), for every input layout."""
    g = make_input((3, 4, 5, 6), seed=1, layout=layout, device=device)
    k = kernels(backend, device)
    _, norms = k.penalty_forward([g], None, 1.0, 10.0, 1.0, False, 1)
    grad_penalty = torch.tensor(1.0, device=device)
    (dgrad,) = k.penalty_backward(grad_penalty, [g], norms, None, 1.0, 10.0, 1.0, False, 1)
    assert_layout_of_empty_like(dgrad, g, what="dP/dg")
    assert_close_report(dgrad, oracles.penalty_gradient(g)[0], *TOLERANCES[torch.float32])


def test_manual_formula(backend, device):
    """lambda * mean((||g_i|| - 1)^2), grouped by pac, written out in the test."""
    g = make_input((6, 5), torch.float64, seed=4, device=device)
    penalty = fastgp.penalty_from_grads(g, lambda_gp=3.0, pac=2, backend=backend)
    expected = 3.0 * (g.reshape(3, 10).norm(dim=1) - 1).pow(2).mean()
    assert_close_report(penalty, expected, *TOLERANCES[torch.float64])


@pytest.mark.parametrize("kind", ["float", "tensor", "scaler"])
def test_grad_scale_is_removed(backend, device, kind):
    value = {"float": 1024.0, "tensor": 512.0, "scaler": 2.0**16}[kind]
    if kind == "float":
        scale = value
    elif kind == "tensor":
        scale = torch.tensor(value, device=device)
    else:
        scale = _scaler(value, device)
        assert scale.get_scale() == value
    g = make_input((5, 3, 4), torch.float32, seed=6, scale=0.1, device=device)
    penalty, norms, (dgrad,) = _run([g * value], backend, grad_scale=scale)
    exact_penalty, exact_norms, (exact_dgrad,) = _oracle([g * value], scale=value)
    tol = TOLERANCES[torch.float32]
    assert_close_report(penalty, exact_penalty, *tol, what="penalty")
    assert_close_report(norms, exact_norms, *tol, what="norms")
    assert_close_report(dgrad, exact_dgrad, *tol, what="dP/d(scaled g)")
    unscaled_penalty, unscaled_norms, (unscaled_dgrad,) = _oracle([g])
    assert_close_report(penalty, unscaled_penalty, *tol, what="penalty vs unscaled")
    assert_close_report(norms, unscaled_norms, *tol, what="norms vs unscaled")
    # d/d(s g) of P(g) is dP/dg / s.
    assert_close_report(dgrad * value, unscaled_dgrad, *tol, what="chain rule of the scale")


def test_return_norms_off_returns_penalty_only(backend, device):
    g = make_input((4, 3), seed=1, device=device)
    penalty = fastgp.penalty_from_grads(g, backend=backend)
    assert isinstance(penalty, torch.Tensor) and penalty.shape == ()
    assert_close_report(penalty, oracles.penalty(g)[0], *TOLERANCES[torch.float32])


def test_upstream_gradient_scales_backward(backend, device):
    g = make_input((4, 9), torch.float64, seed=2, device=device).requires_grad_()
    (2.5 * fastgp.penalty_from_grads(g, backend=backend)).backward()
    (expected,) = oracles.penalty_gradient(g.detach(), upstream=2.5)
    assert_close_report(g.grad, expected, *TOLERANCES[torch.float64])


@pytest.mark.parametrize("one_sided", [False, True])
def test_zero_rows_get_zero_gradient(backend, device, one_sided):
    """Convention (reference docstring): coefficient 0 where a norm is 0, no NaN."""
    g = make_input((6, 2, 5), torch.float32, seed=3, device=device)
    g[1] = 0
    g[4:6] = 0  # a whole group when pac = 2
    for pac in (1, 2):
        options = {"pac": pac, "one_sided": one_sided, "center": 0.5}
        penalty, norms, (dgrad,) = _run([g], backend, **options)
        exact_penalty, exact_norms, (exact_dgrad,) = _oracle([g], **options)
        assert torch.isfinite(dgrad).all()
        assert torch.all(dgrad[4:6] == 0)
        if pac == 1:
            assert torch.all(dgrad[1] == 0)
        assert norms[-1] == 0
        tol = TOLERANCES[torch.float32]
        assert_close_report(penalty, exact_penalty, *tol, what=f"penalty pac={pac}")
        assert_close_report(norms, exact_norms, *tol, what=f"norms pac={pac}")
        assert_close_report(dgrad, exact_dgrad, *tol, what=f"dP/dg pac={pac}")


def test_all_zero_gradients(backend, device):
    g = torch.zeros(3, 4, device=device, requires_grad=True)
    penalty = fastgp.penalty_from_grads(g, lambda_gp=2.0, backend=backend)
    penalty.backward()
    assert penalty.item() == 2.0  # every norm 0: (0 - 1)^2 per sample
    assert torch.equal(g.grad, torch.zeros(3, 4, device=device))


def test_half_inputs_give_fp32_outputs(backend, device):
    for dtype in LOW_PRECISION:
        g = make_input((3, 4), dtype, seed=1, device=device)
        penalty, norms = fastgp.penalty_from_grads(g, return_norms=True, backend=backend)
        assert penalty.dtype == torch.float32 and norms.dtype == torch.float32


def test_large_half_gradients_do_not_overflow(backend, device):
    """Squares of fp16 values above 256 overflow fp16; the fp32 accumulation must not."""
    g = torch.full((2, 64), 300.0, dtype=torch.float16, device=device)
    penalty, norms = fastgp.penalty_from_grads(g, return_norms=True, backend=backend)
    assert_close_report(norms, torch.full((2,), 2400.0), 0, 1e-6, what="norms")
    assert_close_report(penalty, torch.tensor(10.0 * 2399.0**2), 0, 1e-6, what="penalty")


def test_bitwise_deterministic(kernel_backend, device):
    """Same inputs, same bits; for cpp also across thread counts (csrc/fastgp_ops.cpp)."""
    # Long enough rows that cpp splits them over threads and Triton over several programs.
    shape = (3, 40_001) if kernel_backend == "cpp" else (2, 3001)
    g = make_input(shape, torch.float32, seed=12, device=device)
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
def test_many_partial_sums(backend, device, shape, pac):
    """Rows long enough that the Triton finalize loops over several column tiles.

    Judged against the float64 oracle by the flash-attention rule: PyTorch's own fp32 norm
    over ~10**6 elements is off by about 1e-5 relative here, while the kernels' blocked
    sums are closer to exact.
    """
    g = make_input(shape, torch.float32, seed=8, scale=1e-3, device=device)
    penalty, norms, (dgrad,) = _run([g], backend, pac=pac)
    leaf = grad_leaf(g)
    eager_norms = leaf.reshape(shape[0] // pac, -1).norm(dim=1)
    eager_penalty = 10.0 * (eager_norms - 1).pow(2).mean()
    (eager_dgrad,) = torch.autograd.grad(eager_penalty, leaf)
    exact_penalty, exact_norms, (exact_dgrad,) = _oracle([g], pac=pac)
    assert_no_worse_than_reference(penalty, eager_penalty, exact_penalty, what="penalty")
    assert_no_worse_than_reference(norms, eager_norms, exact_norms, what="norms")
    assert_no_worse_than_reference(dgrad, eager_dgrad, exact_dgrad, what="dP/dg")
