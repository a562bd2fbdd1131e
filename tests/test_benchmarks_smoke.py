"""The benchmark harness (benchmarks/) on tiny sizes: it runs, its files follow the schema,
and every ratio it reports is the quotient of medians it measured. Timings are not checked."""

import csv
import json
import math

import pytest

from benchmarks import report, run
from benchmarks.cases import OpCase, counted_bytes
from benchmarks.critic_step import STEP_PROVIDERS
from benchmarks.timing import quantile, summarize


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """One in-process run: norm+penalty fwd+bwd on two tiny sizes, all five providers, and
    the smallest MLP critic step with every step provider; returns (output dir, JSON path,
    parsed JSON, CSV rows)."""
    out = tmp_path_factory.mktemp("bench")
    argv = [
        "--quick",
        "--out-dir", str(out),
        "--device", "cpu",
        "--threads", "1",
        "--sizes", "4x8,3x2x5",
        "--ops", "penalty",
        "--modes", "fwdbwd",
        "--steps", "mlp",
        "--min-time", "0",
        "--min-repeats", "2",
    ]  # fmt: skip
    assert run.main(argv) == 0
    (json_path,) = out.glob("*.json")
    (csv_path,) = out.glob("*.csv")
    payload = json.loads(json_path.read_text())
    with csv_path.open(newline="") as f:
        csv_rows = list(csv.DictReader(f))
    return out, json_path, payload, csv_rows


def test_files_are_named_after_the_machine(smoke_run):
    out, json_path, payload, _ = smoke_run
    machine = payload["machine"]
    stem = json_path.stem
    assert stem.endswith("_quick")
    assert f"_{machine['device']}_{machine['threads']}t_" in stem
    assert machine["device"] == "cpu" and machine["threads"] == 1
    png = out / f"{stem}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / f"{stem}.csv").is_file()


def test_json_and_csv_schema(smoke_run):
    _, _, payload, csv_rows = smoke_run
    assert set(payload) == {"machine", "config", "rows", "targets"}
    rows = payload["rows"]
    # 2 sizes x 5 providers, plus every provider of one critic step.
    assert len(rows) == 2 * 5 + len(STEP_PROVIDERS)
    assert len(csv_rows) == len(rows)
    assert list(csv_rows[0])[-len(report.FIELDS) :] == list(report.FIELDS)
    for row, line in zip(rows, csv_rows, strict=True):
        assert set(row) <= set(report.FIELDS)
        assert line["case"] == row["case"] and line["provider"] == row["provider"]
        assert float(line["median_ms"]) == pytest.approx(row["median_ms"])
        assert 0 < row["p20_ms"] <= row["median_ms"] <= row["p80_ms"]
        assert row["repeats"] >= 2
    ops = [r for r in rows if r["kind"] == "op"]
    assert {r["provider"] for r in ops} == {"eager", "compile", "fastgp", "copy", "one_op"}
    steps = [r for r in rows if r["kind"] == "step"]
    assert {r["provider"] for r in steps} == set(STEP_PROVIDERS)
    assert all(r["peak_bytes"] > 0 and r["memory_method"] for r in steps)
    fastgp_rows = [r for r in rows if r["provider"] == "fastgp"]
    assert all(r["backend"] == payload["config"]["backend"] for r in fastgp_rows)
    # Every fastgp row says which CPU output cache setting it ran with, as the machine
    # section does; tiny sizes get no `fastgp_cache` rows (the cache serves >= 4 MiB).
    setting = payload["machine"]["cpu_output_cache"]["fastgp"]
    assert all(r["cpu_output_cache"] == setting for r in fastgp_rows)
    assert len(payload["targets"]) == len(report.TARGETS)


