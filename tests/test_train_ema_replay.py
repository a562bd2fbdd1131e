"""fastgp.train.gan.ema and fastgp.train.gan.replay: averaging math, start step, replay
mixing, state."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from fastgp.train.gan.ema import EMA
from fastgp.train.gan.replay import ReplayBuffer, replace_samples


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor([1.0, -2.0]))
        self.register_buffer("count", torch.tensor(0))

    def forward(self, x):
        return x * self.weight


def _set(model: _Tiny, values, count: int) -> None:
    with torch.no_grad():
        model.weight.copy_(torch.tensor(values))
        model.count.fill_(count)


def test_ema_math_by_hand():
    model = _Tiny()
    ema = EMA(model, decay=0.9)
    _set(model, [2.0, 0.0], 1)
    ema.update(model, step=1)
    # 0.9 * [1, -2] + 0.1 * [2, 0]
    torch.testing.assert_close(ema.model.weight, torch.tensor([1.1, -1.8]))
    _set(model, [0.0, 10.0], 2)
    ema.update(model, step=2)
    torch.testing.assert_close(ema.model.weight, torch.tensor([0.99, -0.62]))
    assert ema.model.count.item() == 2  # buffers are copied, not averaged


def test_ema_copy_is_separate_frozen_and_in_eval_mode():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    ema = EMA(model)
    assert not ema.model.training and model.training
    assert all(not p.requires_grad for p in ema.model.parameters())
    with torch.no_grad():
        model[0].weight.add_(1.0)
    assert not torch.equal(ema.model[0].weight, model[0].weight)


def test_ema_copies_before_start_step_then_averages():
    model = _Tiny()
    ema = EMA(model, decay=0.5, start_step=3)
    for step, values in ((1, [5.0, 5.0]), (2, [7.0, 9.0])):
        _set(model, values, step)
        ema.update(model, step)
        torch.testing.assert_close(ema.model.weight, torch.tensor(values))
    _set(model, [1.0, 1.0], 3)
    ema.update(model, 3)
    torch.testing.assert_close(ema.model.weight, torch.tensor([4.0, 5.0]))


def test_ema_state_round_trip_through_torch_save():
    model = _Tiny()
    ema = EMA(model, decay=0.8, start_step=1)
    _set(model, [3.0, 3.0], 4)
    ema.update(model, 5)
    buffer = io.BytesIO()
    torch.save(ema.state_dict(), buffer)
    buffer.seek(0)
    restored = EMA(_Tiny(), decay=0.1)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.decay == 0.8 and restored.start_step == 1
    torch.testing.assert_close(restored.model.weight, ema.model.weight)
    _set(model, [0.0, 0.0], 5)
    ema.update(model, 6)
    restored.update(model, 6)
    torch.testing.assert_close(restored.model.weight, ema.model.weight, rtol=0, atol=0)


def test_ema_errors():
    with pytest.raises(ValueError, match="`decay`"):
        EMA(_Tiny(), decay=1.0)
    with pytest.raises(ValueError, match="`start_step`"):
        EMA(_Tiny(), start_step=-1)
    with pytest.raises(TypeError, match="`model`"):
        EMA(object())
    with pytest.raises(ValueError, match="does not have the parameters"):
        EMA(_Tiny()).update(nn.Linear(2, 2), 1)
    with pytest.raises(KeyError, match="decay"):
        EMA(_Tiny()).load_state_dict({"model": {}})


def _fakes(step: int, b: int = 4) -> torch.Tensor:
    """A batch whose every value is a unique id: 100 * step + sample index."""
    return (100 * step + torch.arange(b, dtype=torch.float32)).view(b, 1).expand(b, 3).clone()


def _mix(buffer: ReplayBuffer, fake: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return buffer.mix(fake, buffer.draw(fake.shape[0], gen))


def _run(buffer: ReplayBuffer, gen: torch.Generator, steps: int) -> list[torch.Tensor]:
    return [_mix(buffer, _fakes(step), gen) for step in range(steps)]


def _seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_replay_is_deterministic_given_the_generator():
    a = _run(ReplayBuffer(6, 0.5), _seeded(), 8)
    b = _run(ReplayBuffer(6, 0.5), _seeded(), 8)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    replayed = sum(int((x[:, 0] < 100 * step).sum()) for step, x in enumerate(a))
    assert 0 < replayed < 4 * 7  # some, not all, samples of steps 1..7 came from the buffer


def test_replay_draws_nothing_while_there_is_nothing_to_mix():
    gen = _seeded()
    before = gen.get_state()
    assert ReplayBuffer(6, 0.5).draw(4, gen) is None  # empty
    full = ReplayBuffer(6, 0.0)
    full.store(_fakes(0))
    assert full.draw(4, gen) is None  # prob 0
    assert torch.equal(gen.get_state(), before)
    mixing = ReplayBuffer(6, 0.5)
    mixing.store(_fakes(0))
    swap, index = mixing.draw(5, gen)
    assert swap.shape == index.shape == (5,) and swap.dtype == torch.bool
    assert int(index.min()) >= 0 and int(index.max()) < 4  # only the 4 samples stored


def test_replace_samples_is_the_mix_and_store_is_separate():
    buffer, gen = ReplayBuffer(8, 0.5), _seeded(5)
    buffer.store(_fakes(0))
    draw = buffer.draw(4, gen)
    by_parts = replace_samples(_fakes(1), draw.swap, buffer.replayed(draw.index))
    same = ReplayBuffer(8, 0.5)
    same.store(_fakes(0))
    torch.testing.assert_close(same.mix(_fakes(1), draw), by_parts, rtol=0, atol=0)
    expected = torch.where(draw.swap[:, None], _fakes(0)[draw.index], _fakes(1))
    torch.testing.assert_close(by_parts, expected, rtol=0, atol=0)
    assert len(buffer) == 4  # replace_samples stored nothing; mix stored its batch
    assert len(same) == 8


def test_replay_prob_zero_never_replaces_and_prob_one_always_does_once_filled():
    for step, x in enumerate(_run(ReplayBuffer(8, 0.0), _seeded(), 5)):
        torch.testing.assert_close(x, _fakes(step), rtol=0, atol=0)
    out = _run(ReplayBuffer(8, 1.0), _seeded(), 5)
    torch.testing.assert_close(out[0], _fakes(0), rtol=0, atol=0)  # empty buffer: kept
    for step in range(1, 5):
        ids = out[step][:, 0]
        assert bool((ids < 100 * step).all())  # every sample is an older fake
        # Only samples still in the ring (capacity 8 = the two previous batches) appear.
        assert bool((ids >= 100 * max(0, step - 2)).all())


def test_replay_ring_keeps_the_newest_capacity_samples_and_detaches():
    buffer, gen = ReplayBuffer(6, 1.0), _seeded()
    fake = _fakes(0).requires_grad_()
    _mix(buffer, fake, gen)
    _mix(buffer, _fakes(1), gen)
    assert len(buffer) == 6 and not buffer.buffer.requires_grad
    stored = sorted(buffer.buffer[:, 0].tolist())
    assert stored == [2.0, 3.0, 100.0, 101.0, 102.0, 103.0]
    big = ReplayBuffer(3, 0.0)
    big.store(_fakes(5, b=7))
    assert sorted(big.buffer[:, 0].tolist()) == [504.0, 505.0, 506.0]


def test_replay_keeps_the_autograd_history_of_kept_samples():
    buffer = ReplayBuffer(4, 0.0)
    fake = _fakes(0).requires_grad_()
    out = _mix(buffer, fake, _seeded())
    out.sum().backward()
    torch.testing.assert_close(fake.grad, torch.ones_like(fake))


def test_replay_state_round_trip_continues_identically():
    gen = _seeded(3)
    buffer = ReplayBuffer(5, 0.5)
    _run(buffer, gen, 3)
    state, gen_state = buffer.state_dict(), gen.get_state()
    blob = io.BytesIO()
    torch.save(state, blob)
    blob.seek(0)
    expected = [_mix(buffer, _fakes(s), gen) for s in range(3, 6)]

    gen2 = torch.Generator()
    gen2.set_state(gen_state)
    restored = ReplayBuffer(5, 0.5)
    restored.load_state_dict(torch.load(blob, weights_only=True))
    assert len(restored) == 5
    for s, x in zip(range(3, 6), expected, strict=True):
        torch.testing.assert_close(_mix(restored, _fakes(s), gen2), x, rtol=0, atol=0)
    empty = ReplayBuffer(5, 0.5)
    empty.load_state_dict(ReplayBuffer(5, 0.5).state_dict())
    assert len(empty) == 0 and empty.buffer is None


def test_replay_errors():
    with pytest.raises(ValueError, match="`capacity`"):
        ReplayBuffer(0, 0.5)
    with pytest.raises(ValueError, match="`prob`"):
        ReplayBuffer(4, 1.5)
    buffer = ReplayBuffer(4, 0.5)
    with pytest.raises(TypeError, match="`generator`"):
        buffer.draw(2, 0)
    with pytest.raises(ValueError, match="empty"):
        buffer.replayed(torch.zeros(2, dtype=torch.int64))
    buffer.mix(torch.zeros(2, 3), None)
    with pytest.raises(ValueError, match="shape"):
        buffer.mix(torch.zeros(2, 4), None)
    with pytest.raises(ValueError, match="shape"):
        buffer.store(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="capacity 4"):
        ReplayBuffer(5, 0.5).load_state_dict(buffer.state_dict())


def test_recompute_norm_statistics_are_those_of_the_averaged_weights():
    """After averaging, the copy's batch-norm statistics are the plain mean and (unbiased)
    variance of its own pre-norm activations over the given batches; not the live model's,
    the momentum is kept and the copy is left in eval mode."""
    torch.manual_seed(0)
    live = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU())
    ema = EMA(live, decay=0.5)
    live.train()
    with torch.no_grad():
        live[0].weight.add_(1.0)  # the live weights move away from the copy's
        live(torch.randn(32, 3))  # and the live statistics follow them
    ema.update(live, step=1)
    assert torch.equal(ema.model[1].running_mean, live[1].running_mean)  # copied
    assert ema.has_norm_statistics and ema.norm_statistics_stale
    batches = [torch.randn(16, 3, generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    ema.recompute_norm_statistics(batches)
    with torch.no_grad():
        pre = [ema.model[0](b) for b in batches]  # the averaged weights' activations
    mean = torch.stack([p.mean(0) for p in pre]).mean(0)
    var = torch.stack([p.var(0, unbiased=True) for p in pre]).mean(0)
    torch.testing.assert_close(ema.model[1].running_mean, mean)
    torch.testing.assert_close(ema.model[1].running_var, var)
    assert not torch.allclose(ema.model[1].running_mean, live[1].running_mean)
    assert ema.model[1].momentum == 0.1 and not ema.model.training
    assert not ema.norm_statistics_stale
    ema.update(live, step=2)  # copies the live statistics again
    assert ema.norm_statistics_stale


def test_recompute_norm_statistics_without_batch_norm_is_a_no_op():
    ema = EMA(_Tiny())
    assert not ema.has_norm_statistics and not ema.norm_statistics_stale
    before = {k: v.clone() for k, v in ema.model.state_dict().items()}
    ema.recompute_norm_statistics([torch.randn(2, 1)])
    assert all(torch.equal(v, before[k]) for k, v in ema.model.state_dict().items())
