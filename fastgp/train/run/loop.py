"""The run loop: train a ``Trainer`` to ``cfg.steps`` with logging, pictures, evaluation,
checkpoints and a clean stop on Ctrl-C or a non-finite value.

Cadence (``due_outputs``): a metrics line every ``log_every`` generator steps, pictures
every ``sample_every``, an evaluation every ``eval_every``, a checkpoint every
``checkpoint_every`` (0: at the end only), and all of them after the last step. Between
them the loop reads nothing from the device: before any of them it reads the non-finite
guard (``Trainer.check_finite``), so nothing is written from a step after a NaN or inf.

Stopping: a non-finite value stops the run with ``RunOutcome("nonfinite")`` naming the
quantity and the generator step where it first appeared; nothing is saved from that step
on, so the newest checkpoint is the last good one. Ctrl-C (SIGINT) sets a flag checked
after every generator step: the step finishes, a checkpoint is written and the run exits
cleanly. (With several processes the ranks agree on that flag with one small all-reduce
per generator step, the loop's only host read between outputs.)
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastgp.train.config import TrainConfig
from fastgp.train.evaluation.plots import save_loss_curves
from fastgp.train.run import checkpoint as ckpt
from fastgp.train.run import distributed as dist_utils
from fastgp.train.run.guards import NonFiniteError
from fastgp.train.run.run_log import RunLog, write_eval
from fastgp.train.run.trainer import Trainer

LOSS_PLOT = "loss_curves.png"


@dataclass
class RunOutcome:
    """How ``run_training`` ended: ``status`` is ``finished``, ``interrupted`` or
    ``nonfinite``; ``step`` the last completed generator step (for ``nonfinite``, the step
    where the non-finite value appeared)."""

    status: str
    step: int
    message: str
    checkpoint: Path | None = None
    evaluation: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return {"finished": 0, "interrupted": 130}.get(self.status, 3)


@dataclass(frozen=True)
class Due:
    """What is written after a generator step."""

    log: bool
    pictures: bool
    evaluation: bool
    checkpoint: bool
    last: bool

    @property
    def anything(self) -> bool:
        return self.log or self.pictures or self.evaluation or self.checkpoint


def due_outputs(cfg: TrainConfig, step: int) -> Due:
    """The outputs due after generator step ``step`` (1-based)."""
    last = step == cfg.steps

    def every(interval: int) -> bool:
        return bool(interval and step % interval == 0) or last

    return Due(
        log=every(cfg.log_every),
        pictures=every(cfg.sample_every),
        evaluation=every(cfg.eval_every),
        checkpoint=every(cfg.checkpoint_every),
        last=last,
    )


class _SigintFlag:
    """Catches the first Ctrl-C as a flag (the loop stops cleanly at the next step
    boundary); a second Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        self.raised = False
        self._previous: Any = None

    def _handle(self, signum, frame) -> None:
        self.raised = True
        print(
            "\nCtrl-C: finishing this step and saving a checkpoint (press again to abort)",
            file=sys.stderr,
            flush=True,
        )
        signal.signal(signal.SIGINT, signal.default_int_handler)

    @contextlib.contextmanager
    def installed(self) -> Iterator[_SigintFlag]:
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous = None
        try:
            yield self
        finally:
            if self._previous is not None:
                signal.signal(signal.SIGINT, self._previous)


class _Clock:
    """Wall time of the run and of the current log interval."""

    def __init__(self, step: int) -> None:
        self.start = self.interval_time = time.perf_counter()
        self.start_step = self.interval_start = step

    def interval(self, step: int, batch_size: int) -> dict[str, float]:
        """``samples_per_s``, ``steps_per_s`` since the last call, ``time`` since the start."""
        now = time.perf_counter()
        steps_per_s = (step - self.interval_start) / max(now - self.interval_time, 1e-9)
        self.interval_time, self.interval_start = now, step
        return {
            "samples_per_s": steps_per_s * batch_size,
            "steps_per_s": steps_per_s,
            "time": now - self.start,
        }


