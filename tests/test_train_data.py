"""fastgp.train.data: the toy sets' exact formulas, the file loaders on tiny generated files,
the procedural shapes, and the errors."""

from __future__ import annotations

import gzip
import math
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from fastgp.train.data import DATASETS, TOY_DATASETS, Dataset, load_dataset
from fastgp.train.data.arrays import array_to_images
from fastgp.train.data.images import fit_images
from fastgp.train.data.mnist import read_idx
from fastgp.train.data.toy import make_swiss_roll


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- toy sets


def test_eight_gaussians_modes_match_gan_toy():
    data = load_dataset("8gaussians")
    s = 1.0 / math.sqrt(2.0)
    raw = [(1, 0), (-1, 0), (0, 1), (0, -1), (s, s), (s, -s), (-s, s), (-s, -s)]
    expected = torch.tensor(raw, dtype=torch.float64) * 2.0 / 1.414
    torch.testing.assert_close(data.modes.double(), expected, atol=1e-6, rtol=0)
    assert data.mode_std == pytest.approx(0.02 / 1.414)
    assert data.kind == "toy" and data.sample_shape == (2,) and data.num_examples is None


def test_twenty_five_gaussians_modes_match_gan_toy():
    data = load_dataset("25gaussians")
    expected = torch.tensor(
        [(2.0 * x / 2.828, 2.0 * y / 2.828) for x in range(-2, 3) for y in range(-2, 3)],
        dtype=torch.float64,
    )
    torch.testing.assert_close(data.modes.double(), expected, atol=1e-6, rtol=0)
    assert data.mode_std == pytest.approx(0.05 / 2.828)


@pytest.mark.parametrize("name", ["8gaussians", "25gaussians"])
def test_mixture_samples_have_the_paper_statistics(name):
    """Each point sits near one mode with per-coordinate std mode_std; modes are uniform."""
    data = load_dataset(name)
    x = data.sample(20_000, gen(1), "cpu")
    assert x.dtype == torch.float32 and x.shape == (20_000, 2)
    x = x.double()
    distance, nearest = torch.cdist(x, data.modes.double()).min(dim=1)
    assert distance.max() < 6 * data.mode_std  # no point between modes
    offsets = x - data.modes.double()[nearest]
    assert offsets.std(dim=0).tolist() == pytest.approx([data.mode_std] * 2, rel=0.05)
    assert offsets.mean(dim=0).abs().max() < 0.05 * data.mode_std
    counts = torch.bincount(nearest, minlength=len(data.modes)).double()
    expected = 20_000 / len(data.modes)
    # Binomial counts: 5 standard deviations.
    assert (counts - expected).abs().max() < 5 * math.sqrt(expected)


def test_swiss_roll_matches_sklearn_formula():
    """With noise 0 the points lie exactly on (t cos t, 21 v, t sin t), t in [1.5pi, 4.5pi]."""
    points = make_swiss_roll(4000, 0.0, gen(2)).double()
    x, y, z = points.unbind(1)
    t = torch.sqrt(x * x + z * z)
    assert t.min() >= 1.5 * math.pi - 1e-4 and t.max() <= 4.5 * math.pi + 1e-4
    torch.testing.assert_close(x, t * torch.cos(t), atol=1e-4, rtol=0)
    torch.testing.assert_close(z, t * torch.sin(t), atol=1e-4, rtol=0)
    assert y.min() >= 0 and y.max() <= 21
    # t is uniform on [1.5 pi, 4.5 pi]: mean 3 pi.
    assert t.mean().item() == pytest.approx(3 * math.pi, rel=0.02)


def test_swiss_roll_dataset_is_scaled_columns_0_and_2():
    data = load_dataset("swissroll")
    got = data.sample(500, gen(3), "cpu")
    roll = make_swiss_roll(500, 0.25, gen(3))
    torch.testing.assert_close(got, roll[:, [0, 2]] / 7.5)
    assert data.modes is None and data.mode_std is None


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_toy_sampling_is_reproducible_per_generator(name):
    data = load_dataset(name)
    a, b = data.sample(64, gen(5), "cpu"), data.sample(64, gen(5), "cpu")
    c = data.sample(64, gen(6), "cpu")
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.dtype == torch.float32
    # Resumable: a generator restored from a saved state continues the same stream.
    g = gen(7)
    data.sample(8, g, "cpu")
    state = g.get_state()
    after = data.sample(8, g, "cpu")
    g2 = torch.Generator()
    g2.set_state(state)
    assert torch.equal(data.sample(8, g2, "cpu"), after)


def test_heldout_is_cpu_and_independent_of_training_draws():
    data = load_dataset("8gaussians")
    held = data.heldout(100, gen(0))
    assert held.device.type == "cpu" and held.shape == (100, 2)
    assert not torch.equal(held, data.heldout(100, gen(1)))


