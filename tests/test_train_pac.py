"""``fastgp train --pac K`` (PacGAN): the packed critic, the penalty's grouping, the checks.

The packed critic scores packs of K consecutive samples concatenated along the features
(channels of images); the oracles here pack with ``torch.cat`` of strided slices and take
the penalty's per-pack norms from plain autograd, independently of ``models.pack`` and of
fastgp's kernels. Training runs are tiny toy runs (``test_train_resume.tiny``); the compiled
run is behind ``slow``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from test_train_resume import assert_same_state, final_state, tiny, training_lines
from torch import Tensor, nn

import fastgp
from fastgp.train import config
from fastgp.train.cli import main_train
from fastgp.train.config.checks import check_packing
from fastgp.train.evaluation.metrics import critic_gap
from fastgp.train.gan.objectives import draw_penalty, regularizer
from fastgp.train.gan.steps import GanSettings, GeneratorInputs, generator_gradients
from fastgp.train.models import build_models, pack, sample_scores
from fastgp.train.run.checkpoint import latest_checkpoint

SHAPES = {"mlp": (2,), "dcgan28": (1, 28, 28), "dcgan32": (3, 32, 32), "dcgan64": (1, 64, 64)}


def _pair(arch: str, pac: int, seed: int = 0, dtype=torch.float32) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    g, d = build_models(arch, SHAPES[arch], z_dim=4, nf=8, generator_norm="none", pac=pac)
    return g.to(dtype), d.to(dtype)


def packed_by_cat(x: Tensor, pac: int) -> Tensor:
    """The oracle's packing: pack b is samples b*pac .. b*pac+pac-1 concatenated along the
    first feature axis, written as a concatenation of strided slices."""
    return torch.cat([x[k::pac] for k in range(pac)], dim=1)


def oracle_penalty(net: nn.Module, points: Tensor, pac: int, weight: float, center: float, *,
                   one_sided: bool = False) -> tuple[Tensor, Tensor]:  # fmt: skip
    """``weight * mean_packs h(||grad of the pack|| - center)`` by plain autograd."""
    x = points.detach().requires_grad_()
    (grad,) = torch.autograd.grad(net(packed_by_cat(x, pac)).sum(), x, create_graph=True)
    norms = grad.reshape(len(x) // pac, -1).norm(dim=1)
    gap = (norms - center).clamp(min=0) if one_sided else norms - center
    return weight * gap.square().mean(), norms.detach()


# ---------------------------------------------------------------- the packed critic


@pytest.mark.parametrize("arch", list(SHAPES))
@pytest.mark.parametrize("pac", [1, 2, 4])
def test_packed_critic_scores_each_pack_of_consecutive_samples(arch: str, pac: int) -> None:
    g, d = _pair(arch, pac)
    x = torch.randn(8, *SHAPES[arch])
    assert g(torch.randn(8, 4)).shape == (8, *SHAPES[arch])  # the generator is unchanged
    scores = d(x)
    assert scores.shape == (8 // pac,)
    first = next(m for m in d.net.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))
    width = first.in_features if isinstance(first, nn.Linear) else first.in_channels
    per_sample = math.prod(SHAPES[arch]) if arch == "mlp" else SHAPES[arch][0]
    assert width == pac * per_sample
    torch.testing.assert_close(scores, d.net(packed_by_cat(x, pac)).view(-1), rtol=0, atol=0)
    if pac > 1:
        with pytest.raises(ValueError, match="7 samples does not split into packs"):
            d(x[:7])


@pytest.mark.parametrize("arch", ["mlp", "dcgan32"])
def test_pac_1_is_the_unpacked_critic(arch: str) -> None:
    torch.manual_seed(0)
    g0, d0 = build_models(arch, SHAPES[arch], z_dim=4, nf=8)
    torch.manual_seed(0)
    g1, d1 = build_models(arch, SHAPES[arch], z_dim=4, nf=8, pac=1)
    assert_same_state(g0.state_dict(), g1.state_dict())
    assert_same_state(d0.state_dict(), d1.state_dict())
    x = torch.randn(5, *SHAPES[arch])
    assert torch.equal(d0(x), d1(x)) and d0(x).shape == (5,)
    assert pack(x, 1) is x


def test_packs_concatenate_images_along_channels() -> None:
    x = torch.arange(4 * 3 * 2 * 2.0).reshape(4, 3, 2, 2)
    packed = pack(x, 2)
    assert packed.shape == (2, 6, 2, 2)
    assert torch.equal(packed[1, :3], x[2]) and torch.equal(packed[1, 3:], x[3])
    assert torch.equal(pack(x.contiguous(memory_format=torch.channels_last), 2), packed)


def test_sample_scores_score_a_pack_of_copies() -> None:
    _, d = _pair("mlp", 3)
    x = torch.randn(5, 2)
    scores = sample_scores(d)(x)
    assert scores.shape == (5,)
    copies = torch.cat([x, x, x], dim=1)
    torch.testing.assert_close(scores, d.net(copies).view(-1), rtol=0, atol=0)
    _, plain = _pair("mlp", 1)
    assert sample_scores(plain) is plain


def test_critic_gap_scores_the_whole_packs() -> None:
    _, d = _pair("mlp", 2)
    real, fake = torch.randn(7, 2), torch.randn(7, 2)
    with torch.no_grad():
        expected = d(real[:6]).double().mean() - d(fake[:6]).double().mean()
    assert critic_gap(d, real, fake, "cpu") == pytest.approx(float(expected), rel=1e-12)
    with pytest.raises(ValueError, match="fill no pack of the critic's --pac 2"):
        critic_gap(d, real[:1], fake[:1], "cpu")


# ---------------------------------------------------------------- penalties with packs


@pytest.mark.parametrize("kind", ["gp", "lp", "dragan", "r1", "r2"])
@pytest.mark.parametrize("arch", ["mlp", "dcgan28"])
def test_the_penalty_groups_samples_as_the_critic_packs_them(kind: str, arch: str) -> None:
    pac, batch, weight = 2, 6, 3.0
    _, d = _pair(arch, pac, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    real = torch.randn(batch, *SHAPES[arch], generator=g, dtype=torch.float64)
    fake = torch.randn(batch, *SHAPES[arch], generator=g, dtype=torch.float64)
    draws = draw_penalty(kind, real.shape, real.dtype, g, pac=pac)
    value, norms = regularizer(
        kind, d, real, fake, weight=weight, backend="torch", draws=draws, pac=pac
    )
    assert norms.shape == (batch // pac,)
    if kind in ("r1", "r2"):
        expected = oracle_penalty(d.net, real if kind == "r1" else fake, pac, weight / 2, 0.0)
    else:
        assert draws.alpha.shape == (batch // pac,)  # one alpha per pack, as fastgp draws
        a = draws.alpha.repeat_interleave(pac).view(-1, *[1] * (real.dim() - 1))
        if kind == "dragan":
            start, end = real + 0.5 * real.std() * draws.noise, real
        else:
            start, end = real, fake
        points = a * start + (1 - a) * end
        expected = oracle_penalty(d.net, points, pac, weight, 1.0, one_sided=kind == "lp")
    torch.testing.assert_close(value, expected[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(norms, expected[1], rtol=1e-10, atol=1e-12)
    if kind == "gp":  # the same as fastgp's own pac on the packed critic
        direct = fastgp.gradient_penalty(
            d, real, fake, lambda_gp=weight, alpha=draws.alpha, pac=pac, backend="torch"
        )
        torch.testing.assert_close(value, direct, rtol=1e-12, atol=0)


def test_zero_centred_penalties_on_packs_of_one_are_fastgps() -> None:
    """R1 with packs goes through gradient_penalty at alpha = 1; with pac = 1 that route
    gives r1_penalty's value bit for bit, so the two paths are one penalty."""
    _, d = _pair("mlp", 1)
    real = torch.randn(8, 2)
    r1 = fastgp.r1_penalty(d, real, gamma=4.0, backend="torch")
    as_gp = fastgp.gradient_penalty(
        d, real, real, lambda_gp=2.0, center=0.0, alpha=1.0, backend="torch"
    )
    assert torch.equal(r1, as_gp)


