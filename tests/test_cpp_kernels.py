"""C++ kernel checks against the reference: threads, long rows, chunk tails, layouts, dtypes,
poisoned outputs and error messages.

The ops are called through ``torch.ops.fastgp`` (the CPU kernels of ``csrc/``, CPU tensors
in every FASTGP_TEST_DEVICE mode) and compared with ``fastgp.backends.reference``. The
elementwise ops (interpolation, both backwards) do the same rounded operations in the same
order as the reference, so for them the expected result is bitwise equal; the norms differ
only by summation order. Where exact values are needed (low precision) they come from the
float64 oracles of tests/oracles.py.
"""

from __future__ import annotations

import oracles
import pytest
import torch
from helpers import TOLERANCES, assert_close_report, assert_no_worse_than_reference, make_input
from torch import Tensor

from fastgp.backends import reference as ref
from fastgp.backends.reference import accumulation_dtype

pytestmark = pytest.mark.usefixtures("cpp_built")

ops = torch.ops.fastgp
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# (inv_scale, lambda_gp, center, one_sided): WGAN-GP, and a scaled one-sided variant.
PARAMS = ((1.0, 10.0, 1.0, False), (0.25, 3.0, 2.0, True))


def _alpha(batch: int, dtype: torch.dtype, seed: int = 1) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, generator=gen, dtype=accumulation_dtype(dtype))


def _penalty_both(grads: list[Tensor], params, pac: int):
    """(penalty, norms, dgrads) from cpp and from the reference; both backwards get cpp norms."""
    penalty, norms = ops.penalty_forward.default(grads, None, *params, pac)
    ref_penalty, ref_norms = ref.penalty_forward(grads, None, *params, pac)
    grad_penalty = torch.tensor(0.7, dtype=norms.dtype)
    dgrads = ops.penalty_backward.default(grad_penalty, grads, norms, None, *params, pac)
    ref_dgrads = ref.penalty_backward(grad_penalty, grads, norms, None, *params, pac)
    return (penalty, norms, dgrads), (ref_penalty, ref_norms, ref_dgrads)


def _with_threads(count: int, fn):
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        return fn()
    finally:
        torch.set_num_threads(previous)


def _profiled_ops(fn) -> set[str]:
    """Names of the aten ops that ``fn`` dispatches (the kernels' own copies show up here).

    The legacy (non-Kineto) profiler: it records the same dispatcher events and starts in
    milliseconds instead of seconds.
    """
    with torch.autograd.profiler.profile(use_kineto=False) as prof:
        fn()
    return {event.key for event in prof.key_averages()}


def test_debug_poison_is_active_in_the_loaded_library():
    # conftest sets FASTGP_DEBUG_POISON=1 before the library loads, so every output the
    # tests below check was NaN-filled before the kernel wrote it.
    assert torch.ops.fastgp_cpp.debug_poison()


@pytest.mark.parametrize(
    "shape",
    [(1, 3, 256, 256), (3, 4096 * 5 + 3), (64, 3, 32, 32)],
    ids=["B1-196608", "chunk-tail", "64x3x32x32"],
)
def test_results_are_bitwise_identical_for_one_and_two_threads(shape):
    grads = [make_input(shape, seed=3), make_input((shape[0], 5000), seed=4)]
    real, fake = make_input(shape, seed=5), make_input(shape, seed=6)
    alpha = _alpha(shape[0], torch.float32)

    def run():
        penalty, norms = ops.penalty_forward.default(grads, None, 1.0, 10.0, 1.0, False, 1)
        dgrads = ops.penalty_backward.default(penalty, grads, norms, None, 1.0, 10.0, 1.0, False, 1)
        x_hat = ops.interpolate.default(real, fake, alpha)
        dreal, dfake = ops.interpolate_backward.default(real, alpha, True, True)
        return [penalty, norms, *dgrads, x_hat, dreal, dfake]

    one, two = _with_threads(1, run), _with_threads(2, run)
    for a, b in zip(one, two, strict=True):
        assert torch.equal(a, b)


def test_single_long_row_matches_float64():
    # B = 1 with 196,608 elements: the row is split into chunks spread over the threads.
    g = make_input((1, 3, 256, 256), seed=7)
    penalty, norms = ops.penalty_forward.default([g], None, 1.0, 10.0, 1.0, False, 1)
    exact = g.double().pow(2).sum().sqrt()
    # 196,608 squares summed in fp32 over 32 lanes and 48 chunks: far inside 1e-6 relative.
    assert abs(float(norms[0]) - float(exact)) <= 1e-6 * float(exact)
    assert abs(float(penalty) - 10.0 * (float(exact) - 1.0) ** 2) <= 1e-4 * float(penalty)


