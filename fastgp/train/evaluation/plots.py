"""Pictures of a run: toy-set scatter over the critic's contour, sample grids, loss curves.

Figures are drawn on ``matplotlib.figure.Figure`` objects with the Agg canvas directly,
never through ``pyplot``: no window opens, no global backend is switched, and nothing is
left registered in pyplot's figure manager. Every file is written atomically.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from torch import Tensor, nn

from fastgp.train.run.checkpoint import atomic_write

GRID_PADDING = 2  # pixels between and around images in ``save_image_grid``
CONTOUR_RESOLUTION = 128  # critic evaluations per axis in ``save_toy_plot``
_FIGURE_DPI = 100


def _points(x: Tensor, name: str) -> np.ndarray:
    if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[1] != 2:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"`{name}` must be a (N, 2) tensor of 2-D points, got {shape}")
    return x.detach().to("cpu", torch.float64).numpy()


def _save_figure(path: str | os.PathLike, fig: Figure) -> Path:
    FigureCanvasAgg(fig)
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=_FIGURE_DPI))


def save_toy_plot(
    path: str | os.PathLike,
    real: Tensor,
    fake: Tensor,
    *,
    critic: Callable[[Tensor], Tensor] | None = None,
    modes: Tensor | None = None,
    title: str = "",
) -> Path:
    """Scatter real and generated 2-D points, over the critic's contour if given.

    As in the WGAN-GP paper's toy figures: the critic's value over the data range as filled
    contours (grey), real points in orange, generated in green, and the mixture's modes as
    red crosses.

    Args:
        path: PNG file to write (6 x 6 inches at 100 dpi, 600 x 600 pixels).
        real, fake: (N, 2) and (M, 2) points.
        critic: maps (K, 2) points to (K,) or (K, 1) scores; evaluated under no_grad on
            its parameters' device and dtype (or real's for a plain function).
        modes: optional (K, 2) mode centres.
        title: figure title.
    """
    r, f = _points(real, "real"), _points(fake, "fake")
    centres = None if modes is None else _points(modes, "modes")
    everything = np.concatenate([r, f] + ([centres] if centres is not None else []))
    everything = everything[np.isfinite(everything).all(axis=1)]
    low, high = (everything.min(0), everything.max(0)) if len(everything) else (-1, 1)
    margin = 0.1 * np.maximum(high - low, 1e-3)
    low, high = low - margin, high + margin

    fig = Figure(figsize=(6, 6))
    ax = fig.add_subplot()
    if critic is not None:
        xs = np.linspace(low[0], high[0], CONTOUR_RESOLUTION)
        ys = np.linspace(low[1], high[1], CONTOUR_RESOLUTION)
        gx, gy = np.meshgrid(xs, ys)
        scores = _critic_on(critic, np.stack([gx.ravel(), gy.ravel()], 1), real)
        # A grey colormap leaves the colours to the points.
        filled = ax.contourf(gx, gy, scores.reshape(gx.shape), levels=20, cmap="Greys")
        ax.contour(gx, gy, scores.reshape(gx.shape), levels=20, colors="k", linewidths=0.3)
        fig.colorbar(filled, ax=ax, fraction=0.046, pad=0.04, label="critic")
    if centres is not None:
        ax.scatter(
            centres[:, 0], centres[:, 1], s=80, c="tab:red", marker="x", label="modes", zorder=1.5
        )
    ax.scatter(r[:, 0], r[:, 1], s=4, c="tab:orange", label="real", alpha=0.8, zorder=2)
    ax.scatter(f[:, 0], f[:, 1], s=4, c="tab:green", label="generated", alpha=0.8, zorder=2)
    ax.set_xlim(low[0], high[0])
    ax.set_ylim(low[1], high[1])
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize="small")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return _save_figure(path, fig)


@contextmanager
def _evaluating(critic: Callable[[Tensor], Tensor]) -> Iterator[None]:
    """Run a module critic in eval mode, then restore every submodule's own mode.

    In training mode spectral normalisation advances its power iteration on every forward,
    even under no_grad: drawing a plot must not change the critic a run continues with.
    """
    if not isinstance(critic, nn.Module):
        yield
        return
    modes = [(m, m.training) for m in critic.modules()]
    critic.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


@torch.no_grad()
def _critic_on(critic: Callable[[Tensor], Tensor], grid: np.ndarray, like: Tensor) -> np.ndarray:
    """Critic scores at (K, 2) grid points, as a (K,) float64 array, in chunks."""
    param = next(critic.parameters(), None) if isinstance(critic, nn.Module) else None
    device, dtype = (param.device, param.dtype) if param is not None else (like.device, like.dtype)
    points = torch.from_numpy(grid).to(device=device, dtype=dtype)
    with _evaluating(critic):
        return _scores_in_chunks(critic, points)


def _scores_in_chunks(critic: Callable[[Tensor], Tensor], points: Tensor) -> np.ndarray:
    scores = []
    for chunk in points.split(4096):
        out = critic(chunk)
        if not isinstance(out, Tensor) or out.numel() != chunk.shape[0]:
            raise ValueError(
                "`critic` must return one score per point ((K,) or (K, 1)); got "
                f"{tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__}"
            )
        scores.append(out.reshape(-1).to("cpu", torch.float64))
    return torch.cat(scores).numpy()


def image_grid(images: Tensor, nrow: int) -> np.ndarray:
    """Tile images in [-1, 1] into one uint8 picture, ``nrow`` images per row.

    Args:
        images: (B, C, H, W) with C = 1 or 3; values outside [-1, 1] are clipped.
        nrow: images per row, >= 1 (the last row may be partly empty).

    Returns:
        (rows * (H + p) + p, ncol * (W + p) + p, C) uint8 array with p = GRID_PADDING,
        rows = ceil(B / nrow), ncol = min(nrow, B); the padding is black.
    """
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] not in (1, 3):
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"`images` must be (B, C, H, W) with C = 1 or 3, got {shape}")
    if images.shape[0] == 0:
        raise ValueError("`images` is an empty batch")
    if isinstance(nrow, bool) or not isinstance(nrow, int) or nrow < 1:
        raise ValueError(f"`nrow` must be an integer >= 1, got {nrow!r}")
    b, c, h, w = images.shape
    pixels = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    ncol, rows, p = min(nrow, b), math.ceil(b / nrow), GRID_PADDING
    grid = np.zeros((rows * (h + p) + p, ncol * (w + p) + p, c), dtype=np.uint8)
    for i, img in enumerate(pixels.permute(0, 2, 3, 1).numpy()):
        top, left = p + (i // nrow) * (h + p), p + (i % nrow) * (w + p)
        grid[top : top + h, left : left + w] = img
    return grid


def save_image_grid(path: str | os.PathLike, images: Tensor, nrow: int) -> Path:
    """Write ``image_grid(images, nrow)`` as a PNG (grayscale for C = 1, RGB for C = 3)."""
    grid = image_grid(images, nrow)
    picture = Image.fromarray(grid[:, :, 0] if grid.shape[2] == 1 else grid)
    return atomic_write(path, lambda f: picture.save(f, format="PNG"))


def save_loss_curves(
    path: str | os.PathLike,
    records: Sequence[dict[str, Any]],
    keys: tuple[str, ...] = ("loss_d", "loss_g", "wdist", "gp"),
) -> Path:
    """Plot metrics against ``step``, one panel per key, stacked vertically.

    Args:
        path: PNG file to write (8 inches wide, 2.2 inches per panel, 100 dpi).
        records: dicts like the lines of metrics.jsonl; each needs an integer ``step``.
            A record without a key (or with None, a non-number or a non-finite value for
            it) adds no point to that panel; a key no record has gets no panel. With no
            panel at all the figure says so, so the file always exists.
        keys: metrics to plot, in order.
    """
    series: dict[str, tuple[list[float], list[float]]] = {}
    for i, record in enumerate(records):
        if not isinstance(record, dict) or "step" not in record:
            raise ValueError(f"`records[{i}]` must be a dict with a 'step' key, got {record!r}")
        for key in keys:
            value = record.get(key)
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if number and math.isfinite(value):
                steps, values = series.setdefault(key, ([], []))
                steps.append(float(record["step"]))
                values.append(float(value))
    panels = [k for k in keys if k in series]
    fig = Figure(figsize=(8, 2.2 * max(1, len(panels))))
    if not panels:
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, f"no values yet for {', '.join(keys)}", ha="center", va="center")
        ax.set_axis_off()
    for i, key in enumerate(panels):
        ax = fig.add_subplot(len(panels), 1, i + 1)
        steps, values = series[key]
        ax.plot(steps, values, linewidth=1)
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        if i == len(panels) - 1:
            ax.set_xlabel("step")
    fig.tight_layout()
    return _save_figure(path, fig)
