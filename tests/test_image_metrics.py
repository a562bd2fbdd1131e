"""Class metrics of generated images: the Fréchet formula against closed forms, coverage and
KL on constructed histograms, the cached digit classifier, MNIST labels, Stacked MNIST, and
``fastgp eval`` / training on tiny labelled IDX files (``helpers.write_labelled_mnist``)."""

from __future__ import annotations

import json
import math
import sys
import types

import numpy as np
import pytest
import torch
from helpers import synthetic_digits, write_idx, write_labelled_mnist

from fastgp.train.cli import main_eval, main_train
from fastgp.train.data import load_dataset
from fastgp.train.data.stacked import stack_digits
from fastgp.train.evaluation import classifier as clf
from fastgp.train.evaluation import fidelity
from fastgp.train.evaluation.image_metrics import (
    class_coverage,
    class_metrics,
    classify,
    frechet_distance,
    frechet_distance_of_features,
    kl_divergence,
    stacked_mode_metrics,
)
from fastgp.train.run.run_log import read_metrics

TEST_STEPS = 80  # classifier steps in these tests: the synthetic digits are easy


@pytest.fixture
def few_steps(monkeypatch):
    monkeypatch.setattr(clf, "TRAIN_STEPS", TEST_STEPS)


# ------------------------------------------------------------------------- formulas


def test_frechet_distance_closed_form_for_diagonal_gaussians():
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, -1.0, 2.0])
    var1, var2 = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([9.0, 1.0, 0.25])
    expected = float((mu1 - mu2).pow(2).sum() + (var1.sqrt() - var2.sqrt()).pow(2).sum())
    got = frechet_distance(mu1, torch.diag(var1), mu2, torch.diag(var2))
    assert got == pytest.approx(expected, rel=1e-12)  # 5 + 4 + 1 = 10


def test_frechet_distance_matches_scipy_sqrtm_for_full_covariances():
    from scipy.linalg import sqrtm

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 6, generator=g, dtype=torch.float64), torch.randn(6, 6, generator=g)
    cov1, cov2 = a @ a.T + 0.1 * torch.eye(6), (b @ b.T).double()
    mu1, mu2 = torch.randn(6, generator=g).double(), torch.zeros(6, dtype=torch.float64)
    root = sqrtm(cov1.numpy() @ cov2.numpy()).real
    expected = float((mu1 - mu2).pow(2).sum() + cov1.trace() + cov2.trace()) - 2 * np.trace(root)
    assert frechet_distance(mu1, cov1, mu2, cov2) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_of_identical_features_is_zero_and_grows_with_a_shift():
    x = torch.randn(500, 8, generator=torch.Generator().manual_seed(1))
    assert frechet_distance_of_features(x, x) == pytest.approx(0.0, abs=1e-9)
    shifted = frechet_distance_of_features(x, x + 3.0)
    assert shifted == pytest.approx(9.0 * 8, rel=1e-9)  # the covariances are equal


def test_kl_and_coverage_on_constructed_histograms():
    uniform = torch.ones(10)
    assert kl_divergence(uniform * 7, uniform) == pytest.approx(0.0, abs=1e-15)
    one_class = torch.zeros(10)
    one_class[3] = 50
    assert kl_divergence(one_class, uniform) == pytest.approx(math.log(10))
    half = torch.tensor([1.0, 1.0, 0.0, 0.0])
    assert kl_divergence(half, torch.ones(4)) == pytest.approx(math.log(2))
    assert kl_divergence(torch.ones(4), half) == math.inf  # gen mass where data has none
    counts = torch.tensor([50, 30, 2, 1, 17, 0, 0, 0, 0, 0])  # 2% of 100 is 2
    assert class_coverage(counts) == 4
    assert class_coverage(torch.zeros(10)) == 0
    assert class_coverage(counts, total=1000) == 2  # 2% of 1000 is 20: only 50 and 30


def test_stacked_mode_metrics_on_constructed_labels():
    every = stacked_mode_metrics(torch.arange(1000).repeat(26), 1000)
    assert every == {"modes_covered": 1000, "num_modes": 1000, "reverse_kl": 0.0}
    one = stacked_mode_metrics(torch.full((26_000,), 417), 1000)
    assert one["modes_covered"] == 1 and one["reverse_kl"] == pytest.approx(math.log(1000))
    two = stacked_mode_metrics(torch.tensor([0, 999] * 10), 1000)
    assert two["modes_covered"] == 2 and two["reverse_kl"] == pytest.approx(math.log(500))