def test_ratios_are_quotients_of_the_measured_medians(smoke_run):
    _, _, payload, _ = smoke_run
    rows = payload["rows"]
    for case in {r["case"] for r in rows}:
        by = {r["provider"]: r for r in rows if r["case"] == case}
        for row in by.values():
            median = row["median_ms"]
            assert row["speedup_vs_eager"] == pytest.approx(by["eager"]["median_ms"] / median)
            assert row["speedup_vs_compile"] == pytest.approx(by["compile"]["median_ms"] / median)
            if row["kind"] == "op":
                assert row["frac_of_copy"] == pytest.approx(by["copy"]["median_ms"] / median)
                assert row["gb_per_s"] == pytest.approx(row["bytes"] / (median * 1e-3) / 1e9)
                assert row["one_op_speedup_vs_eager"] == pytest.approx(
                    by["eager"]["median_ms"] / by["one_op"]["median_ms"]
                )
            else:
                assert row["peak_vs_eager"] == pytest.approx(
                    row["peak_bytes"] / by["eager"]["peak_bytes"]
                )


def test_targets_follow_the_rows(smoke_run):
    _, _, payload, _ = smoke_run
    by_text = {t["target"]: t for t in payload["targets"]}
    step = by_text["critic step: never slower than eager"]
    ratio = next(
        r["speedup_vs_eager"]
        for r in payload["rows"]
        if r["kind"] == "step" and r["provider"] == "fastgp"
    )
    assert step["cases"] == 1 and step["met"] == (ratio >= 1.0)
    assert step["worst_value"] == pytest.approx(ratio)
    large = by_text["norm+penalty fwd+bwd >= 16M elements: >= 70% of copy bandwidth"]
    assert large["cases"] == 0 and large["met"] is None


@pytest.mark.usefixtures("cpp_built")
def test_cpu_cache_both_adds_cache_on_rows_for_cases_the_cache_serves(tmp_path):
    argv = [
        "--out-dir", str(tmp_path),
        "--device", "cpu",
        "--threads", "1",
        "--backend", "cpp",
        "--sizes", "1x1048576,4x1000",  # 4 MiB of fp32 (the cache's threshold), and tiny
        "--ops", "interpolate",
        "--modes", "fwd",
        "--providers", "eager,fastgp,copy",
        "--steps", "none",
        "--train-repeats", "0",
        "--cpu-cache", "both",
        "--min-time", "0",
        "--min-repeats", "2",
        "--rotate-mb", "0",
    ]  # fmt: skip
    assert run.main(argv) == 0
    (json_path,) = tmp_path.glob("*.json")
    payload = json.loads(json_path.read_text())
    assert payload["machine"]["cpu_output_cache"] == {
        "fastgp": "off",
        "fastgp_cache": f"on, limit {run.CPU_CACHE_ON_MB} MiB",
    }
    providers = {(r["case"], r["provider"]): r for r in payload["rows"]}
    cached = providers[("interpolate-fwd-1x1048576", "fastgp_cache")]
    assert cached["cpu_output_cache"] == payload["machine"]["cpu_output_cache"]["fastgp_cache"]
    assert cached["frac_of_copy"] == pytest.approx(
        providers[("interpolate-fwd-1x1048576", "copy")]["median_ms"] / cached["median_ms"]
    )
    assert ("interpolate-fwd-4x1000", "fastgp_cache") not in providers
    assert providers[("interpolate-fwd-4x1000", "fastgp")]["cpu_output_cache"] == "off"


def test_counted_bytes():
    # 12 bytes per fp32 element for norm+penalty fwd+bwd (issue 4), + 4 bytes per sample.
    assert counted_bytes(OpCase("penalty", "fwdbwd", 4, (10,)), 4) == 12 * 40 + 16
    assert counted_bytes(OpCase("penalty", "fwd", 4, (10,)), 2) == 2 * 40 + 16
    assert counted_bytes(OpCase("interpolate", "fwd", 2, (3, 5)), 4) == 3 * 4 * 30 + 8
    assert counted_bytes(OpCase("interpolate", "fwdbwd", 2, (3, 5)), 8) == 6 * 8 * 30 + 8
    with pytest.raises(ValueError, match="op must be"):
        OpCase("norm", "fwd", 1, (2,))


def test_summary_statistics():
    samples = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert quantile(sorted(samples), 0.5) == 3.0
    assert quantile(sorted(samples), 0.2) == pytest.approx(1.8)
    t = summarize([2 * s for s in samples], calls_per_sample=2, method="x")
    assert (t.median_s, t.p20_s, t.p80_s, t.repeats) == (3.0, pytest.approx(1.8), 4.2, 5)
    assert math.isclose(t.p80_s, quantile(sorted(samples), 0.8))


