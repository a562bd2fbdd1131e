"""fastgp.interpolate: every backend against the reference, alpha forms, gradients, layout."""

from __future__ import annotations

import pytest
import torch
from helpers import (
    LOW_PRECISION,
    TOLERANCES,
    OpCalls,
    assert_close_report,
    assert_layout_of_empty_like,
    assert_no_worse_than_reference,
    kernels,
    make_input,
    per_sample,
)

import fastgp
from fastgp.backends import reference

DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)

# (shape, layout): B = 1, a single element, rows that are not a multiple of any block
# size (1031 > 1024), 1-D, 3-D and 4-D, and non-contiguous views.
CASES = [
    ((1, 1), "contiguous"),
    ((6,), "contiguous"),
    ((1, 1031), "contiguous"),
    ((7, 3), "contiguous"),
    ((2049, 1), "contiguous"),  # more one-element rows than one tile holds
    ((3, 5, 7), "transposed"),
    ((4, 3, 5, 6), "contiguous"),
    ((4, 3, 5, 6), "channels_last"),
    ((2, 3, 4, 9), "transposed"),
    ((5, 13), "sliced"),
    ((4, 3, 5), "expanded"),
]
CASE_IDS = [f"{'x'.join(map(str, s))}-{layout}" for s, layout in CASES]


def _alpha(batch: int, dtype: torch.dtype, seed: int = 7) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, generator=gen, dtype=reference.accumulation_dtype(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("shape", "layout"), CASES, ids=CASE_IDS)
def test_matches_reference(backend, shape, layout, dtype):
    real = make_input(shape, dtype, seed=1, layout=layout)
    fake = make_input(shape, dtype, seed=2, layout=layout)
    assert layout == "contiguous" or not real.is_contiguous(), "layout not exercised"
    alpha = _alpha(shape[0], dtype)
    out = fastgp.interpolate(real, fake, alpha, backend=backend)
    assert out.dtype == dtype and out.shape == real.shape
    expected = reference.interpolate(real, fake, alpha)
    assert_close_report(out, expected, *TOLERANCES[dtype], what="x_hat")
    if dtype in LOW_PRECISION:
        a = per_sample(alpha, real)
        exact = a.double() * real.double() + (1 - a.double()) * fake.double()
        naive = a.to(dtype) * real + (1 - a.to(dtype)) * fake
        assert_no_worse_than_reference(out, naive, exact, what="x_hat")


def test_mixed_layouts_of_real_and_fake(backend):
    real = make_input((3, 4, 5, 6), layout="channels_last", seed=1)
    fake = make_input((3, 4, 5, 6), layout="transposed", seed=2)
    alpha = _alpha(3, torch.float32)
    out = fastgp.interpolate(real, fake, alpha, backend=backend)
    expected = per_sample(alpha, real) * real + (1 - per_sample(alpha, real)) * fake
    assert_close_report(out, expected, *TOLERANCES[torch.float32])
    assert_layout_of_empty_like(out, real)


@pytest.mark.parametrize(
    "layout", ["contiguous", "channels_last", "transposed", "sliced", "expanded"]
)
def test_output_layout_is_empty_like_real(backend, layout):
    real = make_input((2, 3, 4, 5), layout=layout, seed=3)
    fake = make_input((2, 3, 4, 5), layout=layout, seed=4)
    out = fastgp.interpolate(real, fake, 0.3, backend=backend)
    assert_layout_of_empty_like(out, real)
    if layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("layout", ["channels_last", "transposed", "sliced", "expanded"])
def test_backward_kernel_output_layout(backend, layout):
    """Both input gradients are laid out as empty_like(grad_out) (the op contract)."""
    grad_out = make_input((3, 4, 5, 6), seed=1, layout=layout)
    k = kernels(backend)
    grads = k.interpolate_backward(grad_out, _alpha(3, torch.float32), True, True)
    assert len(grads) == 2
    for g in grads:
        assert_layout_of_empty_like(g, grad_out, what="interpolate_backward output")


