"""An exponential moving average of a model's weights (used for the generator's samples).

Averaging the generator over the last ~1/(1 - decay) steps removes much of the
step-to-step oscillation of GAN training (Yazici et al., ICLR 2019); the averaged copy is
what ``fastgp sample`` and ``fastgp eval`` use.

Batch norm: the live generator's running statistics belong to the live weights, not to the
averaged ones, so before the copy is used its statistics are recomputed from its own
activations (``recompute_norm_statistics``; BigGAN's "standing statistics").
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` / ``DataParallel`` wrapper."""
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return model.module
    return model


class EMA:
    """Keeps ``ema = decay * ema + (1 - decay) * param`` for every parameter of a model.

    Args:
        model: the model to average (a deep copy is taken; DDP wrappers are unwrapped).
        decay: in [0, 1); 0.999 averages over about the last 1000 updates.
        start_step: before this step ``update`` copies the weights instead of averaging,
            so the average does not remember the random initialisation.

    Attributes:
        model: the averaged copy, in eval mode, every parameter with requires_grad=False.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, start_step: int = 0) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"`model` must be an nn.Module, got {type(model).__name__}")
        self.decay = _check_decay(decay)
        self.start_step = _check_start_step(start_step)
        self.model = copy.deepcopy(_unwrap(model))
        self.model.eval()
        self.model.requires_grad_(False)
        self._batch_norms = _running_batch_norms(self.model)
        # False while the batch-norm statistics are the live model's copied ones.
        self._own_statistics = False

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Fold ``model``'s current weights into the average after optimizer step ``step``.

        Parameters are averaged (copied while ``step < start_step``); buffers (e.g.
        normalisation statistics) are always copied.
        """
        source = _unwrap(model)
        params = dict(source.named_parameters())
        ema_params = dict(self.model.named_parameters())
        if params.keys() != ema_params.keys():
            raise ValueError(
                "`model` does not have the parameters of the model this EMA was built from: "
                f"missing {sorted(ema_params.keys() - params.keys())}, "
                f"unexpected {sorted(params.keys() - ema_params.keys())}"
            )
        average = step >= self.start_step
        for name, ema_p in ema_params.items():
            p = params[name].detach()
            if average and ema_p.is_floating_point():
                ema_p.lerp_(p.to(ema_p.dtype), 1.0 - self.decay)
            else:
                ema_p.copy_(p)
        buffers = dict(source.named_buffers())
        for name, ema_b in self.model.named_buffers():
            if name not in buffers:
                raise ValueError(f"`model` has no buffer {name!r}, which the EMA copy has")
            ema_b.copy_(buffers[name])
        self._own_statistics = False

    @property
    def has_norm_statistics(self) -> bool:
        """True when the model has batch-norm running statistics to recompute."""
        return bool(self._batch_norms)

    @property
    def norm_statistics_stale(self) -> bool:
        """True when the batch-norm statistics are the live model's, copied by ``update``
        (or loaded) since the last ``recompute_norm_statistics``."""
        return self.has_norm_statistics and not self._own_statistics

    @torch.no_grad()
    def recompute_norm_statistics(self, inputs: Iterable[Tensor]) -> None:
        """Replace the copied batch-norm statistics with those of the averaged weights: the
        plain mean and variance of each layer's activations over the batches ``inputs``
        (each a model input, e.g. (B, z_dim) noise), computed in train mode. The model is
        left in eval mode with its momenta unchanged; ``update`` copies the live model's
        statistics again."""
        norms = self._batch_norms
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the batches, not an EMA
        self.model.train()
        try:
            for batch in inputs:
                self.model(batch)
        finally:
            self.model.eval()
            for m, momentum in zip(norms, momenta, strict=True):
                m.momentum = momentum
        self._own_statistics = True

    def state_dict(self) -> dict[str, Any]:
        """``{"model": averaged weights, "decay": float, "start_step": int}``."""
        return {
            "model": self.model.state_dict(),
            "decay": self.decay,
            "start_step": self.start_step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the averaged weights, decay and start step saved by ``state_dict``."""
        missing = {"model", "decay", "start_step"} - set(state)
        if missing:
            raise KeyError(f"EMA state is missing {sorted(missing)}")
        self.decay = _check_decay(state["decay"])
        self.start_step = _check_start_step(state["start_step"])
        self.model.load_state_dict(state["model"])
        self._own_statistics = False  # whatever statistics were saved: recomputed on use


def _running_batch_norms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, _BATCH_NORMS) and m.track_running_stats]


def _check_decay(decay: float) -> float:
    decay = float(decay)
    if not (math.isfinite(decay) and 0.0 <= decay < 1.0):
        raise ValueError(f"`decay` must be in [0, 1), got {decay}")
    return decay


def _check_start_step(start_step: int) -> int:
    if isinstance(start_step, bool) or not isinstance(start_step, int) or start_step < 0:
        raise ValueError(f"`start_step` must be an integer >= 0, got {start_step!r}")
    return start_step
