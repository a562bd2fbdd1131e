"""``python -m benchmarks.run``: eager PyTorch, ``torch.compile``, fastgp and a plain copy,
side by side in one process; a Markdown table on stdout, JSON + CSV + PNG under
``benchmarks/results/`` (or ``--out-dir``) named after the machine. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/run.py`: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks import cases as cases_mod  # noqa: E402
from benchmarks import (  # noqa: E402
    critic_step,
    machine,
    memory,
    plot,
    providers,
    report,
    train_run,
)
from benchmarks.timing import TimingConfig, time_competitors  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}
OP_TIMING = TimingConfig(warmup_s=0.05, min_time_s=0.15, min_repeats=10)
OP_TIMING_QUICK = TimingConfig(warmup_s=0.0, min_warmup=2, min_time_s=0.01, min_repeats=3)
# A DCGAN 64x64 step takes about a second on 2 cores: at least 3 samples, interleaved across
# providers, and at least 1 s per provider so that short steps (the MLP's ~20 ms) get
# dozens of samples: their medians differ by less than the spread of three.
STEP_TIMING = TimingConfig(warmup_s=0.0, min_warmup=1, min_time_s=1.0, min_repeats=3)
STEP_TIMING_QUICK = TimingConfig(warmup_s=0.0, min_warmup=1, min_time_s=0.0, min_repeats=2)
# fastgp's C++ CPU output cache (csrc/fastgp_output_cache.h) is off by default; `--cpu-cache
# on` runs the `fastgp` provider with this limit, `both` adds `fastgp_cache` rows with it.
# 1 GiB holds the outputs of the largest case (x̂ and two input gradients of 16.8M fp32
# elements: 192 MiB) several times over.
CPU_CACHE_MODES = ("off", "on", "both")
CPU_CACHE_ON_MB = 1024
CACHED_PROVIDER = "fastgp_cache"


def l3_bytes() -> int | None:
    """Size of the last-level cache (Linux sysfs), or None if unknown."""
    path = Path("/sys/devices/system/cpu/cpu0/cache/index3/size")
    try:
        text = path.read_text().strip().upper()
    except OSError:
        return None
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    digits = text.rstrip("KMG")
    return int(digits) * scale if digits.isdigit() else None


def parse_list(text: str, allowed: tuple[str, ...], option: str) -> tuple[str, ...]:
    items = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [s for s in items if s not in allowed]
    if bad or not items:
        raise SystemExit(f"{option}: expected a comma list of {', '.join(allowed)}; got {text!r}")
    return items


def parse_sizes(text: str) -> list[tuple[int, tuple[int, ...]]]:
    """``"16x784,256x3x32x32"`` -> [(16, (784,)), (256, (3, 32, 32))]."""
    sizes = []
    for item in text.split(","):
        dims = item.strip().lower().split("x")
        if len(dims) < 2 or not all(d.isdigit() and int(d) > 0 for d in dims):
            raise SystemExit(
                f"--sizes: expected BATCHxD[xD...] items like 16x784 or 64x3x32x32, got {item!r}"
            )
        sizes.append((int(dims[0]), tuple(int(d) for d in dims[1:])))
    return sizes


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    p.add_argument("--quick", action="store_true", help="small grid and short timings (CI)")
    p.add_argument("--out-dir", type=Path, default=RESULTS_DIR, help="where results go")
    p.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cuda" if torch.cuda.is_available() else "cpu",
    )
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="float32")
    p.add_argument("--backend", default="auto", help="fastgp backend: auto, cpp, triton, torch")
    p.add_argument("--ops", default=",".join(cases_mod.OPS), help="interpolate,penalty")
    p.add_argument("--modes", default=",".join(cases_mod.MODES), help="fwd,fwdbwd")
    p.add_argument("--sizes", default=None, help="override the grid: 16x784,256x3x32x32,...")
    p.add_argument("--no-large", action="store_true", help="skip the >= 16M-element case")
    p.add_argument(
        "--steps",
        default="all",
        help="critic steps: all, none, or a comma list of mlp,dcgan28,dcgan64",
    )
    p.add_argument(
        "--providers",
        default=",".join(providers.PROVIDERS),
        help="of the op cases: " + ",".join(providers.PROVIDERS),
    )
    p.add_argument(
        "--step-providers",
        default=",".join(critic_step.STEP_PROVIDERS),
        help="of the critic steps: " + ",".join(critic_step.STEP_PROVIDERS),
    )
    p.add_argument(
        "--train-repeats",
        type=int,
        default=None,
        help="whole `fastgp train` runs per setting (--compile off; auto with Inductor's "
        "cache warm; auto with an empty cache), alternating (default: 1; --quick: 0, none)",
    )
    p.add_argument(
        "--train-args",
        default="",
        help="extra `fastgp train` arguments of those runs (default: none, the default run)",
    )
    p.add_argument(
        "--cpu-cache",
        choices=CPU_CACHE_MODES,
        default="both",
        help=(
            "fastgp's C++ CPU output cache: off (the library's default), on "
            f"({CPU_CACHE_ON_MB} MiB), or both: `fastgp` with it off, plus `{CACHED_PROVIDER}` "
            "rows with it on for the cases whose outputs it can serve"
        ),
    )
    p.add_argument("--min-time", type=float, default=None, help="seconds per provider and case")
    p.add_argument("--min-repeats", type=int, default=None, help="samples per provider and case")
    p.add_argument(
        "--rotate-mb",
        type=float,
        default=None,
        help="input sets per case cover this many MiB (default: 2x the L3 cache; quick: 4)",
    )
    return p


def timing_config(base: TimingConfig, args: argparse.Namespace) -> TimingConfig:
    changes = {}
    if args.min_time is not None:
        changes["min_time_s"] = args.min_time
    if args.min_repeats is not None:
        changes["min_repeats"] = args.min_repeats
        changes["max_repeats"] = max(base.max_repeats, args.min_repeats)
    return dataclasses.replace(base, **changes)


def set_cpu_cache(on: bool) -> str:
    """Turn fastgp's C++ CPU output cache on (``CPU_CACHE_ON_MB``) or off (which also returns
    the buffers it holds); returns the setting as the extension words it."""
    from fastgp.backends import cpp

    cpp.set_output_cache_limit(CPU_CACHE_ON_MB << 20 if on else 0)
    return cpp.output_cache_setting()


def apply_cpu_cache(
    mode: str, device: torch.device, resolved: str
) -> tuple[dict[str, str], int | None]:
    """Set fastgp's C++ CPU output cache for ``--cpu-cache mode``; returns the setting each
    fastgp provider runs with (recorded in the results) and, for ``both``, the smallest
    output the cache serves (the cases that get ``fastgp_cache`` rows), else None."""
    if device.type != "cpu" or resolved != "cpp":
        return {"fastgp": f"not used (backend {resolved} on {device.type})"}, None
    from fastgp.backends import cpp

    settings = {"fastgp": set_cpu_cache(mode == "on")}
    if mode != "both":
        return settings, None
    settings[CACHED_PROVIDER] = cpp.describe_output_cache_limit(CPU_CACHE_ON_MB << 20)
    return settings, cpp.output_cache_info()["min_bytes"]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_op_cases(
    op_cases: list[cases_mod.OpCase],
    names: tuple[str, ...],
    dtype: torch.dtype,
    device: torch.device,
    backend: str,
    resolved: str,
    rotate_bytes: int,
    config: TimingConfig,
    cache_settings: dict[str, str],
    cached_min_bytes: int | None,
) -> list[dict[str, object]]:
    """One row per case and provider; with ``cached_min_bytes``, also a ``fastgp_cache`` row
    (``fastgp`` with the CPU output cache on) for each case whose largest fastgp output is
    at least that large. The cache's setting is process-wide, so that row is timed right
    after the case's interleaved providers rather than among them."""
    rows: list[dict[str, object]] = []
    for case in op_cases:
        start = time.perf_counter()
        sets = providers.input_sets(case, dtype, device, rotate_bytes)
        fns = {name: providers.op_callable(case, name, sets, backend) for name in names}
        timings = time_competitors(fns, device, config)
        measured = list(names)
        if (
            cached_min_bytes is not None
            and "fastgp" in fns
            and cases_mod.largest_output_bytes(case, dtype.itemsize) >= cached_min_bytes
        ):
            set_cpu_cache(True)
            try:
                cached = time_competitors({CACHED_PROVIDER: fns["fastgp"]}, device, config)
            finally:
                set_cpu_cache(False)
            timings.update(cached)
            measured.append(CACHED_PROVIDER)
        case_rows = [
            report.op_row(
                case,
                name,
                dtype,
                resolved if name in ("fastgp", CACHED_PROVIDER) else None,
                timings[name],
                cache_settings.get(name),
            )
            for name in measured
        ]
        report.add_ratios(case_rows)
        rows += case_rows
        del sets, fns
        summary = ", ".join(f"{r['provider']} {r['median_ms']:.4g} ms" for r in case_rows)
        seconds = time.perf_counter() - start
        log(f"{case.name} ({len(measured)} providers, {seconds:.1f} s): {summary}")
    return rows