# ---------------------------------------------------------------------------- MNIST / IDX


def write_idx(path, array: np.ndarray, compress: bool) -> None:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D}
    array = array.astype(array.dtype.newbyteorder(">")) if array.dtype.itemsize > 1 else array
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    payload = header + array.tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_plain_and_gzip(tmp_path, compress):
    images = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    path = tmp_path / ("a.idx.gz" if compress else "a.idx")
    write_idx(path, images, compress)
    np.testing.assert_array_equal(read_idx(path), images)
    floats = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    write_idx(tmp_path / "f.idx", floats.astype(">f4"), False)
    np.testing.assert_array_equal(read_idx(tmp_path / "f.idx"), floats)


def test_read_idx_rejects_bad_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x01\x00")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + b"\x00" * 3)
    with pytest.raises(ValueError, match="promises shape"):
        read_idx(tmp_path / "short")


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_from_torchvision_layout(tmp_path, compress):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    test = rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    suffix = ".gz" if compress else ""
    write_idx(raw / f"train-images-idx3-ubyte{suffix}", train, compress)
    write_idx(raw / f"t10k-images-idx3-ubyte{suffix}", test, compress)
    data = load_dataset("mnist", data_dir=str(tmp_path))
    assert data.kind == "image" and data.sample_shape == (1, 28, 28) and data.num_examples == 7
    batch = data.sample(16, gen(0), "cpu")
    assert batch.shape == (16, 1, 28, 28) and batch.dtype == torch.float32
    # Every sampled image is one of the training images mapped to [-1, 1].
    expected = torch.from_numpy(train).float()[:, None] / 127.5 - 1.0
    distances = torch.cdist(batch.flatten(1), expected.flatten(1)).min(dim=1).values
    assert distances.max() < 1e-5
    held = data.heldout(5, gen(0))
    expected_test = torch.from_numpy(test).float()[:, None] / 127.5 - 1.0
    assert torch.cdist(held.flatten(1), expected_test.flatten(1)).min(dim=1).values.max() < 1e-5
    assert torch.equal(batch, data.sample(16, gen(0), "cpu"))


def test_mnist_resized_and_rgb(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.full((2, 28, 28), 255, np.uint8), False)
    data = load_dataset("mnist", data_dir=str(tmp_path), image_size=32, channels=3)
    assert data.sample_shape == (3, 32, 32)
    assert torch.allclose(data.sample(2, gen(0), "cpu"), torch.ones(2, 3, 32, 32))


def test_mnist_data_dir_may_be_the_file_itself(tmp_path):
    images = np.zeros((4, 28, 28), np.uint8)
    write_idx(tmp_path / "train-images.idx3-ubyte", images, False)  # the dotted spelling
    assert load_dataset("mnist", data_dir=str(tmp_path)).num_examples == 4
    path = tmp_path / "train-images.idx3-ubyte"
    assert load_dataset("mnist", data_dir=str(path)).num_examples == 4