def test_draws_one_alpha_per_pack_from_the_stream() -> None:
    drawn = draw_penalty("gp", (8, 2), torch.float32, torch.Generator().manual_seed(5), pac=4)
    expected = torch.rand(2, generator=torch.Generator().manual_seed(5))
    assert torch.equal(drawn.alpha, expected)


@pytest.mark.parametrize("objective", ["wgan-gp", "lsgan"])
def test_the_generator_loss_scores_packed_fakes(objective: str) -> None:
    g, d = _pair("mlp", 2)
    settings = GanSettings(objective=objective, penalty="none", weight=0.0, pac=2)
    z = torch.randn(6, 4)
    params = list(g.parameters())
    grads, loss = generator_gradients(settings, g, d, params, GeneratorInputs(z, {}))
    scores = d.net(packed_by_cat(g(z), 2)).view(-1)
    expected = -scores.mean() if objective == "wgan-gp" else 0.5 * (scores - 1).square().mean()
    torch.testing.assert_close(loss, expected.detach())
    assert all(p is not None for p in grads)


# ---------------------------------------------------------------- options and checks


def test_pac_must_divide_the_batch_before_training(tmp_path: Path, capsys) -> None:
    with pytest.raises(config.ConfigError, match=r"--batch-size 30 must be a multiple of --pac 4"):
        config.check(config.merge({"batch_size": 30, "pac": 4}))
    with pytest.raises(config.ConfigError, match=r"--pac must be an integer >= 1, got 0"):
        config.check(config.merge({"pac": 0}))
    with pytest.raises(config.ConfigError, match=r"--eval-samples 3 is fewer than one pack"):
        config.check(config.merge({"pac": 4, "eval_samples": 3}))
    check_packing(32, 4, processes=4)  # 8 per process: two packs each
    with pytest.raises(config.ConfigError, match=r"--batch-size 32's share per process"):
        check_packing(32, 16, processes=4)
    run = tmp_path / "run"
    assert main_train(tiny(run, 2, "--batch-size", "30", "--pac", "4")) == 2
    err = capsys.readouterr().err
    assert "--batch-size" in err and "--pac" in err
    assert not run.exists()  # refused before anything was written or trained
    # The toy preset's batch (auto) is checked once resolved.
    argv = ["--dataset", "25gaussians", "--steps", "2", "--pac", "7", "--no-tensorboard",
            "--no-progress", "--run-dir", str(run)]  # fmt: skip
    assert main_train(argv) == 2
    assert "--batch-size 256 must be a multiple of --pac 7" in capsys.readouterr().err


