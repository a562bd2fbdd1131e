"""NaN/inf never passes silently: finiteness checked on the device, read on the host rarely.

After every update the trainer hands the guard the quantities that must be finite (the
losses, the penalty, the total parameter-gradient norms; with fp16 the loss scale instead
of the gradients). ``FiniteGuard.observe`` records, on the device and without reading
anything back, the *first* check that ever failed: its generator step, quantity and value.
``FiniteGuard.read`` brings that record to the host, one synchronisation; the run loop
reads it once per log interval and before every checkpoint, picture and evaluation, so a
checkpoint never holds weights from after a non-finite value, and the report still names
the step and the quantity where it first appeared.

Between two reads the run goes on: an optimiser step on a non-finite gradient poisons the
weights, but nothing from then on is written (the loop stops at the read), so the newest
checkpoint is the last good one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from fastgp.train.gan.steps import CriticOutput, GeneratorOutput

MIN_LOSS_SCALE = 2.0**-16  # below this, fp16 gradients overflow whatever the scale


class NonFiniteError(RuntimeError):
    """A loss, penalty or gradient became NaN/inf: ``quantity`` in generator ``step``
    (``value``: what it was, when known)."""

    def __init__(self, quantity: str, step: int, value: float | None = None) -> None:
        self.quantity, self.step, self.value = quantity, step, value
        shown = "" if value is None or math.isfinite(value) else f" ({value})"
        super().__init__(f"{quantity} is not finite{shown} in generator step {step}")


class Check(NamedTuple):
    """One quantity to check: ``value`` (0-dim, detached, any float dtype) fails when
    ``bad`` (0-dim bool) is true; ``bad`` None means "when ``value`` is NaN or inf"."""

    quantity: str
    value: Tensor
    bad: Tensor | None = None


class Failure(NamedTuple):
    """The first failed check: ``order`` counts the checks observed before it (comparable
    between ranks, which observe the same sequence), then where and what it was."""

    order: int
    step: int
    quantity: str
    value: float


class FiniteGuard:
    """The device-side record of the first failed ``Check`` of a run (see the module doc).

    Args:
        device: where the checked values live.
    """

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self._quantities: list[str] = []  # code -> name
        self._layouts: dict[tuple, tuple[Tensor, Tensor | None]] = {}  # see _layout
        self._false = torch.zeros((), dtype=torch.bool, device=self.device)
        self._seen = 0  # checks observed so far
        zero = torch.zeros((), dtype=torch.int64, device=self.device)
        self._failed = torch.zeros((), dtype=torch.bool, device=self.device)
        self._order, self._step, self._code = zero, zero.clone(), zero.clone()
        self._value = torch.zeros((), dtype=torch.float64, device=self.device)

    def observe(self, step: int, checks: Sequence[Check]) -> None:
        """Record the first failing check of ``checks`` (in their order) in generator step
        ``step``, unless an earlier one failed already. Reads nothing back to the host."""
        if not checks:
            return
        codes, explicit = self._layout(checks)
        values = torch.stack([c.value for c in checks]).to(torch.float64)
        bad = ~torch.isfinite(values)
        if explicit is not None:  # fp16's loss-scale checks
            flags = torch.stack([self._false if c.bad is None else c.bad for c in checks])
            bad = torch.where(explicit, flags, bad)
        # The first True: argmax returns the first of equal maxima.
        first = torch.argmax(bad.to(torch.uint8)).reshape(1)
        newly = bad.any() & ~self._failed
        self._order = torch.where(newly, first[0] + self._seen, self._order)
        self._step = torch.where(newly, step, self._step)
        code = codes.gather(0, first)[0]
        self._code = torch.where(newly, code, self._code)
        self._value = torch.where(newly, values.gather(0, first)[0], self._value)
        self._failed = self._failed | newly
        self._seen += len(checks)

    def _layout(self, checks: Sequence[Check]) -> tuple[Tensor, Tensor | None]:
        """The quantity codes of ``checks`` and which have an explicit ``bad`` flag, as
        device tensors made once per distinct list of checks (a few per run)."""
        layout = tuple((c.quantity, c.bad is not None) for c in checks)
        cached = self._layouts.get(layout)
        if cached is None:
            for name, _ in layout:
                if name not in self._quantities:
                    self._quantities.append(name)
            codes = torch.tensor([self._quantities.index(n) for n, _ in layout], device=self.device)
            flagged = [f for _, f in layout]
            explicit = torch.tensor(flagged, device=self.device) if any(flagged) else None
            cached = self._layouts[layout] = (codes, explicit)
        return cached

    def read(self) -> Failure | None:
        """The first failure so far, or None: one host synchronisation."""
        record = torch.stack(
            [
                self._failed.to(torch.float64),
                self._order.to(torch.float64),
                self._step.to(torch.float64),
                self._code.to(torch.float64),
                self._value,
            ]
        ).tolist()
        failed, order, step, code, value = record
        if not failed:
            return None
        return Failure(int(order), int(step), self._quantities[int(code)], value)


def loss_scale_check(network: str, scaler: torch.amp.GradScaler) -> Check:
    """fp16: the scaler skips overflowing steps and halves its scale; a scale that keeps
    falling means the gradients are non-finite at any scale."""
    # The scale as a device tensor: get_scale() would read it back to the host.
    scale = scaler._get_scale_async().reshape(())
    return Check(
        f"{network} gradient (fp16 loss scale fell below 2**-16)", scale, scale < MIN_LOSS_SCALE
    )


def critic_checks(out: CriticOutput, penalty: str, scaler: torch.amp.GradScaler) -> list[Check]:
    """What must be finite after a critic update, in the order it was computed. With fp16
    an overflow of the scaled penalty or gradients is the scaler's to skip, so only the
    loss and the loss scale are checked."""
    checks = [Check("critic loss", out.loss)]
    if scaler.is_enabled():
        return [*checks, loss_scale_check("critic", scaler)]
    if out.penalty is not None:
        checks.append(Check(f"{penalty} penalty", out.penalty))
    return [*checks, Check("critic gradient", out.param_grad_norm)]


def generator_checks(out: GeneratorOutput, scaler: torch.amp.GradScaler) -> list[Check]:
    """What must be finite after a generator update (see ``critic_checks``)."""
    checks = [Check("generator loss", out.loss)]
    if scaler.is_enabled():
        return [*checks, loss_scale_check("generator", scaler)]
    return [*checks, Check("generator gradient", out.param_grad_norm)]
