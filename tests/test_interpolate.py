"""fastgp.interpolate: every backend against the float64 oracle, alpha forms, gradients, layout.

Expected values come from tests/oracles.py (the interpolation and its gradients in closed
form, float64), never from ``fastgp.backends.reference`` (the ``torch`` backend under test).
"""

from __future__ import annotations

import oracles
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
from fastgp.backends.reference import accumulation_dtype

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


def _alpha(batch: int, dtype: torch.dtype, device: torch.device, seed: int = 7) -> torch.Tensor:
    """(B,) in the accumulation dtype of ``dtype``, drawn on CPU (the same on every device)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, generator=gen, dtype=accumulation_dtype(dtype)).to(device)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("shape", "layout"), CASES, ids=CASE_IDS)
def test_matches_oracle(backend, device, shape, layout, dtype):
    real = make_input(shape, dtype, seed=1, layout=layout, device=device)
    fake = make_input(shape, dtype, seed=2, layout=layout, device=device)
    assert layout == "contiguous" or not real.is_contiguous(), "layout not exercised"
    alpha = _alpha(shape[0], dtype, device)
    out = fastgp.interpolate(real, fake, alpha, backend=backend)
    assert out.dtype == dtype and out.shape == real.shape and out.device == device
    exact = oracles.interpolate(real, fake, alpha)
    assert_close_report(out, exact, *TOLERANCES[dtype], what="x_hat")
    if dtype in LOW_PRECISION:
        # The flash-attention rule: no worse than twice eager PyTorch in the same precision.
        a = per_sample(alpha, real).to(dtype)
        naive = a * real + (1 - a) * fake
        assert_no_worse_than_reference(out, naive, exact, what="x_hat")


def test_mixed_layouts_of_real_and_fake(backend, device):
    real = make_input((3, 4, 5, 6), layout="channels_last", seed=1, device=device)
    fake = make_input((3, 4, 5, 6), layout="transposed", seed=2, device=device)
    alpha = _alpha(3, torch.float32, device)
    out = fastgp.interpolate(real, fake, alpha, backend=backend)
    assert_close_report(out, oracles.interpolate(real, fake, alpha), *TOLERANCES[torch.float32])
    assert_layout_of_empty_like(out, real)


@pytest.mark.parametrize(
    "layout", ["contiguous", "channels_last", "transposed", "sliced", "expanded"]
)
def test_output_layout_is_empty_like_real(backend, device, layout):
    real = make_input((2, 3, 4, 5), layout=layout, seed=3, device=device)
    fake = make_input((2, 3, 4, 5), layout=layout, seed=4, device=device)
    out = fastgp.interpolate(real, fake, 0.3, backend=backend)
    assert_layout_of_empty_like(out, real)
    alpha = torch.full((2,), 0.3, dtype=torch.float32)
    assert_close_report(out, oracles.interpolate(real, fake, alpha), *TOLERANCES[torch.float32])
    if layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("layout", ["channels_last", "transposed", "sliced", "expanded"])
def test_backward_kernel_output_layout(backend, device, layout):
    """Both input gradients are laid out as empty_like(grad_out) (the op contract)."""
    grad_out = make_input((3, 4, 5, 6), seed=1, layout=layout, device=device)
    alpha = _alpha(3, torch.float32, device)
    grads = kernels(backend, device).interpolate_backward(grad_out, alpha, True, True)
    assert len(grads) == 2
    for g, exact in zip(grads, oracles.interpolate_grads(grad_out, alpha), strict=True):
        assert_layout_of_empty_like(g, grad_out, what="interpolate_backward output")
        assert_close_report(g, exact, *TOLERANCES[torch.float32], what="interpolate_backward")


def test_alpha_forms(backend, device):
    shape = (5, 2, 3, 3)
    real, fake = make_input(shape, seed=1, device=device), make_input(shape, seed=2, device=device)
    alpha = _alpha(5, torch.float32, device)
    expected = oracles.interpolate(real, fake, alpha)
    tol = TOLERANCES[torch.float32]
    for form in (alpha, alpha.reshape(5, 1, 1, 1), alpha.double()):
        out = fastgp.interpolate(real, fake, form, backend=backend)
        assert_close_report(out, expected, *tol, what=f"alpha of shape {tuple(form.shape)}")
    out = fastgp.interpolate(real, fake, 0.25, backend=backend)
    assert_close_report(out, 0.25 * real + 0.75 * fake, *tol, what="float alpha")
    out = fastgp.interpolate(real, fake, 1.0, backend=backend)
    assert torch.equal(out, real)


def test_alpha_from_generator_is_reproducible(backend, device):
    shape = (6, 11)
    real, fake = make_input(shape, seed=1, device=device), make_input(shape, seed=2, device=device)
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
    assert_close_report(first, oracles.interpolate(real, fake, alpha), *TOLERANCES[torch.float32])


@pytest.mark.parametrize("dtype", (torch.float64, torch.float32, torch.bfloat16), ids=str)
@pytest.mark.parametrize(
    ("shape", "layout"),
    [((1, 1), "contiguous"), ((3, 2, 5, 4), "channels_last"), ((4, 3, 7), "transposed")],
    ids=["1x1", "channels_last", "transposed"],
)
@pytest.mark.parametrize("which", ["both", "real", "fake"])
def test_gradients_reach_real_and_fake(backend, device, dtype, shape, layout, which):
    alpha = _alpha(shape[0], dtype, device)
    weights = make_input(shape, dtype, seed=9, device=device)
    needs = {"real": which in ("both", "real"), "fake": which in ("both", "fake")}
    real = make_input(shape, dtype, 1, layout, requires_grad=needs["real"], device=device)
    fake = make_input(shape, dtype, 2, layout, requires_grad=needs["fake"], device=device)
    out = fastgp.interpolate(real, fake, alpha, backend=backend)
    assert out.requires_grad
    (out * weights).sum().backward()
    tol = TOLERANCES[dtype]
    assert_close_report(out, oracles.interpolate(real, fake, alpha), *tol, what="x_hat")
    exact = dict(zip(("real", "fake"), oracles.interpolate_grads(weights, alpha), strict=True))
    for name, leaf in (("real", real), ("fake", fake)):
        if not needs[name]:
            assert leaf.grad is None, f"{name} does not require grad but received one"
        else:
            assert leaf.grad.dtype == dtype
            assert_close_report(leaf.grad, exact[name], *tol, what=f"grad of {name}")


def test_backward_is_one_fused_call(kernel_backend, device):
    """Both input gradients come from a single interpolate_backward call."""
    real = make_input((3, 8), seed=1, requires_grad=True, device=device)
    fake = make_input((3, 8), seed=2, requires_grad=True, device=device)
    x_hat = fastgp.interpolate(real, fake, 0.5, backend=kernel_backend)
    with OpCalls() as ops:
        x_hat.sum().backward()
    assert ops.calls == ["interpolate_backward"]
    assert torch.equal(real.grad, torch.full_like(real, 0.5))


def test_gradient_reaches_alpha(backend, device):
    real, fake = (
        make_input((4, 6), seed=1, device=device),
        make_input((4, 6), seed=2, device=device),
    )
    alpha = _alpha(4, torch.float32, device).requires_grad_()
    weights = make_input((4, 6), seed=3, device=device)
    (fastgp.interpolate(real, fake, alpha, backend=backend) * weights).sum().backward()
    expected = ((real - fake) * weights).sum(dim=1)
    assert_close_report(alpha.grad, expected, *TOLERANCES[torch.float32], what="grad of alpha")


def test_no_grad_inputs_give_a_plain_tensor(backend, device):
    real, fake = (
        make_input((3, 4), seed=1, device=device),
        make_input((3, 4), seed=2, device=device),
    )
    out = fastgp.interpolate(real, fake, 0.5, backend=backend)
    assert not out.requires_grad and out.grad_fn is None
    assert_close_report(out, 0.5 * real + 0.5 * fake, *TOLERANCES[torch.float32])