# ------------------------------------------------------------------- data and labels


def test_mnist_loads_labels_and_says_when_they_are_missing(tmp_path):
    images, labels = write_labelled_mnist(tmp_path / "a", n=30)
    data = load_dataset("mnist", data_dir=str(tmp_path / "a"))
    assert data.labelled is not None and data.label_note is None
    assert torch.equal(data.labelled.labels, torch.from_numpy(labels.astype(np.int64)))
    assert data.labelled.num_classes == 10 and len(data.labelled.files) == 2
    write_labelled_mnist(tmp_path / "b", n=30, labels=False)
    bare = load_dataset("mnist", data_dir=str(tmp_path / "b"))
    assert bare.labelled is None and "train-labels-idx1-ubyte" in bare.label_note
    write_idx(tmp_path / "a" / "train-labels-idx1-ubyte", labels[:10])
    with pytest.raises(ValueError, match="10 labels for 30 training images"):
        load_dataset("mnist", data_dir=str(tmp_path / "a"))


def test_stacked_mnist_samples_are_three_digits_with_their_label(tmp_path):
    images, labels = write_labelled_mnist(tmp_path, n=40)
    data = load_dataset("stacked-mnist", data_dir=str(tmp_path), seed=3)
    assert data.sample_shape == (3, 28, 28) and data.num_examples == 128_000 and data.stacked
    assert torch.equal(
        data.triples, load_dataset("stacked-mnist", data_dir=str(tmp_path), seed=3).triples
    )
    assert not torch.equal(
        data.triples, load_dataset("stacked-mnist", data_dir=str(tmp_path), seed=4).triples
    )
    triples = data.triples[:5]
    stacked = stack_digits(data.digits, triples)
    digits = torch.from_numpy(images).float() / 127.5 - 1.0
    for b in range(5):
        for c in range(3):
            assert torch.equal(stacked[b, c], digits[triples[b, c]])
    expected = [
        100 * int(labels[t[0]]) + 10 * int(labels[t[1]]) + int(labels[t[2]]) for t in triples
    ]
    assert data.labels_of(triples).tolist() == expected
    batch = data.sample(6, torch.Generator().manual_seed(0))
    assert batch.shape == (6, 3, 28, 28) and data.heldout(4, torch.Generator()).shape == (
        4,
        3,
        28,
        28,
    )
    with pytest.raises(ValueError, match="3 channels"):
        load_dataset("stacked-mnist", data_dir=str(tmp_path), channels=1)


# ------------------------------------------------------------------------ classifier


def test_classifier_is_deterministic_cached_and_retrained_when_files_change(tmp_path, few_steps):
    write_labelled_mnist(tmp_path / "data", n=200)
    labelled = load_dataset("mnist", data_dir=str(tmp_path / "data")).labelled
    cache = tmp_path / "run" / "classifier"
    first = clf.load_or_train_classifier(labelled, cache, seed=0)
    assert not first.cached and (cache / clf.WEIGHTS_FILE).is_file()
    info = json.loads((cache / clf.INFO_FILE).read_text())
    assert info["heldout_images"] == 20 and info["heldout_accuracy"] == first.heldout_accuracy
    assert first.heldout_accuracy >= 0.9  # 20 held-out synthetic digits after 80 steps
    again, _ = clf.train_classifier(labelled, seed=0)
    for key, value in first.model.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
    second = clf.load_or_train_classifier(labelled, cache, seed=0)
    assert second.cached and second.heldout_accuracy == first.heldout_accuracy
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    assert torch.equal(second.model(x), first.model(x))
    # New labels file content: the cache no longer matches, so it is retrained.
    images, labels = synthetic_digits(200, 0)
    write_idx(tmp_path / "data" / "train-labels-idx1-ubyte", (labels + 1) % 10)
    changed = load_dataset("mnist", data_dir=str(tmp_path / "data")).labelled
    assert not clf.load_or_train_classifier(changed, cache, seed=0).cached


