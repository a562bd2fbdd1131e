"""fastgp.train.evaluation.plots: files are valid PNGs of the documented sizes, written
atomically."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from fastgp.train.evaluation.plots import (
    GRID_PADDING,
    image_grid,
    save_image_grid,
    save_loss_curves,
    save_toy_plot,
)


def _open(path):
    with Image.open(path) as picture:
        picture.load()
        return picture.format, picture.size, picture.mode, np.asarray(picture)


def _no_temp_files(directory):
    return [p.name for p in directory.iterdir() if p.name.endswith(".tmp")] == []


def test_toy_plot_with_critic_and_modes(tmp_path):
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(200, 2, generator=g), torch.randn(150, 2, generator=g) * 2
    critic = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 1))
    modes = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    path = save_toy_plot(tmp_path / "toy.png", real, fake, critic=critic, modes=modes, title="t")
    fmt, size, _, pixels = _open(path)
    assert fmt == "PNG" and size == (600, 600)
    assert pixels.std() > 10  # something was drawn
    assert _no_temp_files(tmp_path)


def test_toy_plot_without_critic_and_with_a_plain_function_critic(tmp_path):
    real = torch.randn(50, 2, dtype=torch.float64)
    assert _open(save_toy_plot(tmp_path / "a.png", real, real + 1))[1] == (600, 600)
    calls = []

    def critic(x):
        calls.append(x.dtype)
        return x.sum(1)

    save_toy_plot(tmp_path / "b.png", real, real, critic=critic)
    assert calls and set(calls) == {torch.float64}


def test_toy_plot_errors(tmp_path):
    with pytest.raises(ValueError, match=r"`real` must be a \(N, 2\)"):
        save_toy_plot(tmp_path / "x.png", torch.zeros(5, 3), torch.zeros(5, 2))
    with pytest.raises(ValueError, match="one score per point"):
        save_toy_plot(tmp_path / "x.png", torch.zeros(5, 2), torch.ones(5, 2), critic=lambda x: x)
    assert not (tmp_path / "x.png").exists() and _no_temp_files(tmp_path)


@pytest.mark.parametrize(("channels", "mode"), [(1, "L"), (3, "RGB")])
def test_image_grid_png_size_mode_and_pixels(tmp_path, channels, mode):
    images = torch.full((10, channels, 5, 7), -1.0)
    images[0] = 1.0  # first image white, the rest black
    images[9] = 0.0  # last image mid grey
    path = save_image_grid(tmp_path / "grid.png", images, nrow=4)
    fmt, size, got_mode, pixels = _open(path)
    p = GRID_PADDING
    assert fmt == "PNG" and got_mode == mode
    assert size == (4 * (7 + p) + p, 3 * (5 + p) + p)  # (width, height): 4 columns, 3 rows
    pixels = pixels.reshape(pixels.shape[0], pixels.shape[1], -1)
    assert (pixels[p : p + 5, p : p + 7] == 255).all()
    top, left = p + 2 * (5 + p), p + 1 * (7 + p)  # image 9: row 2, column 1
    assert (pixels[top : top + 5, left : left + 7] == 128).all()
    assert (pixels[:p] == 0).all()
    assert _no_temp_files(tmp_path)


def test_image_grid_clips_and_handles_fewer_images_than_a_row():
    grid = image_grid(torch.tensor([[[[5.0, -5.0]]]]), nrow=8)
    assert grid.shape == (1 + 2 * GRID_PADDING, 2 + 2 * GRID_PADDING, 1)
    assert grid[GRID_PADDING, GRID_PADDING:-GRID_PADDING, 0].tolist() == [255, 0]


def test_image_grid_errors(tmp_path):
    with pytest.raises(ValueError, match="C = 1 or 3"):
        save_image_grid(tmp_path / "g.png", torch.zeros(2, 2, 4, 4), nrow=2)
    with pytest.raises(ValueError, match="C = 1 or 3"):
        save_image_grid(tmp_path / "g.png", torch.zeros(8, 2), nrow=2)
    with pytest.raises(ValueError, match="`nrow`"):
        save_image_grid(tmp_path / "g.png", torch.zeros(2, 1, 4, 4), nrow=0)


def test_loss_curves_one_panel_per_present_key(tmp_path):
    records = [
        {"step": s, "loss_d": -s / 10, "loss_g": s / 5, "wdist": None, "samples_per_s": 3.0}
        for s in range(1, 30)
    ]
    records.append({"step": 30, "gp": 0.5})
    three = save_loss_curves(tmp_path / "three.png", records)
    fmt, size, _, _ = _open(three)
    assert fmt == "PNG" and size == (800, int(round(2.2 * 3 * 100)))  # loss_d, loss_g, gp
    one = save_loss_curves(tmp_path / "one.png", records, keys=("samples_per_s", "missing"))
    assert _open(one)[1] == (800, 220)
    empty = save_loss_curves(tmp_path / "empty.png", [], keys=("loss_d",))
    assert _open(empty)[1] == (800, 220)
    assert _no_temp_files(tmp_path)


def test_loss_curves_need_steps(tmp_path):
    with pytest.raises(ValueError, match=r"`records\[1\]` must be a dict with a 'step' key"):
        save_loss_curves(tmp_path / "c.png", [{"step": 1}, {"loss_d": 2.0}])


def test_rewriting_replaces_the_file(tmp_path):
    path = tmp_path / "grid.png"
    save_image_grid(path, torch.zeros(1, 1, 4, 4), nrow=1)
    save_image_grid(path, torch.zeros(4, 1, 4, 4), nrow=2)
    assert _open(path)[1] == (2 * (4 + GRID_PADDING) + GRID_PADDING,) * 2
    assert _no_temp_files(tmp_path)


def test_toy_plot_leaves_a_spectral_norm_critic_unchanged(tmp_path):
    torch.manual_seed(0)
    # 64 x 64: large enough that the power iteration has not converged at construction,
    # so a training-mode forward would move its vectors.
    sn = nn.utils.parametrizations.spectral_norm(nn.Linear(64, 64))
    critic = nn.Sequential(nn.Linear(2, 64), sn, nn.Linear(64, 1).eval())
    before = {k: v.clone() for k, v in critic.state_dict().items()}
    save_toy_plot(tmp_path / "sn.png", torch.randn(20, 2), torch.randn(20, 2), critic=critic)
    for key, value in critic.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert critic.training and sn.training and not critic[2].training


def test_loss_curves_skip_non_finite_values(tmp_path):
    records = [{"step": 1, "loss_d": float("inf")}, {"step": 2, "loss_d": float("nan")}]
    path = save_loss_curves(tmp_path / "c.png", records, keys=("loss_d",))
    fmt, _, _, pixels = _open(path)
    assert fmt == "PNG"
    # No finite value: the placeholder figure, identical to the one for no records.
    empty = save_loss_curves(tmp_path / "e.png", [], keys=("loss_d",))
    assert np.array_equal(pixels, _open(empty)[3])