def run_training(trainer: Trainer, *, resumed: bool = False) -> RunOutcome:
    """Train from ``trainer.step`` to ``cfg.steps``; see the module docstring.

    Every rank runs it (the guard reads, means and checkpoints are collectives); only
    rank 0 writes files.
    """
    cfg, ctx = trainer.cfg, trainer.ctx
    log = RunLog(
        trainer.run_dir,
        enabled=ctx.is_main,
        tensorboard=cfg.tensorboard,
        resume_step=trainer.step if resumed else None,
    )
    bar = _progress(cfg, trainer.step, enabled=ctx.is_main and cfg.progress)
    last_saved = ckpt.latest_checkpoint(trainer.run_dir) if ctx.is_main else None
    if ctx.is_main:  # the class metrics' classifier, before the clock: step times leave it out
        prepared = trainer.prepare_classifier()
        if prepared is not None:
            log.write(prepared)
    clock = _Clock(trainer.step)
    evaluation: dict[str, Any] = {}
    sigint = _SigintFlag()
    try:
        with sigint.installed():
            while trainer.step < cfg.steps:
                trainer.train_step()
                step = trainer.step
                if bar is not None:
                    bar.update(1)
                due = due_outputs(cfg, step)
                interrupted = dist_utils.any_true(sigint.raised, ctx) and not due.last
                try:
                    if due.anything or interrupted:
                        trainer.check_finite()  # nothing is written from a bad step on
                    if due.log:
                        seconds, graphs = trainer.take_compile_seconds()
                        if graphs:  # apart from the train line, whose time includes it
                            log.write(
                                {
                                    "kind": "compile",
                                    "step": step,
                                    "seconds": seconds,
                                    "graphs": graphs,
                                    "mode": trainer.compile_mode,
                                }
                            )
                        record = trainer.read_interval_means()
                        log.write(
                            {
                                "kind": "train",
                                "step": step,
                                **record,
                                **clock.interval(step, cfg.batch_size),
                            }
                        )
                        if bar is not None:
                            bar.set_postfix(_postfix(record), refresh=False)
                    if ctx.is_main and due.pictures:
                        trainer.save_pictures()
                        save_loss_curves(trainer.run_dir / LOSS_PLOT, log.records_of("train"))
                    if ctx.is_main and due.evaluation:
                        evaluation = trainer.evaluate()
                        log.write({"kind": "eval", **evaluation})
                        write_eval(trainer.run_dir, evaluation)
                    if due.checkpoint or interrupted:
                        last_saved = trainer.save_checkpoint() or last_saved
                except NonFiniteError as e:  # every rank raises at the same read
                    return _nonfinite(e, step, last_saved, log)
                if interrupted:
                    message = (
                        f"interrupted at step {step}/{cfg.steps}; checkpoint {last_saved}; "
                        f"continue with: fastgp train --resume {trainer.run_dir}"
                    )
                    return RunOutcome("interrupted", step, message, last_saved, evaluation)
            if clock.start_step == cfg.steps and ctx.is_main:  # nothing left to do
                last_saved = ckpt.latest_checkpoint(trainer.run_dir)
    finally:
        if bar is not None:
            bar.close()
        log.close()
    elapsed = time.perf_counter() - clock.start
    rate = (trainer.step - clock.start_step) / max(elapsed, 1e-9)
    message = (
        f"finished {cfg.steps} steps in {elapsed:.1f} s ({rate:.1f} steps/s); "
        f"run directory {trainer.run_dir}"
    )
    return RunOutcome("finished", trainer.step, message, last_saved, evaluation)


def _postfix(record: dict[str, float]) -> dict[str, str]:
    shown = {"loss_d": "loss_d", "loss_g": "loss_g", "wdist": "w"}
    return {name: f"{record[key]:.3f}" for key, name in shown.items() if key in record}


def _nonfinite(
    error: NonFiniteError, checked_step: int, last_saved: Path | None, log: RunLog
) -> RunOutcome:
    kept = f"last good checkpoint kept: {last_saved}" if last_saved else "no checkpoint yet"
    message = (
        f"training stopped: {error} (found when checked after step {checked_step}). Nothing "
        f"was saved from step {error.step} on; {kept}. Lower the learning rates, raise the "
        f"penalty weight, or try --amp none."
    )
    log.write(
        {"kind": "error", "step": error.step, "checked_step": checked_step, "error": str(error)}
    )
    return RunOutcome("nonfinite", error.step, message, last_saved)


def _progress(cfg: TrainConfig, start: int, *, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=cfg.steps, initial=start, desc="train", unit="step", dynamic_ncols=True)
