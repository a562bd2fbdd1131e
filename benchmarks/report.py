"""Result rows, the ratios between providers, issue 4's targets, and the output files.

Every row is one (case, provider) measurement. Ratios are computed here, from the medians
measured in the same run, never typed in: ``speedup_vs_eager = eager median / median``,
``speedup_vs_compile = compile median / median``, ``frac_of_copy = copy median / median``
(= GB/s / copy GB/s, both counted with the case's bytes), ``peak_vs_eager = peak / eager
peak``, and ``one_op_speedup_vs_eager = eager median / one_op median`` (the same for every
row of a case: how far any one-operator implementation can get ahead of eager).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.cases import OpCase, counted_bytes
from benchmarks.timing import Timing

if TYPE_CHECKING:
    import torch

    from benchmarks.critic_step import StepCase

FIELDS = (
    "kind",  # "op" (microbenchmark), "step" (whole critic step) or "train" (whole run)
    "op",  # interpolate | penalty | critic_step | fastgp_train
    "mode",  # fwd | fwdbwd | step (W loss + penalty, backward, Adam step)
    "case",
    "arch",  # critic architecture (steps only)
    "batch",
    "sample_shape",
    "elements",
    "dtype",
    "provider",  # eager | compile | fastgp | fastgp_cache | copy | one_op
    "backend",  # the fastgp backend that ran (fastgp rows only)
    "cpu_output_cache",  # fastgp's C++ CPU output cache for this row (fastgp rows only)
    "median_ms",
    "p20_ms",
    "p80_ms",
    "repeats",
    "calls_per_sample",
    "timer",
    "bytes",  # counted bytes of one fused pass (see benchmarks/cases.py)
    "gb_per_s",
    "frac_of_copy",
    "speedup_vs_eager",
    "speedup_vs_compile",
    "one_op_speedup_vs_eager",
    "peak_bytes",
    "peak_vs_eager",
    "memory_method",
    "first_call_s",  # wall time of a step's first call, compile included (steps only)
    "cpu_s",  # process CPU seconds of a whole run (train rows only)
    "compile_s",  # compile seconds a whole run logged (train rows only)
    "quality",  # the final evaluation of a whole run (train rows only)
)


def timing_fields(t: Timing) -> dict[str, object]:
    return {
        "median_ms": t.median_s * 1e3,
        "p20_ms": t.p20_s * 1e3,
        "p80_ms": t.p80_s * 1e3,
        "repeats": t.repeats,
        "calls_per_sample": t.calls_per_sample,
        "timer": t.method,
    }


def op_row(
    case: OpCase,
    provider: str,
    dtype: torch.dtype,
    backend: str | None,
    timing: Timing,
    cpu_output_cache: str | None = None,
) -> dict[str, object]:
    """The row of one microbenchmark measurement (ratios are added by ``add_ratios``);
    ``cpu_output_cache``: the C++ output-cache setting it ran with (None: not applicable)."""
    return {
        "kind": "op",
        "op": case.op,
        "mode": case.mode,
        "case": case.name,
        "batch": case.batch,
        "sample_shape": "x".join(map(str, case.sample_shape)),
        "elements": case.elements,
        "dtype": str(dtype).removeprefix("torch."),
        "provider": provider,
        "backend": backend,
        "cpu_output_cache": cpu_output_cache,
        "bytes": counted_bytes(case, dtype.itemsize),
        **timing_fields(timing),
    }


def step_row(
    case: StepCase,
    provider: str,
    backend: str | None,
    timing: Timing,
    peak: int | None,
    memory_method: str | None,
    cpu_output_cache: str | None = None,
    first_call_s: float | None = None,
) -> dict[str, object]:
    """The row of one whole critic step (float32) measurement; ``first_call_s``: the wall
    time of its first call (for compiled providers, the compile)."""
    return {
        "kind": "step",
        "op": "critic_step",
        "mode": "step",
        "case": case.name,
        "arch": case.arch,
        "batch": case.batch,
        "sample_shape": "x".join(map(str, case.sample_shape)),
        "elements": case.elements,
        "dtype": "float32",
        "provider": provider,
        "backend": backend,
        "cpu_output_cache": cpu_output_cache,
        "peak_bytes": peak,
        "memory_method": memory_method,
        "first_call_s": first_call_s,
        **timing_fields(timing),
    }


def add_ratios(rows: list[dict[str, object]]) -> None:
    """Fill GB/s and every ratio of the rows of one case (same ``case``), in place."""
    by_provider = {r["provider"]: r for r in rows}

    def ratio(provider: str, field: str, row: dict[str, object]) -> float | None:
        other = by_provider.get(provider)
        if other is None or other.get(field) is None or row.get(field) in (None, 0):
            return None
        return float(other[field]) / float(row[field])

    for row in rows:
        if row.get("bytes"):
            row["gb_per_s"] = float(row["bytes"]) / (float(row["median_ms"]) * 1e-3) / 1e9
        row["speedup_vs_eager"] = ratio("eager", "median_ms", row)
        row["speedup_vs_compile"] = ratio("compile", "median_ms", row)
        if row["kind"] == "op":
            row["frac_of_copy"] = ratio("copy", "median_ms", row)
            one_op = by_provider.get("one_op")
            if one_op is not None:
                row["one_op_speedup_vs_eager"] = ratio("eager", "median_ms", one_op)
        eager_peak = by_provider.get("eager", {}).get("peak_bytes")
        if row.get("peak_bytes") is not None and eager_peak:
            row["peak_vs_eager"] = float(row["peak_bytes"]) / float(eager_peak)


@dataclass(frozen=True)
class Target:
    """One of issue 4's targets: ``field >= threshold`` (or ``<=``) on the selected rows."""

    text: str
    kind: str
    op: str
    mode: str
    field: str
    threshold: float
    at_least: bool = True
    min_elements: int = 0
    max_elements: int | None = None
    provider: str = "fastgp"
    archs: tuple[str, ...] | None = None  # critic steps: only these architectures

    def selects(self, row: dict[str, object]) -> bool:
        n = int(row["elements"])
        return (
            row["kind"] == self.kind
            and row["op"] == self.op
            and row["mode"] == self.mode
            and row["provider"] == self.provider
            and (self.archs is None or row.get("arch") in self.archs)
            and n >= self.min_elements
            and (self.max_elements is None or n <= self.max_elements)
        )


