"""Training data: toy 2-D sets, image files (MNIST IDX, folders, arrays), procedural shapes.

Nothing is ever downloaded. ``load_dataset(name, ...)`` returns a ``Dataset``, which draws
every batch from a caller-owned ``torch.Generator``:

* toy sets (``kind == "toy"``, ``toy.py``): (B, 2) float32 points, streamed (infinite);
  ``modes`` / ``mode_std`` describe the Gaussian mixtures for the mode-coverage metrics.
* image sets (``kind == "image"``): (B, C, H, W) float32 in [-1, 1]. ``mnist``
  (``mnist.py``), ``folder`` (``folder.py``), ``npz``/``npy`` (``arrays.py``) are held in
  memory (``images.py``) and sample uniformly *with replacement*; ``shapes``
  (``shapes.py``) is a finite procedural set rendered on the fly; ``stacked-mnist``
  (``stacked.py``) stacks three MNIST digits as RGB channels.
* labelled sets (MNIST with its labels file, Stacked MNIST) carry ``labelled``
  (``base.LabelledImages``) for the class metrics; others say why not in ``label_note``.

Modules: ``base`` (the ``Dataset`` contract), one module per family, ``load``
(``DATASETS`` and ``load_dataset``).
"""

from fastgp.train.data.base import Dataset, LabelledImages
from fastgp.train.data.load import DATASETS, TOY_DATASETS, is_toy, load_dataset, load_dataset_of

__all__ = [
    "DATASETS",
    "TOY_DATASETS",
    "Dataset",
    "LabelledImages",
    "is_toy",
    "load_dataset",
    "load_dataset_of",
]
