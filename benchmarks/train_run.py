"""End to end: a whole ``fastgp train`` run with ``--compile off`` and ``--compile auto``.

Each run is a fresh ``python -m fastgp train`` process, so its wall time includes the
process start, the C++ extension load, every compile (``--compile auto``) and the final
evaluation: what a user waits for. ``--compile auto`` is run twice over: with Inductor's
on-disk cache warm (provider ``compile``: every run after the first on a machine; a short
priming run fills the cache first) and with an empty cache (``compile_cold``: a user's first
run, which compiles every kernel from scratch). Runs alternate (off, auto, auto cold, off,
...) so that a change in the machine's load hits all; the rows hold the median wall time
over ``repeats``, the process CPU time, the compile seconds the run logged
(``metrics.jsonl`` ``kind: compile`` lines) and the final evaluation's quality, so a
speed-up that costs quality shows in the same row.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import report
from benchmarks.timing import Timing, summarize

# provider -> the --compile value of the run (``speedup_vs_eager`` compares with "eager").
TRAIN_PROVIDERS = {"eager": "off", "compile": "auto", "compile_cold": "auto"}
# Providers whose runs start from an empty Inductor cache of their own.
COLD_CACHE = frozenset({"compile_cold"})
# The priming run's generator steps: enough to compile every graph of the run (the critic's
# with and without the penalty under lazy regularisation, the generator's).
PRIMING_STEPS = 8


def _child_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def one_run(
    compile_mode: str, extra_args: list[str], run_dir: Path, cache_dir: Path | None = None
) -> dict[str, object]:
    """One ``fastgp train --compile compile_mode *extra_args`` process; its wall and CPU
    seconds, logged compile seconds and final evaluation. ``cache_dir``: Inductor's (and
    Triton's) cache directory for the run, None for the user's default. Raises RuntimeError
    with the run's output if it fails."""
    command = [
        sys.executable, "-m", "fastgp", "train", "--compile", compile_mode,
        "--run-dir", str(run_dir), "--no-progress", "--no-tensorboard", *extra_args,
    ]  # fmt: skip
    env = dict(os.environ)
    if cache_dir is not None:
        env["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir)
        env["TRITON_CACHE_DIR"] = str(cache_dir / "triton")
    cpu0, began = _child_cpu_s(), time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    wall, cpu = time.perf_counter() - began, _child_cpu_s() - cpu0
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} exited with {done.returncode}:\n{done.stdout}\n{done.stderr}"
        )
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evaluation = json.loads((run_dir / "eval.json").read_text())
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "compile_s": sum(r["seconds"] for r in records if r.get("kind") == "compile"),
        "evaluation": evaluation,
    }


def quality(evaluation: dict[str, object]) -> str:
    """A short quality summary of a final evaluation: modes and HQ for toy sets."""
    if "modes_covered" in evaluation:
        return (
            f"{evaluation['modes_covered']}/{evaluation['num_modes']} modes, "
            f"HQ {100 * float(evaluation['hq_fraction']):.1f}%, "
            f"rKL {float(evaluation['reverse_kl']):.3f}"
        )
    keys = [k for k in ("frechet_classifier", "wasserstein1") if k in evaluation]
    return ", ".join(f"{k} {float(evaluation[k]):.4g}" for k in keys) or "-"


def train_rows(
    extra_args: list[str],
    *,
    repeats: int,
    case: str,
    providers: tuple[str, ...] = tuple(TRAIN_PROVIDERS),
    log=print,
) -> list[dict[str, object]]:
    """One row per provider (``TRAIN_PROVIDERS``) of ``repeats`` alternating runs each."""
    if repeats < 1:
        raise ValueError(f"`repeats` must be >= 1, got {repeats!r}")
    runs: dict[str, list[dict[str, object]]] = {p: [] for p in providers}
    with tempfile.TemporaryDirectory(prefix="fastgp-train-bench-") as tmp:
        if "compile" in providers:  # fills the default cache: "compile" measures it warm
            # The last --steps wins over one in extra_args.
            priming = [*extra_args, "--steps", str(PRIMING_STEPS), "--eval-samples", "50"]
            one_run(TRAIN_PROVIDERS["compile"], priming, Path(tmp) / "priming")
        for i in range(repeats):
            for provider in providers:
                cache = Path(tmp) / f"cache-{provider}{i}" if provider in COLD_CACHE else None
                run = one_run(
                    TRAIN_PROVIDERS[provider], extra_args, Path(tmp) / f"{provider}{i}", cache
                )
                runs[provider].append(run)
                cold = ", empty Inductor cache" if cache else ""
                log(
                    f"train {case} {provider} (--compile {TRAIN_PROVIDERS[provider]}{cold}) run "
                    f"{i + 1}/{repeats}: {run['wall_s']:.1f} s wall, {run['cpu_s']:.1f} s CPU, "
                    f"compile {run['compile_s']:.1f} s; {quality(run['evaluation'])}"
                )
    rows = [_row(case, provider, extra_args, runs[provider]) for provider in providers]
    report.add_ratios(rows)
    return rows


def _row(
    case: str, provider: str, extra_args: list[str], runs: list[dict[str, object]]
) -> dict[str, object]:
    walls = [float(r["wall_s"]) for r in runs]
    timing: Timing = summarize(walls, calls_per_sample=1, method="wall, fresh process")
    median_run = sorted(runs, key=lambda r: float(r["wall_s"]))[(len(runs) - 1) // 2]
    return {
        "kind": "train",
        "op": "fastgp_train",
        "mode": "run",
        "case": case,
        "arch": None,
        "batch": None,
        "sample_shape": " ".join(["fastgp train", *extra_args]),
        "elements": 0,
        "dtype": "float32",
        "provider": provider,
        "backend": f"--compile {TRAIN_PROVIDERS[provider]}"
        + (", empty Inductor cache" if provider in COLD_CACHE else ""),
        "cpu_s": float(median_run["cpu_s"]),
        "compile_s": float(median_run["compile_s"]),
        "quality": quality(median_run["evaluation"]),
        **report.timing_fields(timing),
    }
