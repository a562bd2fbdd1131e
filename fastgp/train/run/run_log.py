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
    """Running sums and counts of named scalars between two log lines.

    ``add`` takes the scalars of one update as a dict: its 0-dim tensors are stacked and
    added to their slots on the device in one operation (nothing is read back); floats
    (the learning rates) are summed on the host. ``valid`` (bool, 0-dim or one per tensor
    value) leaves out the values where it is false. ``read`` brings the means back in one
    synchronisation. Sums are float64 with one addition per value, in the order added, so a
    mean is exactly that of summing the values as Python floats. The sums are saved in
    checkpoints, so a resumed run logs the same means as an uninterrupted one.

    Args:
        device: where the sums of tensor values live (the device of those values).
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.keys: list[str] = []  # of the device slots, in slot order
        self._sums = torch.zeros(0, dtype=torch.float64, device=self.device)
        self._counts = torch.zeros(0, dtype=torch.float64, device=self.device)
        self._slots: dict[tuple[str, ...], slice | Tensor] = {}  # keys of an add -> slots
        self._host: dict[str, list[float]] = {}  # key -> [sum, count], for float values

    def _slots_of(self, keys: tuple[str, ...]) -> slice | Tensor:
        slot = self._slots.get(keys)
        if slot is not None:
            return slot
        new = [k for k in keys if k not in self.keys]
        if new:  # once per key: a new slot, starting from a loaded (host) sum if any
            start = [self._host.pop(k, [0.0, 0.0]) for k in new]
            added = torch.tensor(start, dtype=torch.float64, device=self.device)
            self._sums = torch.cat([self._sums, added[:, 0]])
            self._counts = torch.cat([self._counts, added[:, 1]])
            self.keys.extend(new)
        index = [self.keys.index(k) for k in keys]
        if index == list(range(index[0], index[0] + len(index))):
            slot = slice(index[0], index[0] + len(index))
        else:
            slot = torch.tensor(index, device=self.device)
        self._slots[keys] = slot
        return slot

    def add(self, values: Mapping[str, Tensor | float], valid: Tensor | None = None) -> None:
        """Add one value per key (tensors: 0-dim, detached, on ``device``)."""
        tensors = {k: v for k, v in values.items() if isinstance(v, Tensor)}
        for key, value in values.items():
            if not isinstance(value, Tensor):
                if key in self.keys:
                    raise ValueError(f"{key!r} was added as a tensor before, now as a float")
                total = self._host.setdefault(key, [0.0, 0.0])
                total[0] += float(value)
                total[1] += 1.0
        if tensors:
            self.add_vector(tuple(tensors), torch.stack(list(tensors.values())), valid)

    def add_vector(
        self, keys: tuple[str, ...], values: Tensor, valid: Tensor | None = None
    ) -> None:
        """``add`` for values already stacked: ``values`` (K,) on ``device``, one per key
        (stacking tensors of one dtype is cheaper than of several)."""
        slot = self._slots_of(keys)
        values = values.to(torch.float64)
        if valid is not None:
            values = torch.where(valid, values, 0.0)
        counted = 1.0 if valid is None else valid.to(torch.float64).expand_as(values)
        if isinstance(slot, slice):
            self._sums[slot].add_(values)
            self._counts[slot].add_(counted)
        else:
            if valid is None:
                counted = torch.ones_like(values)
            self._sums.index_put_((slot,), values, accumulate=True)
            self._counts.index_put_((slot,), counted, accumulate=True)

    def mean_tensors(self) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """``(means, seen)`` of the device slots, by key, as 0-dim tensors (no host read):
        ``seen`` is whether the key counted at least once; where not, its mean is 0."""
        seen = self._counts > 0
        means = self._sums / torch.where(seen, self._counts, 1.0)
        return dict(zip(self.keys, means.unbind(), strict=True)), dict(
            zip(self.keys, seen.unbind(), strict=True)
        )

    def add_means(self, other: IntervalMeans) -> None:
        """Add each of ``other``'s means as one value; keys that never counted there are
        left out (as if not added)."""
        if other.keys:
            seen = other._counts > 0
            means = other._sums / torch.where(seen, other._counts, 1.0)
            self.add_vector(tuple(other.keys), means, seen)
        for key, (total, count) in other._host.items():
            if count:
                self.add({key: total / count})

    def mean_vector(self) -> tuple[list[str], Tensor]:
        """``(keys, v)``: ``v`` (2N,) float64 on the device holds the N means (0 where a key
        never counted) then N flags (1.0 where it did), e.g. to sum over ranks. Float values
        are copied to the device here."""
        seen = (self._counts > 0).to(torch.float64)
        means = self._sums / torch.where(seen > 0, self._counts, 1.0)
        host = list(self._host)
        if host:
            rows = [(s / c if c else 0.0, 1.0 if c else 0.0) for s, c in self._host.values()]
            extra = torch.tensor(rows, dtype=torch.float64, device=self.device)
            means, seen = torch.cat([means, extra[:, 0]]), torch.cat([seen, extra[:, 1]])
        return self.keys + host, torch.cat([means, seen])

    def _totals(self) -> tuple[dict[str, float], dict[str, float]]:
        """Every sum and count on the host (one read)."""
        values = torch.cat([self._sums, self._counts]).tolist() if self.keys else []
        n = len(self.keys)
        sums = {k: values[i] for i, k in enumerate(self.keys)}
        counts = {k: values[n + i] for i, k in enumerate(self.keys)}
        for key, (total, count) in self._host.items():
            sums[key], counts[key] = total, count
        return sums, counts

    def read(self) -> dict[str, float]:
        """The means of the keys that counted at least once, sorted by key (one host read)."""
        sums, counts = self._totals()
        return {k: sums[k] / counts[k] for k in sorted(sums) if counts[k] > 0}

    def zero_(self) -> None:
        """Zero every sum and count but keep the slots (for reuse, without reallocating)."""
        self._sums.zero_()
        self._counts.zero_()
        for total in self._host.values():
            total[:] = [0.0, 0.0]

    def reset(self) -> None:
        """Forget every key."""
        self.keys = []
        self._sums = self._sums.new_zeros(0)
        self._counts = self._counts.new_zeros(0)
        self._slots.clear()
        self._host.clear()

    def state_dict(self) -> dict[str, Any]:
        """``{"sums": {key: float}, "counts": {key: float}}`` (a host read)."""
        sums, counts = self._totals()
        return {"sums": sums, "counts": counts}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict``'s sums (they move to the device when first added to)."""
        self.reset()
        for key, total in state["sums"].items():
            self._host[key] = [float(total), float(state["counts"][key])]


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