def test_alpha_forms(backend):
    shape = (5, 2, 3, 3)
    real, fake = make_input(shape, seed=1), make_input(shape, seed=2)
    alpha = _alpha(5, torch.float32)
    expected = per_sample(alpha, real) * real + (1 - per_sample(alpha, real)) * fake
    tol = TOLERANCES[torch.float32]
    for form in (alpha, alpha.reshape(5, 1, 1, 1), alpha.double()):
        out = fastgp.interpolate(real, fake, form, backend=backend)
        assert_close_report(out, expected, *tol, what=f"alpha of shape {tuple(form.shape)}")
    out = fastgp.interpolate(real, fake, 0.25, backend=backend)
    assert_close_report(out, 0.25 * real + 0.75 * fake, *tol, what="float alpha")
    out = fastgp.interpolate(real, fake, 1.0, backend=backend)
    assert torch.equal(out, real)


def test_alpha_from_generator_is_reproducible(backend):
    shape = (6, 11)
    real, fake = make_input(shape, seed=1), make_input(shape, seed=2)
    first = fastgp.interpolate(
        real, fake, generator=torch.Generator().manual_seed(3), backend=backend
    )
    second = fastgp.interpolate(
        real, fake, generator=torch.Generator().manual_seed(3), backend=backend
    )
    other = fastgp.interpolate(
        real, fake, generator=torch.Generator().manual_seed(4), backend=backend
    )
    assert torch.equal(first, second)
    assert not torch.equal(first, other)
    # The draw is U[0, 1) per sample in the accumulation dtype, one call to torch.rand.
    alpha = torch.rand(6, generator=torch.Generator().manual_seed(3))
    expected = reference.interpolate(real, fake, alpha)
    assert_close_report(first, expected, *TOLERANCES[torch.float32])


@pytest.mark.parametrize("dtype", (torch.float64, torch.float32, torch.bfloat16), ids=str)
@pytest.mark.parametrize(
    ("shape", "layout"),
    [((1, 1), "contiguous"), ((3, 2, 5, 4), "channels_last"), ((4, 3, 7), "transposed")],
    ids=["1x1", "channels_last", "transposed"],
)
@pytest.mark.parametrize("which", ["both", "real", "fake"])
def test_gradients_reach_real_and_fake(backend, dtype, shape, layout, which):
    alpha = _alpha(shape[0], dtype)
    weights = make_input(shape, dtype, seed=9)

    def run(fn, **kwargs):
        real = make_input(shape, dtype, 1, layout, requires_grad=which in ("both", "real"))
        fake = make_input(shape, dtype, 2, layout, requires_grad=which in ("both", "fake"))
        out = fn(real, fake, alpha, **kwargs)
        assert out.requires_grad
        (out * weights).sum().backward()
        return out, real.grad, fake.grad

    out, grad_real, grad_fake = run(fastgp.interpolate, backend=backend)
    ref_out, ref_real, ref_fake = run(reference.interpolate)
    tol = TOLERANCES[dtype]
    assert_close_report(out, ref_out, *tol, what="x_hat")
    for got, want, name in ((grad_real, ref_real, "real"), (grad_fake, ref_fake, "fake")):
        if want is None:
            assert got is None, f"{name} does not require grad but received one"
        else:
            assert got.dtype == dtype
            assert_close_report(got, want, *tol, what=f"grad of {name}")


def test_backward_is_one_fused_call(kernel_backend):
    """Both input gradients come from a single interpolate_backward call."""
    real = make_input((3, 8), seed=1, requires_grad=True)
    fake = make_input((3, 8), seed=2, requires_grad=True)
    x_hat = fastgp.interpolate(real, fake, 0.5, backend=kernel_backend)
    with OpCalls() as ops:
        x_hat.sum().backward()
    assert ops.calls == ["interpolate_backward"]
    assert torch.equal(real.grad, torch.full_like(real, 0.5))


def test_gradient_reaches_alpha(backend):
    real, fake = make_input((4, 6), seed=1), make_input((4, 6), seed=2)
    alpha = _alpha(4, torch.float32).requires_grad_()
    weights = make_input((4, 6), seed=3)
    (fastgp.interpolate(real, fake, alpha, backend=backend) * weights).sum().backward()
    expected = ((real - fake) * weights).sum(dim=1)
    assert_close_report(alpha.grad, expected, *TOLERANCES[torch.float32], what="grad of alpha")


def test_no_grad_inputs_give_a_plain_tensor(backend):
    real, fake = make_input((3, 4), seed=1), make_input((3, 4), seed=2)
    out = fastgp.interpolate(real, fake, 0.5, backend=backend)
    assert not out.requires_grad and out.grad_fn is None