@pytest.mark.parametrize("row_length", [1, 31, 33, 4095, 4097, 2 * 4096 + 17])
@pytest.mark.parametrize("params", PARAMS, ids=["wgan-gp", "scaled-one-sided"])
def test_rows_that_are_not_a_multiple_of_the_chunk(row_length, params):
    grads = [make_input((6, row_length), seed=row_length), make_input((6, 2, 3), seed=2)]
    for pac in (1, 3):
        (penalty, norms, dgrads), (ref_penalty, ref_norms, ref_dgrads) = _penalty_both(
            grads, params, pac
        )
        atol, rtol = TOLERANCES[torch.float32]
        assert_close_report(norms, ref_norms, atol, rtol, "norms")
        assert_close_report(penalty, ref_penalty, atol, rtol, "penalty")
        for got, want in zip(dgrads, ref_dgrads, strict=True):
            assert torch.equal(got, want)


def test_zero_norm_gives_zero_coefficient():
    g = make_input((4, 10), seed=8)
    g[1] = 0
    penalty, norms = ops.penalty_forward.default([g], None, 1.0, 10.0, 1.0, False, 1)
    assert float(norms[1]) == 0.0
    (dg,) = ops.penalty_backward.default(penalty, [g], norms, None, 1.0, 10.0, 1.0, False, 1)
    assert torch.isfinite(dg).all()
    assert torch.equal(dg[1], torch.zeros_like(dg[1]))


def test_channels_last_is_processed_without_a_copy():
    real = make_input((4, 3, 8, 8), seed=9, layout="channels_last")
    fake = make_input((4, 3, 8, 8), seed=10, layout="channels_last")
    alpha = _alpha(4, torch.float32)
    results = {}

    def run():
        results["x_hat"] = ops.interpolate.default(real, fake, alpha)
        results["dx"] = ops.interpolate_backward.default(real, alpha, True, True)
        penalty, norms = ops.penalty_forward.default([real], None, 1.0, 10.0, 1.0, False, 1)
        results["dg"] = ops.penalty_backward.default(
            penalty, [real], norms, None, 1.0, 10.0, 1.0, False, 1
        )
        results["norms"] = norms

    called = _profiled_ops(run)
    assert not called & {"aten::copy_", "aten::contiguous", "aten::clone"}, called
    outputs = [results["x_hat"], *results["dx"], *results["dg"]]
    for out in outputs:
        assert out.stride() == real.stride()
    assert torch.equal(results["x_hat"], ref.interpolate(real, fake, alpha))
    for got, want in zip(
        results["dx"], ref.interpolate_backward(real, alpha, True, True), strict=True
    ):
        assert torch.equal(got, want)
    assert_close_report(
        results["norms"],
        ref.penalty_forward([real], None, 1.0, 10.0, 1.0, False, 1)[1],
        *TOLERANCES[torch.float32],
    )


def test_a_transposed_input_is_copied_and_still_correct():
    # The counterpart of the channels_last test: here a copy is expected (and seen).
    real = make_input((4, 5, 6), seed=11, layout="transposed")
    fake = make_input((4, 5, 6), seed=12)
    alpha = _alpha(4, torch.float32)
    out = {}
    called = _profiled_ops(lambda: out.setdefault("x", ops.interpolate.default(real, fake, alpha)))
    assert "aten::copy_" in called
    assert torch.equal(out["x"], ref.interpolate(real, fake, alpha))


def _layouts() -> dict[str, Tensor]:
    base = make_input((4, 3, 6, 5), seed=13)
    return {
        "sliced": make_input((4, 3, 6, 5), seed=14, layout="sliced"),
        "transposed": make_input((4, 3, 6, 5), seed=15, layout="transposed"),
        "batch-not-outermost": make_input((3, 4, 6, 5), seed=16).transpose(0, 1),
        "batch-slice": make_input((8, 3, 6, 5), seed=17)[::2],
        "expanded": make_input((1, 3, 6, 5), seed=18).expand(4, 3, 6, 5),
        "channels_last": base.contiguous(memory_format=torch.channels_last),
        "contiguous": base,
    }


