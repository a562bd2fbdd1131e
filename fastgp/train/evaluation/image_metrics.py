"""Class metrics of generated images, judged by the run's digit classifier, and the one
Fréchet distance formula (shared by the classifier distance and FID).

For a labelled dataset (``Dataset.labelled``; classifier from ``classifier.py``):

* ``class_coverage``: classes receiving at least ``COVERAGE_MIN_FRACTION`` (2%) of the
  generated samples, of ``num_classes``; ``class_counts`` per class.
* ``confident_class_coverage``: classes receiving at least 2% of the generated samples
  recognised with probability >= ``CONFIDENT`` (0.9), of ``num_classes``: the classes the
  generator draws recognisably, not only the ones its samples lean to;
  ``confident_class_counts`` per class.
* ``class_kl``: KL(p_gen || p_data) in nats, p_gen the histogram of the classifier's
  predictions on the samples, p_data the histogram of the training labels. Inf when the
  samples land in a class the data never has; 0 when the histograms agree.
* ``class_confidence``: mean max softmax probability of the samples; ``confident_fraction``:
  samples recognised with probability >= ``CONFIDENT`` (0.9); ``real_confident_fraction``:
  the same for the held-out real images, the bar the samples' value reads against.
* ``classifier_fd``: Fréchet distance between the classifier's penultimate features of the
  samples and of as many held-out real images.
* Stacked MNIST (``Dataset.stacked``; the PacGAN/VEEGAN protocol, scored on
  ``STACKED_EVAL_SAMPLES`` samples): each channel is classified with the digit classifier;
  a sample's mode is ``100 d0 + 10 d1 + d2``. ``modes_covered`` (modes with at least one
  sample) of ``num_modes`` (1,000) and ``reverse_kl`` = KL(p_gen || uniform over the modes),
  the names ``toy_metrics`` uses for the same quantities. Its confidence is the product of
  the three digits' (the joint class's probability) and its features the three channels'
  features side by side.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from fastgp.train.evaluation.classifier import DigitClassifier, TrainedClassifier

COVERAGE_MIN_FRACTION = 0.02
CONFIDENT = 0.9
MNIST_EVAL_SAMPLES = 10_000  # ``fastgp eval``'s default for labelled image runs
STACKED_EVAL_SAMPLES = 26_000  # the stacked-MNIST protocol's sample count
_CHUNK = 1024


def frechet_distance(mu1: Tensor, cov1: Tensor, mu2: Tensor, cov2: Tensor) -> float:
    """||mu1 - mu2||² + tr(cov1 + cov2 - 2 (cov1 cov2)^(1/2)) of two Gaussians (float64).

    mu: (D,), cov: (D, D) symmetric positive semi-definite. tr((cov1 cov2)^(1/2)) is
    computed as tr((s cov2 s)^(1/2)) with s = cov1^(1/2): the same eigenvalues (s cov2 s
    is similar to cov1 cov2) but a symmetric matrix, so ``eigh`` applies and no complex
    square root is needed. Eigenvalues below 0 (rounding) are clamped to 0.
    """
    mu1, mu2, cov1, cov2 = (t.detach().double().cpu() for t in (mu1, mu2, cov1, cov2))
    values, vectors = torch.linalg.eigh(cov1)
    sqrt1 = (vectors * values.clamp_min(0).sqrt()) @ vectors.T
    middle = sqrt1 @ cov2 @ sqrt1
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    distance = (mu1 - mu2).pow(2).sum() + cov1.trace() + cov2.trace() - 2 * trace_sqrt
    return max(float(distance), 0.0)


def feature_statistics(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean (D,) and covariance (D, D) (unbiased, as FID uses) of (N, D) features, float64."""
    x = features.detach().double().cpu()
    if x.dim() != 2 or x.shape[0] < 2:
        raise ValueError(f"`features` must be (N, D) with N >= 2, got {tuple(x.shape)}")
    return x.mean(dim=0), torch.cov(x.T).reshape(x.shape[1], x.shape[1])


def frechet_distance_of_features(a: Tensor, b: Tensor) -> float:
    """``frechet_distance`` between the Gaussians fitted to two (N, D) feature sets."""
    return frechet_distance(*feature_statistics(a), *feature_statistics(b))