# The critic-step table's columns, in order (benchmarks.critic_step.STEP_PROVIDERS).
STEP_TABLE_PROVIDERS = (
    "eager", "fastgp", "compile", "fastgp_compile", "fastgp_compile_kernels",
    "fastgp_compile_reference",
)  # fmt: skip

MILLION = 1 << 20
TARGETS = (
    Target("norm+penalty fwd+bwd <= 1M elements: >= 3x eager", "op", "penalty", "fwdbwd",
           "speedup_vs_eager", 3.0, max_elements=MILLION),
    Target("norm+penalty fwd+bwd <= 1M elements: >= 1.5x torch.compile", "op", "penalty",
           "fwdbwd", "speedup_vs_compile", 1.5, max_elements=MILLION),
    Target("norm+penalty fwd+bwd >= 16M elements: >= 70% of copy bandwidth", "op", "penalty",
           "fwdbwd", "frac_of_copy", 0.7, min_elements=16 * MILLION),
    Target("norm+penalty fwd+bwd >= 16M elements: no slower than torch.compile", "op",
           "penalty", "fwdbwd", "speedup_vs_compile", 1.0, min_elements=16 * MILLION),
    Target("interpolation fwd, every size: >= 3x eager", "op", "interpolate", "fwd",
           "speedup_vs_eager", 3.0),
    Target("interpolation fwd >= 10M elements: >= 70% of copy bandwidth", "op", "interpolate",
           "fwd", "frac_of_copy", 0.7, min_elements=10 * MILLION),
    Target("critic step: never slower than eager", "step", "critic_step", "step",
           "speedup_vs_eager", 1.0),
    Target("critic step: peak memory <= eager", "step", "critic_step", "step",
           "peak_vs_eager", 1.0, at_least=False),
    # Issue 9: fastgp inside a whole compiled step.
    Target("compiled critic step, toy MLP: >= 1.5x the eager seed formula", "step",
           "critic_step", "step", "speedup_vs_eager", 1.5, provider="fastgp_compile",
           archs=("mlp",)),
    Target("compiled critic step, toy MLP: within 5% of the compiled seed formula", "step",
           "critic_step", "step", "speedup_vs_compile", 0.95, provider="fastgp_compile",
           archs=("mlp",)),
    Target("whole `fastgp train` run: >= 1.4x faster wall time with --compile auto", "train",
           "fastgp_train", "run", "speedup_vs_eager", 1.4, provider="compile"),
    Target("the same, a first run (empty Inductor cache)", "train", "fastgp_train", "run",
           "speedup_vs_eager", 1.4, provider="compile_cold"),
    Target("compiled critic step, conv critics: no slower than eager", "step", "critic_step",
           "step", "speedup_vs_eager", 1.0, provider="fastgp_compile",
           archs=("dcgan28", "dcgan64")),
    Target("compiled critic step, conv critics: peak memory <= eager", "step", "critic_step",
           "step", "peak_vs_eager", 1.0, at_least=False, provider="fastgp_compile",
           archs=("dcgan28", "dcgan64")),
)  # fmt: skip


