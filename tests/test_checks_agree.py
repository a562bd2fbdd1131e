"""The op contract is checked identically in Python and in C++, on every bad input.

``fastgp.validation`` (the CUDA/Triton kernels, the fake kernels, the reference) and
``csrc/fastgp_checks.h`` (the C++ CPU kernels) implement the same checks. Each case below
is run through the C++ op (CPU tensors), the Triton op under the interpreter (the same
Python wrapper a CUDA tensor reaches) and the fake kernel (what ``torch.compile`` traces):
all three must raise the same exception type with the same message, and that message must
name the argument. Device mismatches are checked on the Python side only: mixing a CPU and
a meta tensor dispatches to the fake kernel, never to the C++ one.
"""

from __future__ import annotations

import re

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from fastgp import ops, validation

P = (1.0, 10.0, 1.0, False)  # inv_scale, lambda_gp, center, one_sided


def _g(*shape, dtype=torch.float32):
    return torch.randn(shape, dtype=dtype)


# name -> (op name, arguments, expected exception type, a regex the message must match)
CASES = {
    "real int": (
        "interpolate",
        lambda: (_g(4, 3).int(), _g(4, 3).int(), _g(4)),
        TypeError,
        r"`real` must be float32, float64, float16 or bfloat16, got torch.int32",
    ),
    "real 0-dim": (
        "interpolate",
        lambda: (_g(), _g(), _g(1)),
        ValueError,
        r"`real` must have a batch dimension",
    ),
    "real empty batch": (
        "interpolate",
        lambda: (_g(0, 3), _g(0, 3), _g(0)),
        ValueError,
        r"`real` is an empty batch \(shape \[0, 3\]\); need B >= 1",
    ),
    "real empty sample": (
        "interpolate",
        lambda: (_g(4, 0), _g(4, 0), _g(4)),
        ValueError,
        r"`real` has samples with no elements \(shape \[4, 0\]\)",
    ),
    "fake dtype": (
        "interpolate",
        lambda: (_g(4, 3), _g(4, 3).half(), _g(4)),
        TypeError,
        r"`fake` must have the dtype of `real` \(torch.float32\), got torch.float16",
    ),
    "fake shape": (
        "interpolate",
        lambda: (_g(4, 3), _g(4, 2), _g(4)),
        ValueError,
        r"`fake` must have the shape of `real` \[4, 3\], got \[4, 2\]",
    ),
    "alpha shape": (
        "interpolate",
        lambda: (_g(4, 3), _g(4, 3), _g(3)),
        ValueError,
        r"`alpha` must have shape \(4,\), got \[3\]",
    ),
    "alpha 2-d": (
        "interpolate",
        lambda: (_g(4, 3), _g(4, 3), _g(4, 1)),
        ValueError,
        r"`alpha` must have shape \(4,\), got \[4, 1\]",
    ),
    "alpha dtype": (
        "interpolate",
        lambda: (_g(4, 3), _g(4, 3), _g(4).double()),
        TypeError,
        r"`alpha` must be torch.float32 for torch.float32 `real` \(the accumulation",
    ),
    "alpha dtype fp16": (
        "interpolate",
        lambda: (_g(4, 3).half(), _g(4, 3).half(), _g(4).half()),
        TypeError,
        r"`alpha` must be torch.float32 for torch.float16 `real`",
    ),
    "bwd grad_out int": (
        "interpolate_backward",
        lambda: (_g(4, 3).long(), _g(4), True, True),
        TypeError,
        r"`grad_out` must be float32",
    ),
    "bwd alpha dtype": (
        "interpolate_backward",
        lambda: (_g(4, 3), _g(4).half(), True, False),
        TypeError,
        r"`alpha` must be torch.float32 for torch.float32 `grad_out`",
    ),
    "bwd alpha shape": (
        "interpolate_backward",
        lambda: (_g(4, 3), _g(5), False, True),
        ValueError,
        r"`alpha` must have shape \(4,\), got \[5\]",
    ),
    "grads int": (
        "penalty_forward",
        lambda: ([_g(4, 3).int()], None, *P, 1),
        TypeError,
        r"`grads` must be float32",
    ),
    "grads empty batch": (
        "penalty_forward",
        lambda: ([_g(0, 3)], None, *P, 1),
        ValueError,
        r"`grads` is an empty batch",
    ),
    "grads[1] empty sample": (
        "penalty_forward",
        lambda: ([_g(4, 3), _g(4, 0)], None, *P, 1),
        ValueError,
        r"`grads\[1\]` has samples with no elements",
    ),
    "grads[1] dtype": (
        "penalty_forward",
        lambda: ([_g(4, 3), _g(4, 3).double()], None, *P, 1),
        TypeError,
        r"`grads\[1\]` has dtype torch.float64 but `grads\[0\]` has",
    ),
    "grads[1] batch": (
        "penalty_forward",
        lambda: ([_g(4, 3), _g(5, 3)], None, *P, 1),
        ValueError,
        r"`grads\[1\]` has batch size 5 but `grads\[0\]` has 4",
    ),
    "pac zero": (
        "penalty_forward",
        lambda: ([_g(4, 3)], None, *P, 0),
        ValueError,
        r"`pac` must be a positive integer, got 0",
    ),
    "pac divides": (
        "penalty_forward",
        lambda: ([_g(4, 3)], None, *P, 3),
        ValueError,
        r"`pac`=3 must divide the batch size B=4",
    ),
    "grad_scale int": (
        "penalty_forward",
        lambda: ([_g(4, 3)], torch.tensor(2), *P, 1),
        TypeError,
        r"`grad_scale` must be a floating-point tensor",
    ),
    "grad_scale numel": (
        "penalty_forward",
        lambda: ([_g(4, 3)], _g(2), *P, 1),
        ValueError,
        r"`grad_scale` must have one element, got shape \[2\]",
    ),
    "norms shape": (
        "penalty_backward",
        lambda: (_g(), [_g(4, 3)], _g(3), None, *P, 1),
        ValueError,
        r"`norms` must have shape \(4,\), got \[3\]",
    ),
    "norms shape pac": (
        "penalty_backward",
        lambda: (_g(), [_g(4, 3)], _g(4), None, *P, 2),
        ValueError,
        r"`norms` must have shape \(2,\), got \[4\]",
    ),
    "norms dtype": (
        "penalty_backward",
        lambda: (_g(), [_g(4, 3)], _g(4).double(), None, *P, 1),
        TypeError,
        r"`norms` must be torch.float32 for torch.float32 `grads`",
    ),
    "grad_penalty numel": (
        "penalty_backward",
        lambda: (_g(2), [_g(4, 3)], _g(4), None, *P, 1),
        ValueError,
        r"`grad_penalty` must have one element, got shape \[2\]",
    ),
    "grad_penalty dtype": (
        "penalty_backward",
        lambda: (_g().double(), [_g(4, 3)], _g(4), None, *P, 1),
        TypeError,
        r"`grad_penalty` must be torch.float32 for torch.float32",
    ),
    "backward grads": (
        "penalty_backward",
        lambda: (_g(), [_g(4, 3), _g(2, 3)], _g(4), None, *P, 1),
        ValueError,
        r"`grads\[1\]` has batch size 2",
    ),
}

