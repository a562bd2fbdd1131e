"""FID and KID through torch-fidelity, with Inception weights the user already has.

fastgp never downloads weights, so torch-fidelity is always given a local file: the
``--inception-weights PATH`` option, else ``$FASTGP_INCEPTION_WEIGHTS``, else torch-fidelity's
own file name in torch hub's cache (``$TORCH_HOME/hub/checkpoints/``, where torch-fidelity
would have saved it). With none of them, or without torch-fidelity installed
(``pip install 'fastgp[fidelity]'``), ``fid_kid`` raises ``FidelityUnavailable`` saying how
to provide it. Images are handed over as uint8 RGB (1-channel images are repeated);
torch-fidelity resizes them to Inception's 299x299 itself.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + INCEPTION_WEIGHTS_FILE
)
WEIGHTS_VARIABLE = "FASTGP_INCEPTION_WEIGHTS"
KID_SUBSET_SIZE = 1000  # torch-fidelity's default; smaller sample sets use their size


class FidelityUnavailable(RuntimeError):
    """FID/KID cannot run here; the message says what to install or where to put what."""


def find_inception_weights(path: str | os.PathLike | None) -> Path:
    """The Inception weights file to use (module doc), or FidelityUnavailable."""
    if path is not None:
        found = Path(path).expanduser()
        if not found.is_file():
            raise FidelityUnavailable(f"--inception-weights {found}: no such file")
        return found
    if os.environ.get(WEIGHTS_VARIABLE):
        found = Path(os.environ[WEIGHTS_VARIABLE]).expanduser()
        if not found.is_file():
            raise FidelityUnavailable(f"${WEIGHTS_VARIABLE}={found}: no such file")
        return found
    hub = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE
    if hub.is_file():
        return hub
    raise FidelityUnavailable(
        f"FID/KID need torch-fidelity's Inception weights ({INCEPTION_WEIGHTS_FILE}) on this "
        f"machine, and fastgp never downloads them. Get the file from {INCEPTION_WEIGHTS_URL} "
        f"and pass --inception-weights PATH, set {WEIGHTS_VARIABLE}=PATH, or put it in {hub}"
    )


def check_available(path: str | os.PathLike | None) -> Path:
    """The Inception weights file once torch-fidelity imports, or FidelityUnavailable."""
    weights = find_inception_weights(path)
    _import_fidelity()
    return weights


def _import_fidelity():
    try:
        import torch_fidelity
    except ImportError as e:
        raise FidelityUnavailable(
            f"FID/KID use torch-fidelity, which is not importable here ({e}); install it with "
            "pip install 'fastgp[fidelity]' (torch-fidelity and a torchvision matching your torch)"
        ) from None
    return torch_fidelity


class _Uint8Images(torch.utils.data.Dataset):
    """(N, C, H, W) float images in [-1, 1] as torch-fidelity's input: (3, H, W) uint8 items."""

    def __init__(self, images: Tensor) -> None:
        x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        self.images = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> Tensor:
        return self.images[i].contiguous()


def fid_kid(
    fake: Tensor, real: Tensor, weights: str | os.PathLike | None, device: torch.device | str
) -> dict[str, float]:
    """``{"fid", "kid_mean", "kid_std"}`` of (N, C, H, W) images in [-1, 1], C in {1, 3},
    from torch-fidelity's Inception (``feature_extractor_weights_path`` = the weights found
    by ``find_inception_weights``). Raises FidelityUnavailable (module doc)."""
    path = find_inception_weights(weights)
    fidelity = _import_fidelity()
    n = min(fake.shape[0], real.shape[0])
    if n < 2:
        raise ValueError(f"FID/KID need at least 2 samples, got {n}")
    metrics = fidelity.calculate_metrics(
        input1=_Uint8Images(fake),
        input2=_Uint8Images(real),
        fid=True,
        kid=True,
        kid_subset_size=min(KID_SUBSET_SIZE, n),
        feature_extractor_weights_path=str(path),
        cuda=torch.device(device).type == "cuda",
        cache=False,
        verbose=False,
    )
    return {
        "fid": float(metrics["frechet_inception_distance"]),
        "kid_mean": float(metrics["kernel_inception_distance_mean"]),
        "kid_std": float(metrics["kernel_inception_distance_std"]),
    }