def evaluate_targets(
    rows: Iterable[dict[str, object]], targets: tuple[Target, ...] = TARGETS
) -> list[dict[str, object]]:
    """For each target: how many measured cases it covers, which missed, and the worst value.

    ``met`` is None when the run measured no case the target covers (e.g. ``--quick``).
    ``targets``: issue 4's (the CPU suite's) unless another list is given.
    """
    rows = list(rows)
    results = []
    for target in targets:
        checked = [r for r in rows if target.selects(r) and r.get(target.field) is not None]
        values = [(str(r["case"]), float(r[target.field])) for r in checked]
        ok = [
            v >= target.threshold if target.at_least else v <= target.threshold for _, v in values
        ]
        missed = [
            {"case": c, "value": v} for (c, v), good in zip(values, ok, strict=True) if not good
        ]
        worst = None
        if values:
            pick = min if target.at_least else max
            worst = pick(values, key=lambda cv: cv[1])
        bound = {str(r["case"]): r.get("one_op_speedup_vs_eager") for r in checked}
        for miss in missed:
            miss["one_op_speedup_vs_eager"] = bound.get(miss["case"])
        results.append(
            {
                "target": target.text,
                "field": target.field,
                "threshold": target.threshold,
                "cases": len(values),
                "cases_met": sum(ok),
                "met": all(ok) if values else None,
                "worst_case": worst[0] if worst else None,
                "worst_value": worst[1] if worst else None,
                "worst_one_op_speedup_vs_eager": bound.get(worst[0]) if worst else None,
                "missed": missed,
            }
        )
    return results


def write_json(path: Path, machine: dict, config: dict, rows: list, targets: list) -> None:
    payload = {"machine": machine, "config": config, "rows": rows, "targets": targets}
    path.write_text(json.dumps(payload, indent=1, sort_keys=False) + "\n", encoding="utf-8")


MACHINE_FIELDS = ("hostname", "cpu_model", "gpu", "device", "threads", "torch", "date_utc")


def write_csv(
    path: Path,
    machine: dict,
    rows: list[dict[str, object]],
    machine_fields: tuple[str, ...] = MACHINE_FIELDS,
    fields: tuple[str, ...] = FIELDS,
) -> None:
    """One row per measurement; the machine columns repeat so files can be concatenated."""
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=machine_fields + fields)
        writer.writeheader()
        for row in rows:
            out = {k: machine.get(k) for k in machine_fields}
            out.update({k: row.get(k) for k in fields})
            writer.writerow(out)


