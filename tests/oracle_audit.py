"""A pytest plugin that counts tests whose expected value is the implementation under test.

``python -m pytest -p tests.oracle_audit`` (add ``-m slow`` for the slow tests) prints, at the
end of the run, every test that ran the pure PyTorch reference as the backend under test
(``fastgp.ops.interpolate`` / ``fastgp.ops.penalty`` called with ``"torch"``) *and* called a
function of ``fastgp.backends.reference`` from test code (``tests/``) to compute what it
compares with: such a test compares the reference with itself and cannot fail when the
reference is wrong. It also counts the tests that run a fused backend through the same entry
points with the reference as their expected value (a cross-check, not a self-comparison;
kernel-level tests that call the kernels directly are not counted).

Nothing else changes: the wrappers only count calls, then call the original functions
(and do nothing while ``torch.compile`` traces). Not seen: a test comparing two public calls
that both resolve to ``"torch"`` (read the tests for those).
"""

from __future__ import annotations

import functools
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

_TESTS = str(Path(__file__).resolve().parent)
_ORACLE_FUNCTIONS = (
    "interpolate",
    "interpolate_backward",
    "penalty_forward",
    "penalty_backward",
    "penalty_grads",
)
_state = {"reference_calls": 0, "backends": set()}
_results: dict[str, tuple[int, frozenset]] = {}


def _from_test_code() -> bool:
    return sys._getframe(2).f_code.co_filename.startswith(_TESTS)


def _count_reference(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not torch.compiler.is_compiling() and _from_test_code():
            _state["reference_calls"] += 1
        return fn(*args, **kwargs)

    return wrapper


def _record_backend(fn):
    @functools.wraps(fn)
    def wrapper(backend, *args, **kwargs):
        if not torch.compiler.is_compiling():  # what dynamo traces stays as it was
            _state["backends"].add(backend)
        return fn(backend, *args, **kwargs)

    return wrapper


def pytest_configure(config: pytest.Config) -> None:
    from fastgp import ops
    from fastgp.backends import reference

    for name in _ORACLE_FUNCTIONS:
        setattr(reference, name, _count_reference(getattr(reference, name)))
    for name in ("interpolate", "penalty"):
        setattr(ops, name, _record_backend(getattr(ops, name)))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    _state["reference_calls"] = 0
    _state["backends"] = set()
    try:
        return (yield)
    finally:
        _results[item.nodeid] = (_state["reference_calls"], frozenset(_state["backends"]))


def pytest_terminal_summary(terminalreporter) -> None:
    self_compared = sorted(n for n, (calls, b) in _results.items() if calls and "torch" in b)
    cross_checked = sorted(n for n, (calls, b) in _results.items() if calls and b - {"torch"})
    write = terminalreporter.write_line
    write("")
    write(f"oracle audit: {len(_results)} tests ran")
    write(f"  reference compared with itself: {len(self_compared)}")
    for path, count in sorted(Counter(n.split("::")[0] for n in self_compared).items()):
        write(f"    {path}: {count}")
    for nodeid in self_compared:
        write(f"      {nodeid}")
    write(f"  reference as the expected value of a fused backend: {len(cross_checked)}")