def test_class_metrics_of_real_digits_and_of_a_collapsed_generator(tmp_path, few_steps):
    write_labelled_mnist(tmp_path, n=300, test=100)
    data = load_dataset("mnist", data_dir=str(tmp_path))
    trained = clf.load_or_train_classifier(data.labelled, None, seed=0)
    real = data.heldout(200, torch.Generator().manual_seed(0))
    good = class_metrics(data.sample(200, torch.Generator().manual_seed(1)), real, data, trained)
    assert good["class_coverage"] == 10 and good["class_kl"] < 0.1
    assert good["confident_fraction"] > 0.8 and sum(good["class_counts"]) == 200
    assert good["confident_class_coverage"] == 10
    confident = good["confident_class_counts"]
    assert all(c <= n for c, n in zip(confident, good["class_counts"], strict=True))
    assert sum(confident) == round(200 * good["confident_fraction"])
    one = data.labelled.images[data.labelled.labels == 7][:1].float() / 127.5 - 1.0
    collapsed = class_metrics(one.expand(200, -1, -1, -1), real, data, trained)
    assert collapsed["class_coverage"] == 1 and collapsed["class_counts"][7] == 200
    assert collapsed["class_kl"] == pytest.approx(math.log(10), rel=0.05)
    assert collapsed["classifier_fd"] > good["classifier_fd"]
    # The real images' own value does not depend on the samples.
    assert good["real_confident_fraction"] == collapsed["real_confident_fraction"] > 0.8
    assert collapsed["confident_class_coverage"] <= 1
    blank = class_metrics(torch.full((200, 1, 28, 28), -1.0), real, data, trained)
    assert blank["real_confident_fraction"] == good["real_confident_fraction"]


def test_stacked_classification_reads_each_channel(tmp_path, few_steps):
    write_labelled_mnist(tmp_path, n=300)
    data = load_dataset("stacked-mnist", data_dir=str(tmp_path))
    trained = clf.load_or_train_classifier(data.labelled, None, seed=0)
    triples = data.triples[:64]
    images = stack_digits(data.digits, triples)
    modes, confidence, features = classify(trained.model, images, True)
    assert features.shape == (64, 3 * clf.FEATURES) and confidence.shape == (64,)
    assert (modes == data.labels_of(triples)).double().mean() > 0.9


# ------------------------------------------------------------------- CLI and training


def labelled_run_args(run, data, *extra):
    return [
        "--dataset", "mnist", "--data-dir", str(data), "--steps", "2", "--batch-size", "8",
        "--nf", "8", "--z-dim", "16", "--n-critic", "1", "--log-every", "1",
        "--sample-every", "2", "--eval-every", "1", "--checkpoint-every", "2",
        "--eval-samples", "32", "--backend", "torch", "--no-tensorboard", "--no-progress",
        "--run-dir", str(run), *extra,
    ]  # fmt: skip


def test_training_logs_class_metrics_and_eval_reuses_the_classifier(tmp_path, few_steps, capsys):
    write_labelled_mnist(tmp_path / "data", n=200)
    run = tmp_path / "run"
    assert main_train(labelled_run_args(run, tmp_path / "data")) == 0, capsys.readouterr().err
    records = read_metrics(run / "metrics.jsonl")
    prepared = [r for r in records if r["kind"] == "classifier"]
    assert len(prepared) == 1 and not prepared[0]["cached"] and prepared[0]["seconds"] > 0
    evals = [r for r in records if r["kind"] == "eval"]
    assert len(evals) == 2
    for record in evals:
        assert record["num_classes"] == 10 and 0 <= record["class_coverage"] <= 10
        assert record["classifier_fd"] >= 0 and 0 <= record["confident_fraction"] <= 1
        assert sum(record["class_counts"]) == 32
    capsys.readouterr()
    assert main_eval([str(run), "--num", "40"]) == 0
    out = capsys.readouterr().out
    assert "class_coverage: " in out and "class_kl: " in out and "classifier_fd: " in out
    result = json.loads(out.strip().splitlines()[-1])
    assert result["classifier_cached"] is True and sum(result["class_counts"]) == 40


