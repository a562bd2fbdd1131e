"""Atomic files and checkpoints that survive a crash.

Layout under a run directory::

    checkpoints/step-00001000.pt   torch.save of the state dict (zip format)
    checkpoints/last.json          {"step": 1000, "file": "step-00001000.pt"}

Every file is written to a hidden temp file in the same directory, flushed and fsync'ed,
then ``os.replace``d over its name, so a reader sees the old file or the new one, never a
partial one; a crash leaves at most a ``.*.tmp`` file, which readers ignore. ``last.json``
names the newest checkpoint for people and tools; ``latest_checkpoint`` still checks every
candidate and falls back to older ones if the newest is unreadable.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

CHECKPOINT_DIR = "checkpoints"
LAST_FILE = "last.json"
_STEP_FILE = re.compile(r"^step-(\d{8,})\.pt$")


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp creates files readable by their owner only; give finished files the permissions
# open() would have (0o666 minus the umask), so sample grids and plots stay shareable.
_FILE_MODE = 0o666 & ~_current_umask()


class CheckpointError(RuntimeError):
    """A checkpoint file exists but cannot be read."""


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Create or replace ``path`` atomically: ``write(f)`` fills a temp file, then rename.

    The temp file sits in the same directory (``os.replace`` is atomic only within one
    file system), is fsync'ed before the rename, and is removed if ``write`` fails.
    Returns ``path`` as a Path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def checkpoint_path(run_dir: str | os.PathLike, step: int) -> Path:
    """``run_dir/checkpoints/step-{step:08d}.pt``."""
    return Path(run_dir) / CHECKPOINT_DIR / f"step-{step:08d}.pt"


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, path)`` of every finished checkpoint file in the run, oldest step first."""
    directory = Path(run_dir) / CHECKPOINT_DIR
    if not directory.is_dir():
        return []
    found = []
    for p in directory.iterdir():
        m = _STEP_FILE.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def save_checkpoint(
    run_dir: str | os.PathLike, step: int, state: dict[str, Any], keep_last: int = 3
) -> Path:
    """Write ``state`` as the checkpoint of ``step`` and keep only the newest ``keep_last``.

    Args:
        run_dir: the run directory (``checkpoints/`` is created in it).
        step: the training step, >= 0.
        state: tensors, numbers, strings, lists/tuples/dicts of them (what
            ``torch.load(weights_only=True)`` can read back).
        keep_last: checkpoints kept, >= 1. Checkpoints of steps after ``step`` are from
            a run this one was resumed before the end of; they are deleted with a warning,
            so the step order stays the write order.

    Returns:
        The path of the new checkpoint.
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"`step` must be an integer >= 0, got {step!r}")
    if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1:
        raise ValueError(f"`keep_last` must be an integer >= 1, got {keep_last!r}")
    if not isinstance(state, dict):
        raise TypeError(f"`state` must be a dict, got {type(state).__name__}")
    path = atomic_write(checkpoint_path(run_dir, step), lambda f: torch.save(state, f))
    pointer = json.dumps({"step": step, "file": path.name}).encode()
    atomic_write(path.parent / LAST_FILE, lambda f: f.write(pointer))
    _prune(run_dir, step, keep_last)
    return path


def _prune(run_dir: str | os.PathLike, step: int, keep_last: int) -> None:
    existing = list_checkpoints(run_dir)
    stale = [p for s, p in existing if s > step]
    if stale:
        warnings.warn(
            f"deleting checkpoints newer than step {step} (left by an earlier, longer run "
            f"in the same directory): {', '.join(p.name for p in stale)}",
            stacklevel=3,
        )
    current = [p for s, p in existing if s <= step]
    for p in stale + current[:-keep_last]:
        p.unlink(missing_ok=True)


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not a complete checkpoint, or None if it is.

    Checks the zip container ``torch.save`` writes, including every member's CRC, without
    unpickling anything: a truncated or partly overwritten file fails here.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as e:
        return f"{type(e).__name__}: {e}"
    if bad is not None:
        return f"member {bad!r} fails its CRC check"
    return None


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest readable checkpoint of a run, or None if it has none.

    Temp files of interrupted writes are ignored. The file named by ``last.json`` is
    tried first, then the others from the newest step down; an unreadable one is skipped
    with a warning that names it and why.
    """
    directory = Path(run_dir) / CHECKPOINT_DIR
    candidates = [p for _, p in reversed(list_checkpoints(run_dir))]
    pointed = _pointed(directory)
    if pointed is not None and pointed in candidates:
        candidates.remove(pointed)
        candidates.insert(0, pointed)
    for i, path in enumerate(candidates):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        fallback = "trying the previous one" if i + 1 < len(candidates) else "none left"
        warnings.warn(f"checkpoint {path} is unreadable ({problem}); {fallback}", stacklevel=2)
    return None


def _pointed(directory: Path) -> Path | None:
    """The checkpoint ``last.json`` names, if it parses and names a step file."""
    try:
        name = json.loads((directory / LAST_FILE).read_text())["file"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(name, str) or not _STEP_FILE.match(name):
        return None
    return directory / name


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device | None = "cpu"
) -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)`` (no arbitrary unpickling).

    Raises FileNotFoundError if ``path`` does not exist and CheckpointError if it cannot
    be read as a checkpoint dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError...
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a dict")
    return state
