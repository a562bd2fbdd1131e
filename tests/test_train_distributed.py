"""Data-parallel training: 2 processes under torchrun with gloo on CPU (slow), and, on one
process, what nccl needs: every collective gets tensors on the context's device, and each
rank's GPU is made current before the process group is created (torch.cuda mocked).

Every rank must end with the same parameters (gradients are averaged by hand after the
double backward), and, with a penalty that draws no random numbers (R1), the same
parameters as one process trained on the same global batch, to float tolerance; both with
the torch and the cpp penalty backends.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from fastgp.train import config
from fastgp.train.cli import main_train
from fastgp.train.data import load_dataset
from fastgp.train.run import distributed, trainer
from fastgp.train.run.checkpoint import latest_checkpoint, load_checkpoint
from fastgp.train.run.distributed import DistContext
from fastgp.train.run.guards import Check, Failure, NonFiniteError
from fastgp.train.run.trainer import Trainer

STEPS = 3

DRIVER = textwrap.dedent(
    """
    import json, sys
    import torch
    from fastgp.train import config
    from fastgp.train.data import load_dataset
    from fastgp.train.run import distributed
    from fastgp.train.run.trainer import Trainer

    torch.set_num_threads(1)
    out = sys.argv[1]
    ctx = distributed.init_distributed(torch.device("cpu"))
    for name, options in json.loads(sys.argv[2]).items():
        ds = load_dataset(options["dataset"])
        cfg = config.resolve(config.merge(options), ds.sample_shape)
        trainer = Trainer(cfg, ds, ctx)
        for _ in range(int(sys.argv[3])):
            trainer.train_step()
        state = {"generator": trainer.generator.state_dict(), "critic": trainer.critic.state_dict()}
        torch.save(state, f"{out}/{name}-rank{ctx.rank}.pt")
    distributed.shutdown(ctx)
    """
)


def options(tmp_path: Path, penalty: str, backend: str = "torch") -> dict:
    return {
        "dataset": "25gaussians", "batch_size": 32, "nf": 16, "nf_g": 16, "n_critic": 2,
        "steps": STEPS, "penalty": penalty, "weight": 1.0, "lr_schedule": "constant",
        "backend": backend, "run_dir": str(tmp_path / f"run-{penalty}-{backend}"),
        "progress": False, "replay_size": 0,
    }  # fmt: skip


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return subprocess.run(
        [*command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def single_process(opts: dict, steps: int) -> dict:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ds = load_dataset(opts["dataset"])
        trainer = Trainer(config.resolve(config.merge(opts), ds.sample_shape), ds)
        for _ in range(steps):
            trainer.train_step()
    finally:
        torch.set_num_threads(before)
    return {"generator": trainer.generator.state_dict(), "critic": trainer.critic.state_dict()}


@pytest.mark.slow  # about 30-40 s: two interpreters importing torch, plus the runs
def test_two_processes_agree_and_match_one(tmp_path, cpp_built):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    runs = {
        f"{penalty}-{backend}": options(tmp_path, penalty, backend)
        for penalty in ("gp", "r1")
        for backend in ("torch", "cpp")
    }
    done = torchrun(str(driver), str(tmp_path), json.dumps(runs), str(STEPS), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in runs:
        rank0 = torch.load(tmp_path / f"{name}-rank0.pt", weights_only=True)
        rank1 = torch.load(tmp_path / f"{name}-rank1.pt", weights_only=True)
        for net in ("generator", "critic"):
            for key, value in rank0[net].items():
                assert torch.equal(value, rank1[net][key]), f"{name} {net}.{key} differs by rank"
    # R1 draws nothing at random: 2 ranks on half batches == 1 process on the whole batch.
    for backend in ("torch", "cpp"):
        name = f"r1-{backend}"
        alone = single_process(runs[name], STEPS)
        initial = single_process(runs[name], 0)
        rank0 = torch.load(tmp_path / f"{name}-rank0.pt", weights_only=True)
        # Adam divides by sqrt(v): a gradient near 0 summed in another order can change its
        # update by a few percent of one step (lr 1e-3), hence atol 1e-4 against steps that
        # moved the weights by ~3e-3.
        for net in ("generator", "critic"):
            for key, value in alone[net].items():
                torch.testing.assert_close(rank0[net][key], value, rtol=1e-3, atol=1e-4)
                moved = (value - initial[net][key]).abs().max().item()
                # (The critic's output bias cancels in D(real) - D(fake): it never moves.)
                if key.endswith("weight"):
                    assert moved > 1e-3, f"{name} {net}.{key} barely moved ({moved})"


@pytest.mark.slow
def test_torchrun_fastgp_train_cli(tmp_path):
    run = tmp_path / "run"
    done = torchrun(
        "-m", "fastgp", "train", "--dataset", "8gaussians", "--steps", "4", "--batch-size", "32",
        "--nf", "16", "--nf-g", "16", "--n-critic", "2", "--log-every", "2", "--sample-every",
        "4", "--eval-every", "4", "--checkpoint-every", "2", "--eval-samples", "100",
        "--backend", "torch", "--no-tensorboard", "--no-progress", "--run-dir", str(run),
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("finished 4 steps") == 1  # rank 0 reports, rank 1 is quiet
    state = load_checkpoint(latest_checkpoint(run))
    assert state["world_size"] == 2 and len(state["ranks"]) == 2
    assert json.loads((run / "config.json").read_text())["batch_size"] == 32
    # Resuming with two processes continues from the shared checkpoint.
    done = torchrun("-m", "fastgp", "train", "--resume", str(run), "--steps", "6",
                    "--no-progress", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert load_checkpoint(latest_checkpoint(run))["step"] == 6


# ------------------------------------------------ one process: what nccl needs (fast)


class FakeGroup:
    """torch.distributed's collectives for two identical ranks, recording every call.

    ``all_reduce`` SUM doubles (the other rank holds the same values), MAX keeps,
    ``broadcast`` keeps, ``all_gather_object`` repeats this rank's object.
    """

    def __init__(self, monkeypatch) -> None:
        self.calls: list[tuple[str, torch.device]] = []
        monkeypatch.setattr(dist, "all_reduce", self.all_reduce)
        monkeypatch.setattr(dist, "broadcast", self.broadcast)
        monkeypatch.setattr(dist, "all_gather_object", self.all_gather_object)
        monkeypatch.setattr(dist, "is_initialized", lambda: False)

    def all_reduce(self, t, op=dist.ReduceOp.SUM):
        self.calls.append(("all_reduce", t.device))
        if op == dist.ReduceOp.SUM:
            t.mul_(2)

    def broadcast(self, t, src=0):
        self.calls.append(("broadcast", t.device))

    def all_gather_object(self, out, obj):
        self.calls.append(("all_gather_object", None))
        out[:] = [obj] * len(out)


def two_rank_trainer(tmp_path, **extra) -> Trainer:
    opts = options(tmp_path, "gp")
    opts.update(extra)
    ds = load_dataset(opts["dataset"])
    ctx = DistContext(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"))
    return Trainer(config.resolve(config.merge(opts), ds.sample_shape), ds, ctx)


def test_every_collective_gets_tensors_on_the_context_device(tmp_path, monkeypatch):
    group = FakeGroup(monkeypatch)
    t = two_rank_trainer(tmp_path, generator_norm="batch", replay_size=16)
    t.train_step()
    # What the loop does at a log step and a checkpoint; torch's default device is "meta"
    # meanwhile, so a tensor made without naming the context's device would show up as
    # meta, not as the CPU, in the recorded calls.
    torch.set_default_device("meta")
    try:
        t.train_step()
        assert distributed.any_true(False, t.ctx) is False
        t.check_finite()
        alone = t.means.read()  # this rank's means (a read that resets nothing)
        record = t.read_interval_means()
        t.save_checkpoint()
    finally:
        torch.set_default_device(None)
    tensor_calls = [device for name, device in group.calls if device is not None]
    assert tensor_calls and all(d == t.ctx.device for d in tensor_calls), group.calls
    names = [name for name, _ in group.calls]
    assert "broadcast" in names and "all_gather_object" in names
    # Per generator step: one all-reduce per optimiser step (n_critic = 2, then the
    # generator's), and the generator's batch-norm buffers.
    buffers = sum(b.is_floating_point() for b in t.generator.buffers())
    assert names.count("all_reduce") == 2 * (3 + buffers) + 1 + 1  # + any_true + the means
    # Identical ranks: the mean over ranks is this rank's mean.
    assert record == alone and set(record) >= {"loss_d", "loss_g", "gp", "wdist", "lr_g"}


def test_collectives_refuse_tensors_on_another_device(monkeypatch):
    FakeGroup(monkeypatch)
    ctx = DistContext(rank=0, world_size=2, device=torch.device("meta"))
    with pytest.raises(ValueError, match="on cpu but this process works on meta"):
        distributed.sum_over_ranks(torch.zeros(3), ctx)
    with pytest.raises(ValueError, match="the gradients"):
        layer = torch.nn.Linear(2, 2)
        layer(torch.ones(1, 2)).sum().backward()
        distributed.average_gradients(layer, ctx)


def test_the_nonfinite_record_of_every_rank_is_compared(tmp_path, monkeypatch):
    """Each rank reports its first failure; all ranks stop on the earliest of them."""
    FakeGroup(monkeypatch)
    t = two_rank_trainer(tmp_path)
    t.train_step()
    t.guard.observe(1, [Check("critic gradient", torch.tensor(float("inf")))])  # a late one
    other = Failure(order=1, step=1, quantity="critic loss", value=float("nan"))
    monkeypatch.setattr(
        dist, "all_gather_object", lambda out, obj: out.__setitem__(slice(None), [obj, other])
    )
    with pytest.raises(
        NonFiniteError, match="critic loss is not finite \\(nan\\) in generator step 1"
    ):
        t.check_finite()


class FakeCuda:
    """torch.cuda and torch.distributed for a 2-GPU machine, recording the order of calls."""

    def __init__(self, monkeypatch, devices: int = 2) -> None:
        self.events: list[tuple] = []
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: devices)
        monkeypatch.setattr(
            torch.cuda, "set_device", lambda d: self.events.append(("set_device", torch.device(d)))
        )
        monkeypatch.setattr(dist, "is_available", lambda: True)
        monkeypatch.setattr(dist, "is_initialized", lambda: False)
        monkeypatch.setattr(
            dist,
            "init_process_group",
            lambda backend, rank, world_size: self.events.append(
                ("init", backend, rank, world_size)
            ),
        )


def torchrun_env(monkeypatch, rank: int, local_rank: int, world: int = 2) -> None:
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))


def test_each_rank_takes_its_gpu_before_the_nccl_group_is_created(monkeypatch):
    cuda = FakeCuda(monkeypatch)
    torchrun_env(monkeypatch, rank=3, local_rank=1, world=4)
    ctx = distributed.init_distributed(torch.device("cuda"))
    assert cuda.events == [("set_device", torch.device("cuda", 1)), ("init", "nccl", 3, 4)]
    assert ctx.device == torch.device("cuda", 1) and (ctx.rank, ctx.local_rank) == (3, 1)


def test_gpu_errors_and_the_cpu_path(monkeypatch):
    cuda = FakeCuda(monkeypatch, devices=2)
    torchrun_env(monkeypatch, rank=2, local_rank=2, world=3)
    with pytest.raises(ValueError, match="LOCAL_RANK 2 has no GPU: this machine shows 2"):
        distributed.init_distributed(torch.device("cuda"))
    torchrun_env(monkeypatch, rank=1, local_rank=1)
    with pytest.raises(ValueError, match="--device cuda:0: with 2 processes"):
        distributed.init_distributed(torch.device("cuda:0"))
    assert cuda.events == []  # nothing was set up before the error
    ctx = distributed.init_distributed(torch.device("cpu"))
    assert cuda.events == [("init", "gloo", 1, 2)] and ctx.device == torch.device("cpu")


def test_fastgp_train_device_cuda_puts_each_rank_on_its_gpu(tmp_path, monkeypatch, capsys):
    cuda = FakeCuda(monkeypatch)
    torchrun_env(monkeypatch, rank=1, local_rank=1)
    FakeGroup(monkeypatch)
    monkeypatch.setattr(
        dist, "init_process_group", lambda **kw: cuda.events.append(("init", kw["backend"]))
    )
    seen = {}

    class Stop(Exception):
        pass

    def fake_trainer(cfg, dataset, ctx):
        seen["ctx"] = ctx
        raise Stop

    monkeypatch.setattr(trainer, "Trainer", fake_trainer)
    args = ["--device", "cuda", "--backend", "torch", "--steps", "1", "--no-progress",
            "--run-dir", str(tmp_path / "run")]  # fmt: skip
    with pytest.raises(Stop):
        main_train(args)
    assert cuda.events == [("set_device", torch.device("cuda", 1)), ("init", "nccl")]
    assert seen["ctx"].device == torch.device("cuda", 1) and seen["ctx"].rank == 1