def test_add_ratios_and_missing_targets():
    rows = [
        {"kind": "op", "op": "penalty", "mode": "fwdbwd", "case": "c", "elements": 10,
         "provider": p, "median_ms": m, "bytes": 1000}
        for p, m in (
            ("eager", 6.0), ("compile", 3.0), ("fastgp", 2.0), ("copy", 1.0), ("one_op", 1.5)
        )
    ]  # fmt: skip
    report.add_ratios(rows)
    ours = rows[2]
    assert (ours["speedup_vs_eager"], ours["speedup_vs_compile"]) == (3.0, 1.5)
    assert ours["frac_of_copy"] == 0.5
    assert ours["gb_per_s"] == pytest.approx(1000 / 2e-3 / 1e9)
    assert all(r["one_op_speedup_vs_eager"] == 4.0 for r in rows)
    targets = {t["target"]: t for t in report.evaluate_targets(rows)}
    assert targets["norm+penalty fwd+bwd <= 1M elements: >= 3x eager"]["met"] is True
    assert targets["norm+penalty fwd+bwd <= 1M elements: >= 1.5x torch.compile"]["met"] is True
    rows[2]["speedup_vs_eager"] = 2.5
    missed = report.evaluate_targets(rows)[0]
    assert missed["met"] is False
    assert missed["missed"] == [{"case": "c", "value": 2.5, "one_op_speedup_vs_eager": 4.0}]
    assert missed["worst_one_op_speedup_vs_eager"] == 4.0


def test_bad_sizes_are_rejected_with_the_option_name():
    with pytest.raises(SystemExit, match="--sizes"):
        run.parse_sizes("16by784")
    with pytest.raises(SystemExit, match="--providers"):
        run.parse_list("eager,numpy", ("eager", "fastgp"), "--providers")


def test_whole_run_rows_time_fresh_processes_and_keep_their_quality():
    from benchmarks import train_run

    args = ["--steps", "4", "--log-every", "2", "--sample-every", "0", "--eval-samples", "50"]
    logged = []
    rows = train_run.train_rows(
        args, repeats=1, case="tiny", providers=("eager",), log=logged.append
    )
    (row,) = rows
    assert row["kind"] == "train" and row["provider"] == "eager" and row["repeats"] == 1
    assert row["backend"] == "--compile off" and row["compile_s"] == 0
    assert 0 < row["p20_ms"] <= row["median_ms"] <= row["p80_ms"]
    assert row["cpu_s"] > 0 and "/25 modes, HQ" in row["quality"]
    assert set(row) <= set(report.FIELDS) and len(logged) == 1
    assert "fastgp train --steps 4" in report.markdown_tables(rows, [])


def test_whole_run_cold_provider_gets_an_empty_cache_per_run_after_priming(monkeypatch):
    """``compile`` is measured with the default cache primed by a short run first;
    ``compile_cold`` gets a fresh Inductor cache directory of its own for every run."""
    from benchmarks import train_run

    calls = []

    def fake_run(compile_mode, extra_args, run_dir, cache_dir=None):
        if cache_dir is not None:
            assert not cache_dir.exists()  # empty: nothing compiled is found there
        calls.append((compile_mode, extra_args, run_dir.name, cache_dir))
        evaluation = {"modes_covered": 25, "num_modes": 25, "hq_fraction": 0.9, "reverse_kl": 0.0}
        return {"wall_s": 2.0, "cpu_s": 1.0, "compile_s": 0.0, "evaluation": evaluation}

    monkeypatch.setattr(train_run, "one_run", fake_run)
    rows = train_run.train_rows(["--steps", "5"], repeats=2, case="x", log=lambda _: None)
    priming, *measured = calls
    assert priming[0] == "auto" and priming[2] == "priming" and priming[3] is None
    assert priming[1][-4:] == ["--steps", str(train_run.PRIMING_STEPS), "--eval-samples", "50"]
    assert [c[2] for c in measured] == [
        "eager0", "compile0", "compile_cold0", "eager1", "compile1", "compile_cold1"
    ]  # fmt: skip
    cold = [c[3] for c in measured if c[2].startswith("compile_cold")]
    assert all(c is not None for c in cold) and len(set(cold)) == 2
    assert all(c[3] is None for c in measured if not c[2].startswith("compile_cold"))
    assert [r["provider"] for r in rows] == ["eager", "compile", "compile_cold"]
    assert "empty Inductor cache" in rows[2]["backend"]


