"""Sample-quality metrics: mode coverage on the toy mixtures, exact 1-Wasserstein distance,
cheap image statistics, and (``image_metrics``, ``fidelity``) class metrics and FID/KID.

Toy protocol (VEEGAN, PacGAN, GDPP): draw samples; a sample is *high quality* (HQ) when its
Euclidean distance to the nearest mode centre is at most ``hq_sigmas`` (3) standard
deviations; a mode is *covered* when at least ``min_count`` (1) HQ samples are nearest to it.

Image datasets always get pixel-statistic distances and a sliced 1-Wasserstein distance
between downsampled generated and held-out images, which track training progress but are
not comparable with published numbers; labelled ones (MNIST with labels, Stacked MNIST) the
class metrics of ``image_metrics`` from a classifier trained on the user's files; FID/KID
only when asked for with local Inception weights (``fidelity``; nothing is downloaded).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MAX_W1_POINTS = 5000  # the n x n float64 cost matrix and O(n^3) assignment beyond this
EVAL_W1_POINTS = 2500  # the toy protocol's 2,500 generated vs 2,500 real points
SLICED_RESOLUTION = 16  # images are area-downsampled to 16x16 before slicing
SLICED_PROJECTIONS = 256
_HELDOUT_SEED_OFFSET = 1_000_003
_PROJECTION_SEED_OFFSET = 2_000_006
_CHUNK = 512


def toy_metrics(
    samples: Tensor,
    modes: Tensor,
    mode_std: float,
    *,
    hq_sigmas: float = 3.0,
    min_count: int | None = None,
) -> dict:
    """Mode coverage of 2-D samples against a Gaussian mixture's centres.

    Args:
        samples: (N, D) generated points (any float dtype, any device).
        modes: (K, D) mode centres in the same coordinates.
        mode_std: per-coordinate standard deviation of every mode, > 0.
        hq_sigmas: HQ radius in units of ``mode_std``.
        min_count: HQ samples a mode needs to count as covered; None means 1 (the
            protocol of GDPP and the fastgp issue; PacGAN's grid experiments are often
            quoted with higher thresholds, pass them explicitly).

    Returns:
        dict with ``modes_covered`` (int), ``num_modes`` (K), ``hq_fraction`` (HQ samples /
        N; non-finite samples are never HQ), ``reverse_kl`` (KL(q || uniform) of the
        histogram q of HQ samples over their nearest modes, in nats: 0 for a perfectly
        balanced sampler, log K for one mode. No smoothing is needed, the uniform target is
        never 0 and empty bins contribute 0 log 0 = 0; with no HQ sample at all q is
        undefined and log K, the worst value any histogram can score, is reported) and
        ``mode_counts`` (list of K ints: HQ samples per mode).
    """
    if samples.dim() != 2 or samples.shape[0] == 0:
        raise ValueError(f"`samples` must be (N, D) with N >= 1, got {tuple(samples.shape)}")
    if modes.dim() != 2 or modes.shape[0] == 0 or modes.shape[1] != samples.shape[1]:
        raise ValueError(
            f"`modes` must be (K, {samples.shape[1]}) with K >= 1, got {tuple(modes.shape)}"
        )
    if not (isinstance(mode_std, (int, float)) and mode_std > 0 and math.isfinite(mode_std)):
        raise ValueError(f"`mode_std` must be a positive finite float, got {mode_std!r}")
    if not (isinstance(hq_sigmas, (int, float)) and hq_sigmas > 0):
        raise ValueError(f"`hq_sigmas` must be positive, got {hq_sigmas!r}")
    threshold = 1 if min_count is None else min_count
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
        raise ValueError(f"`min_count` must be a positive int or None, got {min_count!r}")

    points = samples.detach().double().cpu()
    centres = modes.detach().double().cpu()
    distance, nearest = torch.cdist(points, centres).min(dim=1)
    hq = distance <= hq_sigmas * mode_std  # False for NaN distances
    counts = torch.bincount(nearest[hq], minlength=centres.shape[0])
    num_modes = centres.shape[0]
    total_hq = int(counts.sum())
    if total_hq == 0:
        reverse_kl = math.log(num_modes)
    else:
        q = counts.double() / total_hq
        nonzero = q > 0
        reverse_kl = float((q[nonzero] * torch.log(q[nonzero] * num_modes)).sum())
    return {
        "modes_covered": int((counts >= threshold).sum()),
        "num_modes": num_modes,
        "hq_fraction": total_hq / points.shape[0],
        "reverse_kl": max(reverse_kl, 0.0),  # rounding can give -1e-17 for a uniform q
        "mode_counts": [int(c) for c in counts],
    }


def wasserstein1_exact(x: Tensor, y: Tensor) -> float:
    """Exact W1 between two equal-size point clouds with uniform weights.

    The optimal transport plan between two uniform empirical measures of the same size is
    a permutation (Birkhoff), so W1 = min over assignments of the mean Euclidean distance,
    solved with ``scipy.optimize.linear_sum_assignment`` on the (n, n) float64 cost.

    Args:
        x, y: (n, D) float tensors, same n (1 <= n <= MAX_W1_POINTS), finite values.
    Cost: O(n^3) time, 8 n^2 bytes; about 1-5 s for n = 2500 on one CPU core.
    """
    from scipy.optimize import linear_sum_assignment

    for name, t in (("x", x), ("y", y)):
        if t.dim() != 2 or t.shape[0] == 0:
            raise ValueError(f"`{name}` must be (n, D) with n >= 1, got {tuple(t.shape)}")
    if x.shape != y.shape:
        raise ValueError(
            f"`x` and `y` must have the same shape (equal-size point clouds), got "
            f"{tuple(x.shape)} and {tuple(y.shape)}"
        )
    if x.shape[0] > MAX_W1_POINTS:
        raise ValueError(
            f"exact W1 on {x.shape[0]} points needs an {x.shape[0]}^2 cost matrix and an "
            f"O(n^3) assignment; subsample to at most {MAX_W1_POINTS} points"
        )
    a, b = x.detach().double().cpu(), y.detach().double().cpu()
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise ValueError("`x` and `y` must be finite (found NaN or inf)")
    cost = torch.cdist(a, b).numpy()
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].mean())


def sliced_wasserstein(x: Tensor, y: Tensor, projections: Tensor) -> float:
    """Mean over unit directions of the 1-D W1 between the projected samples.

    x, y: (n, D) with the same n; projections: (P, D) unit vectors. For equal sizes the
    1-D W1 is the mean absolute difference of the sorted projections.
    """
    if x.shape != y.shape:
        raise ValueError(f"`x` and `y` must have the same shape, got {x.shape} and {y.shape}")
    px = torch.sort(x.double() @ projections.double().T, dim=0).values
    py = torch.sort(y.double() @ projections.double().T, dim=0).values
    return float((px - py).abs().mean())


def image_statistics(fake: Tensor, real: Tensor, seed: int) -> dict:
    """Cheap distances between two image batches (N, C, H, W) in [-1, 1] (not FID).

    ``pixel_mean_distance`` / ``pixel_std_distance``: RMS over pixels of the difference of
    the per-pixel mean / standard-deviation images. ``sliced_wasserstein``: sliced W1
    (``SLICED_PROJECTIONS`` random directions from ``seed``) between the images
    area-downsampled to at most 16x16 and flattened.
    """
    fake, real = fake.double(), real.double()
    mean_gap = (fake.mean(0) - real.mean(0)).pow(2).mean().sqrt()
    std_gap = (fake.std(0, unbiased=False) - real.std(0, unbiased=False)).pow(2).mean().sqrt()
    size = min(SLICED_RESOLUTION, fake.shape[-1], fake.shape[-2])
    small_fake = F.adaptive_avg_pool2d(fake, size).flatten(1)
    small_real = F.adaptive_avg_pool2d(real, size).flatten(1)
    gen = torch.Generator().manual_seed(seed + _PROJECTION_SEED_OFFSET)
    directions = torch.randn(SLICED_PROJECTIONS, small_fake.shape[1], generator=gen)
    directions = directions / directions.norm(dim=1, keepdim=True)
    return {
        "pixel_mean_distance": float(mean_gap),
        "pixel_std_distance": float(std_gap),
        "sliced_wasserstein": sliced_wasserstein(small_fake, small_real, directions),
    }


def _training_flags(module: nn.Module) -> list[tuple[nn.Module, bool]]:
    return [(m, m.training) for m in module.modules()]


def _restore_flags(flags: list[tuple[nn.Module, bool]]) -> None:
    for m, training in flags:
        m.training = training


@torch.no_grad()
def generate(
    generator: nn.Module, num_samples: int, seed: int, device: torch.device | str
) -> Tensor:
    """``num_samples`` samples (float32, CPU) from noise N(0, I) drawn on CPU with ``seed``,
    in eval mode (the caller restores the mode)."""
    noise = torch.randn(num_samples, generator.z_dim, generator=torch.Generator().manual_seed(seed))
    return torch.cat([generator(z.to(device)).float().cpu() for z in noise.split(_CHUNK)])


@torch.no_grad()
def critic_gap(critic: nn.Module, real: Tensor, fake: Tensor, device: torch.device | str) -> float:
    """The critic's Wasserstein estimate ``mean D(real) - mean D(fake)`` (eval mode).

    A packed critic (``critic.pac`` > 1, ``models.Critic``) scores packs of consecutive
    samples, as in training; the last ``len % pac`` samples of each batch, which fill no
    pack, are left out.
    """
    pac = getattr(critic, "pac", 1)
    chunk = max(pac, _CHUNK - _CHUNK % pac)  # whole packs per call
    scores = []
    for batch in (real, fake):
        whole = batch[: len(batch) - len(batch) % pac]
        if not len(whole):
            raise ValueError(
                f"{len(batch)} samples fill no pack of the critic's --pac {pac}: evaluate at "
                f"least {pac}"
            )
        scores.append(torch.cat([critic(x.to(device)).float().cpu() for x in whole.split(chunk)]))
    return float(scores[0].double().mean() - scores[1].double().mean())


def _image_quality(fake: Tensor, real: Tensor, dataset, classifier) -> dict:
    """The class metrics, or the note saying why there are none."""
    from fastgp.train.evaluation.image_metrics import class_metrics, skipped_note

    if dataset.labelled is None:
        return {"class_metrics": skipped_note(dataset)}
    if classifier is None:
        return {}
    if not bool(torch.isfinite(fake).all()):
        return {"class_metrics": "skipped: a generated image is not finite"}
    return class_metrics(fake, real, dataset, classifier)


def evaluate_generator(
    generator: nn.Module,
    dataset,
    *,
    num_samples: int,
    seed: int,
    device: torch.device | str,
    critic: nn.Module | None = None,
    w1_points: int = EVAL_W1_POINTS,
    classifier=None,
    fidelity: bool = False,
    inception_weights: str | None = None,
) -> dict:
    """Metrics of ``generator`` against ``dataset`` (a ``fastgp.train.data.Dataset``).

    Noise comes from ``seed``, the held-out real sample from ``seed + 1000003``, so the
    result is a deterministic function of the weights and the seed. Both nets run in eval
    mode; their per-module train/eval flags are restored afterwards.

    Toy sets: ``toy_metrics`` on ``num_samples`` points (when the set has modes) plus
    ``wasserstein1`` = exact W1 between the first ``min(num_samples, w1_points)``
    generated and held-out points (NaN if a generated point is not finite);
    ``wasserstein1_points`` says how many. Images: ``image_statistics`` vs as many
    held-out images; for a labelled dataset with ``classifier`` (a
    ``classifier.TrainedClassifier``) the ``image_metrics.class_metrics``, for an unlabelled
    one ``class_metrics`` = a note saying why they are skipped; with ``fidelity``, ``fid``,
    ``kid_mean``, ``kid_std`` (``fidelity.fid_kid`` with ``inception_weights``; raises
    ``fidelity.FidelityUnavailable`` without weights or torch-fidelity). With ``critic``:
    ``critic_wasserstein`` = mean D(real) - mean D(fake) on the held-out and generated
    samples (a packed critic: the packs that ``num_samples`` fills, see ``critic_gap``).
    Always: ``num_samples``.
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"`num_samples` must be a positive int, got {num_samples!r}")
    if isinstance(w1_points, bool) or not isinstance(w1_points, int) or w1_points < 1:
        raise ValueError(f"`w1_points` must be a positive int, got {w1_points!r}")
    flags = _training_flags(generator) + ([] if critic is None else _training_flags(critic))
    try:
        generator.eval()
        if critic is not None:
            critic.eval()
        fake = generate(generator, num_samples, seed, device)
        real = dataset.heldout(
            num_samples, torch.Generator().manual_seed(seed + _HELDOUT_SEED_OFFSET)
        )
        result: dict = {"num_samples": num_samples}
        if dataset.kind == "toy":
            if dataset.modes is not None:
                result.update(toy_metrics(fake, dataset.modes, dataset.mode_std))
            n = min(num_samples, w1_points, MAX_W1_POINTS)
            finite = bool(torch.isfinite(fake[:n]).all())
            result["wasserstein1"] = wasserstein1_exact(fake[:n], real[:n]) if finite else math.nan
            result["wasserstein1_points"] = n
        else:
            result.update(image_statistics(fake, real, seed))
            result.update(_image_quality(fake, real, dataset, classifier))
            if fidelity:
                from fastgp.train.evaluation.fidelity import fid_kid

                result.update(fid_kid(fake, real, inception_weights, device))
        if critic is not None:
            result["critic_wasserstein"] = critic_gap(critic, real, fake, device)
    finally:
        _restore_flags(flags)
    return result
