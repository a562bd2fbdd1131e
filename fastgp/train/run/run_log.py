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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.json"


class IntervalMeans:
    """Running sums and counts of named scalars between two log lines, kept on a device.

    ``add`` takes 0-dim tensors (or floats) and reads nothing back to the host; ``read``
    brings the means back in one synchronisation. Sums and counts are float64 and added in
    the order given, so the means are exactly those of adding the Python floats. They are
    saved in checkpoints, so a resumed run logs the same means as an uninterrupted one.

    Args:
        device: where the sums live (the device of the values added).
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, Tensor] = {}

    def _slot(self, key: str) -> tuple[Tensor, Tensor]:
        if key not in self.sums:
            self.sums[key] = torch.zeros((), dtype=torch.float64, device=self.device)
            self.counts[key] = torch.zeros((), dtype=torch.float64, device=self.device)
        return self.sums[key], self.counts[key]

    def add(
        self, values: Mapping[str, Tensor | float], valid: Mapping[str, Tensor] | None = None
    ) -> None:
        """Add one value per key; a key in ``valid`` (0-dim bool) is skipped where false."""
        for key, value in values.items():
            total, count = self._slot(key)
            if isinstance(value, Tensor):
                value = value.detach().reshape(()).to(torch.float64)
            if valid is not None and key in valid:
                ok = valid[key]
                total.add_(torch.where(ok, value, 0.0))
                count.add_(ok.to(torch.float64))
            else:
                total.add_(value)
                count.add_(1.0)

    def mean_tensors(self) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """``(means, seen)`` on the device, by key (no host read): ``seen`` (0-dim bool) is
        whether the key counted at least once; where not, its mean is 0."""
        means, seen = {}, {}
        for key in sorted(self.sums):
            total, count = self.sums[key], self.counts[key]
            seen[key] = count > 0
            means[key] = torch.where(seen[key], total / torch.where(seen[key], count, 1.0), 0.0)
        return means, seen

    def read(self) -> dict[str, float]:
        """The means of the keys added at least once, sorted by key (one host read)."""
        keys = sorted(self.sums)
        if not keys:
            return {}
        totals = torch.stack([self.sums[k] for k in keys] + [self.counts[k] for k in keys])
        values = totals.tolist()
        n = len(keys)
        return {k: values[i] / values[n + i] for i, k in enumerate(keys) if values[n + i] > 0}

    def reset(self) -> None:
        self.sums.clear()
        self.counts.clear()

    def state_dict(self) -> dict[str, Any]:
        """``{"sums": {key: float}, "counts": {key: float}}`` (a host read)."""
        keys = sorted(self.sums)
        if not keys:
            return {"sums": {}, "counts": {}}
        values = torch.stack([self.sums[k] for k in keys] + [self.counts[k] for k in keys])
        values = values.tolist()
        n = len(keys)
        return {
            "sums": {k: values[i] for i, k in enumerate(keys)},
            "counts": {k: values[n + i] for i, k in enumerate(keys)},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reset()
        for key, total in state["sums"].items():
            self.sums[key] = torch.tensor(float(total), dtype=torch.float64, device=self.device)
            count = float(state["counts"][key])
            self.counts[key] = torch.tensor(count, dtype=torch.float64, device=self.device)


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
    from fastgp.train.run.checkpoint import atomic_write

    text = json.dumps(jsonable(result), indent=2, sort_keys=True).encode() + b"\n"
    return atomic_write(Path(run_dir) / EVAL_FILE, lambda f: f.write(text))
