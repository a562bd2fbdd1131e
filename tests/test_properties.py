"""Property tests: on random shapes, layouts and options every backend agrees with the
float64 oracles of tests/oracles.py.

The default run tries a few derandomized examples per backend; the slow run many more.
"""

from __future__ import annotations

import oracles
import pytest
import torch
from helpers import (
    TOLERANCES,
    assert_close_report,
    assert_layout_of_empty_like,
    grad_leaf,
    make_input,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastgp
from fastgp.backends.reference import accumulation_dtype

# `backend` and `device` are plain values: reusing them across examples is safe.
FEW = settings(
    max_examples=8,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
MANY = settings(FEW, max_examples=150)


@st.composite
def gradient_specs(draw, batch: int, dtype: torch.dtype) -> list[dict]:
    """1 or 2 ``make_input`` specs (B, *) of 0-3 sample dims, contiguous or a non-contiguous
    view. Specs, not tensors: the test makes them on its device (a view's layout would not
    survive a copy to another device)."""
    specs = []
    for _ in range(draw(st.integers(1, 2))):
        sample = tuple(draw(st.lists(st.integers(1, 7), min_size=0, max_size=3)))
        layouts = ["contiguous", "sliced", "expanded"] if sample else ["contiguous"]
        if len(sample) >= 2:
            layouts.append("transposed")
        if len(sample) == 3:
            layouts.append("channels_last")
        specs.append(
            {
                "shape": (batch, *sample),
                "dtype": dtype,
                "layout": draw(st.sampled_from(layouts)),
                "seed": draw(st.integers(0, 2**16)),
                "scale": draw(st.sampled_from([0.05, 0.3, 1.0])),
            }
        )
    return specs


@st.composite
def penalty_cases(draw) -> dict:
    pac = draw(st.integers(1, 3))
    batch = pac * draw(st.integers(1, 3))
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16]))
    return {
        "grads": draw(gradient_specs(batch, dtype)),
        "pac": pac,
        "center": draw(st.sampled_from([0.0, 1.0, 0.37])),
        "one_sided": draw(st.booleans()),
        "lambda_gp": draw(st.sampled_from([10.0, 0.5])),
        "scale": draw(st.sampled_from([1.0, 8.0])),
    }


def _check_penalty(backend: str, device: torch.device, case: dict) -> None:
    grads = [make_input(**spec, device=device) for spec in case["grads"]]
    options = {k: case[k] for k in ("pac", "center", "one_sided", "lambda_gp")}
    # Scaling keeps dense layouts; the unscaled layouts are covered with scale 1.
    scaled = [grad_leaf(g * case["scale"] if case["scale"] != 1.0 else g) for g in grads]
    penalty, norms = fastgp.penalty_from_grads(
        tuple(scaled), grad_scale=case["scale"], return_norms=True, backend=backend, **options
    )
    penalty.backward()
    values = [g.detach() for g in scaled]
    exact_penalty, exact_norms = oracles.penalty(values, scale=case["scale"], **options)
    exact_dgrads = oracles.penalty_gradient(values, scale=case["scale"], **options)
    dtype = grads[0].dtype
    acc_tol = TOLERANCES[accumulation_dtype(dtype)]
    assert_close_report(penalty, exact_penalty, *acc_tol, what="penalty")
    assert_close_report(norms, exact_norms, *acc_tol, what="norms")
    for i, (g, want) in enumerate(zip(scaled, exact_dgrads, strict=True)):
        assert_close_report(g.grad, want, *TOLERANCES[dtype], what=f"dP/dg[{i}]")


@FEW
@given(case=penalty_cases())
def test_penalty_agrees_with_oracle(backend, device, case):
    _check_penalty(backend, device, case)


@pytest.mark.slow
@MANY
@given(case=penalty_cases())
def test_penalty_agrees_with_oracle_many(backend, device, case):
    _check_penalty(backend, device, case)


@st.composite
def interpolate_cases(draw) -> dict:
    batch = draw(st.integers(1, 5))
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.float16]))
    real = draw(gradient_specs(batch, dtype))[0]
    # fake has real's shape but its own layout: mixed layouts must work too.
    fake = {"shape": real["shape"], "dtype": dtype, "seed": draw(st.integers(0, 99))}
    transpose_fake = len(real["shape"]) >= 3 and draw(st.booleans())
    alpha = torch.rand(
        batch,
        generator=torch.Generator().manual_seed(draw(st.integers(0, 99))),
        dtype=accumulation_dtype(dtype),
    )
    return {
        "real": real,
        "fake": fake,
        "transpose_fake": transpose_fake,
        "alpha": alpha,
        "grad": draw(st.booleans()),
    }


def _check_interpolate(backend: str, device: torch.device, case: dict) -> None:
    real = make_input(**case["real"], requires_grad=case["grad"], device=device)
    fake = make_input(**case["fake"], device=device)
    if case["transpose_fake"]:
        fake = fake.transpose(-1, -2).contiguous().transpose(-1, -2)
    fake.requires_grad_(case["grad"])
    alpha = case["alpha"].to(device)
    out = fastgp.interpolate(real, fake, alpha, backend=backend)
    tol = TOLERANCES[real.dtype]
    assert_close_report(out, oracles.interpolate(real, fake, alpha), *tol, what="x_hat")
    assert_layout_of_empty_like(out, real)
    if case["grad"]:
        weights = torch.ones_like(out) * 0.5
        out.backward(weights)
        grad_real, grad_fake = oracles.interpolate_grads(weights, alpha)
        assert_close_report(real.grad, grad_real, *tol, what="grad of real")
        assert_close_report(fake.grad, grad_fake, *tol, what="grad of fake")


@FEW
@given(case=interpolate_cases())
def test_interpolate_agrees_with_oracle(backend, device, case):
    _check_interpolate(backend, device, case)


@pytest.mark.slow
@MANY
@given(case=interpolate_cases())
def test_interpolate_agrees_with_oracle_many(backend, device, case):
    _check_interpolate(backend, device, case)
