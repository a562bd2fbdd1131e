"""fastgp.train.gan.augment: DiffAugment shapes, semantics, gradients, reproducibility, the
split into draws and application, errors."""

from __future__ import annotations

import pytest
import torch

from fastgp.train.gan.augment import (
    POLICIES,
    DiffAugment,
    augment,
    brightness,
    contrast,
    diff_augment,
    draw_augment,
    parse_policy,
    saturation,
)


def _images(b=4, c=3, h=8, w=8, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, c, h, w, generator=g, dtype=dtype) * 2 - 1


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(
    "policy", ["color", "translation", "cutout", "flip", "color,translation,cutout"]
)
def test_shape_dtype_and_device_are_kept(policy):
    for c in (1, 3):
        x = _images(c=c, h=8, w=6)
        y = diff_augment(x, policy, _gen())
        assert y.shape == x.shape and y.dtype == x.dtype and y.is_contiguous()


def test_same_generator_seed_same_augmentation_and_independent_draws_differ():
    x = _images(b=8)
    policy = "color,translation,cutout,flip"
    a = diff_augment(x, policy, _gen(3))
    b = diff_augment(x, policy, _gen(3))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    g = _gen(3)
    first, second = diff_augment(x, policy, g), diff_augment(x, policy, g)
    assert not torch.equal(first, second)
    module = DiffAugment(policy, _gen(3))
    torch.testing.assert_close(module(x), a, rtol=0, atol=0)


def test_global_rng_is_used_without_a_generator():
    x = _images()
    torch.manual_seed(5)
    a = diff_augment(x, "translation,cutout")
    torch.manual_seed(5)
    torch.testing.assert_close(diff_augment(x, "translation,cutout"), a, rtol=0, atol=0)


def test_none_policy_returns_the_input():
    x = _images()
    assert diff_augment(x, "none") is x and diff_augment(x, "") is x
    assert parse_policy(" none ") == ()


def test_translation_moves_each_image_with_zero_fill():
    h = w = 16  # shifts up to int(16 * 0.125 + 0.5) = 2 pixels
    x = torch.arange(1, 2 * h * w + 1, dtype=torch.float64).reshape(2, 1, h, w)
    y = diff_augment(x, "translation", _gen(1))
    for i in range(2):
        matches = []
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                shifted = torch.zeros(h + 8, w + 8, dtype=x.dtype)
                # y[r, c] = x[r + dy, c + dx] where inside the image, else 0
                shifted[4 : 4 + h, 4 : 4 + w] = x[i, 0]
                expected = shifted[4 + dy : 4 + dy + h, 4 + dx : 4 + dx + w]
                matches.append(torch.equal(y[i, 0], expected))
        assert sum(matches) == 1


def test_cutout_zeroes_one_square_of_half_the_size_per_image():
    x = torch.ones(64, 2, 8, 8)
    y = diff_augment(x, "cutout", _gen(2))
    assert set(y.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(y[:, 0], y[:, 1])  # the same mask on every channel
    zeros = (y[:, 0] == 0).sum(dim=(1, 2))
    # A 4x4 square, clipped at the border: between 2x2 and 4x4 pixels.
    assert zeros.min() >= 4 and zeros.max() == 16
    for mask in y[:, 0] == 0:
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        assert mask.sum() == len(rows) * len(cols)  # a rectangle
        assert rows.max() - rows.min() + 1 == len(rows) and cols.max() - cols.min() + 1 == len(cols)


def test_colour_operations_follow_the_paper():
    x = _images(b=16, c=3)
    u = torch.rand(16, 1, 1, 1, generator=_gen(4))
    shift = brightness(x, u) - x
    per_sample = shift.amax(dim=(1, 2, 3))
    torch.testing.assert_close(shift, per_sample.view(-1, 1, 1, 1).expand_as(x))
    assert per_sample.min() >= -0.5 and per_sample.max() < 0.5
    grey = _images(c=1)
    torch.testing.assert_close(saturation(grey, u[:4]), grey)
    y = contrast(x, u)
    torch.testing.assert_close(y.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)))
    ratio = (y - y.mean((1, 2, 3), keepdim=True)) / (x - x.mean((1, 2, 3), keepdim=True))
    assert ratio.min() >= 0.5 - 1e-4 and ratio.max() < 1.5 + 1e-4


def test_flip_mirrors_some_samples_and_keeps_others():
    x = _images(b=32)
    y = diff_augment(x, "flip", _gen(6))
    flipped = torch.tensor([torch.equal(a, b.flip(2)) for a, b in zip(y, x, strict=True)])
    kept = torch.tensor([torch.equal(a, b) for a, b in zip(y, x, strict=True)])
    assert bool((flipped | kept).all()) and flipped.any() and kept.any()


@pytest.mark.parametrize("policy", POLICIES)
def test_gradcheck_float64(policy):
    x = _images(b=2, c=3, h=4, w=4, dtype=torch.float64).requires_grad_()
    # A fresh seeded generator per call: gradcheck needs the same random draws every time.
    assert torch.autograd.gradcheck(lambda t: diff_augment(t, policy, _gen(11)), (x,))


