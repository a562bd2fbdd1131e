"""The digit classifier behind the class metrics: trained once on the user's labelled files,
cached in the run directory.

No weights can be downloaded, so fastgp trains a small CNN (``DigitClassifier``: two 3x3
convolutions with max pooling, then 64 penultimate features and a linear head; about 105k
parameters for 28x28 digits) on the dataset's labelled images (``Dataset.labelled``):
``TRAIN_STEPS`` Adam steps of ``BATCH`` images drawn from a seeded generator, each batch
shifted by up to ``MAX_SHIFT`` pixels, with ``HOLDOUT_FRACTION`` of the images held out to
measure the accuracy recorded with the weights. Training is deterministic given the seed
and the thread count, and leaves torch's global random state as it was.

Cache (``load_or_train_classifier``): ``DIR/weights.pt`` (state dict, ``weights_only``
loadable) and ``DIR/classifier.json`` (the cache key: sizes and SHA-256 of the source
files, image shape, classes, seed, steps, version; plus the held-out accuracy and training
seconds), both written atomically. A cache whose key matches is loaded; otherwise (files
changed, another image size) the classifier is retrained and the cache replaced.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastgp.train.data.base import LabelledImages
from fastgp.train.data.images import to_unit_range
from fastgp.train.run.checkpoint import atomic_write

CLASSIFIER_DIR = "classifier"  # inside the run directory
WEIGHTS_FILE, INFO_FILE = "weights.pt", "classifier.json"
CLASSIFIER_VERSION = 1  # bump when the architecture or the training recipe changes
TRAIN_STEPS = 1000  # about 2 epochs of the 60,000 MNIST training digits
BATCH = 128
LEARNING_RATE = 1e-3
HOLDOUT_FRACTION = 0.1
MAX_SHIFT = 2  # pixels of random translation per training batch
FEATURES = 64  # penultimate width: the space of the classifier Fréchet distance
_POOLED = 7  # spatial size after the convolutions, whatever the image size
_CHUNK = 1024


class DigitClassifier(nn.Module):
    """A small CNN: (B, C, H, W) float32 in [-1, 1] -> (B, num_classes) logits.

    ``features(x)`` is the (B, FEATURES) penultimate activation (after its ReLU).
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.in_channels, self.num_classes = in_channels, num_classes
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(_POOLED),
            nn.Flatten(),
            nn.Linear(32 * _POOLED * _POOLED, FEATURES),
            nn.ReLU(),
        )
        self.head = nn.Linear(FEATURES, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


@dataclass
class TrainedClassifier:
    """A classifier in eval mode on the CPU and what is known about it.

    Attributes:
        model: the network.
        info: the cache record: ``key`` (what it was trained on), ``heldout_accuracy``,
            ``heldout_images``, ``train_seconds``.
        cached: loaded from the cache (True) or trained by this call (False).
        seconds: wall time of this call (hashing + loading or training).
    """

    model: DigitClassifier
    info: dict[str, Any]
    cached: bool
    seconds: float

    @property
    def heldout_accuracy(self) -> float:
        return float(self.info["heldout_accuracy"])


def file_fingerprint(path: Path) -> dict[str, Any]:
    """``{"name", "size", "sha256"}`` of a file (the name is informative, not compared)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"name": str(path), "size": path.stat().st_size, "sha256": digest.hexdigest()}


def cache_key(labelled: LabelledImages, seed: int, steps: int) -> dict[str, Any]:
    """What a cached classifier must have been trained on to be reused."""
    return {
        "version": CLASSIFIER_VERSION,
        "files": [
            {k: v for k, v in file_fingerprint(Path(p)).items() if k != "name"}
            for p in labelled.files
        ],
        "image_shape": list(labelled.images.shape[1:]),
        "num_classes": labelled.num_classes,
        "seed": seed,
        "steps": steps,
    }


def _check_labelled(labelled: LabelledImages) -> None:
    n = labelled.images.shape[0]
    if labelled.labels.shape != (n,):
        raise ValueError(
            f"labels must be ({n},) for {n} images, got {tuple(labelled.labels.shape)}"
        )
    if n < 2 or labelled.num_classes < 2:
        raise ValueError(
            f"the classifier needs at least 2 labelled images of at least 2 classes; got {n} "
            f"images, {labelled.num_classes} classes"
        )


def _shifted(batch: Tensor, generator: torch.Generator) -> Tensor:
    """The batch translated by (dy, dx) in [-MAX_SHIFT, MAX_SHIFT]², filled with -1 (black)."""
    h, w = batch.shape[-2:]
    dy, dx = (int(v) for v in torch.randint(2 * MAX_SHIFT + 1, (2,), generator=generator))
    padded = F.pad(batch, (MAX_SHIFT,) * 4, value=-1.0)
    return padded[..., dy : dy + h, dx : dx + w]


def train_classifier(
    labelled: LabelledImages, *, seed: int = 0, steps: int | None = None
) -> tuple[DigitClassifier, dict[str, Any]]:
    """Train a ``DigitClassifier`` on ``labelled`` (see the module doc).

    Returns the model (eval mode, CPU) and ``{"heldout_accuracy", "heldout_images",
    "train_seconds"}``. The held-out images are a seeded ``HOLDOUT_FRACTION`` of them (at
    least one). ``steps`` None: ``TRAIN_STEPS``.
    """
    _check_labelled(labelled)
    steps = TRAIN_STEPS if steps is None else steps
    start = time.perf_counter()
    n = labelled.images.shape[0]
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator)
    num_heldout = max(1, round(HOLDOUT_FRACTION * n))
    heldout, train = order[:num_heldout], order[num_heldout:]
    images, labels = labelled.images, labelled.labels
    with torch.random.fork_rng(devices=[]):  # the initial weights: leave the global RNG alone
        torch.manual_seed(seed)
        model = DigitClassifier(images.shape[1], labelled.num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    model.train()
    for _ in range(steps):
        index = train[
            torch.randint(train.shape[0], (min(BATCH, train.shape[0]),), generator=generator)
        ]
        batch = _shifted(to_unit_range(images[index]), generator)
        loss = F.cross_entropy(model(batch), labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    predicted = predict_logits(model, to_unit_range(images[heldout])).argmax(dim=1)
    accuracy = float((predicted == labels[heldout]).double().mean())
    return model, {
        "heldout_accuracy": accuracy,
        "heldout_images": num_heldout,
        "train_seconds": time.perf_counter() - start,
    }


@torch.no_grad()
def predict_logits(model: DigitClassifier, images: Tensor) -> Tensor:
    """(N, num_classes) float32 logits of (N, C, H, W) float32 images in [-1, 1], in chunks."""
    return torch.cat([model(x.float()) for x in images.split(_CHUNK)])


def load_or_train_classifier(
    labelled: LabelledImages,
    cache_dir: str | Path | None,
    *,
    seed: int = 0,
    steps: int | None = None,
) -> TrainedClassifier:
    """The cached classifier in ``cache_dir`` when its key matches ``labelled``, else a newly
    trained one (written to ``cache_dir``, replacing a stale cache; ``cache_dir`` None: not
    cached; ``steps`` None: ``TRAIN_STEPS``). See the module doc for the files."""
    start = time.perf_counter()
    _check_labelled(labelled)
    steps = TRAIN_STEPS if steps is None else steps
    key = cache_key(labelled, seed, steps)
    directory = None if cache_dir is None else Path(cache_dir)
    if directory is not None:
        loaded = _load_cached(directory, key, labelled)
        if loaded is not None:
            model, info = loaded
            return TrainedClassifier(model, info, True, time.perf_counter() - start)
    model, measured = train_classifier(labelled, seed=seed, steps=steps)
    info = {
        "key": key,
        "sources": [str(p) for p in labelled.files],
        "parameters": sum(p.numel() for p in model.parameters()),
        "threads": torch.get_num_threads(),
        **measured,
    }
    if directory is not None:
        state = {k: v.clone() for k, v in model.state_dict().items()}
        atomic_write(directory / WEIGHTS_FILE, lambda f: torch.save(state, f))
        text = json.dumps(info, indent=2, sort_keys=True).encode() + b"\n"
        atomic_write(directory / INFO_FILE, lambda f: f.write(text))
    return TrainedClassifier(model, info, False, time.perf_counter() - start)


def _load_cached(
    directory: Path, key: dict[str, Any], labelled: LabelledImages
) -> tuple[DigitClassifier, dict[str, Any]] | None:
    """(model, info) of a cache in ``directory`` whose key is ``key``; None when there is
    none, it is stale or it cannot be read (it is then retrained and replaced)."""
    try:
        info = json.loads((directory / INFO_FILE).read_text())
        if info.get("key") != key:
            return None
        state = torch.load(directory / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        model = DigitClassifier(labelled.images.shape[1], labelled.num_classes)
        model.load_state_dict(state)
    except (OSError, ValueError, RuntimeError, KeyError):
        return None
    return model.eval(), info
