"""What a run records as it goes: ``metrics.jsonl``, optional TensorBoard, interval means.

(Named ``run_log`` rather than ``logging`` so it never shadows the standard library.)

``metrics.jsonl`` holds one JSON object per line. Training lines have ``"kind": "train"``
and the interval means of the step's scalars (``loss_d``, ``loss_g``, ``wdist``, ``gp``,
``grad_norm_mean``, ``grad_norm_std``, ``lr_g``, ``lr_d``, ``samples_per_s``, ``time``);
evaluation lines have ``"kind": "eval"`` and the metrics of ``evaluate_generator``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.json"


class IntervalMeans:
    """Running sums of named scalars between two log lines (saved in checkpoints, so a
    resumed run logs the same means as an uninterrupted one)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value)
            self.counts[key] = self.counts.get(key, 0) + 1

    def means(self) -> dict[str, float]:
        return {k: self.sums[k] / self.counts[k] for k in sorted(self.sums)}

    def reset(self) -> None:
        self.sums.clear()
        self.counts.clear()

    def state_dict(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "counts": dict(self.counts)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sums = {k: float(v) for k, v in state["sums"].items()}
        self.counts = {k: int(v) for k, v in state["counts"].items()}


def jsonable(value: Any) -> Any:
    """Non-finite floats as null (JSON has no NaN), containers recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


class RunLog:
    """Appends records to ``run_dir/metrics.jsonl`` (and TensorBoard); a no-op when
    ``enabled`` is False (ranks other than 0).

    Args:
        run_dir: the run directory (must exist).
        enabled: write anything at all.
        tensorboard: also write TensorBoard events to ``run_dir/tensorboard`` if the
            ``tensorboard`` package is installed (silently skipped otherwise).
        resume_step: a resumed run first drops lines of steps after this one (written
            after the checkpoint it resumes from), so the file reads as one run.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        *,
        enabled: bool = True,
        tensorboard: bool = False,
        resume_step: int | None = None,
    ) -> None:
        self.path = Path(run_dir) / METRICS_FILE
        self.enabled = enabled
        self.records: list[dict[str, Any]] = []
        self._writer = None
        if not enabled:
            return
        if resume_step is not None and self.path.exists():
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
            self.records = kept
        elif self.path.exists():
            self.path.unlink()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                SummaryWriter = None
            if SummaryWriter is not None:
                self._writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        """Append one record (it must have an integer ``step``)."""
        if not self.enabled:
            return
        record = jsonable(record)
        self.records.append(record)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._writer is not None:
            prefix = record.get("kind", "train")
            for key, value in record.items():
                if (
                    key != "step"
                    and isinstance(value, (int, float))
                    and not isinstance(value, bool)
                ):
                    self._writer.add_scalar(f"{prefix}/{key}", value, record["step"])
            self._writer.flush()

    def records_of(self, kind: str) -> list[dict[str, Any]]:
        """The records written so far (this run and the kept lines of a resumed one) of
        ``kind`` (``train``, ``eval``)."""
        return [r for r in self.records if r.get("kind", "train") == kind]

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (a torn last line from a crash is ignored)."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def write_eval(run_dir: str | os.PathLike, result: dict[str, Any]) -> Path:
    """Write the latest evaluation to ``run_dir/eval.json`` atomically."""
    from fastgp.train.checkpoint import atomic_write

    text = json.dumps(jsonable(result), indent=2, sort_keys=True).encode() + b"\n"
    return atomic_write(Path(run_dir) / EVAL_FILE, lambda f: f.write(text))