def test_eval_of_an_unlabelled_run_says_why_there_are_no_class_metrics(tmp_path, capsys):
    write_labelled_mnist(tmp_path / "data", n=20, labels=False)
    run = tmp_path / "run"
    args = labelled_run_args(run, tmp_path / "data", "--steps", "1")
    assert main_train(args) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert main_eval([str(run), "--json", "--num", "16"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["class_metrics"].startswith("skipped: no train-labels-idx1-ubyte")
    assert "class_coverage" not in result and not (run / "classifier").exists()


def test_fid_without_weights_or_library_says_how_to_provide_them(tmp_path, capsys, monkeypatch):
    write_labelled_mnist(tmp_path / "data", n=20, labels=False)
    run = tmp_path / "run"
    assert main_train(labelled_run_args(run, tmp_path / "data", "--steps", "1")) == 0
    monkeypatch.delenv(fidelity.WEIGHTS_VARIABLE, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    capsys.readouterr()
    assert main_eval([str(run), "--fid", "--num", "8"]) == 2
    err = capsys.readouterr().err
    assert fidelity.INCEPTION_WEIGHTS_FILE in err and "--inception-weights" in err
    assert fidelity.WEIGHTS_VARIABLE in err and "never downloads" in err
    assert main_eval([str(run), "--fid", "--inception-weights", str(tmp_path / "nope")]) == 2
    assert "no such file" in capsys.readouterr().err
    weights = tmp_path / "inception.pth"
    weights.write_bytes(b"not read by the fake")
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # import fails
    assert main_eval([str(run), "--fid", "--inception-weights", str(weights)]) == 2
    assert "pip install 'fastgp[fidelity]'" in capsys.readouterr().err


def test_fid_hands_uint8_rgb_images_and_the_local_weights_to_torch_fidelity(
    tmp_path, capsys, monkeypatch
):
    write_labelled_mnist(tmp_path / "data", n=20, labels=False)
    run = tmp_path / "run"
    assert main_train(labelled_run_args(run, tmp_path / "data", "--steps", "1")) == 0
    weights = tmp_path / "inception.pth"
    weights.write_bytes(b"")
    calls = []

    def calculate_metrics(**kwargs):
        calls.append(kwargs)
        return {
            "frechet_inception_distance": 12.5,
            "kernel_inception_distance_mean": 0.25,
            "kernel_inception_distance_std": 0.01,
        }

    monkeypatch.setitem(
        sys.modules, "torch_fidelity", types.SimpleNamespace(calculate_metrics=calculate_metrics)
    )
    monkeypatch.setenv(fidelity.WEIGHTS_VARIABLE, str(weights))
    capsys.readouterr()
    assert main_eval([str(run), "--fid", "--num", "12", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["fid"], result["kid_mean"], result["kid_std"]) == (12.5, 0.25, 0.01)
    (kwargs,) = calls
    assert kwargs["feature_extractor_weights_path"] == str(weights)
    assert kwargs["fid"] and kwargs["kid"] and kwargs["kid_subset_size"] == 12
    item = kwargs["input1"][0]
    assert item.dtype == torch.uint8 and item.shape == (3, 28, 28) and len(kwargs["input2"]) == 12


def test_fid_during_training_is_checked_before_training_and_logged(tmp_path, capsys, monkeypatch):
    write_labelled_mnist(tmp_path / "data", n=20, labels=False)
    monkeypatch.delenv(fidelity.WEIGHTS_VARIABLE, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    run = tmp_path / "run"
    assert main_train(labelled_run_args(run, tmp_path / "data", "--steps", "1", "--fid")) == 2
    err = capsys.readouterr().err
    assert "--fid: " in err and fidelity.INCEPTION_WEIGHTS_FILE in err
    assert not (run / "metrics.jsonl").exists()  # nothing trained
    assert main_train(["--fid", "--run-dir", str(tmp_path / "toy")]) == 2
    assert "--fid needs images" in capsys.readouterr().err
    weights = tmp_path / "inception.pth"
    weights.write_bytes(b"")
    fake = {
        "frechet_inception_distance": 3.0,
        "kernel_inception_distance_mean": 0.5,
        "kernel_inception_distance_std": 0.1,
    }
    monkeypatch.setitem(
        sys.modules, "torch_fidelity", types.SimpleNamespace(calculate_metrics=lambda **kw: fake)
    )
    args = labelled_run_args(run, tmp_path / "data", "--steps", "2", "--fid")
    assert main_train([*args, "--inception-weights", str(weights)]) == 0
    evals = [r for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "eval"]
    assert len(evals) == 2 and all((r["fid"], r["kid_mean"]) == (3.0, 0.5) for r in evals)


@pytest.mark.slow
def test_classifier_reaches_high_heldout_accuracy_on_a_larger_synthetic_set(tmp_path):
    write_labelled_mnist(tmp_path, n=3000, test=0)
    labelled = load_dataset("mnist", data_dir=str(tmp_path)).labelled
    trained = clf.load_or_train_classifier(labelled, None, seed=0)  # the default steps
    assert trained.heldout_accuracy >= 0.99
