"""Resuming continues exactly: N steps == N/2 steps + resume to N (parameters, optimiser
state and logged losses bit-identical), and Ctrl-C saves a checkpoint and exits cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fastgp.train.cli import main_train
from fastgp.train.run.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from fastgp.train.run.run_log import read_metrics

VOLATILE = {"time", "samples_per_s", "steps_per_s"}  # wall-clock fields differ run to run


def tiny(run_dir: Path, steps: int, *extra: str, backend: str = "torch") -> list[str]:
    return [
        "--dataset", "25gaussians", "--steps", str(steps), "--batch-size", "32", "--nf", "16",
        "--nf-g", "16",
        "--n-critic", "3", "--lazy-reg", "2", "--lr-schedule", "constant", "--ema", "0.9",
        "--ema-start", "2", "--replay-size", "64", "--log-every", "2", "--sample-every", "0",
        "--eval-every", "0", "--checkpoint-every", "3", "--eval-samples", "100",
        "--backend", backend, "--no-tensorboard", "--no-progress", "--run-dir", str(run_dir),
        # Eager in every process: a subprocess would compile the toy MLP (--compile auto),
        # and compiled steps are not bit-identical to eager ones (test_train_compile.py
        # checks compiled -> compiled resume).
        "--compile", "off",
        *extra,
    ]  # fmt: skip


def assert_same_state(a: dict, b: dict, path: str = "") -> None:
    """Tensors equal exactly (same dtype, same bits), everything else equal."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype, path
        assert torch.equal(a, b), f"{path} differs"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_same_state(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_state(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def training_lines(run_dir: Path) -> list[dict]:
    records = read_metrics(run_dir / "metrics.jsonl")
    return [
        {k: v for k, v in r.items() if k not in VOLATILE} for r in records if r["kind"] == "train"
    ]


def final_state(run_dir: Path) -> dict:
    state = load_checkpoint(latest_checkpoint(run_dir))
    state.pop("config")  # run_dir differs
    for rank in state["ranks"]:
        # Training never draws from Python's or NumPy's global RNG; their states depend on
        # the process the run happened in (pytest vs a subprocess), so they are not compared.
        rank["rng"].pop("python")
        rank["rng"].pop("numpy")
    return state


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_resume_is_bit_identical(tmp_path, request, backend):
    if backend == "cpp":
        request.getfixturevalue("cpp_built")
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert main_train(tiny(whole, 8, backend=backend)) == 0
    assert main_train(tiny(split, 4, "--checkpoint-every", "4", backend=backend)) == 0
    assert main_train(["--resume", str(split), "--steps", "8", "--no-progress"]) == 0
    assert_same_state(final_state(whole), final_state(split))
    lines = training_lines(whole)
    assert [r["step"] for r in lines] == [2, 4, 6, 8]
    assert lines == training_lines(split)  # the same losses, logged once per step


def test_rerunning_into_a_run_dir_resumes(tmp_path, capsys):
    run = tmp_path / "run"
    assert main_train(tiny(run, 3)) == 0
    capsys.readouterr()
    assert main_train(tiny(run, 6)) == 0
    out = capsys.readouterr().out
    assert "resuming at step 3" in out and "finished 6 steps" in out
    assert [s for s, _ in list_checkpoints(run)] == [3, 6]


def test_resume_refuses_changed_settings(tmp_path, capsys):
    run = tmp_path / "run"
    assert main_train(tiny(run, 3)) == 0
    capsys.readouterr()
    assert main_train(tiny(run, 6, "--lr-g", "0.01")) == 2
    err = capsys.readouterr().err
    assert "--lr-g" in err and "cannot resume" in err
    assert main_train(["--resume", str(tmp_path / "empty"), "--no-progress"]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    run = tmp_path / "run"
    args = tiny(run, 100000, "--checkpoint-every", "0", "--log-every", "1")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastgp", "train", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 120
        metrics = run / "metrics.jsonl"
        while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err
    assert "interrupted at step" in err and "--resume" in err
    saved = list_checkpoints(run)
    assert len(saved) == 1
    step = saved[0][0]
    assert step >= 2 and f"interrupted at step {step}/" in err
    assert load_checkpoint(saved[0][1])["step"] == step


@pytest.mark.slow
def test_resume_after_ctrl_c_matches_an_uninterrupted_run(tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert main_train(tiny(whole, 12)) == 0
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastgp", "train", *tiny(split, 12, "--checkpoint-every", "0")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    metrics = split / "metrics.jsonl"
    while not (metrics.exists() and metrics.read_text().count("\n") >= 1):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode in (0, 130)
    assert main_train(["--resume", str(split), "--no-progress"]) == 0
    assert_same_state(final_state(whole), final_state(split))