def test_before_after_takes_medians_then_geometric_means(tmp_path):
    """Two small cases of one group: fastgp 2x and 8x faster after (geomean 4), eager
    unchanged; the after runs' cache rows replace their fastgp rows in the cache column."""
    from benchmarks import before_after

    def write(name, rows):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"rows": rows}))
        return path

    def row(case, provider, ms):
        return {"kind": "op", "case": case, "provider": provider, "median_ms": ms, "elements": 64}

    cases = ("penalty-fwd-1x64", "penalty-fwd-2x32")
    before = [
        write(
            f"b{i}", [row(c, p, ms) for c in cases for p, ms in (("eager", 4.0), ("fastgp", 8.0))]
        )
        for i in (1, 2)
    ]
    after_rows = [
        row(cases[0], "fastgp", 4.0),
        row(cases[1], "fastgp", 1.0),
        row(cases[1], "fastgp_cache", 0.5),
    ]
    after = [
        write("a1", after_rows + [row(c, "eager", 4.0) for c in cases]),
        write("a2", after_rows + [row(c, "eager", 2.0) for c in cases]),
    ]
    (group,) = before_after.compare(before, after)
    assert (group["op"], group["mode"], group["sizes"], group["cases"]) == (
        "penalty",
        "fwd",
        "< 1M elements",
        2,
    )
    assert math.isclose(group["fastgp"], 4.0)
    assert math.isclose(group["fastgp, cache on"], math.sqrt(2.0 * 16.0))
    assert math.isclose(group["eager"], 4.0 / 3.0)
    assert "| penalty | fwd | < 1M elements | 2 | 4.00 |" in before_after.markdown([group])


def test_step_profile_splits_a_generator_step(tmp_path, capsys):
    """Two tiny eager steps profiled: every kind is there, the parts add up to the total,
    matrix products are found, and the JSON holds what the table shows."""
    from benchmarks import step_profile

    out = tmp_path / "profile.json"
    args = "--batch-size 32 --nf 16 --nf-g 16 --n-critic 1 --backend torch"
    assert step_profile.main(
        ["--compile", "off", "--warmup", "1", "--steps", "2", "--train-args", args,
         "--out", str(out)]
    ) == 0  # fmt: skip
    shown = capsys.readouterr().out
    assert "`fastgp train --batch-size 32" in shown and "| off, denormals flushed |" in shown
    result = json.loads(out.read_text())["results"]["off, denormals flushed"]
    parts = sum(result[k] for k in ("matmul", "optimizer", "compiled_graph", "other"))
    assert result["total"] == pytest.approx(parts)
    assert result["matmul"] > 0 and result["optimizer"] > 0 and result["compiled_graph"] == 0
    assert result["wall_ms_unprofiled"] > 0


def test_step_profile_sets_each_settings_denormal_handling_and_restores_it(monkeypatch):
    import torch

    from benchmarks import step_profile
    from fastgp.train.cli import denormals_flushed

    seen = []

    class Trainer:
        def __init__(self, setting):
            self.setting = setting

        def train_step(self):
            seen.append((self.setting, denormals_flushed()))

        def check_finite(self):
            pass

    made = iter([("off", "flushed"), ("off", "kept")])
    monkeypatch.setattr(step_profile, "build_trainer", lambda *a: Trainer(next(made)))
    torch.set_flush_denormal(False)
    results = step_profile.profile_settings([], ["off"], ["flushed", "kept"], 1, 2, blocks=2)
    assert set(results) == {"off, denormals flushed", "off, denormals kept"}
    assert {flushed for (_, handling), flushed in seen if handling == "flushed"} == {True}
    assert {flushed for (_, handling), flushed in seen if handling == "kept"} == {False}
    assert not denormals_flushed()