def test_pac_is_an_option_of_the_command_line() -> None:
    help_text = config.build_parser().format_help()
    assert "--pac PAC" in help_text and "PacGAN" in help_text
    assert "pac" not in config.RESUMABLE_FIELDS


# ---------------------------------------------------------------- runs


def test_a_packed_toy_run_trains_and_resumes_bit_identically(tmp_path: Path) -> None:
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert main_train(tiny(whole, 4, "--pac", "2", "--sample-every", "2")) == 0
    assert main_train(tiny(split, 2, "--pac", "2", "--sample-every", "2")) == 0
    assert main_train(["--resume", str(split), "--steps", "4", "--no-progress"]) == 0
    assert_same_state(final_state(whole), final_state(split))
    lines = training_lines(whole)
    assert lines == training_lines(split) and [r["step"] for r in lines] == [2, 4]
    for r in lines:
        for key in ("loss_d", "loss_g", "wdist"):
            assert math.isfinite(r[key]), (key, r)
    assert json.loads((whole / "config.json").read_text())["pac"] == 2
    assert (whole / "samples" / "step-00000004.png").is_file()  # the toy contour plotted


def test_resume_refuses_a_different_pac(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    assert main_train(tiny(run, 2, "--pac", "2")) == 0
    capsys.readouterr()
    before = latest_checkpoint(run)
    assert main_train(tiny(run, 4, "--pac", "4")) == 2
    err = capsys.readouterr().err
    assert "--pac: run has 2, requested 4" in err and "cannot resume" in err
    assert latest_checkpoint(run) == before


def test_a_packed_image_run_with_augmentation_and_r1(tmp_path: Path) -> None:
    images = ["--dataset", "shapes", "--image-size", "32", "--batch-size", "8", "--nf", "4",
              "--nf-g", "4", "--eval-samples", "9", "--diffaug", "translation,flip"]  # fmt: skip
    argv = tiny(tmp_path / "run", 2, "--pac", "4", "--objective", "hinge", "--penalty", "r1")
    assert main_train([*argv, *images]) == 0
    lines = training_lines(tmp_path / "run")
    assert lines and all(math.isfinite(r["gp"]) for r in lines if "gp" in r)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit in dynamo
def test_a_compiled_packed_run_trains_like_the_eager_one(tmp_path: Path) -> None:
    torch._dynamo.reset()
    try:
        assert main_train(tiny(tmp_path / "eager", 2, "--pac", "2", "--compile", "off")) == 0
        assert main_train(tiny(tmp_path / "comp", 2, "--pac", "2", "--compile", "default")) == 0
    finally:
        torch._dynamo.reset()
    eager, comp = training_lines(tmp_path / "eager"), training_lines(tmp_path / "comp")
    assert [r["step"] for r in eager] == [r["step"] for r in comp]
    for a, b in zip(eager, comp, strict=True):
        for key in ("loss_d", "loss_g", "wdist"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), (key, a, b)
