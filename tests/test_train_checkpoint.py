"""fastgp.train.run.checkpoint (atomic writes, crash leftovers, pruning, safe loading) and
the RNG state of fastgp.train.run.streams."""

from __future__ import annotations

import json
import os
import random
import warnings

import numpy as np
import pytest
import torch

from fastgp.train.run.checkpoint import (
    CheckpointError,
    atomic_write,
    checkpoint_path,
    checkpoint_problem,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from fastgp.train.run.streams import restore_rng_state, rng_state


def _state(step: int) -> dict:
    return {"step": step, "weights": torch.full((64,), float(step)), "meta": {"name": "x"}}


def test_save_then_load_round_trip_and_layout(tmp_path):
    path = save_checkpoint(tmp_path, 12, _state(12))
    assert path == tmp_path / "checkpoints" / "step-00000012.pt" == checkpoint_path(tmp_path, 12)
    last = json.loads((tmp_path / "checkpoints" / "last.json").read_text())
    assert last == {"step": 12, "file": "step-00000012.pt"}
    state = load_checkpoint(path)
    assert state["step"] == 12 and state["meta"] == {"name": "x"}
    torch.testing.assert_close(state["weights"], torch.full((64,), 12.0))
    assert latest_checkpoint(tmp_path) == path
    assert [p.name for p in (tmp_path / "checkpoints").iterdir() if p.suffix == ".tmp"] == []


def test_keep_last_prunes_older_checkpoints(tmp_path):
    for step in (1, 2, 3, 4, 5):
        save_checkpoint(tmp_path, step, _state(step), keep_last=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4, 5]
    save_checkpoint(tmp_path, 6, _state(6), keep_last=1)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [6]


def test_resaving_an_earlier_step_deletes_the_abandoned_later_ones(tmp_path):
    for step in (10, 20, 30):
        save_checkpoint(tmp_path, step, _state(step))
    with pytest.warns(UserWarning, match="step-00000030.pt"):
        save_checkpoint(tmp_path, 25, _state(25))
    assert [s for s, _ in list_checkpoints(tmp_path)] == [10, 20, 25]
    assert latest_checkpoint(tmp_path) == checkpoint_path(tmp_path, 25)


def test_crash_leftovers_are_ignored_and_a_truncated_checkpoint_falls_back(tmp_path):
    save_checkpoint(tmp_path, 100, _state(100))
    good = save_checkpoint(tmp_path, 200, _state(200))
    directory = tmp_path / "checkpoints"
    # A write interrupted before its rename: a temp file for step 300.
    (directory / ".step-00000300.pt.abc123.tmp").write_bytes(good.read_bytes()[:100])
    assert latest_checkpoint(tmp_path) == good
    # A newer checkpoint truncated by a failing disk (not by fastgp, whose writes are
    # atomic), and last.json pointing at it.
    truncated = checkpoint_path(tmp_path, 300)
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (directory / "last.json").write_text(json.dumps({"step": 300, "file": truncated.name}))
    with pytest.warns(UserWarning, match=r"step-00000300.pt is unreadable .*previous one"):
        assert latest_checkpoint(tmp_path) == good
    assert load_checkpoint(good)["step"] == 200
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*step-00000300.pt"):
        load_checkpoint(truncated)


def test_corrupted_bytes_are_caught_by_the_crc_check(tmp_path):
    save_checkpoint(tmp_path, 1, _state(1))
    path = save_checkpoint(tmp_path, 2, _state(2))
    data = bytearray(path.read_bytes())
    where = data.find(torch.full((64,), 2.0).numpy().tobytes())
    assert where > 0
    data[where + 10] ^= 0xFF  # flip bits inside the tensor payload, keep the size
    path.write_bytes(bytes(data))
    assert "CRC" in checkpoint_problem(path)
    with pytest.warns(UserWarning, match="unreadable"):
        assert latest_checkpoint(tmp_path) == checkpoint_path(tmp_path, 1)


def test_no_checkpoints_and_only_bad_ones(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.json").write_text("{not json")
    assert latest_checkpoint(tmp_path) is None
    checkpoint_path(tmp_path, 1).write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="none left"):
        assert latest_checkpoint(tmp_path) is None


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    path = tmp_path / "f.bin"
    atomic_write(path, lambda f: f.write(b"old"))

    def failing(f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, failing)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


class _Arbitrary:
    """A class a weights_only load must refuse to construct."""


def test_loading_is_weights_only(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"obj": _Arbitrary()}, path)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(path)
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="not a dict"):
        load_checkpoint(tmp_path / "list.pt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="`step`"):
        save_checkpoint(tmp_path, -1, {})
    with pytest.raises(ValueError, match="`keep_last`"):
        save_checkpoint(tmp_path, 1, {}, keep_last=0)
    with pytest.raises(TypeError, match="`state` must be a dict"):
        save_checkpoint(tmp_path, 1, [1])
    with pytest.raises(TypeError, match="generator 0"):
        rng_state(3)


def _draw(*generators):
    return (
        [random.random() for _ in range(3)],
        np.random.rand(3).tolist(),
        np.random.randn(1).tolist(),
        torch.rand(3).tolist(),
        [torch.rand(3, generator=g).tolist() for g in generators],
    )


def test_rng_round_trip_through_a_checkpoint_reproduces_the_draws(tmp_path):
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    random.gauss(0, 1)  # leave a cached Gaussian in Python's state
    np.random.randn(1)  # and possibly in NumPy's
    save_checkpoint(tmp_path, 1, {"rng": rng_state(g1, g2)})
    expected = _draw(g1, g2)
    _draw(g1, g2)  # move every stream on
    restore_rng_state(load_checkpoint(latest_checkpoint(tmp_path))["rng"], g1, g2)
    assert _draw(g1, g2) == expected


def test_restore_needs_the_same_generators():
    state = rng_state(torch.Generator())
    with pytest.raises(ValueError, match="1 generator states but 0 generators"):
        restore_rng_state(state)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no CUDA state captured on a CPU-only machine
        restore_rng_state(state, torch.Generator())


def test_atomic_files_get_the_usual_permissions(tmp_path):
    mask = os.umask(0o022)
    os.umask(mask)
    path = atomic_write(tmp_path / "p.bin", lambda f: f.write(b"x"))
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask
