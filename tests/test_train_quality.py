"""The quality bar of the trainer issue, with the default settings (slow: minutes each).

``fastgp train`` with no options (25gaussians) must cover all 25 modes with at least 50%
high-quality samples, and ``--dataset 8gaussians`` all 8 with at least 90%, measured by
the protocol of VEEGAN/PacGAN/GDPP (2,500 samples of the EMA generator, high quality
within 3 standard deviations of the nearest mode). These tests run exactly the default
configuration (only the run directory, progress bar and TensorBoard are set).
"""

from __future__ import annotations

import json

import pytest

from fastgp.train.cli import main_train

pytestmark = pytest.mark.slow


def run_default(tmp_path, *extra: str) -> dict:
    run = tmp_path / "run"
    argv = ["--run-dir", str(run), "--no-progress", "--no-tensorboard", *extra]
    assert main_train(argv) == 0
    return json.loads((run / "eval.json").read_text())


def test_default_run_covers_the_25_gaussian_grid(tmp_path):
    result = run_default(tmp_path)
    assert result["num_samples"] == 2500
    assert result["modes_covered"] == 25, result
    assert result["hq_fraction"] >= 0.5, result


def test_8_gaussian_ring(tmp_path):
    result = run_default(tmp_path, "--dataset", "8gaussians")
    assert result["modes_covered"] == 8, result
    assert result["hq_fraction"] >= 0.9, result
