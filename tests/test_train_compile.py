"""``fastgp train --compile``: what auto chooses and says, compiled runs, compiled resume.

Compiling takes seconds per graph here; the default run compiles one tiny toy run, the
option matrix and the compiled resume are behind ``slow``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_train_resume import assert_same_state, final_state, tiny, training_lines

from fastgp.train import config
from fastgp.train.cli import main_train
from fastgp.train.gan.optimizers import build_optimizer
from fastgp.train.run import compiled
from fastgp.train.run.run_log import read_metrics

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),  # torch.jit in dynamo
    pytest.mark.usefixtures("fresh_dynamo"),
]


def _cfg(**options) -> config.TrainConfig:
    return config.merge({"dataset": "25gaussians", "arch": "mlp", **options}, {})


# ---------------------------------------------------------------- choosing a mode


def test_auto_compiles_only_where_measured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compiled, "AUTO_COMPILE", {("cpu", "mlp"): "default"})
    mode, why = compiled.resolve_compile(_cfg(), torch.device("cpu"))
    assert mode == "default" and why.startswith("auto: compiled")
    mode, why = compiled.resolve_compile(_cfg(arch="dcgan28"), torch.device("cpu"))
    assert mode == "off" and "dcgan28 on cpu was not measured faster" in why
    mode, why = compiled.resolve_compile(_cfg(), torch.device("cuda"))
    assert mode == "off"
    assert compiled.resolve_compile(_cfg(compile="off"), torch.device("cpu"))[0] == "off"
    assert compiled.resolve_compile(_cfg(compile="max-autotune"), torch.device("cpu"))[0] == (
        "max-autotune"
    )


def test_a_torch_that_cannot_compile_steps_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(torch._dynamo.config, "trace_autograd_ops", raising=False)
    with pytest.raises(ValueError, match=r"--compile default: .*needs torch >= 2\.11"):
        compiled.resolve_compile(_cfg(compile="default"), torch.device("cpu"))
    mode, why = compiled.resolve_compile(_cfg(), torch.device("cpu"))
    assert mode == "off" and "needs torch >= 2.11" in why


def test_the_cli_refuses_a_compile_it_cannot_do(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(torch._dynamo.config, "trace_autograd_ops", raising=False)
    assert main_train(tiny(tmp_path / "run", 2, "--compile", "default")) == 2
    assert "--compile default: compiling a step" in capsys.readouterr().err


def test_adam_steps_inside_the_graphs_where_nothing_runs_in_between() -> None:
    def adams(kind: str = "adam") -> tuple[torch.optim.Optimizer, ...]:
        return tuple(
            build_optimizer(kind, torch.nn.Linear(2, 2).parameters(), 1e-3, (0.0, 0.9))
            for _ in range(2)
        )

    graphs = "reduce-overhead"
    chosen, why = compiled.in_graph_optimizers(graphs, adams(), world_size=1, fp16=False)
    assert chosen is not None and len(chosen) == 2 and why == "Adam's update inside the graphs"
    for mode in ("off", "default", "max-autotune"):
        assert compiled.in_graph_optimizers(mode, adams(), world_size=1, fp16=False) == (
            None,
            "",
        )
    chosen, why = compiled.in_graph_optimizers(graphs, adams(), world_size=2, fp16=False)
    assert chosen is None and "all-reduced first" in why
    chosen, why = compiled.in_graph_optimizers(graphs, adams(), world_size=1, fp16=True)
    assert chosen is None and "GradScaler" in why
    rmsprop = adams("rmsprop")
    chosen, why = compiled.in_graph_optimizers(graphs, rmsprop, world_size=1, fp16=False)
    assert chosen is None and "RMSprop is stepped eagerly" in why


# ---------------------------------------------------------------- compiled runs


def test_a_compiled_run_trains_like_the_eager_one(tmp_path: Path, capsys) -> None:
    """Same losses to fp32 rounding (Inductor reorders arithmetic, so not bit for bit); the
    header says what was compiled; metrics.jsonl has the compile time apart."""
    assert main_train(tiny(tmp_path / "eager", 4, "--compile", "off")) == 0
    assert main_train(tiny(tmp_path / "compiled", 4, "--compile", "default")) == 0
    assert "compile: default (--compile default)\n" in capsys.readouterr().out
    eager, comp = training_lines(tmp_path / "eager"), training_lines(tmp_path / "compiled")
    assert [r["step"] for r in eager] == [r["step"] for r in comp]
    for a, b in zip(eager, comp, strict=True):
        for key in ("loss_d", "loss_g", "wdist"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), (key, a, b)
    records = read_metrics(tmp_path / "compiled" / "metrics.jsonl")
    compiles = [r for r in records if r["kind"] == "compile"]
    # critic with and without the penalty (--lazy-reg 2), generator
    assert compiles and sum(r["graphs"] for r in compiles) >= 3
    assert all(r["seconds"] > 0 and r["mode"] == "default" for r in compiles)
    saved = json.loads((tmp_path / "compiled" / "config.json").read_text())
    assert saved["compile"] == "default"


def test_adam_inside_the_graph_trains_like_the_eager_run(tmp_path: Path, capsys) -> None:
    """--compile reduce-overhead (CUDA graphs; on the CPU an ordinary compile) traces Adam's
    update into the update graphs: the same losses as eager to fp32 rounding, and the
    optimisers' state is Adam.step's (one step counted per update)."""
    assert main_train(tiny(tmp_path / "eager", 4, "--compile", "off")) == 0
    assert main_train(tiny(tmp_path / "graphs", 4, "--compile", "reduce-overhead")) == 0
    out = capsys.readouterr().out
    assert "compile: reduce-overhead (--compile reduce-overhead; Adam's update inside" in out
    eager, graphs = training_lines(tmp_path / "eager"), training_lines(tmp_path / "graphs")
    for a, b in zip(eager, graphs, strict=True):
        for key in ("loss_d", "loss_g", "wdist"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), (key, a, b)
    state = final_state(tmp_path / "graphs")
    assert {s["step"].item() for s in state["opt_d"]["state"].values()} == {4.0 * 3}
    assert {s["step"].item() for s in state["opt_g"]["state"].values()} == {4.0}


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_resume_is_bit_exact(tmp_path: Path, mode: str) -> None:
    """4 compiled steps + resume to 8 == 8 compiled steps, bit for bit (reduce-overhead:
    Adam stepped inside the graphs)."""
    whole, halves = tmp_path / "whole", tmp_path / "halves"
    assert main_train(tiny(whole, 8, "--compile", mode)) == 0
    torch._dynamo.reset()
    assert main_train(tiny(halves, 4, "--compile", mode)) == 0
    torch._dynamo.reset()
    assert main_train(["--resume", str(halves), "--steps", "8"]) == 0
    assert_same_state(final_state(whole), final_state(halves))
    assert training_lines(whole) == training_lines(halves)


IMAGES = ["--dataset", "shapes", "--image-size", "32", "--batch-size", "8", "--nf", "8",
          "--nf-g", "8"]  # fmt: skip
OPTION_MATRIX = {
    "wgan-lp": ["--objective", "wgan-lp"],
    "wgan-clip": ["--objective", "wgan-clip"],
    "hinge-r1": ["--objective", "hinge", "--penalty", "r1"],
    "lsgan-r2": ["--objective", "lsgan", "--penalty", "r2"],
    "dragan": ["--penalty", "dragan"],
    "no-penalty": ["--penalty", "none"],
    "drift": ["--drift", "0.001"],
    "bf16": ["--amp", "bf16"],
    "fp16": ["--amp", "fp16"],
    "layer-norm": ["--critic-norm", "layer"],
    "spectral-norm": ["--spectral-norm"],
    "images": IMAGES,
    "images-diffaug-replay": [*IMAGES, "--diffaug", "translation,cutout,flip,color"],
    "images-instance-norm-fp16": [*IMAGES, "--critic-norm", "instance", "--amp", "fp16"],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(OPTION_MATRIX))
def test_every_option_trains_compiled(tmp_path: Path, name: str) -> None:
    argv = [*tiny(tmp_path / name, 2, "--compile", "default"), *OPTION_MATRIX[name]]
    assert main_train(argv) == 0
    lines = training_lines(tmp_path / name)
    assert lines and all(isinstance(r["loss_d"], float) for r in lines)