@pytest.mark.parametrize("name", list(_layouts()))
def test_non_contiguous_layouts_match_the_reference(name):
    x = _layouts()[name]
    other = make_input((4, 3, 6, 5), seed=19, layout="channels_last")  # a different layout
    alpha = _alpha(4, torch.float32)
    for real, fake in ((x, other), (other, x), (x, x)):
        x_hat = ops.interpolate.default(real, fake, alpha)
        assert x_hat.stride() == torch.empty_like(real).stride()
        assert torch.equal(x_hat, ref.interpolate(real, fake, alpha))
    for got, want in zip(
        ops.interpolate_backward.default(x, alpha, True, True),
        ref.interpolate_backward(x, alpha, True, True),
        strict=True,
    ):
        assert got.stride() == torch.empty_like(x).stride()
        assert torch.equal(got, want)
    (penalty, norms, dgrads), (ref_penalty, ref_norms, ref_dgrads) = _penalty_both(
        [x, other], PARAMS[0], 2
    )
    assert_close_report(norms, ref_norms, *TOLERANCES[torch.float32], "norms")
    for got, want, g in zip(dgrads, ref_dgrads, (x, other), strict=True):
        assert got.stride() == torch.empty_like(g).stride()
        assert torch.equal(got, want)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("need", [(True, True), (True, False), (False, True)])
def test_interpolation_matches_the_reference_bitwise(dtype, need):
    real, fake = make_input((5, 3, 7), dtype, seed=20), make_input((5, 3, 7), dtype, seed=21)
    alpha = _alpha(5, dtype)
    x_hat = ops.interpolate.default(real, fake, alpha)
    assert x_hat.dtype == dtype and torch.equal(x_hat, ref.interpolate(real, fake, alpha))
    got = ops.interpolate_backward.default(real, alpha, *need)
    want = ref.interpolate_backward(real, alpha, *need)
    assert len(got) == sum(need)
    for a, b in zip(got, want, strict=True):
        assert a.dtype == dtype and torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_low_precision_is_no_worse_than_twice_the_reference(dtype):
    grads = [make_input((64, 3, 16, 16), dtype, seed=22), make_input((64, 40), dtype, seed=23)]
    params = PARAMS[1]
    inv_scale, lambda_gp, center, one_sided = params
    options = {"lambda_gp": lambda_gp, "center": center, "one_sided": one_sided, "pac": 2}
    options["scale"] = 1.0 / inv_scale
    (penalty, norms, dgrads), (ref_penalty, ref_norms, _) = _penalty_both(grads, params, 2)
    exact_penalty, exact_norms = oracles.penalty(grads, **options)
    assert_no_worse_than_reference(norms, ref_norms, exact_norms, "norms")
    assert_no_worse_than_reference(penalty, ref_penalty, exact_penalty, "penalty")
    grad_penalty = torch.tensor(0.7, dtype=torch.float32)
    ref_dgrads = ref.penalty_backward(grad_penalty, grads, ref_norms, None, *params, 2)
    exact_dgrads = oracles.penalty_gradient(grads, **options, upstream=0.7)
    for got, low, exact in zip(dgrads, ref_dgrads, exact_dgrads, strict=True):
        assert got.dtype == dtype
        assert_no_worse_than_reference(got, low, exact, "dgrads")
    real, fake = grads[0], make_input((64, 3, 16, 16), dtype, seed=24)
    alpha = _alpha(64, dtype)
    exact = oracles.interpolate(real, fake, alpha)
    assert_no_worse_than_reference(
        ops.interpolate.default(real, fake, alpha), ref.interpolate(real, fake, alpha), exact
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_outputs_are_fully_written_and_typed(dtype):
    # Under FASTGP_DEBUG_POISON every output starts as NaN: any NaN left is a missed element.
    grads = [make_input((6, 4097), dtype, seed=25), make_input((6, 3, 5, 5), dtype, seed=26)]
    acc = accumulation_dtype(dtype)
    penalty, norms = ops.penalty_forward.default(grads, None, 1.0, 10.0, 1.0, False, 2)
    assert penalty.dtype == acc and penalty.dim() == 0 and norms.dtype == acc
    assert norms.shape == (3,)
    dgrads = ops.penalty_backward.default(penalty, grads, norms, None, 1.0, 10.0, 1.0, False, 2)
    alpha = _alpha(6, dtype)
    x_hat = ops.interpolate.default(grads[1], grads[1].flip(0), alpha)
    dx = ops.interpolate_backward.default(grads[0], alpha, True, True)
    for out in [penalty, norms, *dgrads, x_hat, *dx]:
        assert not out.isnan().any()
