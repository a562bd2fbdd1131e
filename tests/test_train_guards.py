"""fastgp.train.run.guards and the device-side interval means of fastgp.train.run.run_log.

The guard records the *first* failed check on the device: its step, quantity and value
survive later failures and are what a read, however much later, reports. The interval means
equal the Python-float sums they replaced, bit for bit, and skip masked values.
"""

from __future__ import annotations

import math

import pytest
import torch

from fastgp.train.gan.steps import CriticOutput, GeneratorOutput
from fastgp.train.run.guards import (
    MIN_LOSS_SCALE,
    Check,
    FiniteGuard,
    NonFiniteError,
    critic_checks,
    generator_checks,
)
from fastgp.train.run.run_log import IntervalMeans

NAN, INF = float("nan"), float("inf")


def t(value: float) -> torch.Tensor:
    return torch.tensor(value)


def critic_round(loss: float = 0.5, penalty: float = 0.1, grad: float = 2.0) -> list[Check]:
    return [
        Check("critic loss", t(loss)),
        Check("gp penalty", t(penalty)),
        Check("critic gradient", t(grad)),
    ]


def test_nothing_failed_reads_none():
    guard = FiniteGuard("cpu")
    for step in range(1, 20):
        guard.observe(step, critic_round())
        guard.observe(step, [Check("generator loss", t(-1.0))])
    assert guard.read() is None
    guard.observe(20, [])  # nothing to check
    assert guard.read() is None


def test_the_first_failure_is_kept_and_read_later():
    guard = FiniteGuard("cpu")
    for step in range(1, 11):
        guard.observe(step, critic_round(grad=NAN if step == 4 else 2.0))
        guard.observe(step, [Check("generator loss", t(INF if step >= 6 else 1.0))])
        if step == 2:
            assert guard.read() is None  # reading does not disturb the record
    failure = guard.read()
    assert (failure.step, failure.quantity) == (4, "critic gradient")
    assert math.isnan(failure.value)
    # 3 checks of step 4's critic round come after 3 rounds of 4 checks: order 12 + 2.
    assert failure.order == 3 * 4 + 2
    assert guard.read()[:3] == failure[:3]  # a read changes nothing (nan != nan)


def test_within_one_observe_the_first_bad_check_wins_and_its_value_is_kept():
    guard = FiniteGuard("cpu")
    guard.observe(7, critic_round(loss=INF, penalty=NAN, grad=NAN))
    failure = guard.read()
    assert (failure.step, failure.quantity, failure.value) == (7, "critic loss", INF)
    guard = FiniteGuard("cpu")
    guard.observe(3, critic_round(penalty=-INF, grad=NAN))
    assert guard.read()[1:] == (3, "gp penalty", -INF)


def test_explicit_bad_flags_and_the_messages():
    guard = FiniteGuard("cpu")
    small = torch.tensor(2.0**-20)
    guard.observe(5, [Check("critic loss", t(1.0)), Check("scale", small, small < 2.0**-16)])
    failure = guard.read()
    assert (failure.step, failure.quantity, failure.value) == (5, "scale", 2.0**-20)
    message = str(NonFiniteError(failure.quantity, failure.step, failure.value))
    assert message == "scale is not finite in generator step 5"  # a finite value: not shown
    assert str(NonFiniteError("critic loss", 4, NAN)) == (
        "critic loss is not finite (nan) in generator step 4"
    )
    assert (
        str(NonFiniteError("a model weight", 9))
        == "a model weight is not finite in generator step 9"
    )


def test_quantity_names_survive_several_lists_of_checks():
    guard = FiniteGuard("cpu")
    guard.observe(1, critic_round())
    guard.observe(1, [Check("generator loss", t(1.0)), Check("generator gradient", t(1.0))])
    guard.observe(2, [Check("generator loss", t(1.0)), Check("generator gradient", t(NAN))])
    guard.observe(3, critic_round(loss=NAN))
    assert guard.read()[1:3] == (2, "generator gradient")


def test_values_of_any_float_dtype_are_checked():
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        guard = FiniteGuard("cpu")
        guard.observe(1, [Check("critic loss", torch.tensor(65504.0, dtype=dtype))])
        guard.observe(2, [Check("critic loss", torch.tensor(INF, dtype=dtype))])
        assert guard.read()[1] == 2, dtype


def _critic_out(penalty=None) -> CriticOutput:
    return CriticOutput(t(0.5), t(0.5), penalty, None, t(3.0), torch.zeros(2, 2))