def _fmt(value: object, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def markdown_tables(
    rows: list[dict[str, object]],
    targets: list[dict[str, object]],
    target_title: str = "issue-4 target",
) -> str:
    """The summary printed by ``python -m benchmarks.run``: ops, steps, targets."""
    lines: list[str] = []
    ops = [r for r in rows if r["kind"] == "op"]
    # fastgp with the CPU output cache on (`--cpu-cache both`), where it was measured.
    cached = any(r["provider"] == "fastgp_cache" for r in ops)
    if ops:
        lines += [
            "| op | mode | shape | eager ms | compile ms | fastgp ms | copy ms | fastgp GB/s "
            "| % of copy | × eager | × compile | one op × eager |"
            + (" fastgp cache ms | cache % of copy |" if cached else ""),
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
            + ("---:|---:|" if cached else ""),
        ]
        for case in dict.fromkeys(r["case"] for r in ops):
            by = {r["provider"]: r for r in ops if r["case"] == case}
            ours = by.get("fastgp", {})
            first = next(iter(by.values()))
            frac = ours.get("frac_of_copy")
            with_cache = by.get("fastgp_cache", {})
            cache_frac = with_cache.get("frac_of_copy")
            cache_cells = (
                f" {_fmt(with_cache.get('median_ms'), '.4g')} "
                f"| {_fmt(None if cache_frac is None else 100 * cache_frac, '.0f')} |"
            )
            lines.append(
                f"| {first['op']} | {first['mode']} | {first['batch']}×{first['sample_shape']} "
                + "".join(
                    f"| {_fmt(by.get(p, {}).get('median_ms'), '.4g')} "
                    for p in ("eager", "compile", "fastgp", "copy")
                )
                + f"| {_fmt(ours.get('gb_per_s'), '.3g')} "
                f"| {_fmt(None if frac is None else 100 * frac, '.0f')} "
                f"| {_fmt(ours.get('speedup_vs_eager'), '.2f')} "
                f"| {_fmt(ours.get('speedup_vs_compile'), '.2f')} "
                f"| {_fmt(first.get('one_op_speedup_vs_eager'), '.2f')} |"
                + (cache_cells if cached else "")
            )
    steps = [r for r in rows if r["kind"] == "step"]
    if steps:
        shown = [p for p in STEP_TABLE_PROVIDERS if any(r["provider"] == p for r in steps)]
        lines += [
            "",
            "| critic step | "
            + " | ".join(f"{p} ms" for p in shown)
            + " | fastgp × eager | fastgp_compile × eager | fastgp_compile × compile "
            "| compile s (fastgp_compile) | peak MB eager | peak MB fastgp_compile |",
            "|---|" + "---:|" * (len(shown) + 6),
        ]
        for case in dict.fromkeys(r["case"] for r in steps):
            by = {r["provider"]: r for r in steps if r["case"] == case}
            fused, compiled = by.get("fastgp", {}), by.get("fastgp_compile", {})
            peaks = (by.get("eager", {}).get("peak_bytes"), compiled.get("peak_bytes"))
            lines.append(
                f"| {case} "
                + "".join(f"| {_fmt(by[p].get('median_ms'), '.4g')} " for p in shown if p in by)
                + f"| {_fmt(fused.get('speedup_vs_eager'), '.2f')} "
                f"| {_fmt(compiled.get('speedup_vs_eager'), '.2f')} "
                f"| {_fmt(compiled.get('speedup_vs_compile'), '.2f')} "
                f"| {_fmt(compiled.get('first_call_s'), '.1f')} "
                + "".join(f"| {_fmt(None if v is None else v / 1e6, '.1f')} " for v in peaks)
                + "|"
            )
    runs = [r for r in rows if r["kind"] == "train"]
    if runs:
        lines += [
            "",
            "| whole run | provider | wall s (median) | runs | CPU s | compile s | × eager "
            "| final evaluation |",
            "|---|---|---:|---:|---:|---:|---:|---|",
        ]
        for r in runs:
            lines.append(
                f"| `{r['sample_shape']}` | {r['provider']} ({r['backend']}) "
                f"| {_fmt(float(r['median_ms']) / 1e3, '.1f')} | {r['repeats']} "
                f"| {_fmt(r.get('cpu_s'), '.1f')} | {_fmt(r.get('compile_s'), '.1f')} "
                f"| {_fmt(r.get('speedup_vs_eager'), '.2f')} | {r.get('quality')} |"
            )
    if targets:
        lines += [
            "",
            f"| {target_title} | cases met | worst (case) | one op × eager there |",
            "|---|---:|---|---:|",
        ]
        for t in targets:
            status = "not measured" if t["met"] is None else ("met" if t["met"] else "MISSED")
            worst = (
                "–" if t["worst_value"] is None else f"{t['worst_value']:.2f} ({t['worst_case']})"
            )
            bound = (
                t.get("worst_one_op_speedup_vs_eager") if t["field"] == "speedup_vs_eager" else None
            )
            lines.append(
                f"| {t['target']} | {t['cases_met']}/{t['cases']} {status} | {worst} "
                f"| {_fmt(bound, '.2f')} |"
            )
    return "\n".join(lines)
