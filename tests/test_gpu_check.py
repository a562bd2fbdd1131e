"""The GPU check (benchmarks/gpu_check.sh, its stage runner, benchmarks/gpu.py) without a GPU.

The benchmark's logic runs on CPU tensors with injected timers: its case list, byte counts,
ratios, issue 8 §9's targets, time budget, error handling and files. The script says there
is no CUDA and exits 0; its dry run's commands parse with the real parsers; the stage runner
is driven with small shell commands. Timings are never checked.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from unittest import mock

import pytest
import torch

import fastgp
from benchmarks import cases, gpu, report
from benchmarks.critic_step import StepCase
from benchmarks.timing import Timing

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
LIB = REPO / "benchmarks" / "gpu_check_lib.sh"
TINY_SIZES = ((4, (2, 3)), (3, (5,)))
TINY_STEP = StepCase("mlp", 8, (2,), 8)
# Injected medians (ms): fastgp 4x eager, 3x compile, at 80% of the copy.
OP_MS = {"eager": 4.0, "compile": 3.0, "fastgp": 1.0, "copy": 0.8}
STEP_MS = {
    "eager": 10.0,
    "fastgp": 8.0,
    "compile": 6.0,
    "fastgp_compile": 5.0,
    "fastgp_compile_kernels": 5.5,
    "fastgp_compile_reference": 5.2,
    "fastgp_compile_cudagraphs": 3.0,
}
DEVICE_COPY_FRACTION = OP_MS["copy"] / OP_MS["fastgp"]


class FakeTimers:
    """Calls every callable twice (so each provider really runs), then reports the injected
    median of the provider whose turn it is (the suite times them in ``*_PROVIDERS`` order)."""

    def __init__(self, fail: tuple[str, str] | None = None, on_call=None):
        self.fail, self.on_call = fail, on_call
        self.turn = {"op": 0, "step": 0}
        self.calls: list[tuple[str, str]] = []

    def device(self, fn, config) -> Timing:
        kind = "step" if config is gpu.STEP_TIMING else "op"
        names = gpu.STEP_PROVIDERS if kind == "step" else gpu.OP_PROVIDERS
        name = names[self.turn[kind] % len(names)]
        self.turn[kind] += 1
        self.calls.append((kind, name))
        if self.on_call is not None:
            self.on_call()
        if self.fail == (kind, name):
            raise RuntimeError(f"injected failure of {name}")
        fn(0)
        fn(1)
        ms = (STEP_MS if kind == "step" else OP_MS)[name]
        return Timing(ms * 1e-3, 0.9 * ms * 1e-3, 1.1 * ms * 1e-3, -1, 1, "fake")

    def timers(self) -> gpu.Timers:
        host = partial(gpu.host_seconds_per_call, synchronize=lambda: None, min_time_s=0.0)
        return gpu.Timers(device=self.device, host=host)


def run_tiny(out_dir: Path, fake: FakeTimers, **kwargs) -> dict:
    options = dict(
        sizes=TINY_SIZES,
        step_cases=(TINY_STEP,),
        backend="torch",
        rotate_bytes=1 << 12,
        log=lambda message: None,
    )
    options.update(kwargs)
    # torch.compile's inductor would take minutes on 2 cores: the compiled providers run
    # eagerly (dynamo off; compile_step, which insists on a full graph, as the identity).
    eager_step = lambda fn, mode=None: fn
    with (
        torch._dynamo.config.patch(disable=True),
        mock.patch.object(fastgp, "compile_step", eager_step),
    ):
        return gpu.run_suite(out_dir, torch.device("cpu"), fake.timers(), **options)


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-bench")
    fake = FakeTimers()
    payload = run_tiny(out, fake)
    return out, payload, fake


# ------------------------------------------------------------------------------ cases


def test_sizes_span_the_issue_range_on_the_cpu_grid():
    cpu_grid = cases.size_grid(quick=False)
    assert all(size in cpu_grid for size in gpu.SIZES)
    elements = [b * torch.Size(s).numel() for b, s in gpu.SIZES]
    assert elements == sorted(elements)
    assert gpu.SIZES[0] == (16, (1, 28, 28)) and gpu.SIZES[-1] == (256, (4, 128, 128))
    assert sum(n < report.MILLION for n in elements) >= 3  # the "below 1M" target's cases
    assert elements[-1] >= 16 * report.MILLION  # the "from 16M" target's case


def test_op_cases_are_the_three_measured_modes_at_every_size():
    op_cases = gpu.op_cases(gpu.SIZES)
    assert len(op_cases) == len(gpu.OP_MODES) * len(gpu.SIZES)
    assert {(c.op, c.mode) for c in op_cases} == {
        ("interpolate", "fwd"),
        ("interpolate", "fwdbwd"),
        ("penalty", "fwdbwd"),
    }
    assert len({gpu.case_label(c, dt) for c in op_cases for dt in gpu.DTYPES.values()}) == (
        2 * len(op_cases)
    )


# ------------------------------------------------------------------------------ a run


def test_every_provider_and_case_ran_in_order(suite):
    _, payload, fake = suite
    ops = [name for kind, name in fake.calls if kind == "op"]
    per_case = list(gpu.OP_PROVIDERS)
    assert ops == per_case * (2 * len(gpu.OP_MODES) * len(TINY_SIZES))
    assert [name for kind, name in fake.calls if kind == "step"] == list(gpu.STEP_PROVIDERS)
    config = payload["config"]
    assert config["complete"] and config["skipped"] == [] and config["errors"] == []
    assert config["dtypes"] == ["float32", "bfloat16"]


def test_rows_count_bytes_as_the_cpu_suite_and_ratios_are_quotients(suite):
    _, payload, _ = suite
    ops = [r for r in payload["rows"] if r["kind"] == "op"]
    assert len(ops) == 2 * len(gpu.OP_MODES) * len(TINY_SIZES) * len(gpu.OP_PROVIDERS)
    for row in ops:
        case = cases.OpCase(row["op"], row["mode"], row["batch"], tuple(
            int(d) for d in row["sample_shape"].split("x")))  # fmt: skip
        dtype = gpu.DTYPES[row["dtype"]]
        assert row["case"] == f"{case.name}-{row['dtype']}"
        assert row["bytes"] == cases.counted_bytes(case, dtype.itemsize)
        median = OP_MS[row["provider"]]
        assert row["median_ms"] == pytest.approx(median)
        assert row["gb_per_s"] == pytest.approx(row["bytes"] / (median * 1e-3) / 1e9)
        assert row["frac_of_copy"] == pytest.approx(OP_MS["copy"] / median)
        assert row["speedup_vs_eager"] == pytest.approx(OP_MS["eager"] / median)
        assert row["speedup_vs_compile"] == pytest.approx(OP_MS["compile"] / median)
        assert row["host_ms"] > 0
        assert row["backend"] == ("torch" if row["provider"] == "fastgp" else None)
    steps = [r for r in payload["rows"] if r["kind"] == "step"]
    assert [r["provider"] for r in steps] == list(gpu.STEP_PROVIDERS)
    fastgp_step = steps[gpu.STEP_PROVIDERS.index("fastgp")]
    assert fastgp_step["speedup_vs_eager"] == pytest.approx(STEP_MS["eager"] / STEP_MS["fastgp"])
    assert all(r["peak_bytes"] is not None and r["host_ms"] > 0 for r in steps)


def test_targets_of_issue_8_are_evaluated(suite):
    _, payload, _ = suite
    by_text = {t["target"]: t for t in payload["targets"]}
    assert list(by_text) == [t.text for t in gpu.TARGETS]
    for target in gpu.TARGETS:
        result = by_text[target.text]
        if target.min_elements:  # the tiny run has no case of 16M elements
            assert result["met"] is None and result["cases"] == 0
        else:  # every tiny case of the op and mode, in both dtypes: 3x compile
            assert result["cases"] == 2 * len(TINY_SIZES) and result["met"] is True
            assert result["worst_value"] == pytest.approx(OP_MS["compile"] / OP_MS["fastgp"])


def test_files_are_json_csv_png_with_the_gpu_versions(suite):
    out, payload, _ = suite
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{gpu.OUTPUT_STEM}.{s}" for s in gpu.OUTPUT_SUFFIXES
    )
    saved = json.loads((out / "gpu_bench.json").read_text())
    assert set(saved) == {"machine", "config", "rows", "targets"}
    assert saved["rows"] == payload["rows"] and saved["config"]["complete"] is True
    for key in ("gpu", "driver", "cuda", "torch", "triton", "gpu_capability", "python"):
        assert key in saved["machine"]
    with (out / "gpu_bench.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == gpu.MACHINE_FIELDS + gpu.FIELDS
        csv_rows = list(reader)
    assert len(csv_rows) == len(payload["rows"])
    assert float(csv_rows[-1]["host_ms"]) == pytest.approx(payload["rows"][-1]["host_ms"])
    assert (out / "gpu_bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_summary_has_a_table_per_dtype_steps_host_times_and_targets(suite):
    _, payload, _ = suite
    text = gpu.summary(payload)
    for heading in ("### float32", "### bfloat16", "### critic steps", "### host time"):
        assert heading in text
    assert "| issue-8 §9 target |" in text
    assert "norm+penalty fwd+bwd < 1M elements: >= 1.5x torch.compile | 4/4 met" in text


def test_plot_rows_put_the_dtype_in_the_panel_name():
    rows = [
        {"kind": "op", "op": "penalty", "dtype": "bfloat16"},
        {"kind": "step", "op": "critic_step", "dtype": "float32"},
    ]
    assert [r["op"] for r in gpu.plot_rows(rows)] == ["penalty bf16", "critic_step"]


def test_budget_skips_the_remaining_cases_and_fails_the_run(tmp_path):
    now = [0.0]
    fake = FakeTimers(on_call=lambda: now.__setitem__(0, now[0] + 100.0))
    payload = run_tiny(tmp_path, fake, clock=lambda: now[0], budget_s=150.0, sizes=TINY_SIZES[:1])
    config = payload["config"]
    # The critic step (2 timed calls: 200 s) spends the budget: no op case starts.
    assert {r["kind"] for r in payload["rows"]} == {"step"}
    assert config["skipped"] == [
        gpu.case_label(c, dt) for dt in gpu.DTYPES.values() for c in gpu.op_cases(TINY_SIZES[:1])
    ]
    assert config["complete"] is False
    saved = json.loads((tmp_path / "gpu_bench.json").read_text())
    assert saved["config"]["skipped"] == config["skipped"]
    assert "skipped (time budget)" in gpu.summary(payload)


def test_a_failing_provider_is_recorded_and_the_others_kept(tmp_path):
    fake = FakeTimers(fail=("op", "compile"))
    payload = run_tiny(tmp_path, fake, sizes=TINY_SIZES[:1], dtypes=(torch.float32,), step_cases=())
    errors = payload["config"]["errors"]
    assert [e["provider"] for e in errors] == ["compile"] * len(gpu.OP_MODES)
    assert all("injected failure of compile" in e["error"] for e in errors)
    rows = payload["rows"]
    assert {r["provider"] for r in rows} == {"eager", "fastgp", "copy"}
    assert all(r["speedup_vs_compile"] is None for r in rows)
    assert payload["config"]["complete"] is False
    assert "FAILED interpolate-fwd-4x2x3-float32 compile" in gpu.summary(payload)


def test_targets_thresholds_and_size_bounds():
    def row(op, mode, elements, **values):
        return {"kind": "op", "op": op, "mode": mode, "elements": elements, "provider": "fastgp",
                "case": f"{op}-{mode}-{elements}", **values}  # fmt: skip

    large, below, at_1m = 16 * report.MILLION, report.MILLION - 1, report.MILLION
    rows = [
        row("penalty", "fwdbwd", large, frac_of_copy=0.8),
        row("penalty", "fwdbwd", 12 * report.MILLION, frac_of_copy=0.1),  # under 16M: no target
        row("interpolate", "fwd", large, frac_of_copy=0.79),
        row("interpolate", "fwdbwd", large, frac_of_copy=0.95),
        row("penalty", "fwdbwd", below, speedup_vs_compile=1.5),
        row("interpolate", "fwd", below, speedup_vs_compile=1.49),
        row("interpolate", "fwdbwd", at_1m, speedup_vs_compile=0.5),  # not below 1M
    ]
    results = [(r["cases"], r["met"]) for r in report.evaluate_targets(rows, gpu.TARGETS)]
    assert results == [(1, True), (1, False), (1, True), (1, True), (1, False), (0, None)]


def test_host_timer_calls_back_to_back_with_increasing_indices():
    seen, syncs = [], []
    seconds = gpu.host_seconds_per_call(seen.append, lambda: syncs.append(1), min_time_s=0.0)
    assert seconds >= 0
    assert seen == list(range(len(seen))) and len(seen) >= 4
    assert len(syncs) == 4


def test_main_refuses_without_cuda(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="needs a CUDA device"):
        gpu.main(["--out-dir", str(tmp_path)])
    assert list(tmp_path.iterdir()) == []


def test_driver_version_from_nvidia_smi(monkeypatch, tmp_path):
    from benchmarks import machine

    fake = tmp_path / "bin"
    fake.mkdir()
    monkeypatch.setenv("PATH", str(fake))
    assert machine.nvidia_driver_version() is None  # no nvidia-smi
    smi = fake / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 580.159.04\necho 580.159.04\n")
    smi.chmod(0o755)
    assert machine.nvidia_driver_version() == "580.159.04"
    smi.write_text("#!/bin/sh\nexit 9\n")
    assert machine.nvidia_driver_version() is None


# ------------------------------------------------------------------------------ the script


def script(*args: str, cwd: Path = REPO, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHON": sys.executable, **env}
    return subprocess.run(
        ["bash", str(SCRIPT), *args], cwd=cwd, env=full_env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip


def test_script_without_cuda_says_so_runs_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    # No visible device, so this holds on a GPU machine too (and does not recurse there).
    result = script(str(out), CUDA_VISIBLE_DEVICES="")
    assert result.returncode == 0, result.stderr
    assert "no CUDA device" in result.stdout and "nothing was run" in result.stdout
    assert not out.exists()


@pytest.mark.parametrize("args", [(), ("a", "b"), ("out", "--bogus")])
def test_script_usage_errors(args):
    result = script(*args)
    assert result.returncode == 2
    assert "usage: bash benchmarks/gpu_check.sh OUTDIR" in result.stderr


def dry_run_stages(out: Path) -> tuple[list[tuple[str, int, list[str]]], str]:
    result = script(str(out), "--dry-run", cwd=out.parent)
    assert result.returncode == 0, result.stderr
    stages = [
        (m["name"], int(m["cap"]), shlex.split(m["command"]))
        for m in re.finditer(r"^== (?P<name>\S+) \(at most (?P<cap>\d+)s\): (?P<command>.*)$",
                             result.stdout, re.MULTILINE)
    ]  # fmt: skip
    return stages, result.stdout


def test_dry_run_plans_every_stage_inside_8_minutes(tmp_path):
    stages, stdout = dry_run_stages(tmp_path / "out")
    names = [name for name, _, _ in stages]
    assert names == ["versions", "tests", "bench", "train-bf16", "train-fp16", "train-nccl"]
    deadline = int(re.search(r"deadline (\d+)s", stdout).group(1))
    one_gpu = sum(cap for name, cap, _ in stages if name != "train-nccl")
    assert one_gpu <= deadline <= 8 * 60 - 10  # every stage gets its whole limit on one GPU
    assert not (tmp_path / "out").exists()


def test_dry_run_outputs_fit_what_the_device_tool_returns(tmp_path):
    _, stdout = dry_run_stages(tmp_path / "out")
    line = re.search(r"^outputs: (\S+) \((.*) \+ the benchmark's", stdout, re.MULTILINE)
    assert line.group(1) == str(tmp_path / "out")  # a relative OUTDIR is the caller's
    names = line.group(2).split() + [f"{gpu.OUTPUT_STEM}.{s}" for s in gpu.OUTPUT_SUFFIXES]
    assert len(set(names)) == len(names) <= 8
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", n) for n in names)


def test_dry_run_commands_parse(tmp_path):
    from fastgp.train import config

    out = tmp_path / "out"
    stages = {name: command for name, _, command in dry_run_stages(out)[0]}
    tests = stages["tests"]
    assert tests[:2] == ["env", "FASTGP_TEST_DEVICE=cuda"] and tests[3:5] == ["-m", "pytest"]
    bench = stages["bench"]
    assert bench[1:3] == ["-m", "benchmarks.gpu"]
    args = gpu.build_parser().parse_args(bench[3:])
    assert args.out_dir == out and 0 < args.budget_s < dict(
        (n, c) for n, c, _ in dry_run_stages(out)[0])["bench"]  # fmt: skip
    for amp in ("bf16", "fp16"):
        command = stages[f"train-{amp}"]
        assert command[1:4] == ["-m", "fastgp", "train"]
        file_options, flags = config.parse_args(command[4:])
        cfg = config.merge(file_options, flags)
        config.check(cfg)
        assert (cfg.amp, cfg.device, cfg.backend, cfg.dataset) == (amp, "cuda", "triton", "shapes")
        assert not cfg.progress and not cfg.tensorboard
    nccl = stages["train-nccl"]
    assert nccl[1:3] == ["-m", "torch.distributed.run"]
    assert "--standalone" in nccl and "--nproc_per_node=2" in nccl
    at = nccl.index("fastgp")
    assert nccl[at - 1 : at + 2] == ["-m", "fastgp", "train"]
    config.check(config.merge(*config.parse_args(nccl[at + 2 :])))


def test_versions_stage_prints_versions_with_python():
    stages = {name: command for name, _, command in dry_run_stages(REPO / "unused-out")[0]}
    command = stages["versions"]
    assert command[:2] == ["bash", "-c"] and command[-1] == sys.executable
    assert "-m benchmarks.gpu --versions" in command[2]


# ------------------------------------------------------------------------------ stage runner


def drive(tmp_path: Path, body: str, deadline: int, min_stage: int) -> subprocess.CompletedProcess:
    driver = tmp_path / "driver.sh"
    driver.write_text(
        f'SECONDS=0\nsource {shlex.quote(str(LIB))}\ngc_init "$1" {deadline} {min_stage}\n'
        f"{body}\ngc_summary\nexit $?\n"
    )
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(
        ["bash", str(driver), str(tmp_path)], env=env, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip


def summary_table(stdout: str) -> dict[str, list[str]]:
    table = stdout.split("== summary")[1]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()[3:]]
    return {r[0]: r[1:] for r in rows if len(r) == 6}


def test_stage_runner_outcomes_table_json_and_exit_code(tmp_path):
    pid_file = tmp_path / "child.pid"
    body = f"""
