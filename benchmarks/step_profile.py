"""Where a ``fastgp train`` generator step spends its time, eager and compiled.

``python -m benchmarks.step_profile [--compile off,auto] [--denormals flushed[,kept]]
[--warmup N] [--steps M] [--train-args "..."] [--from-run RUN] [--out FILE.json]`` builds,
in one process, the trainer of ``fastgp train --train-args`` for each setting: each
``--compile`` mode with each ``--denormals`` handling (flushed to zero, as ``fastgp train``
runs on the CPU, or kept; the thread's flag is set before each setting runs), from
``RUN``'s newest checkpoint when given. It trains each ``--warmup`` generator steps (the
compile among them), times ``--steps`` more in blocks that alternate between the settings
(the median block is the step time), then profiles ``--steps`` more under
``torch.profiler`` and splits the self CPU time per generator step into matrix products
(``aten::mm``/``addmm``/``bmm``/convolutions: what compiling cannot make cheaper, MKL or
oneDNN runs them either way), the optimiser's step, the compiled graphs' own code
(Inductor's kernels and wrappers) and the rest (eager operators, Python around them). The
profiler adds a few microseconds to every operator, so eager's shares are inflated more
than compiled ones; the step time is measured without it. Prints a table; ``--out`` also
writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import torch

from fastgp.train.cli import denormals_flushed

# Operator names (torch.profiler keys) counted as matrix products.
MATMUL_OPS = frozenset(
    {
        "aten::mm",
        "aten::addmm",
        "aten::bmm",
        "aten::baddbmm",
        "aten::mkldnn_convolution",
        "aten::convolution_backward",
        "aten::_convolution",
    }
)
# torch.optim's step (its record_function) and the fused Adam kernel inside it.
OPTIMIZER_PREFIXES = ("Optimizer.step", "aten::_fused_adam")
GRAPH_PREFIX = "## Call CompiledFxGraph"  # an Inductor graph's own code


def build_trainer(
    train_args: list[str], compile_mode: str, run_dir: Path, from_run: Path | None = None
):
    """The ``Trainer`` ``fastgp train *train_args --compile compile_mode`` would build (with
    its thread count), with the newest checkpoint of ``from_run`` loaded (None: fresh
    weights)."""
    from fastgp.train import config
    from fastgp.train.data import load_dataset_of
    from fastgp.train.run.checkpoint import latest_checkpoint, load_checkpoint
    from fastgp.train.run.trainer import Trainer

    options, flags = config.parse_args(
        [*train_args, "--compile", compile_mode, "--run-dir", str(run_dir)]
    )
    cfg = config.merge({**options, **flags})
    config.check(cfg)
    dataset = load_dataset_of(cfg)
    cfg = config.resolve(cfg, dataset.sample_shape)
    torch.set_num_threads(cfg.threads or torch.get_num_threads())
    trainer = Trainer(cfg, dataset)
    if from_run is not None:
        checkpoint = latest_checkpoint(from_run)
        if checkpoint is None:
            raise SystemExit(f"--from-run {from_run}: no checkpoint there")
        trainer.load_state_dict(load_checkpoint(checkpoint))
    return trainer


def split(events, steps: int) -> dict[str, float]:
    """Self CPU milliseconds per generator step by kind (module doc), from
    ``key_averages()`` of a profile of ``steps`` steps."""
    kinds = {"matmul": 0.0, "optimizer": 0.0, "compiled_graph": 0.0, "other": 0.0}
    for event in events:
        ms = event.self_cpu_time_total / 1e3
        if event.key in MATMUL_OPS:
            kinds["matmul"] += ms
        elif event.key.startswith(OPTIMIZER_PREFIXES):
            kinds["optimizer"] += ms
        elif event.key.startswith(GRAPH_PREFIX):
            kinds["compiled_graph"] += ms
        else:
            kinds["other"] += ms
    per_step = {k: v / steps for k, v in kinds.items()}
    per_step["total"] = sum(per_step.values())
    return per_step


def setting_name(compile_mode: str, denormals: str) -> str:
    return f"{compile_mode}, denormals {denormals}"


def profile_settings(
    train_args: list[str],
    modes: list[str],
    denormals: list[str],
    warmup: int,
    steps: int,
    blocks: int = 10,
    from_run: Path | None = None,
) -> dict[str, dict[str, float]]:
    """Each setting's split (``split``) and its unprofiled step time: the median over
    ``blocks`` blocks of ``steps / blocks`` steps, the settings' blocks alternating so that
    a change in the machine's speed hits all of them."""
    flushed_before = denormals_flushed()
    settings = [(mode, handling) for mode in modes for handling in denormals]
    results: dict[str, dict[str, float]] = {}
    try:
        with TemporaryDirectory(prefix="fastgp-step-profile-") as tmp:
            trainers = {
                setting: build_trainer(train_args, setting[0], Path(tmp) / str(i), from_run)
                for i, setting in enumerate(settings)
            }

            def run(setting: tuple[str, str], count: int) -> None:
                torch.set_flush_denormal(setting[1] == "flushed")
                for _ in range(count):
                    trainers[setting].train_step()
                trainers[setting].check_finite()

            for setting in settings:
                run(setting, warmup)
            per_block = max(steps // blocks, 1)
            times: dict[tuple[str, str], list[float]] = {setting: [] for setting in settings}
            for _ in range(blocks):
                for setting in settings:
                    began = time.perf_counter()
                    run(setting, per_block)
                    times[setting].append((time.perf_counter() - began) / per_block * 1e3)
            for setting in settings:
                activities = [torch.profiler.ProfilerActivity.CPU]
                with torch.profiler.profile(activities=activities) as prof:
                    run(setting, steps)
                result = split(prof.key_averages(), steps)
                result["wall_ms_unprofiled"] = statistics.median(times[setting])
                results[setting_name(*setting)] = result
    finally:
        torch.set_flush_denormal(flushed_before)
    return results


def table(results: dict[str, dict[str, float]]) -> str:
    columns = ("wall_ms_unprofiled", "total", "matmul", "optimizer", "compiled_graph", "other")
    lines = [
        "| --compile, denormals | step ms (no profiler) | profiled self CPU ms | matrix products "
        "| optimiser step | compiled graphs' code | other |",
        "|---|" + "---:|" * len(columns),
    ]
    for name, r in results.items():
        share = [f"{r[c]:.2f} ({100 * r[c] / r['total']:.0f}%)" for c in columns[2:]]
        lines.append(
            f"| {name} | {r[columns[0]]:.2f} | {r['total']:.2f} | " + " | ".join(share) + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.step_profile", description=__doc__)
    p.add_argument("--compile", default="off,auto", help="comma list of --compile settings")
    p.add_argument(
        "--denormals",
        default="flushed",
        help="comma list of flushed (as fastgp train runs on the CPU) and kept",
    )
    p.add_argument("--warmup", type=int, default=200, help="generator steps before timing")
    p.add_argument("--steps", type=int, default=100, help="generator steps timed and profiled")
    p.add_argument("--train-args", default="", help="`fastgp train` arguments (default run)")
    p.add_argument(
        "--from-run",
        type=Path,
        default=None,
        help="start from this run's newest checkpoint (default: fresh weights)",
    )
    p.add_argument("--out", type=Path, default=None, help="write the numbers as JSON here")
    args = p.parse_args(argv)
    denormals = args.denormals.split(",")
    if not set(denormals) <= {"flushed", "kept"}:
        p.error(f"--denormals takes flushed and kept, got {args.denormals!r}")
    train_args = shlex.split(args.train_args)
    results = profile_settings(
        train_args,
        args.compile.split(","),
        denormals,
        args.warmup,
        args.steps,
        from_run=args.from_run,
    )
    command = " ".join(["fastgp train", *train_args])
    print(f"`{command}`, per generator step:")
    print(table(results))
    if args.out is not None:
        record = {
            "train_args": args.train_args,
            "steps": args.steps,
            "from_run": None if args.from_run is None else str(args.from_run),
            "results": results,
        }
        args.out.write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
