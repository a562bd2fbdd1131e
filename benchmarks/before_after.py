"""``python -m benchmarks.before_after --before A.json ... --after B.json ...``: two versions'
op rows, compared.

Each side is one or more result files of ``python -m benchmarks.run`` (alternate the runs of
the two versions, so slow drift of the machine falls on both). For every op case the median
of each side's runs is taken; the table gives, per op, mode and size class, the geometric
mean over cases of

* fastgp's time before / after (> 1: the after version is faster), with the output cache as
  each run had it and with it on where the after runs have ``fastgp_cache`` rows;
* eager PyTorch's time before / after: the same code on both sides, so its spread is the
  run-to-run noise of the machine the other columns should be read against.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

from benchmarks.report import MILLION  # the targets' "1M elements"


def op_medians(path: Path) -> dict[str, dict[str, float]]:
    """{case: {provider: median ms}} of a result file's op rows, plus ``_elements``."""
    rows = json.loads(path.read_text())["rows"]
    table: dict[str, dict[str, float]] = defaultdict(dict)
    for row in rows:
        if row["kind"] == "op":
            table[row["case"]][row["provider"]] = row["median_ms"]
            table[row["case"]]["_elements"] = row["elements"]
    return table


def _median_over(runs: list[dict], case: str, provider: str, fallback: str | None = None) -> float:
    """The median over ``runs`` of ``provider``'s time (``fallback``'s where it has none)."""
    return statistics.median(r[case].get(provider, r[case][fallback or provider]) for r in runs)


def _group(case: str, elements: float) -> tuple[str, str, str]:
    op, mode = case.split("-")[:2]
    return op, mode, "< 1M elements" if elements < MILLION else ">= 1M elements"


def compare(before: list[Path], after: list[Path]) -> list[dict[str, object]]:
    """One dict per (op, mode, size class): geometric means of the before/after time ratios."""
    runs_before = [op_medians(p) for p in before]
    runs_after = [op_medians(p) for p in after]
    cases = set.intersection(*(set(r) for r in runs_before + runs_after))
    ratios: dict[tuple[str, str, str], dict[str, list[float]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for case in cases:
        key = _group(case, runs_before[0][case]["_elements"])
        old = _median_over(runs_before, case, "fastgp")
        ratios[key]["fastgp"].append(old / _median_over(runs_after, case, "fastgp"))
        cached = _median_over(runs_after, case, "fastgp_cache", "fastgp")
        ratios[key]["fastgp, cache on"].append(old / cached)
        eager = _median_over(runs_before, case, "eager")
        ratios[key]["eager"].append(eager / _median_over(runs_after, case, "eager"))

    return [
        {
            "op": k[0],
            "mode": k[1],
            "sizes": k[2],
            "cases": len(v["fastgp"]),
            **{name: statistics.geometric_mean(xs) for name, xs in v.items()},
        }
        for k, v in sorted(ratios.items())
    ]


def markdown(groups: list[dict[str, object]]) -> str:
    lines = [
        "| op | mode | sizes | cases | fastgp before/after | after with cache on "
        "| eager before/after (noise) |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for g in groups:
        lines.append(
            f"| {g['op']} | {g['mode']} | {g['sizes']} | {g['cases']} | {g['fastgp']:.2f} "
            f"| {g['fastgp, cache on']:.2f} | {g['eager']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.before_after", description=__doc__)
    p.add_argument("--before", type=Path, nargs="+", required=True, help="result JSON files")
    p.add_argument("--after", type=Path, nargs="+", required=True, help="result JSON files")
    args = p.parse_args(argv)
    print(markdown(compare(args.before, args.after)))


if __name__ == "__main__":
    main()