def test_mnist_missing_file_says_where_and_how(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("mnist", data_dir=str(tmp_path))
    message = str(info.value)
    assert "train-images-idx3-ubyte" in message and str(tmp_path) in message
    assert "MNIST/raw" in message and "never downloads" in message
    with pytest.raises(ValueError, match="data_dir"):
        load_dataset("mnist")


# -------------------------------------------------------------------------- folder / npz


def test_folder_recursive_resize_crop(tmp_path):
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (40, 20), (255, 0, 0)).save(tmp_path / "a.png")
    Image.new("L", (16, 16), 0).save(tmp_path / "sub" / "b.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    data = load_dataset("folder", data_dir=str(tmp_path), image_size=8)
    assert data.num_examples == 2 and data.sample_shape == (3, 8, 8)
    images = data.heldout(64, gen(0))
    reds = images[(images[:, 0] > 0.9).flatten(1).all(dim=1)]
    blacks = images[(images < -0.9).flatten(1).all(dim=1)]
    assert len(reds) + len(blacks) == 64 and len(reds) > 0 and len(blacks) > 0
    assert (reds[:, 1:] < -0.9).all()  # red stays red through resize + crop
    gray = load_dataset("folder", data_dir=str(tmp_path), image_size=8, channels=1)
    assert gray.sample_shape == (1, 8, 8)


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no images"):
        load_dataset("folder", data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_dataset("folder", data_dir=str(tmp_path / "missing"))


@pytest.mark.parametrize("layout", ["nchw", "nhwc", "nhw"])
def test_npz_layouts_uint8(tmp_path, layout):
    rng = np.random.default_rng(1)
    nchw = rng.integers(0, 256, size=(5, 3, 6, 6), dtype=np.uint8)
    if layout == "nhw":
        nchw = nchw[:, :1]
        stored = nchw[:, 0]
    else:
        stored = nchw if layout == "nchw" else nchw.transpose(0, 2, 3, 1)
    np.savez(tmp_path / "data.npz", x=stored, y=np.arange(5))
    data = load_dataset("npz", data_dir=str(tmp_path))
    assert data.sample_shape == nchw.shape[1:] and data.num_examples == 5
    torch.testing.assert_close(data.images, torch.from_numpy(nchw))


def test_npz_float_ranges_and_npy(tmp_path):
    unit = np.linspace(0, 1, 2 * 16, dtype=np.float32).reshape(2, 1, 4, 4)
    np.savez(tmp_path / "only.npz", unit)  # a single unnamed array
    data = load_dataset("npz", data_dir=str(tmp_path / "only.npz"))
    torch.testing.assert_close(data.images, torch.from_numpy(unit) * 2 - 1)
    signed = unit * 2 - 1
    np.save(tmp_path / "signed.npy", signed)
    data = load_dataset("npy", data_dir=str(tmp_path / "signed.npy"))
    torch.testing.assert_close(data.images, torch.from_numpy(signed))


def test_npz_errors(tmp_path):
    with pytest.raises(ValueError, match="cannot tell NCHW from NHWC"):
        array_to_images(np.zeros((2, 3, 5, 3), np.uint8), "x")
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        array_to_images(np.full((2, 4, 4), 300, np.int32), "x")
    with pytest.raises(ValueError, match=r"\[0, 1\] or \[-1, 1\]"):
        array_to_images(np.full((2, 4, 4), 2.0, np.float32), "x")
    np.savez(tmp_path / "two.npz", a=np.zeros((1, 4, 4)), b=np.zeros((1, 4, 4)))
    with pytest.raises(ValueError, match="named 'x'"):
        load_dataset("npz", data_dir=str(tmp_path / "two.npz"))
    np.save(tmp_path / "other.npy", np.zeros((1, 4, 4)))
    with pytest.raises(ValueError, match="exactly one"):
        load_dataset("npz", data_dir=str(tmp_path))


def test_fit_images_channels_and_crop():
    images = torch.zeros(1, 3, 4, 8, dtype=torch.uint8)
    images[..., :2] = 255  # left quarter white: cropped away by the centre crop
    out = fit_images(images, 4, 1)
    assert out.shape == (1, 1, 4, 4) and out.dtype == torch.uint8
    assert out.max() == 0


# -------------------------------------------------------------------------------- shapes


def test_shapes_is_deterministic_per_seed():
    a = load_dataset("shapes", image_size=16, channels=3, seed=3)
    b = load_dataset("shapes", image_size=16, channels=3, seed=3)
    c = load_dataset("shapes", image_size=16, channels=3, seed=4)
    batch = a.sample(8, gen(0), "cpu")
    assert torch.equal(batch, b.sample(8, gen(0), "cpu"))
    assert not torch.equal(batch, c.sample(8, gen(0), "cpu"))
    assert batch.shape == (8, 3, 16, 16) and batch.min() >= -1 and batch.max() <= 1


def test_shapes_images_have_objects_on_black():
    data = load_dataset("shapes", image_size=32, channels=1)
    images = data.heldout(32, gen(0))
    assert images.shape == (32, 1, 32, 32)
    lit = (images > -0.9).flatten(1).float().mean(dim=1)
    # Every image has at least one shape (>= 2% of pixels) and a black border region.
    assert lit.min() > 0.02 and lit.max() < 0.9
    corners = images[:, 0, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert (corners == -1).float().mean() > 0.9


def test_shapes_any_size_default_size():
    assert load_dataset("shapes").sample_shape == (3, 32, 32)
    assert load_dataset("shapes", image_size=64, channels=1).sample(2, gen(0)).shape == (
        2,
        1,
        64,
        64,
    )


# -------------------------------------------------------------------------------- errors


def test_dataset_names_and_bad_arguments():
    assert set(TOY_DATASETS) < set(DATASETS) and "shapes" in DATASETS
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        load_dataset("cifar")
    with pytest.raises(ValueError, match="image_size"):
        load_dataset("shapes", image_size=2)
    with pytest.raises(ValueError, match="channels"):
        load_dataset("shapes", channels=2)
    with pytest.raises(ValueError, match="2-D points"):
        load_dataset("8gaussians", image_size=32)
    data: Dataset = load_dataset("25gaussians")
    with pytest.raises(ValueError, match="batch_size"):
        data.sample(0, gen(0), "cpu")
    with pytest.raises(ValueError, match="`n`"):
        data.heldout(-1, gen(0))