def test_what_is_checked_with_and_without_fp16():
    plain = torch.amp.GradScaler("cpu", enabled=False)
    names = [c.quantity for c in critic_checks(_critic_out(t(0.1)), "r1", plain)]
    assert names == ["critic loss", "r1 penalty", "critic gradient"]
    assert [c.quantity for c in critic_checks(_critic_out(), "gp", plain)] == [
        "critic loss",
        "critic gradient",
    ]
    generator = GeneratorOutput(t(1.0), t(2.0))
    assert [c.quantity for c in generator_checks(generator, plain)] == [
        "generator loss",
        "generator gradient",
    ]
    # fp16: overflowing gradients and penalties are the scaler's to skip; a scale that fell
    # below 2**-16 is not.
    fp16 = torch.amp.GradScaler("cpu", init_scale=2.0**-17)
    fp16.scale(torch.ones(()))  # the scale exists once used
    checks = critic_checks(_critic_out(t(INF)), "gp", fp16)
    assert [c.quantity for c in checks] == [
        "critic loss",
        "critic gradient (fp16 loss scale fell below 2**-16)",
    ]
    guard = FiniteGuard("cpu")
    guard.observe(8, checks)
    assert guard.read()[1:] == (8, checks[1].quantity, 2.0**-17)
    healthy = torch.amp.GradScaler("cpu", init_scale=MIN_LOSS_SCALE)
    healthy.scale(torch.ones(()))
    guard = FiniteGuard("cpu")
    guard.observe(1, generator_checks(generator, healthy))
    assert guard.read() is None


# ------------------------------------------------------------------ interval means


def test_interval_means_equal_the_python_float_sums_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    draws = torch.randn(50, generator=g) * 1e3  # fp32 values, as a step reports them
    means = IntervalMeans("cpu")
    total = 0.0
    for value in draws:
        means.add({"loss": value, "lr": 0.001})
        total += float(value)
    read = means.read()
    assert read["loss"] == total / 50  # exact, not approximately
    assert read["lr"] == sum([0.001] * 50) / 50


def test_masked_values_are_skipped_and_unseen_keys_dropped():
    means = IntervalMeans("cpu")
    means.add({"loss": t(1.0), "gp": t(2.0)}, valid=torch.tensor([True, True]))
    means.add({"loss": t(3.0), "gp": t(INF)}, valid=torch.tensor([True, False]))
    assert means.read() == {"gp": 2.0, "loss": 2.0}
    only_masked = IntervalMeans("cpu")
    only_masked.add({"gp": t(NAN)}, valid=torch.tensor(False))
    assert only_masked.read() == {}
    m, seen = only_masked.mean_tensors()
    assert float(m["gp"]) == 0.0 and not bool(seen["gp"])


def test_means_of_means_skip_what_never_counted():
    # The trainer's two levels: per generator step the mean over its critic updates.
    outer, inner = IntervalMeans("cpu"), IntervalMeans("cpu")
    expected = {"loss": 0.0, "gp": 0.0}
    for step in range(3):
        inner.zero_()
        for update in range(4):
            values = {"loss": t(step + update / 8)}
            if step != 1:  # no penalty in step 1 (lazy regularisation)
                values["gp"] = t(10.0 * step + update)
            inner.add(values)
        outer.add_means(inner)
        outer.add({"lr": 0.5 * step})
        expected["loss"] += sum(float(t(step + u / 8)) for u in range(4)) / 4
        if step != 1:
            expected["gp"] += sum(10.0 * step + u for u in range(4)) / 4
    read = outer.read()
    assert read == {"gp": expected["gp"] / 2, "loss": expected["loss"] / 3, "lr": 0.5}
    keys, vector = outer.mean_vector()
    flat = dict(zip(keys, vector.tolist()[: len(keys)], strict=True))
    assert flat == read  # the vector summed over ranks: means, then 1.0 flags
    assert vector.tolist()[len(keys) :] == [1.0, 1.0, 1.0]


def test_keys_may_come_in_any_combination():
    means = IntervalMeans("cpu")
    means.add({"a": t(1.0), "b": t(2.0)})
    means.add({"b": t(4.0), "a": t(3.0)})  # other order: slots by index
    means.add({"c": t(5.0), "a": t(5.0)})
    assert means.read() == {"a": 3.0, "b": 3.0, "c": 5.0}
    with pytest.raises(ValueError, match="as a tensor before"):
        means.add({"a": 1.0})


def test_interval_means_state_round_trip_and_old_integer_counts():
    means = IntervalMeans("cpu")
    for v in (0.1, 0.2, 0.7):
        means.add({"a": t(v)})
    state = means.state_dict()
    restored = IntervalMeans("cpu")
    restored.load_state_dict(state)
    for v in (0.4, 0.5):
        means.add({"a": t(v)})
        restored.add({"a": t(v)})
    assert restored.read() == means.read()
    old = IntervalMeans("cpu")  # checkpoints written before the means moved to the device
    old.load_state_dict({"sums": {"a": 1.5}, "counts": {"a": 3}})
    assert old.read() == {"a": 0.5}
    means.reset()
    assert means.read() == {} and means.state_dict() == {"sums": {}, "counts": {}}


@pytest.mark.parametrize("name", ["read", "state_dict"])
def test_reading_the_means_is_one_host_transfer(monkeypatch, name):
    means = IntervalMeans("cpu")
    for key in ("a", "b", "c"):
        means.add({key: t(1.0)})
    reads = []
    original = torch.Tensor.tolist

    def spy(self):
        reads.append(self.shape)
        return original(self)

    monkeypatch.setattr(torch.Tensor, "tolist", spy)
    getattr(means, name)()
    assert reads == [torch.Size([6])]