DEVICE_CASES = {
    "fake device": (
        "interpolate",
        lambda: (_g(4, 3), _g(4, 3).to("meta"), _g(4)),
        r"`fake` must be on the device of `real` \(cpu\), got meta",
    ),
    "alpha device": (
        "interpolate",
        lambda: (_g(4, 3), _g(4, 3), _g(4).to("meta")),
        r"`alpha` must be on the device of `real` \(cpu\), got meta",
    ),
    "grads[1] device": (
        "penalty_forward",
        lambda: ([_g(4, 3), _g(4, 3).to("meta")], None, *P, 1),
        r"`grads\[1\]` is on meta but `grads\[0\]` is on cpu",
    ),
    "grad_scale device": (
        "penalty_forward",
        lambda: ([_g(4, 3)], torch.tensor(2.0, device="meta"), *P, 1),
        r"`grad_scale` must be on the device of the gradients \(cpu\)",
    ),
}


def _raised(call) -> BaseException:
    with pytest.raises(Exception) as info:
        call()
    return info.value


def _fake_args(args, mode):
    def convert(x):
        if isinstance(x, torch.Tensor):
            return mode.from_tensor(x)
        if isinstance(x, list):
            return [convert(t) for t in x]
        return x

    return tuple(convert(a) for a in args)


@pytest.mark.usefixtures("cpp_built")
@pytest.mark.parametrize("case", list(CASES))
def test_cpp_python_and_fake_kernels_raise_the_same_error(case):
    name, make_args, error, pattern = CASES[case]
    args = make_args()
    cpp_op = getattr(ops.op_namespace("cpp", torch.device("cpu")), name).default
    triton_op = getattr(ops.op_namespace("triton", torch.device("cpu")), name).default
    cpp = _raised(lambda: cpp_op(*args))
    python = _raised(lambda: triton_op(*args))
    with FakeTensorMode() as mode:
        fake = _raised(lambda: getattr(torch.ops.fastgp, name).default(*_fake_args(args, mode)))
    for side, exc in (("C++", cpp), ("Python", python), ("fake kernel", fake)):
        assert type(exc) is error, f"{side}: {type(exc).__name__}: {exc}"
        assert str(exc).startswith("fastgp: "), f"{side}: {exc}"
    assert str(cpp) == str(python) == str(fake)
    assert re.search(pattern, str(cpp)), str(cpp)


def test_an_empty_gradient_list_is_named():
    # The dispatcher cannot route a call without tensors, so only the Python contract (run
    # by the reference and, for tuples, by penalty_from_grads's own check) sees this.
    with pytest.raises(ValueError, match=r"`grads` must hold at least one tensor"):
        validation.check_penalty([], None, 1)


@pytest.mark.parametrize("case", list(DEVICE_CASES))
def test_device_mismatches_are_named(case):
    name, make_args, pattern = DEVICE_CASES[case]
    with pytest.raises(ValueError, match=pattern):
        getattr(torch.ops.fastgp, name).default(*make_args())