def run_step_cases(
    step_cases: list[critic_step.StepCase],
    names: tuple[str, ...],
    device: torch.device,
    backend: str,
    resolved: str,
    config: TimingConfig,
    cache_settings: dict[str, str],
) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for case in step_cases:
        start = time.perf_counter()
        critic_step.new_case()
        critic = critic_step.build_critic(case, device)
        inputs = critic_step.step_inputs(case, device, count=2)
        fns = {n: critic_step.step_callable(case, n, critic, inputs, backend) for n in names}
        first_call = {}
        for name, fn in fns.items():  # compiles the compiled providers: timed apart
            began = time.perf_counter()
            fn(0)
            first_call[name] = time.perf_counter() - began
        timings = time_competitors(fns, device, config)
        case_rows = []
        for name in names:
            peak, method = memory.peak_bytes(lambda fn=fns[name]: fn(0), device)
            case_rows.append(
                report.step_row(
                    case,
                    name,
                    critic_step.backend_ran(name, resolved, device),
                    timings[name],
                    peak,
                    method,
                    cache_settings.get(name),
                    first_call[name],
                )
            )
        report.add_ratios(case_rows)
        rows += case_rows
        summary = ", ".join(f"{r['provider']} {r['median_ms']:.4g} ms" for r in case_rows)
        log(f"{case.name} ({time.perf_counter() - start:.1f} s): {summary}")
    return rows


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads < 1:
        raise SystemExit(f"--threads must be >= 1, got {args.threads}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch.cuda.is_available() is False on this machine")
    torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    names = parse_list(args.providers, providers.PROVIDERS, "--providers")
    ops = parse_list(args.ops, cases_mod.OPS, "--ops")
    modes = parse_list(args.modes, cases_mod.MODES, "--modes")
    sizes = (
        parse_sizes(args.sizes)
        if args.sizes
        else cases_mod.size_grid(args.quick, large=not args.no_large)
    )
    all_steps = critic_step.QUICK_STEP_CASES if args.quick else critic_step.STEP_CASES
    if args.steps == "none":
        step_cases: list[critic_step.StepCase] = []
    elif args.steps == "all":
        step_cases = list(all_steps)
    else:
        archs = parse_list(args.steps, tuple(dict.fromkeys(c.arch for c in all_steps)), "--steps")
        step_cases = [c for c in all_steps if c.arch in archs]
    rotate_mb = args.rotate_mb
    if rotate_mb is None:
        rotate_mb = 4.0 if args.quick else 2 * (l3_bytes() or 32 << 20) / (1 << 20)
    rotate_bytes = int(rotate_mb * (1 << 20))

    from fastgp.backends import resolve_backend

    # Resolve (and, for cpp, build or load) the fastgp backend before anything is timed.
    resolved = resolve_backend(args.backend, device, dtype)
    info = machine.machine_info(device, args.threads)
    info["fastgp_backend"] = resolved
    op_config = timing_config(OP_TIMING_QUICK if args.quick else OP_TIMING, args)
    step_config = timing_config(STEP_TIMING_QUICK if args.quick else STEP_TIMING, args)
    cache_settings, cached_min_bytes = apply_cpu_cache(args.cpu_cache, device, resolved)
    info["cpu_output_cache"] = cache_settings
    cache_text = ", ".join(f"{name} {text}" for name, text in cache_settings.items())
    log(
        f"{info['cpu_model']} | {device.type} | {args.threads} threads | torch {info['torch']} "
        f"| fastgp backend {resolved} | CPU output cache: {cache_text} "
        f"| {len(sizes)} sizes, {len(step_cases)} critic steps"
    )

    began = time.perf_counter()
    op_cases = cases_mod.op_cases(sizes, ops, modes)
    rows = run_op_cases(
        op_cases, names, dtype, device, args.backend, resolved, rotate_bytes, op_config,
        cache_settings, cached_min_bytes,
    )  # fmt: skip
    step_names = parse_list(args.step_providers, critic_step.STEP_PROVIDERS, "--step-providers")
    if step_cases and step_names:
        rows += run_step_cases(
            step_cases, step_names, device, args.backend, resolved, step_config, cache_settings
        )
    train_repeats = args.train_repeats if args.train_repeats is not None else int(not args.quick)
    if train_repeats > 0:
        if device.type != "cpu":
            raise SystemExit("--train-repeats: the whole-run rows are measured on CPU only")
        extra = args.train_args.split()
        rows += train_run.train_rows(
            [*extra, "--threads", str(args.threads)],
            repeats=train_repeats,
            case="default" if not extra else "custom",
            log=log,
        )
    targets = report.evaluate_targets(rows)
    info["loadavg_1m_end"] = round(os.getloadavg()[0], 2)

    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = machine.result_stem(info) + ("_quick" if args.quick else "")
    config = {
        "argv": sys.argv[1:] if argv is None else list(argv),
        "quick": args.quick,
        "dtype": args.dtype,
        "backend_requested": args.backend,
        "backend": resolved,
        "providers": list(names),
        "cpu_cache": args.cpu_cache,
        "train_repeats": train_repeats,
        "rotate_bytes": rotate_bytes,
        "op_timing": dataclasses.asdict(op_config),
        "step_timing": dataclasses.asdict(step_config),
        "wall_s": time.perf_counter() - began,
    }
    paths = {ext: args.out_dir / f"{stem}.{ext}" for ext in ("json", "csv", "png")}
    report.write_json(paths["json"], info, config, rows, targets)
    report.write_csv(paths["csv"], info, rows)
    plot.plot_speedups(
        rows,
        paths["png"],
        f"{info['cpu_model']}, {device.type}, {args.threads} threads, torch {info['torch']}, "
        f"fastgp backend {resolved}, {args.dtype}",
    )
    print(
        f"Machine: {info['cpu_model']} ({info['logical_cpus']} logical CPUs), {device.type}, "
        f"{args.threads} threads, torch {info['torch']}, fastgp backend `{resolved}`, "
        f"{args.dtype}; fastgp's CPU output cache: {cache_text}; 1-min load average "
        f"{info['loadavg_1m_start']} at the start, "
        f"{info['loadavg_1m_end']} at the end; times are medians in ms."
    )
    print()
    print(report.markdown_tables(rows, targets))
    print()
    for path in paths.values():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
