"""fastgp.train.evaluation.metrics: mode coverage on exact and collapsed samplers, exact W1
on clouds whose answer is known, and evaluate_generator's determinism and mode handling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from fastgp.train.data import load_dataset
from fastgp.train.evaluation.metrics import (
    MAX_W1_POINTS,
    evaluate_generator,
    image_statistics,
    toy_metrics,
    wasserstein1_exact,
)
from fastgp.train.models import build_models


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def numpy_mode_counts(samples: np.ndarray, modes: np.ndarray, radius: float) -> np.ndarray:
    """HQ samples per mode, computed independently with numpy broadcasting."""
    distance = np.linalg.norm(samples[:, None, :] - modes[None, :, :], axis=-1)
    nearest = distance.argmin(axis=1)
    hq = distance[np.arange(len(samples)), nearest] <= radius
    return np.bincount(nearest[hq], minlength=len(modes))


# --------------------------------------------------------------------------- toy_metrics


@pytest.mark.parametrize("name", ["8gaussians", "25gaussians"])
def test_exact_sampler_covers_every_mode(name):
    data = load_dataset(name)
    samples = data.sample(2500, gen(0), "cpu")
    result = toy_metrics(samples, data.modes, data.mode_std)
    k = len(data.modes)
    assert result["num_modes"] == k and result["modes_covered"] == k
    # P(chi2 with 2 dof <= 9) = 1 - exp(-4.5) = 0.9889.
    assert result["hq_fraction"] == pytest.approx(1 - math.exp(-4.5), abs=0.01)
    # Multinomial noise alone: E[KL] ~ (K - 1) / (2 N_hq).
    assert 0 <= result["reverse_kl"] < 5 * (k - 1) / (2 * 2500)
    expected = numpy_mode_counts(samples.numpy(), data.modes.numpy(), 3 * data.mode_std)
    assert result["mode_counts"] == expected.tolist()


def test_collapsed_sampler_covers_one_mode():
    data = load_dataset("25gaussians")
    one_mode = data.modes[7] + data.mode_std * torch.randn(1000, 2, generator=gen(1))
    result = toy_metrics(one_mode, data.modes, data.mode_std)
    assert result["modes_covered"] == 1
    assert result["reverse_kl"] == pytest.approx(math.log(25))
    assert result["mode_counts"][7] == sum(result["mode_counts"])


def test_half_the_modes_gives_log_two_and_thresholds():
    data = load_dataset("8gaussians")
    modes = data.modes
    # 100 exact centres on modes 0-3, 3 on mode 4 and one point far from everything.
    points = torch.cat([modes[:4].repeat(25, 1), modes[4:5].repeat(3, 1), torch.tensor([[9.0, 9]])])
    result = toy_metrics(points, modes, data.mode_std)
    assert result["modes_covered"] == 5
    assert result["hq_fraction"] == pytest.approx(103 / 104)
    q = torch.tensor([25, 25, 25, 25, 3], dtype=torch.float64) / 103
    assert result["reverse_kl"] == pytest.approx(float((q * torch.log(q * 8)).sum()))
    assert toy_metrics(points, modes, data.mode_std, min_count=4)["modes_covered"] == 4
    # A wider HQ radius changes nothing here; a radius below the offsets drops them.
    shifted = points + 2.5 * data.mode_std
    assert toy_metrics(shifted, modes, data.mode_std)["hq_fraction"] == 0
    assert toy_metrics(shifted, modes, data.mode_std, hq_sigmas=4.0)["modes_covered"] == 5


def test_no_high_quality_sample_and_non_finite_samples():
    data = load_dataset("8gaussians")
    far = torch.full((10, 2), 50.0)
    far[0] = float("nan")
    result = toy_metrics(far, data.modes, data.mode_std)
    assert result["modes_covered"] == 0 and result["hq_fraction"] == 0
    assert result["reverse_kl"] == pytest.approx(math.log(8))


def test_toy_metrics_errors():
    modes = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="samples"):
        toy_metrics(torch.zeros(4), modes, 0.1)
    with pytest.raises(ValueError, match="modes"):
        toy_metrics(torch.zeros(4, 2), torch.zeros(3, 3), 0.1)
    with pytest.raises(ValueError, match="mode_std"):
        toy_metrics(torch.zeros(4, 2), modes, 0.0)
    with pytest.raises(ValueError, match="min_count"):
        toy_metrics(torch.zeros(4, 2), modes, 0.1, min_count=0)


# ---------------------------------------------------------------------------------- W1


def test_w1_hand_computed_clouds():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    assert wasserstein1_exact(x, x + torch.tensor([0.0, 1.0])) == pytest.approx(1.0)
    assert wasserstein1_exact(x, x.flip(0)) == pytest.approx(0.0)  # a permutation costs 0
    # Crossing assignment is worse: the optimum pairs 0->1 and 3->4 (mean 1), not 0->4, 3->1.
    a, b = torch.tensor([[0.0, 0.0], [3.0, 0.0]]), torch.tensor([[4.0, 0.0], [1.0, 0.0]])
    assert wasserstein1_exact(a, b) == pytest.approx(1.0)
    # A 3-4-5 triangle.
    assert wasserstein1_exact(torch.zeros(1, 2), torch.tensor([[3.0, 4.0]])) == pytest.approx(5)


def test_w1_matches_sorted_formula_in_one_dimension():
    """On a line, W1 between equal-size samples is the mean gap of the sorted values."""
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=200), rng.normal(loc=0.7, scale=2.0, size=200)
    expected = np.abs(np.sort(x) - np.sort(y)).mean()
    as_2d = lambda v: torch.from_numpy(np.stack([v, np.zeros_like(v)], axis=1))
    assert wasserstein1_exact(as_2d(x), as_2d(y)) == pytest.approx(expected, rel=1e-10)


def test_w1_errors():
    with pytest.raises(ValueError, match="same shape"):
        wasserstein1_exact(torch.zeros(3, 2), torch.zeros(4, 2))
    big = torch.zeros(MAX_W1_POINTS + 1, 2)
    with pytest.raises(ValueError, match="subsample"):
        wasserstein1_exact(big, big)
    with pytest.raises(ValueError, match="finite"):
        wasserstein1_exact(torch.tensor([[float("nan"), 0.0]]), torch.zeros(1, 2))


# -------------------------------------------------------------------- evaluate_generator


class MixtureSampler(nn.Module):
    """An exact sampler of a toy mixture driven by its noise (a perfect 'generator')."""

    z_dim = 3

    def __init__(self, modes: torch.Tensor, std: float, collapse: bool = False) -> None:
        super().__init__()
        self.register_buffer("modes", modes)
        self.std, self.collapse = std, collapse
        self.scale = nn.Parameter(torch.ones(()))  # something for train/eval to act on

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        uniform = 0.5 * (1 + torch.erf(z[:, 0] / math.sqrt(2)))
        index = (uniform * len(self.modes)).long().clamp(max=len(self.modes) - 1)
        if self.collapse:
            index = torch.zeros_like(index)
        return self.modes[index] + self.std * z[:, 1:] * self.scale


def test_evaluate_generator_toy_perfect_vs_collapsed():
    data = load_dataset("8gaussians")
    perfect = MixtureSampler(data.modes, data.mode_std)
    good = evaluate_generator(perfect, data, num_samples=800, seed=0, device="cpu", w1_points=300)
    assert good["modes_covered"] == 8 and good["hq_fraction"] > 0.97
    assert good["wasserstein1_points"] == 300 and good["num_samples"] == 800
    bad = evaluate_generator(
        MixtureSampler(data.modes, data.mode_std, collapse=True),
        data,
        num_samples=800,
        seed=0,
        device="cpu",
        w1_points=300,
    )
    assert bad["modes_covered"] == 1
    assert bad["wasserstein1"] > 5 * good["wasserstein1"]
    again = evaluate_generator(perfect, data, num_samples=800, seed=0, device="cpu", w1_points=300)
    assert again == good
    other = evaluate_generator(perfect, data, num_samples=800, seed=1, device="cpu", w1_points=300)
    assert other["wasserstein1"] != good["wasserstein1"]


def test_evaluate_generator_restores_modes_and_reports_critic():
    data = load_dataset("25gaussians")
    torch.manual_seed(0)
    generator, critic = build_models("mlp", (2,), z_dim=2, nf=16)
    generator.train()
    critic.eval()
    generator.net[1].eval()  # a mixed state must come back as it was
    before = [m.training for m in generator.modules()]
    result = evaluate_generator(
        generator, data, num_samples=200, seed=3, device="cpu", critic=critic, w1_points=100
    )
    assert [m.training for m in generator.modules()] == before
    assert not critic.training
    assert math.isfinite(result["critic_wasserstein"]) and result["modes_covered"] <= 25


def test_evaluate_generator_swissroll_has_no_mode_metrics():
    data = load_dataset("swissroll")
    generator, _ = build_models("mlp", (2,), z_dim=2, nf=8, generator_norm="none")
    result = evaluate_generator(generator, data, num_samples=50, seed=0, device="cpu")
    assert set(result) == {"num_samples", "wasserstein1", "wasserstein1_points"}


def test_evaluate_generator_images():
    data = load_dataset("shapes", image_size=32, channels=1)
    torch.manual_seed(0)
    generator, critic = build_models("dcgan32", (1, 32, 32), z_dim=8, nf=4)
    result = evaluate_generator(
        generator, data, num_samples=64, seed=0, device="cpu", critic=critic
    )
    keys = {"pixel_mean_distance", "pixel_std_distance", "sliced_wasserstein"}
    assert keys <= set(result) and "critic_wasserstein" in result
    assert result == evaluate_generator(
        generator, data, num_samples=64, seed=0, device="cpu", critic=critic
    )
    assert generator.training and critic.training


def test_image_statistics_separate_real_from_blank():
    data = load_dataset("shapes", image_size=16, channels=3)
    real_a, real_b = data.heldout(256, gen(0)), data.heldout(256, gen(1))
    same = image_statistics(real_a, real_b, seed=0)
    blank = image_statistics(-torch.ones_like(real_a), real_b, seed=0)
    for key in ("pixel_mean_distance", "pixel_std_distance", "sliced_wasserstein"):
        assert 0 <= same[key] < blank[key] / 3
    assert image_statistics(real_a, real_a, seed=0)["sliced_wasserstein"] == 0
