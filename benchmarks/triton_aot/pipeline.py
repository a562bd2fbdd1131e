"""Derive, compile and inspect in worker processes; cache every analysis on disk.

The test process runs Triton's interpreter (``TRITON_INTERPRET=1``, set by
``tests/conftest.py``), whose kernels cannot be compiled, so all the work happens in
spawned workers with the interpreter off: one derives the specializations (recording and
binding need the compilable kernels), then both compile, then both disassemble in batches.

Cache: ``$FASTGP_CACHE_DIR/aot`` (default ``~/.cache/fastgp/aot``), one JSON file per
(specialization, arch), keyed by Triton's version, the source of the code that analyzes
(``compiled.py``, this module), the kernel's source hash (Triton's, covering the functions
it calls), the specialization, its row parameters and the architecture. A warm run only
re-derives the launches.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.triton_aot.binding import Derivation, Requested, Specialization, derive
from benchmarks.triton_aot.compiled import (
    Analysis,
    Compiled,
    compile_kernel,
    disassemble,
    sass_facts,
)

ARCHS = (80, 90)  # compute capabilities compiled for: A100, H100/H200
_BATCH = 200  # code sections per nvdisasm call
# What an analysis depends on besides its key: the code that makes it and stores it.
_ANALYSIS_HASH = hashlib.sha256(
    b"".join((Path(__file__).parent / name).read_bytes() for name in ("compiled.py", "pipeline.py"))
).hexdigest()[:16]


def _init_worker(triton_cache: str) -> None:
    # Before fastgp's kernels are defined in this process: compiled, not interpreted.
    os.environ.pop("TRITON_INTERPRET", None)
    # Compile for real (a hit in Triton's cache would skip ptxas and its report), into a
    # private cache directory that is removed afterwards.
    os.environ["TRITON_ALWAYS_COMPILE"] = "1"
    os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"
    os.environ["TRITON_CACHE_DIR"] = triton_cache
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def _compile_task(task: tuple[Specialization, tuple[str, ...], int, bool | None]):
    """The compiled facts, or why the compile failed (reported per specialization)."""
    try:
        return compile_kernel(*task)
    except Exception as exc:  # a failed compile is a test failure of this specialization
        return f"{type(exc).__name__}: {exc}"


def _disassemble_task(task: tuple[int, list[bytes]]):
    return disassemble(*task)


# ------------------------------------------------------------------------------ cache


def cache_dir() -> Path:
    from fastgp.backends.cpp import cache_root

    return cache_root() / "aot"


def _cache_file(spec: Specialization, rows: tuple[str, ...], arch: int) -> Path:
    import triton

    key = json.dumps(
        [triton.__version__, _ANALYSIS_HASH, asdict(spec), list(rows), arch], sort_keys=True
    )
    return cache_dir() / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"


def _read_cached(path: Path) -> Analysis | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    data["sass_load_bits"] = {int(k): v for k, v in data["sass_load_bits"].items()}
    return Analysis(**data)


def _write_cached(path: Path, analysis: Analysis) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(asdict(analysis)))
    tmp.replace(path)  # atomic: a concurrent reader sees no file or the whole file


# -------------------------------------------------------------------------------- run


@dataclass
class Result:
    """One (specialization, arch): its analysis, or the compile error."""

    requested: Requested
    arch: int
    analysis: Analysis | None
    error: str | None
    cached: bool


@dataclass
class Run:
    derivation: Derivation
    results: list[Result]
    derive_s: float
    compile_s: float  # compiling and disassembling what the cache did not have
    compiled: int


def _analyze(pool: ProcessPoolExecutor, tasks: list) -> list[Analysis | str]:
    """Compile every task in the pool, then disassemble the cubins in batches per arch."""
    outcomes: list = list(pool.map(_compile_task, tasks))
    batches = []
    for arch in sorted({task[2] for task in tasks}):
        done = [
            i for i, o in enumerate(outcomes) if isinstance(o, Compiled) and tasks[i][2] == arch
        ]
        batches += [(arch, done[k : k + _BATCH]) for k in range(0, len(done), _BATCH)]
    codes = [(arch, [outcomes[i].code for i in batch]) for arch, batch in batches]
    for (_, batch), instructions in zip(batches, pool.map(_disassemble_task, codes), strict=True):
        for i, sass in zip(batch, instructions, strict=True):
            outcomes[i] = Analysis(**asdict(outcomes[i].facts), **asdict(sass_facts(sass)))
    return outcomes


def run(full: bool, archs: Iterable[int] = ARCHS, workers: int = 2) -> Run:
    """Derive the specializations of ``calls(full)`` and analyze each for every arch."""
    archs = tuple(archs)
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="fastgp-aot-triton-") as triton_cache:
        with ProcessPoolExecutor(workers, context, _init_worker, (triton_cache,)) as pool:
            start = time.perf_counter()
            derivation = pool.submit(derive, full).result()
            derive_s = time.perf_counter() - start
            results, tasks, slots = [], [], []
            for req in derivation.requested:
                for arch in archs:
                    cached = _read_cached(_cache_file(req.spec, req.rows, arch))
                    results.append(Result(req, arch, cached, None, cached is not None))
                    if cached is None:
                        tasks.append((req.spec, req.rows, arch, None))
                        slots.append(len(results) - 1)
            start = time.perf_counter()
            for slot, task, outcome in zip(slots, tasks, _analyze(pool, tasks), strict=True):
                if isinstance(outcome, str):
                    results[slot].error = outcome
                else:
                    _write_cached(_cache_file(*task[:3]), outcome)
                    results[slot].analysis = outcome
            compile_s = time.perf_counter() - start
    return Run(derivation, results, derive_s, compile_s, len(tasks))


def compile_one(
    spec: Specialization, rows: tuple[str, ...], arch: int, fp_fusion: bool | None
) -> Analysis:
    """One uncached compile and analysis in a fresh worker (for checks that alter the
    launch options, e.g. ``fp_fusion=True``)."""
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="fastgp-aot-triton-") as triton_cache:
        with ProcessPoolExecutor(1, context, _init_worker, (triton_cache,)) as pool:
            (outcome,) = _analyze(pool, [(spec, rows, arch, fp_fusion)])
    if isinstance(outcome, str):
        raise RuntimeError(outcome)
    return outcome
