"""The PNG: speed-up over eager PyTorch against size, one panel per operation and mode,
plus one panel for the whole critic steps."""

from __future__ import annotations

import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PROVIDER_STYLE = {
    "compile": ("tab:orange", "s", "torch.compile"),
    "fastgp": ("tab:blue", "o", "fastgp"),
    "fastgp_cache": ("tab:purple", "D", "fastgp, CPU output cache on"),
    "copy": ("tab:gray", "^", "copy (speed of light)"),
    "one_op": ("tab:green", "v", "one PyTorch op (floor)"),
}


def plot_speedups(rows: list[dict[str, object]], path: Path, title: str) -> None:
    """Write ``path``: speed-up vs eager (log-log) per (op, mode) against elements, and a bar
    chart of the critic steps. Eager is the horizontal line at 1."""
    ops = [r for r in rows if r["kind"] == "op" and r.get("speedup_vs_eager") is not None]
    panels = list(dict.fromkeys((r["op"], r["mode"]) for r in ops))
    steps = [r for r in rows if r["kind"] == "step" and r.get("speedup_vs_eager") is not None]
    count = len(panels) + (1 if steps else 0)
    if count == 0:
        raise ValueError("plot_speedups needs rows with speedup_vs_eager; none were given")
    cols = min(count, 3)
    nrows = -(-count // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, 4.0 * nrows), squeeze=False)
    flat = list(axes.flat)
    for ax, (op, mode) in zip(flat, panels, strict=False):
        for provider, (color, marker, label) in PROVIDER_STYLE.items():
            pts = sorted(
                (int(r["elements"]), float(r["speedup_vs_eager"]))
                for r in ops
                if r["op"] == op and r["mode"] == mode and r["provider"] == provider
            )
            if pts:
                # Several batch sizes share an element count: points for each, the line
                # through their median.
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, ls="none", marker=marker, color=color, ms=4, alpha=0.6)
                line_x = sorted(set(xs))
                line_y = [statistics.median(y for x, y in pts if x == n) for n in line_x]
                ax.plot(line_x, line_y, color=color, label=label, lw=1)
        ax.axhline(1.0, color="black", lw=0.8, ls="--", label="eager")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("elements (B × per-sample)")
        ax.set_ylabel("speed-up over eager")
        ax.set_title(f"{op} {'fwd+bwd' if mode == 'fwdbwd' else mode}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    if steps:
        ax = flat[len(panels)]
        cases = list(dict.fromkeys(r["case"] for r in steps))
        width = 0.38
        for k, provider in enumerate(("compile", "fastgp")):
            color = PROVIDER_STYLE[provider][0]
            ys = [
                next(
                    (
                        float(r["speedup_vs_eager"])
                        for r in steps
                        if r["case"] == c and r["provider"] == provider
                    ),
                    0.0,
                )
                for c in cases
            ]
            ax.bar([i + (k - 0.5) * width for i in range(len(cases))], ys, width, color=color,
                   label=PROVIDER_STYLE[provider][2])  # fmt: skip
        ax.axhline(1.0, color="black", lw=0.8, ls="--", label="eager")
        ax.set_xticks(range(len(cases)), cases, rotation=30, ha="right", fontsize=7)
        ax.set_ylabel("speed-up over eager")
        ax.set_title("whole critic step")
        ax.legend(fontsize=7)
    for ax in flat[count:]:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
