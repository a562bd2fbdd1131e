"""``python -m benchmarks.gpu --out-dir DIR``: the GPU benchmark of issue 8 §8.

Eager PyTorch, ``torch.compile``, fastgp (backend ``triton``) and a device-to-device copy of
the same bytes, side by side in one process and timed with ``triton.testing.do_bench``
(median; do_bench warms up and flushes the L2 cache before every call), in float32 and
bfloat16, for the interpolation forward, the interpolation forward+backward and the
norm+penalty forward+backward, at the CPU suite's sizes from 16x1x28x28 to 256x4x128x128;
then whole critic steps, eager against fastgp. The providers, byte counts, rows and ratios
are the CPU suite's (``providers``, ``cases``, ``report``, ``critic_step``); issue 8 §9's
targets (``TARGETS``) are evaluated on the rows.

Each row also has ``host_ms``: wall-clock time per call of back-to-back calls, synchronised
once at the end, without cache flushes. do_bench flushes the cache with a 256 MB write before
every call; when a call needs less GPU time than that write, the CPU can queue the call while
the write runs, and do_bench then reports the GPU's time alone, without the Python and launch
overhead that a training loop pays. ``host_ms`` includes that overhead.

Writes ``DIR/gpu_bench.json`` and ``.csv`` after every case (a run stopped early keeps what
it measured) and ``.png`` at the end, and prints Markdown tables. Exit code 1 if a case was
skipped (``--budget-s``) or a provider failed; a failure is recorded with its error and the
run goes on.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from benchmarks import cases, critic_step, machine, memory, plot, providers, report
from benchmarks.cases import OpCase
from benchmarks.run import parse_list, parse_sizes
from benchmarks.timing import Timing, TimingConfig, time_cuda

OUTPUT_STEM = "gpu_bench"
OUTPUT_SUFFIXES = ("json", "csv", "png")

# The sizes of README's CPU table from a 16-image MNIST batch up to the 16.8M-element case,
# so the GPU and CPU tables line up: three below 1M elements, three above.
SIZES: tuple[tuple[int, tuple[int, ...]], ...] = (
    (16, (1, 28, 28)),
    (64, (1, 28, 28)),
    (256, (3, 32, 32)),
    (256, (3, 64, 64)),
    (256, (3, 128, 128)),
    cases.LARGE_CASE,
)
OP_MODES = (("interpolate", "fwd"), ("interpolate", "fwdbwd"), ("penalty", "fwdbwd"))
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
OP_PROVIDERS = ("eager", "compile", "fastgp", "copy")
# Critic-step providers, each a name ``critic_step.step_callable`` knows: one line per provider.
STEP_PROVIDERS = (
    "eager", "fastgp", "compile", "fastgp_compile", "fastgp_compile_kernels",
    "fastgp_compile_reference", "fastgp_compile_cudagraphs",
)  # fmt: skip
# Compiling takes seconds to minutes a graph: the compiled providers run on the toy MLP
# critics only (the conv critics' eager rows are measured; their compile would not fit the
# GPU check's budget).
COMPILED_STEP_ARCHS = ("mlp",)
STEP_CASES = critic_step.STEP_CASES

# do_bench's warm-up and timed calls, in seconds. 50 ms of timed calls (do_bench's default
# is 100) is still hundreds of samples per op, each flush included, and keeps the 144 op
# timings of a run near 15 s. Steps take milliseconds each: longer, for a few dozen samples.
OP_TIMING = TimingConfig(warmup_s=0.025, min_time_s=0.05)
STEP_TIMING = TimingConfig(warmup_s=0.05, min_time_s=0.3)
HOST_MIN_TIME_S = 0.02
HOST_MAX_CALLS = 10_000
# Start no new case after this many seconds (gpu_check.sh gives the stage 150 s: the last
# case, its compilation and the plot fit in the rest).
BUDGET_S = 120.0

MACHINE_FIELDS = (
    "hostname", "gpu", "gpu_capability", "driver", "cuda", "torch", "triton", "device",
    "date_utc",
)  # fmt: skip
FIELDS = (*report.FIELDS, "host_ms")

_M = report.MILLION
# Issue 8 §9: "norm+penalty fwd+bwd and interpolation at >= 80% of the device copy bandwidth
# from 16M elements; >= 1.5x torch.compile below 1M elements", for every dtype measured.
TARGETS = (
    report.Target("norm+penalty fwd+bwd >= 16M elements: >= 80% of copy bandwidth", "op",
                  "penalty", "fwdbwd", "frac_of_copy", 0.8, min_elements=16 * _M),
    report.Target("interpolation fwd >= 16M elements: >= 80% of copy bandwidth", "op",
                  "interpolate", "fwd", "frac_of_copy", 0.8, min_elements=16 * _M),
    report.Target("interpolation fwd+bwd >= 16M elements: >= 80% of copy bandwidth", "op",
                  "interpolate", "fwdbwd", "frac_of_copy", 0.8, min_elements=16 * _M),
    report.Target("norm+penalty fwd+bwd < 1M elements: >= 1.5x torch.compile", "op",
                  "penalty", "fwdbwd", "speedup_vs_compile", 1.5, max_elements=_M - 1),
    report.Target("interpolation fwd < 1M elements: >= 1.5x torch.compile", "op",
                  "interpolate", "fwd", "speedup_vs_compile", 1.5, max_elements=_M - 1),
    report.Target("interpolation fwd+bwd < 1M elements: >= 1.5x torch.compile", "op",
                  "interpolate", "fwdbwd", "speedup_vs_compile", 1.5, max_elements=_M - 1),
)  # fmt: skip

Fn = Callable[[int], object]


@dataclass(frozen=True)
class Timers:
    """How a callable ``fn(i)`` (i = call index) is timed.

    ``device(fn, config) -> Timing``: the row's median and spread (do_bench on CUDA);
    ``host(fn) -> float``: seconds per call of back-to-back calls.
    """

    device: Callable[[Fn, TimingConfig], Timing]
    host: Callable[[Fn], float]


def host_seconds_per_call(
    fn: Fn,
    synchronize: Callable[[], None],
    min_time_s: float = HOST_MIN_TIME_S,
    max_calls: int = HOST_MAX_CALLS,
) -> float:
    """Seconds per call of ``fn(1) ... fn(n)`` run back to back, ``synchronize()`` before and
    after; n (3 to ``max_calls``) makes the loop last about ``min_time_s``, from one timed
    call ``fn(0)``. ``fn`` should be warm (compiled, allocator primed)."""
    synchronize()
    start = time.perf_counter()
    fn(0)
    synchronize()
    one_call = time.perf_counter() - start
    calls = min(max_calls, max(3, math.ceil(min_time_s / max(one_call, 1e-9))))
    synchronize()
    start = time.perf_counter()
    for i in range(1, calls + 1):
        fn(i)
    synchronize()
    return (time.perf_counter() - start) / calls


def cuda_timers(device: torch.device) -> Timers:
    """do_bench (through ``benchmarks.timing.time_cuda``) and the host loop on ``device``."""
    return Timers(
        device=time_cuda,
        host=partial(host_seconds_per_call, synchronize=partial(torch.cuda.synchronize, device)),
    )


def op_cases(sizes: Iterable[tuple[int, tuple[int, ...]]]) -> list[OpCase]:
    """Every (op, mode) of ``OP_MODES`` at every size, ordered by op, mode, then size."""
    sizes = list(sizes)
    return [OpCase(op, mode, b, s) for op, mode in OP_MODES for b, s in sizes]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def case_label(case: OpCase, dtype: torch.dtype) -> str:
    """The row's ``case``: the CPU suite's name and the dtype, since both dtypes share a run."""
    return f"{case.name}-{dtype_name(dtype)}"


def _error(case: str, provider: str, exc: BaseException) -> dict[str, str]:
    traceback.print_exc(file=sys.stderr)
    return {"case": case, "provider": provider, "error": f"{type(exc).__name__}: {exc}"}


def measure_op_case(
    case: OpCase,
    dtype: torch.dtype,
    device: torch.device,
    backend: str,
    resolved: str,
    timers: Timers,
    rotate_bytes: int,
) -> tuple[list[dict[str, object]], list[dict[str, str]]]:
    """(rows, errors) of every ``OP_PROVIDERS`` entry on ``case`` in ``dtype``."""
    label = case_label(case, dtype)
    sets = providers.input_sets(case, dtype, device, rotate_bytes)
    rows, errors = [], []
    for name in OP_PROVIDERS:
        # One provider's failure (a compile error, say) must not lose the other rows.
        try:
            fn = providers.op_callable(case, name, sets, backend)
            timing = timers.device(fn, OP_TIMING)
            host_s = timers.host(fn)
        except Exception as exc:
            errors.append(_error(label, name, exc))
            continue
        row = report.op_row(case, name, dtype, resolved if name == "fastgp" else None, timing)
        row.update(case=label, host_ms=host_s * 1e3)
        rows.append(row)
    report.add_ratios(rows)
    return rows, errors


def measure_step_case(
    case: critic_step.StepCase,
    device: torch.device,
    backend: str,
    resolved: str,
    timers: Timers,
) -> tuple[list[dict[str, object]], list[dict[str, str]]]:
    """(rows, errors) of every ``STEP_PROVIDERS`` entry on one critic step (float32)."""
    critic_step.new_case()
    critic = critic_step.build_critic(case, device)
    inputs = critic_step.step_inputs(case, device, count=2)
    rows, errors = [], []
    for name in STEP_PROVIDERS:
        if name in critic_step.COMPILE_MODES and case.arch not in COMPILED_STEP_ARCHS:
            continue
        try:
            fn = critic_step.step_callable(case, name, critic, inputs, backend)
            began = time.perf_counter()
            fn(0)  # the compile, for the compiled providers
            first_call_s = time.perf_counter() - began
            timing = timers.device(fn, STEP_TIMING)
            host_s = timers.host(fn)
            peak, method = memory.peak_bytes(partial(fn, 0), device)
        except Exception as exc:
            errors.append(_error(case.name, name, exc))
            continue
        ran = critic_step.backend_ran(name, resolved, device)
        row = report.step_row(case, name, ran, timing, peak, method, None, first_call_s)
        row["host_ms"] = host_s * 1e3
        rows.append(row)
    report.add_ratios(rows)
    return rows, errors


def output_paths(out_dir: Path) -> dict[str, Path]:
    return {suffix: out_dir / f"{OUTPUT_STEM}.{suffix}" for suffix in OUTPUT_SUFFIXES}


def plot_rows(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """The rows with the dtype in the op name, so ``plot.plot_speedups`` draws one panel per
    op, dtype and mode instead of mixing float32 and bfloat16 points on one line."""
    short = {"float32": "fp32", "bfloat16": "bf16"}
    return [
        {**r, "op": f"{r['op']} {short.get(str(r['dtype']), r['dtype'])}"}
        if r["kind"] == "op"
        else r
        for r in rows
    ]


def run_suite(
    out_dir: Path,
    device: torch.device,
    timers: Timers,
    *,
    sizes: Iterable[tuple[int, tuple[int, ...]]] = SIZES,
    dtypes: Iterable[torch.dtype] = tuple(DTYPES.values()),
    step_cases: Iterable[critic_step.StepCase] = STEP_CASES,
    backend: str = "triton",
    budget_s: float = BUDGET_S,
    rotate_bytes: int = 128 << 20,
    clock: Callable[[], float] = time.monotonic,
    argv: list[str] | None = None,
    log: Callable[[str], None] = lambda message: print(message, file=sys.stderr, flush=True),
) -> dict[str, object]:
    """Measure the critic steps, then every op case in every dtype; write the files.

    A case is started only while ``clock() - start < budget_s``; later ones are listed in
    ``config["skipped"]``. Returns the JSON payload (machine, config, rows, targets).
    """
    from fastgp.backends import resolve_backend

    dtypes, sizes = list(dtypes), list(sizes)
    # Resolve (an explicit backend raises if it cannot run) before anything is timed.
    resolved = {
        dtype_name(dt): resolve_backend(backend, device, dt) for dt in (torch.float32, *dtypes)
    }
    info = machine.machine_info(device, torch.get_num_threads())
    info.update(machine.gpu_info(device))
    info["fastgp_backend"] = resolved["float32"]
    config: dict[str, object] = {
        "argv": list(argv or []),
        "backend_requested": backend,
        "backends": resolved,
        "dtypes": [dtype_name(dt) for dt in dtypes],
        "op_providers": list(OP_PROVIDERS),
        "step_providers": list(STEP_PROVIDERS),
        "op_timing": dataclasses.asdict(OP_TIMING),
        "step_timing": dataclasses.asdict(STEP_TIMING),
        "host_min_time_s": HOST_MIN_TIME_S,
        "rotate_bytes": rotate_bytes,
        "budget_s": budget_s,
        # benchmarks/results/ names CPU results so; rename the files to it to keep them.
        "result_stem": machine.result_stem(info),
        "complete": False,
        "skipped": [],
        "errors": [],
        "wall_s": 0.0,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = output_paths(out_dir)
    for path in paths.values():  # no stale file from an earlier run may pass for this one's
        path.unlink(missing_ok=True)
    rows: list[dict[str, object]] = []
    began = clock()

    def save() -> list[dict[str, object]]:
        config["wall_s"] = clock() - began
        targets = report.evaluate_targets(rows, TARGETS)
        report.write_json(paths["json"], info, config, rows, targets)
        report.write_csv(paths["csv"], info, rows, MACHINE_FIELDS, FIELDS)
        return targets

    jobs: list[tuple[str, Callable[[], tuple[list, list]]]] = [
        (c.name, partial(measure_step_case, c, device, backend, resolved["float32"], timers))
        for c in step_cases
    ]
    for dt in dtypes:
        for case in op_cases(sizes):
            job = partial(
                measure_op_case, case, dt, device, backend, resolved[dtype_name(dt)], timers,
                rotate_bytes,
            )  # fmt: skip
            jobs.append((case_label(case, dt), job))
    for label, job in jobs:
        if clock() - began >= budget_s:
            config["skipped"].append(label)
            continue
        start = clock()
        case_rows, errors = job()
        rows.extend(case_rows)
        config["errors"].extend(errors)
        summary = ", ".join(f"{r['provider']} {r['median_ms']:.4g} ms" for r in case_rows)
        failed = "".join(f", {e['provider']} FAILED" for e in errors)
        log(f"{label} ({clock() - start:.1f} s): {summary}{failed}")
        save()
    if config["skipped"]:
        log(f"budget of {budget_s:g} s spent: skipped {len(config['skipped'])} cases")
    config["complete"] = not config["skipped"] and not config["errors"]
    targets = save()
    if any(r.get("speedup_vs_eager") is not None for r in rows):
        plot.plot_speedups(
            plot_rows(rows),
            paths["png"],
            f"{info['gpu']}, driver {info['driver']}, CUDA {info['cuda']}, torch {info['torch']}"
            f", triton {info['triton']}, fastgp {resolved['float32']}; do_bench medians",
        )
    return {"machine": info, "config": config, "rows": rows, "targets": targets}


def _cell(value: object, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def host_table(rows: list[dict[str, object]]) -> str:
    """Per case: back-to-back wall-clock ms per call of eager, compile and fastgp, fastgp's
    ratio to compile by that clock, and fastgp's do_bench median beside it."""
    lines = [
        "| case | eager host ms | compile host ms | fastgp host ms | × compile (host) "
        "| fastgp do_bench ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label in dict.fromkeys(r["case"] for r in rows):
        by = {r["provider"]: r for r in rows if r["case"] == label}
        ours = by.get("fastgp", {}).get("host_ms")
        theirs = by.get("compile", {}).get("host_ms")
        ratio = float(theirs) / float(ours) if ours and theirs else None
        lines.append(
            f"| {label} "
            + "".join(
                f"| {_cell(by.get(p, {}).get('host_ms'), '.4g')} "
                for p in ("eager", "compile", "fastgp")
            )
            + f"| {_cell(ratio, '.2f')} | {_cell(by.get('fastgp', {}).get('median_ms'), '.4g')} |"
        )
    return "\n".join(lines)


def summary(payload: dict[str, object]) -> str:
    """The Markdown printed at the end: ops per dtype, critic steps, host times, targets."""
    rows, config = payload["rows"], payload["config"]
    info = payload["machine"]
    parts = [
        f"GPU: {info['gpu']} (compute capability {info['gpu_capability']}), driver "
        f"{info['driver']}, CUDA {info['cuda']}, torch {info['torch']}, triton "
        f"{info['triton']}, Python {info['python']}; fastgp backends {config['backends']}. "
        "Times are triton.testing.do_bench medians in ms; GB/s count the bytes of one fused "
        "pass; % of copy compares with a device-to-device copy of the same bytes in this run."
    ]
    for dt in config["dtypes"]:
        ops = [r for r in rows if r["kind"] == "op" and r["dtype"] == dt]
        if ops:
            parts += [f"### {dt}", report.markdown_tables(ops, [])]
    steps = [r for r in rows if r["kind"] == "step"]
    if steps:
        parts += ["### critic steps (float32)", report.markdown_tables(steps, [])]
    if rows:
        parts += ["### host time per call (back-to-back calls, no cache flush)", host_table(rows)]
    parts += [
        "### issue 8 §9 targets",
        report.markdown_tables([], payload["targets"], target_title="issue-8 §9 target"),
    ]
    if config["skipped"]:
        parts.append(f"skipped (time budget): {', '.join(config['skipped'])}")
    for e in config["errors"]:
        parts.append(f"FAILED {e['case']} {e['provider']}: {e['error']}")
    return "\n\n".join(parts)


def print_versions(device: torch.device) -> None:
    """``key: value`` lines: GPU, driver, CUDA, torch, triton, Python, fastgp, host."""
    info = machine.machine_info(device, torch.get_num_threads())
    info.update(machine.gpu_info(device))
    for key, value in info.items():
        print(f"{key}: {value}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--out-dir",
        type=Path,
        help=f"where {OUTPUT_STEM}.{{{','.join(OUTPUT_SUFFIXES)}}} go (required unless --versions)",
    )
    p.add_argument("--versions", action="store_true", help="print the versions and exit")
    p.add_argument("--dtypes", default=",".join(DTYPES), help="float32,bfloat16")
    p.add_argument("--sizes", default=None, help="override the sizes: 16x1x28x28,256x4x128x128")
    p.add_argument("--steps", choices=("all", "none"), default="all", help="critic steps")
    p.add_argument("--backend", default="triton", help="fastgp backend (default: triton)")
    p.add_argument(
        "--budget-s",
        type=float,
        default=BUDGET_S,
        help="start no case after this many seconds; skipped cases make the exit code 1",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit(
            f"python -m benchmarks.gpu needs a CUDA device; torch {torch.__version__} sees none "
            "here (torch.cuda.is_available() is False)"
        )
    device = torch.device("cuda", torch.cuda.current_device())
    if args.versions:
        print_versions(device)
        return 0
    if args.out_dir is None:
        raise SystemExit("--out-dir is required (the folder for the JSON, CSV and PNG)")
    if not args.budget_s > 0:
        raise SystemExit(f"--budget-s must be > 0, got {args.budget_s}")
    try:
        import triton.testing  # noqa: F401  (time_cuda would fall back to CUDA events)
    except ImportError as exc:
        raise SystemExit(f"the GPU benchmark times with triton.testing.do_bench: {exc}") from None
    dtypes = [DTYPES[d] for d in parse_list(args.dtypes, tuple(DTYPES), "--dtypes")]
    sizes = parse_sizes(args.sizes) if args.sizes else SIZES
    l2 = machine.gpu_info(device)["gpu_l2_bytes"] or 64 << 20
    payload = run_suite(
        args.out_dir,
        device,
        cuda_timers(device),
        sizes=sizes,
        dtypes=dtypes,
        step_cases=STEP_CASES if args.steps == "all" else (),
        backend=args.backend,
        budget_s=args.budget_s,
        # Host loops run without do_bench's flush: inputs rotate through up to 256 sets
        # (providers.MAX_INPUT_SETS) covering at most twice the L2 cache.
        rotate_bytes=2 * int(l2),
        argv=sys.argv[1:] if argv is None else list(argv),
    )
    print(summary(payload))
    print()
    for path in output_paths(args.out_dir).values():
        print(f"wrote {path}" if path.exists() else f"not written: {path}")
    return 0 if payload["config"]["complete"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