gc_stage ok 5 true
gc_stage fails 5 sh -c 'echo stage output; exit 3'
gc_stage hangs 3 sh -c 'sleep 30 & echo $! > {shlex.quote(str(pid_file))}; exec sleep 30'
gc_not_applicable nccl "needs 2 GPUs"
gc_stage late 5 true
"""
    start = time.monotonic()
    result = drive(tmp_path, body, deadline=4, min_stage=2)
    took = time.monotonic() - start
    assert result.returncode == 1, result.stdout + result.stderr
    assert took < 15  # the hung stage was cut at its limit, its child did not hold us
    assert "stage output" in result.stdout
    table = summary_table(result.stdout)
    assert {name: row[0] for name, row in table.items()} == {
        "ok": "ok", "fails": "failed", "hangs": "timeout", "nccl": "n/a", "late": "skipped",
    }  # fmt: skip
    assert table["fails"][1] == "3" and table["hangs"][1] == "124"
    assert "gpu check: FAILED" in result.stdout
    log = (tmp_path / "gpu_check.log").read_text()
    assert "stage output" in log and "== summary" in log
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert saved["passed"] is False and saved["deadline_s"] == 4
    assert [(s["stage"], s["outcome"], s["exit"]) for s in saved["stages"]] == [
        ("ok", "ok", 0), ("fails", "failed", 3), ("hangs", "timeout", 124),
        ("nccl", "n/a", None), ("late", "skipped", None),
    ]  # fmt: skip
    # timeout signalled the stage's whole process group: the background child is gone too.
    child = int(pid_file.read_text())
    status = Path(f"/proc/{child}/status")
    assert not status.exists() or "\nState:\tZ" in status.read_text()


def test_stage_runner_passes_when_every_stage_passes(tmp_path):
    result = drive(tmp_path, "gc_stage one 5 true\ngc_not_applicable two why", 60, 2)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "gpu check: PASSED" in result.stdout
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert saved["passed"] is True
    assert [s["outcome"] for s in saved["stages"]] == ["ok", "n/a"]