def test_gradient_reaches_the_generator_output():
    z = torch.randn(4, 3 * 8 * 8, requires_grad=True)
    x = torch.tanh(z).view(4, 3, 8, 8)
    diff_augment(x, "color,translation,cutout", _gen()).sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"\(B, C, H, W\).*Toy 2-D data"):
        diff_augment(torch.zeros(8, 2), "translation")
    with pytest.raises(ValueError, match="'zoom' is unknown"):
        diff_augment(_images(), "color,zoom")
    with pytest.raises(ValueError, match="repeats"):
        parse_policy("color,color")
    with pytest.raises(TypeError, match="`policy`"):
        parse_policy(None)
    with pytest.raises(TypeError, match="floating-point"):
        diff_augment(torch.zeros(1, 1, 4, 4, dtype=torch.uint8), "cutout")
    with pytest.raises(ValueError, match="'blur' is unknown"):
        DiffAugment("blur")


def test_translation_range_is_an_eighth_of_the_size_rounded():
    # 28 x 20 images: shifts up to int(28 / 8 + 0.5) = 4 rows and int(20 / 8 + 0.5) = 3 columns.
    x = torch.zeros(400, 1, 28, 20)
    x[:, 0, 14, 10] = 1.0  # one lit pixel, well inside: it survives every shift
    y = diff_augment(x, "translation", _gen(8))
    where = (y[:, 0] == 1).flatten(1).float().argmax(1)
    rows, cols = where // 20 - 14, where % 20 - 10
    assert sorted(set(rows.tolist())) == list(range(-4, 5))
    assert sorted(set(cols.tolist())) == list(range(-3, 4))


def _old_diff_augment(x, policy, g):
    """The generator-inside implementation this module replaced, as the oracle of the draws:
    each operation drew its own parameters, in policy order, as it ran."""
    b, _, h, w = x.shape

    def u():
        return torch.rand(b, 1, 1, 1, generator=g).to(x.dtype)

    def ints(low, high):
        return torch.randint(low, high, (b, 1, 1), generator=g)

    for name in parse_policy(policy):
        if name == "color":
            x = x + (u() - 0.5)
            mean = x.mean(dim=1, keepdim=True)
            x = (x - mean) * (u() * 2) + mean
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * (u() + 0.5) + mean
        elif name == "translation":
            sh, sw = int(h / 8 + 0.5), int(w / 8 + 0.5)
            dy, dx = ints(-sh, sh + 1), ints(-sw, sw + 1)
            padded = torch.nn.functional.pad(x, [sw, sw, sh, sh])
            # y[r, c] = x[r + dy, c + dx] = padded[r + dy + sh, c + dx + sw]
            tops, lefts = [sh + int(d) for d in dy], [sw + int(d) for d in dx]
            x = torch.stack(
                [
                    padded[i, :, t : t + h, left : left + w]
                    for i, (t, left) in enumerate(zip(tops, lefts, strict=True))
                ]
            )
        elif name == "cutout":
            ch, cw = int(h / 2 + 0.5), int(w / 2 + 0.5)
            cy, cx = ints(0, h + (1 - ch % 2)), ints(0, w + (1 - cw % 2))
            mask = torch.ones(b, 1, h, w, dtype=x.dtype)
            for i in range(b):
                top, left = max(0, int(cy[i]) - ch // 2), max(0, int(cx[i]) - cw // 2)
                bottom = min(h, int(cy[i]) - ch // 2 + ch)
                right = min(w, int(cx[i]) - cw // 2 + cw)
                mask[i, :, top:bottom, left:right] = 0
            x = x * mask
        else:
            x = torch.where(u() < 0.5, x.flip(3), x)
    return x


@pytest.mark.parametrize(
    "policy", ["color", "translation", "cutout", "flip", "color,cutout,flip,translation"]
)
def test_drawn_parameters_reproduce_the_draws_inside_each_operation(policy):
    # Translation with the slicing formula above (pad by the shift range) rather than this
    # module's gather: an independent check of the zero-filled shift as well as the draws.
    x = _images(b=6, c=3, h=12, w=10)
    expected = _old_diff_augment(x, policy, _gen(9))
    params = draw_augment(policy, x.shape, _gen(9))
    torch.testing.assert_close(augment(x, params), expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(diff_augment(x, policy, _gen(9)), augment(x, params), rtol=0, atol=0)


def test_parameter_layout_and_application_draws_nothing():
    params = draw_augment("color,translation,cutout,flip", (5, 3, 16, 8), _gen(1))
    assert list(params) == ["color", "translation", "cutout", "flip"]
    assert params["color"].shape == (3, 5, 1, 1, 1) and params["color"].dtype == torch.float32
    assert (
        params["translation"].shape == (2, 5, 1, 1) and params["translation"].dtype == torch.int64
    )
    assert params["cutout"].shape == (2, 5, 1, 1) and params["flip"].shape == (5, 1, 1, 1)
    shifts = params["translation"]
    assert int(shifts[0].abs().max()) <= 2 and int(shifts[1].abs().max()) <= 1  # 16/8, 8/8
    assert draw_augment("none", (5, 2), _gen()) == {}  # no policy: any shape, nothing drawn
    x = _images(b=5, c=3, h=16, w=8)
    before = torch.get_rng_state()
    first, second = augment(x, params), augment(x, params)
    assert torch.equal(torch.get_rng_state(), before)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert augment(x, {}) is x
