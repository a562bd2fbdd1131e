"""The Triton launchers against the float64 oracles, on the test device: CPU tensors through
Triton's interpreter by default, CUDA tensors through the compiled kernels with
``FASTGP_TEST_DEVICE=cuda`` (tests/conftest.py).

Every comparison uses fresh random inputs. Low precision (fp32, fp16, bf16) follows the
flash-attention rule: the kernel's error against the float64 oracle (tests/oracles.py) may
be at most twice the error of the pure PyTorch reference run in the same precision (plus one
ulp of the result), both measured on the same inputs; fp64 must match the oracle tightly.
tests/conftest.py sets ``FASTGP_DEBUG_POISON=1`` before triton is imported, so an element a
kernel forgets to write is NaN and fails the comparison.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import oracles
import pytest
import torch
from helpers import assert_close_report, assert_no_worse_than_reference
from torch import Tensor

from fastgp.backends import reference
from fastgp.backends import triton as triton_backend

# The package re-exports functions named like its modules, so fetch the modules by path.
interpolate_module = importlib.import_module("fastgp.backends.triton.interpolate")
penalty_module = importlib.import_module("fastgp.backends.triton.penalty")


@pytest.fixture(autouse=True)
def _triton_runs_the_test_device(device: torch.device) -> None:
    """Fails (never skips) when Triton cannot run the test device; ``device`` itself skips
    when FASTGP_TEST_DEVICE=cuda and there is no CUDA device."""
    reason = triton_backend.availability(device)
    if reason is not None:
        pytest.fail(f"Triton cannot run {device} tensors: {reason}", pytrace=False)
    if not interpolate_module._POISON:
        pytest.fail("FASTGP_DEBUG_POISON=1 must be set before fastgp's Triton backend loads")


# ---------------------------------------------------------------------------- comparisons


def _check(name: str, kernel: Tensor, low_reference: Tensor, oracle: Tensor) -> None:
    """fp64: tight against the oracle; otherwise the flash-attention rule (see the top)."""
    assert kernel.dtype == low_reference.dtype, f"{name}: dtype {kernel.dtype}"
    if kernel.dtype == torch.float64:
        assert_close_report(kernel, oracle, atol=1e-12, rtol=1e-12, what=name)
    else:
        assert kernel.shape == low_reference.shape, f"{name}: shape {tuple(kernel.shape)}"
        assert_no_worse_than_reference(kernel, low_reference, oracle, what=name)


# ---------------------------------------------------------------------------- penalty


@dataclass(frozen=True)
class PenaltyCase:
    shapes: tuple[tuple[int, ...], ...]  # one (B, *) shape per gradient tensor
    pac: int = 1
    one_sided: bool = False
    center: float = 1.0
    inv_scale: float = 1.0
    lambda_gp: float = 10.0
    grad_scale: float = 1.0  # gradients are drawn this much larger (as under a GradScaler)


PENALTY_CASES = {
    # 4,440 elements per row: several 1,024-column chunks per sample, last one partial.
    "multi_chunk_rows": PenaltyCase(((2, 3, 40, 37),)),
    "batch_of_one": PenaltyCase(((1, 3, 32, 33),)),
    "one_element": PenaltyCase(((1, 1),)),
    "odd_sizes": PenaltyCase(((7, 5, 3),)),
    # Many groups: the finalize program loops over several blocks of groups.
    "many_small_rows": PenaltyCase(((3000, 2),)),
    "several_inputs": PenaltyCase(((6, 3, 9, 9), (6, 10), (6,))),
    "pac": PenaltyCase(((8, 5, 7), (8, 3)), pac=4),
    "one_sided": PenaltyCase(((16, 15),), one_sided=True, inv_scale=0.25),
    "center_zero": PenaltyCase(((5, 33),), center=0.0, lambda_gp=0.5),
    "inv_scale": PenaltyCase(((4, 300),), inv_scale=1 / 1024, grad_scale=1024.0),
}


def _penalty_grads(
    case: PenaltyCase, dtype: torch.dtype, seed: int, device: torch.device
) -> list[Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(shape, generator=gen, dtype=torch.float64) * case.grad_scale).to(device, dtype)
        for shape in case.shapes
    ]


def _params(case: PenaltyCase) -> tuple[float, float, float, bool, int]:
    return case.inv_scale, case.lambda_gp, case.center, case.one_sided, case.pac


def _oracle_options(case: PenaltyCase) -> dict:
    return {
        "lambda_gp": case.lambda_gp,
        "center": case.center,
        "one_sided": case.one_sided,
        "pac": case.pac,
        "scale": 1.0 / case.inv_scale,
    }


def _check_penalty(case: PenaltyCase, grads: list[Tensor]) -> None:
    """Forward and backward of the Triton kernels vs the oracle, on ``grads`` as given."""
    params = _params(case)
    acc = reference.accumulation_dtype(grads[0].dtype)
    grad_penalty = torch.tensor(0.75, dtype=acc, device=grads[0].device)
    penalty, norms = triton_backend.penalty_forward(grads, None, *params)
    ref_penalty, ref_norms = reference.penalty_forward(grads, None, *params)
    oracle_penalty, oracle_norms = oracles.penalty(grads, **_oracle_options(case))
    _check("penalty", penalty, ref_penalty, oracle_penalty)
    _check("norms", norms, ref_norms, oracle_norms)

    dgrads = triton_backend.penalty_backward(grad_penalty, grads, norms, None, *params)
    ref_dgrads = reference.penalty_backward(grad_penalty, grads, ref_norms, None, *params)
    oracle_dgrads = oracles.penalty_gradient(grads, **_oracle_options(case), upstream=0.75)
    assert len(dgrads) == len(grads)
    for i, (d, ref, oracle, g) in enumerate(
        zip(dgrads, ref_dgrads, oracle_dgrads, grads, strict=True)
    ):
        assert d.stride() == torch.empty_like(g).stride(), f"grad {i}: layout {d.stride()}"
        _check(f"dgrad[{i}]", d, ref, oracle)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("case", PENALTY_CASES.values(), ids=PENALTY_CASES.keys())
def test_penalty_matches_oracle(case: PenaltyCase, dtype: torch.dtype, device) -> None:
    _check_penalty(case, _penalty_grads(case, dtype, seed=1, device=device))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("name", ["multi_chunk_rows", "pac", "one_sided", "inv_scale"])
def test_penalty_low_precision(name: str, dtype: torch.dtype, device) -> None:
    case = PENALTY_CASES[name]
    _check_penalty(case, _penalty_grads(case, dtype, seed=2, device=device))


def test_penalty_one_sided_clamps_only_small_norms(device) -> None:
    """The one_sided case really has norms on both sides of center (else it tests nothing)."""
    case = PENALTY_CASES["one_sided"]
    _, norms = triton_backend.penalty_forward(
        _penalty_grads(case, torch.float32, 1, device), None, *_params(case)
    )
    assert (norms < case.center).any() and (norms > case.center).any()


def test_penalty_zero_rows_follow_norm_zero_convention(device) -> None:
    """Samples whose gradient is exactly 0: norm 0, a finite penalty, dP/dg exactly 0."""
    grads = _penalty_grads(PenaltyCase(((6, 3, 5, 5), (6, 4))), torch.float32, 3, device)
    for g in grads:
        g[1] = 0
        g[4] = 0
    case = PenaltyCase(((6, 3, 5, 5), (6, 4)))
    _check_penalty(case, grads)
    penalty, norms = triton_backend.penalty_forward(grads, None, *_params(case))
    assert norms[1] == 0 and norms[4] == 0 and penalty.isfinite()
    one = torch.tensor(1.0, device=device)
    dgrads = triton_backend.penalty_backward(one, grads, norms, None, *_params(case))
    for d in dgrads:
        assert torch.equal(d[1], torch.zeros_like(d[1])) and torch.equal(
            d[4], torch.zeros_like(d[4])
        )


def test_penalty_all_zero_grads_pac(device) -> None:
    """Every group norm 0 with pac > 1: penalty = lambda * center**2, gradient all zeros."""
    grads = [torch.zeros(4, 3, 7, device=device), torch.zeros(4, 2, device=device)]
    penalty, norms = triton_backend.penalty_forward(grads, None, 1.0, 10.0, 1.0, False, 2)
    assert torch.equal(norms, torch.zeros(2, device=device)) and penalty.item() == 10.0
    dgrads = triton_backend.penalty_backward(
        torch.tensor(1.0, device=device), grads, norms, None, 1.0, 10.0, 1.0, False, 2
    )
    assert all(torch.equal(d, torch.zeros_like(d)) for d in dgrads)


def test_penalty_loops_with_small_tiles(monkeypatch: pytest.MonkeyPatch, device) -> None:
    """Shrunken tiles drive every loop through several iterations on small inputs: a
    program summing several tiles of a row, the finalize looping over groups and over
    partial columns, a row split into many chunks."""
    monkeypatch.setattr(interpolate_module, "_SMALL_TILE", 64)
    monkeypatch.setattr(penalty_module, "_TARGET_PROGRAMS", 3)
    monkeypatch.setattr(penalty_module, "_FINALIZE_TILE", 8)
    monkeypatch.setattr(penalty_module, "_FINALIZE_MAX_COLS", 2)
    case = PenaltyCase(((6, 3, 11, 13), (6, 70)), pac=2, one_sided=True)
    for dtype in (torch.float32, torch.float64):
        _check_penalty(case, _penalty_grads(case, dtype, seed=4, device=device))


@pytest.mark.parametrize("layout", ["channels_last", "sliced", "transposed_batch", "mixed"])
def test_penalty_layouts(layout: str, device) -> None:
    gen = torch.Generator().manual_seed(5)
    base = torch.randn(5, 3, 9, 11, generator=gen).to(device)
    other = torch.randn(5, 4, 6, generator=gen).to(device)
    if layout == "channels_last":
        grads = [base.to(memory_format=torch.channels_last), other]
    elif layout == "sliced":
        grads = [base[:, :, ::2], other[:, 1:]]
    elif layout == "transposed_batch":
        grads = [
            base.permute(1, 0, 2, 3).contiguous().permute(1, 0, 2, 3),
            other.mT.contiguous().mT,
        ]
    else:
        grads = [base.to(memory_format=torch.channels_last), other.transpose(1, 2)]
    case = PenaltyCase(tuple(tuple(g.shape) for g in grads), pac=5)
    _check_penalty(case, grads)


def test_penalty_deterministic(device) -> None:
    case = PenaltyCase(((3, 3, 40, 37), (3, 129)), pac=3)
    grads = _penalty_grads(case, torch.float32, seed=6, device=device)
    first = triton_backend.penalty_forward(grads, None, *_params(case))
    second = triton_backend.penalty_forward(grads, None, *_params(case))
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    gp = torch.tensor(1.0, device=device)
    first_d = triton_backend.penalty_backward(gp, grads, first[1], None, *_params(case))
    second_d = triton_backend.penalty_backward(gp, grads, first[1], None, *_params(case))
    assert all(torch.equal(a, b) for a, b in zip(first_d, second_d, strict=True))


# ---------------------------------------------------------------------------- interpolate

INTERPOLATE_SHAPES = {
    "multi_chunk_rows": (2, 3, 40, 37),
    "batch_of_one": (1, 3, 32, 33),
    "one_element": (1, 1),
    "odd_sizes": (7, 5, 3),
    "many_small_rows": (1500, 2),
    "vector_batch": (9,),
}


def _pair(
    shape: tuple[int, ...], dtype: torch.dtype, seed: int, device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """real, fake (B, *) and alpha (B,), drawn on CPU (the same on every device)."""
    gen = torch.Generator().manual_seed(seed)
    real = torch.randn(shape, generator=gen, dtype=torch.float64).to(device, dtype)
    fake = torch.randn(shape, generator=gen, dtype=torch.float64).to(device, dtype)
    acc = reference.accumulation_dtype(dtype)
    alpha = torch.rand(shape[0], generator=gen, dtype=acc).to(device)
    return real, fake, alpha


def _check_interpolate(real: Tensor, fake: Tensor, alpha: Tensor) -> None:
    out = triton_backend.interpolate(real, fake, alpha)
    assert out.stride() == torch.empty_like(real).stride(), f"layout {out.stride()}"
    _check(
        "x_hat",
        out,
        reference.interpolate(real, fake, alpha),
        oracles.interpolate(real, fake, alpha),
    )


def _check_interpolate_backward(grad_out: Tensor, alpha: Tensor) -> None:
    for need_real, need_fake in ((True, True), (True, False), (False, True)):
        got = triton_backend.interpolate_backward(grad_out, alpha, need_real, need_fake)
        ref = reference.interpolate_backward(grad_out, alpha, need_real, need_fake)
        exact_real, exact_fake = oracles.interpolate_grads(grad_out, alpha)
        oracle = [exact_real] * need_real + [exact_fake] * need_fake
        assert len(got) == int(need_real) + int(need_fake)
        for i, (g, r, o) in enumerate(zip(got, ref, oracle, strict=True)):
            assert g.stride() == torch.empty_like(grad_out).stride(), f"layout {g.stride()}"
            _check(f"interpolate_backward[{need_real}, {need_fake}][{i}]", g, r, o)
    assert triton_backend.interpolate_backward(grad_out, alpha, False, False) == []


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("shape", INTERPOLATE_SHAPES.values(), ids=INTERPOLATE_SHAPES.keys())
def test_interpolate_matches_oracle(shape: tuple[int, ...], dtype: torch.dtype, device) -> None:
    real, fake, alpha = _pair(shape, dtype, 7, device)
    _check_interpolate(real, fake, alpha)
    _check_interpolate_backward(real, alpha)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("name", ["multi_chunk_rows", "odd_sizes"])
def test_interpolate_low_precision(name: str, dtype: torch.dtype, device) -> None:
    real, fake, alpha = _pair(INTERPOLATE_SHAPES[name], dtype, 8, device)
    _check_interpolate(real, fake, alpha)
    _check_interpolate_backward(fake, alpha)


def test_interpolate_alpha_extremes(device) -> None:
    """alpha = 1 gives real and alpha = 0 gives fake, exactly."""
    real, fake, _ = _pair((3, 2, 7), torch.float32, 9, device)
    out = triton_backend.interpolate(real, fake, torch.tensor([1.0, 0.0, 1.0], device=device))
    assert torch.equal(out[0], real[0]) and torch.equal(out[1], fake[1])


@pytest.mark.parametrize("layout", ["channels_last", "sliced", "transposed_batch", "mixed"])
def test_interpolate_layouts(layout: str, device) -> None:
    real, fake, alpha = _pair((4, 3, 9, 11), torch.float32, 10, device)
    if layout == "channels_last":
        real = real.to(memory_format=torch.channels_last)
        fake = fake.to(memory_format=torch.channels_last)
    elif layout == "sliced":
        real, fake = real[:, :, ::2], fake[:, :, :5]
    elif layout == "transposed_batch":
        real = real.permute(1, 0, 2, 3).contiguous().permute(1, 0, 2, 3)
        fake = fake.permute(1, 0, 2, 3).contiguous().permute(1, 0, 2, 3)
    else:
        real = real.to(memory_format=torch.channels_last)
    _check_interpolate(real, fake, alpha)
    _check_interpolate_backward(real, alpha)


# ---------------------------------------------------------------------------- no copies


class _LaunchSpy:
    """Stands in for a ``@triton.jit`` kernel: records the tensors of each launch, then
    launches the real kernel on ``grid`` (or on ``grid`` minus its last program)."""

    def __init__(self, kernel, drop_last_program: bool = False) -> None:
        self.kernel = kernel
        self.drop_last_program = drop_last_program
        self.launches: list[list[Tensor]] = []

    def __getitem__(self, grid: tuple[int, ...]):
        if self.drop_last_program:
            grid = (grid[0] - 1,)

        def launch(*args, **kwargs):
            self.launches.append([a for a in args if isinstance(a, Tensor)])
            return self.kernel[grid](*args, **kwargs)

        return launch


def _spy(monkeypatch: pytest.MonkeyPatch, module, name: str, **kwargs) -> _LaunchSpy:
    spy = _LaunchSpy(getattr(module, name), **kwargs)
    monkeypatch.setattr(module, name, spy)
    return spy


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_dense_layouts_are_not_copied(
    monkeypatch: pytest.MonkeyPatch, memory_format: torch.memory_format, device
) -> None:
    """Dense batch-outermost tensors reach the kernels as views of the caller's memory, and
    the kernels write straight into the returned tensors."""
    real, fake, alpha = _pair((3, 4, 5, 6), torch.float32, 11, device)
    real = real.to(memory_format=memory_format)
    fake = fake.to(memory_format=memory_format)
    fwd = _spy(monkeypatch, interpolate_module, "_interpolate_kernel")
    bwd = _spy(monkeypatch, interpolate_module, "_interpolate_backward_kernel")
    sumsq = _spy(monkeypatch, penalty_module, "_penalty_sum_squares_kernel")
    pbwd = _spy(monkeypatch, penalty_module, "_penalty_backward_kernel")

    out = triton_backend.interpolate(real, fake, alpha)
    grad_real, grad_fake = triton_backend.interpolate_backward(real, alpha, True, True)
    _, norms = triton_backend.penalty_forward([real, fake], None, 1.0, 10.0, 1.0, False, 1)
    (dreal,) = triton_backend.penalty_backward(
        torch.tensor(1.0, device=device), [real], norms, None, 1.0, 10.0, 1.0, False, 1
    )

    def ptrs(launch: list[Tensor]) -> list[int]:
        return [t.data_ptr() for t in launch]

    assert ptrs(fwd.launches[0])[:2] == [real.data_ptr(), fake.data_ptr()]
    assert out.data_ptr() in ptrs(fwd.launches[0])
    assert ptrs(bwd.launches[0])[0] == real.data_ptr()
    assert {grad_real.data_ptr(), grad_fake.data_ptr()} <= set(ptrs(bwd.launches[0]))
    assert [launch[0].data_ptr() for launch in sumsq.launches] == [
        real.data_ptr(),
        fake.data_ptr(),
    ]
    assert ptrs(pbwd.launches[0])[0] == real.data_ptr()
    assert dreal.data_ptr() in ptrs(pbwd.launches[0])
    assert out.is_contiguous(memory_format=memory_format)
    assert dreal.is_contiguous(memory_format=memory_format)


# ---------------------------------------------------------------------------- poison


def test_poison_fills_kernel_outputs_with_nan(device) -> None:
    buffer = interpolate_module._kernel_output(torch.zeros(3, 5, device=device))
    assert buffer.isnan().all()


@pytest.mark.parametrize("kernel", ["interpolate", "interpolate_backward", "penalty_backward"])
def test_poison_exposes_unwritten_elements(
    monkeypatch: pytest.MonkeyPatch, kernel: str, device
) -> None:
    """Launching one program too few leaves NaN in the output: the poison is effective, so
    every passing comparison above proves each output element was written."""
    real, fake, alpha = _pair((3, 2000), torch.float32, 12, device)
    if kernel == "interpolate":
        _spy(monkeypatch, interpolate_module, "_interpolate_kernel", drop_last_program=True)
        outs = [triton_backend.interpolate(real, fake, alpha)]
    elif kernel == "interpolate_backward":
        _spy(
            monkeypatch, interpolate_module, "_interpolate_backward_kernel", drop_last_program=True
        )
        outs = triton_backend.interpolate_backward(real, alpha, True, True)
    else:
        _, norms = triton_backend.penalty_forward([real], None, 1.0, 10.0, 1.0, False, 1)
        _spy(monkeypatch, penalty_module, "_penalty_backward_kernel", drop_last_program=True)
        outs = triton_backend.penalty_backward(
            torch.tensor(1.0, device=device), [real], norms, None, 1.0, 10.0, 1.0, False, 1
        )
    for out in outs:
        assert out[-1, -1].isnan() and not out[0, :1024].isnan().any()


def test_poison_exposes_unwritten_partial_sums(monkeypatch: pytest.MonkeyPatch, device) -> None:
    real, _, _ = _pair((3, 2000), torch.float32, 13, device)
    _spy(monkeypatch, penalty_module, "_penalty_sum_squares_kernel", drop_last_program=True)
    penalty, norms = triton_backend.penalty_forward([real], None, 1.0, 10.0, 1.0, False, 1)
    assert norms[-1].isnan() and penalty.isnan() and not norms[0].isnan()


# ---------------------------------------------------------------------------- large (slow)


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(1, 3, 256, 256), (6, 3, 256, 256)], ids=["B1", "B6"])
def test_large_samples_match_oracle(shape: tuple[int, ...], device) -> None:
    """Full-size image samples (the large-tile path once B*D >= 1M elements)."""
    case = PenaltyCase((shape,), pac=1)
    _check_penalty(case, _penalty_grads(case, torch.float32, seed=14, device=device))
    real, fake, alpha = _pair(shape, torch.bfloat16, 15, device)
    _check_interpolate(real, fake, alpha)
    _check_interpolate_backward(real, alpha)


@pytest.mark.slow
def test_large_batch_many_chunks_low_precision(device) -> None:
    case = PenaltyCase(((64, 3, 64, 64), (64, 10)), pac=2)
    _check_penalty(case, _penalty_grads(case, torch.float16, seed=16, device=device))