def kl_divergence(p: Tensor, q: Tensor) -> float:
    """KL(p || q) = sum p log(p / q) in nats of two histograms (normalised here).

    Terms with p = 0 are 0; a class with p > 0 and q = 0 makes it inf.
    """
    p, q = p.double() / p.double().sum(), q.double() / q.double().sum()
    support = p > 0
    if bool((q[support] == 0).any()):
        return math.inf
    return max(float((p[support] * (p[support] / q[support]).log()).sum()), 0.0)


def class_coverage(
    counts: Tensor, min_fraction: float = COVERAGE_MIN_FRACTION, total: int | None = None
) -> int:
    """Classes holding at least ``min_fraction`` of ``total`` samples (default: of those
    counted in ``counts`` (K,))."""
    total = int(counts.sum()) if total is None else total
    return int((counts.double() >= min_fraction * total).sum()) if total else 0


def stacked_mode_metrics(modes: Tensor, num_modes: int) -> dict[str, Any]:
    """``modes_covered`` (modes with >= 1 sample), ``num_modes``, ``reverse_kl`` =
    KL(p_gen || uniform) of (N,) int64 mode labels in [0, num_modes)."""
    counts = torch.bincount(modes, minlength=num_modes)
    return {
        "modes_covered": int((counts > 0).sum()),
        "num_modes": num_modes,
        "reverse_kl": kl_divergence(counts, torch.ones(num_modes)),
    }


@torch.no_grad()
def classify(
    model: DigitClassifier, images: Tensor, stacked: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """``(labels (N,) int64, confidence (N,) float64, features (N, F) float32)`` of
    (N, C, H, W) images in [-1, 1]; ``stacked`` classifies each channel (module doc)."""
    labels, confidence, features = [], [], []
    for chunk in images.float().cpu().split(_CHUNK):
        n, c = chunk.shape[:2]
        x = chunk.reshape(n * c, 1, *chunk.shape[2:]) if stacked else chunk
        feats = model.features(x)
        probs = torch.softmax(model.head(feats).double(), dim=1)
        best, label = probs.max(dim=1)
        if stacked:
            k = model.num_classes
            weights = torch.tensor([k ** (c - 1 - i) for i in range(c)], dtype=torch.int64)
            label = (label.reshape(n, c) * weights).sum(dim=1)
            best = best.reshape(n, c).prod(dim=1)
            feats = feats.reshape(n, -1)
        labels.append(label)
        confidence.append(best)
        features.append(feats)
    return torch.cat(labels), torch.cat(confidence), torch.cat(features)


def class_metrics(fake: Tensor, real: Tensor, dataset, classifier: TrainedClassifier) -> dict:
    """The class metrics (module doc) of generated images ``fake`` against held-out real
    images ``real`` (both (N, C, H, W) in [-1, 1]) of a labelled ``dataset``."""
    labelled = dataset.labelled
    model = classifier.model
    fake_labels, confidence, fake_features = classify(model, fake, dataset.stacked)
    _, real_confidence, real_features = classify(model, real, dataset.stacked)
    result: dict[str, Any] = {}
    if dataset.stacked:
        result.update(stacked_mode_metrics(fake_labels, labelled.num_classes ** fake.shape[1]))
    else:
        k = labelled.num_classes
        counts = torch.bincount(fake_labels, minlength=k)
        confident = torch.bincount(fake_labels[confidence >= CONFIDENT], minlength=k)
        result.update(
            {
                "class_coverage": class_coverage(counts),
                "confident_class_coverage": class_coverage(confident, total=len(fake_labels)),
                "num_classes": k,
                "class_kl": kl_divergence(counts, torch.bincount(labelled.labels, minlength=k)),
            }
        )
    result.update(
        {
            "class_confidence": float(confidence.mean()),
            "confident_fraction": float((confidence >= CONFIDENT).double().mean()),
            "real_confident_fraction": float((real_confidence >= CONFIDENT).double().mean()),
            "classifier_fd": frechet_distance_of_features(fake_features, real_features),
            "classifier_accuracy": classifier.heldout_accuracy,
        }
    )
    if not dataset.stacked:
        result["class_counts"] = [int(c) for c in counts]
        result["confident_class_counts"] = [int(c) for c in confident]
    return result


def skipped_note(dataset) -> str:
    """Why a dataset gets no class metrics (shown in place of them)."""
    reason = dataset.label_note or f"dataset {dataset.name!r} has no class labels"
    return f"skipped: {reason}"
