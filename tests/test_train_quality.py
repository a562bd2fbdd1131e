"""The quality bars of the trainer issue, with the default settings (slow: minutes each).

``fastgp train`` with no options (25gaussians) must cover all 25 modes with at least 90%
high-quality samples and a reverse KL of at most 0.04 (PacGAN4's published 24.8 modes,
93.6%, 0.04), and ``--dataset 8gaussians`` all 8 with at least 95%, measured by the
protocol of VEEGAN/PacGAN/GDPP (2,500 samples of the EMA generator, high quality within 3
standard deviations of the nearest mode). These tests run exactly the default command in
its own process (only the run directory, progress bar and TensorBoard are set), so
``--compile auto`` compiles as it does for a user.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def run_default(tmp_path, *extra: str) -> dict:
    run = tmp_path / "run"
    argv = ["--run-dir", str(run), "--no-progress", "--no-tensorboard", *extra]
    done = subprocess.run(
        [sys.executable, "-m", "fastgp", "train", *argv], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "compile: default" in done.stdout  # the default run compiles (auto) on CPU
    return json.loads((run / "eval.json").read_text())


def test_default_run_covers_the_25_gaussian_grid(tmp_path):
    result = run_default(tmp_path)
    assert result["num_samples"] == 2500
    assert result["modes_covered"] == 25, result
    assert result["hq_fraction"] >= 0.9, result
    assert result["reverse_kl"] <= 0.04, result


def test_8_gaussian_ring(tmp_path):
    result = run_default(tmp_path, "--dataset", "8gaussians")
    assert result["modes_covered"] == 8, result
    assert result["hq_fraction"] >= 0.95, result
