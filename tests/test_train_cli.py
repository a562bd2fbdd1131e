"""``fastgp train|sample|eval``: parsing, errors before any work, the run directory, and
the sample / eval commands on tiny toy and image runs."""

from __future__ import annotations

import argparse
import json
import typing
from pathlib import Path

import numpy as np
import pytest
import torch

from fastgp.cli import main as fastgp_main
from fastgp.train import config
from fastgp.train.cli import main_eval, main_sample, main_train
from fastgp.train.run.run_log import read_metrics


def tiny_toy(run_dir: Path, *extra: str) -> list[str]:
    """A toy run of a few steps that takes about a second."""
    return [
        "--dataset", "8gaussians", "--steps", "4", "--batch-size", "32", "--nf", "16",
        "--nf-g", "16",
        "--n-critic", "2", "--log-every", "2", "--sample-every", "4", "--eval-every", "4",
        "--checkpoint-every", "2", "--eval-samples", "200", "--backend", "torch",
        "--no-tensorboard", "--no-progress", "--run-dir", str(run_dir), *extra,
    ]  # fmt: skip


def tiny_images(run_dir: Path, *extra: str) -> list[str]:
    """A 28x28 procedural-shapes run with the DCGAN 28 pair, two steps (later flags in
    ``extra`` override these: argparse keeps the last value)."""
    return [
        "--dataset", "shapes", "--image-size", "28", "--channels", "1", "--steps", "2",
        "--batch-size", "8", "--nf", "8", "--z-dim", "16", "--n-critic", "1",
        "--log-every", "1", "--sample-every", "2", "--eval-every", "2",
        "--checkpoint-every", "2", "--eval-samples", "16", "--backend", "torch",
        "--no-tensorboard", "--no-progress", "--run-dir", str(run_dir), *extra,
    ]  # fmt: skip


def test_training_flushes_denormals_and_leaves_the_setting_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastgp.train.cli import denormals_flushed
    from fastgp.train.run import loop

    seen = []
    run_training = loop.run_training

    def spy(trainer, **kwargs):
        seen.append(denormals_flushed())
        return run_training(trainer, **kwargs)

    monkeypatch.setattr(loop, "run_training", spy)
    torch.set_flush_denormal(False)
    assert main_train(tiny_toy(tmp_path / "run", "--compile", "off")) == 0
    assert seen == [True] and not denormals_flushed()
    torch.set_flush_denormal(True)
    try:
        assert main_train(tiny_toy(tmp_path / "again", "--compile", "off")) == 0
        assert denormals_flushed()
    finally:
        torch.set_flush_denormal(False)


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main_train(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for name in config.FIELD_NAMES:
        assert "--" + name.replace("_", "-") in text, name
    assert "--config" in text


def test_top_level_command_dispatches(tmp_path, capsys):
    assert fastgp_main(["train", *tiny_toy(tmp_path / "run", "--steps", "2")]) == 0
    assert "finished 2 steps" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--steps", "-1"], "--steps"),
        (["--lr-g", "0"], "--lr-g"),
        (["--beta1", "1.5"], "--beta1"),
        (["--ema", "1.0"], "--ema"),
        (["--diffaug", "translation"], "--diffaug"),
        (["--diffaug", "rotate"], "--diffaug"),
        (["--image-size", "28"], "--image-size"),
        (["--dataset", "mnist"], "--data-dir"),
        (["--batch-size", "0"], "--batch-size"),
        (["--log-every", "0"], "--log-every"),
        (
            ["--device", "cuda:7"] if not torch.cuda.is_available() else ["--device", "tpu"],
            "device",
        ),
    ],
)
def test_bad_values_fail_before_any_work(tmp_path, capsys, args, needle):
    run_dir = tmp_path / "run"
    assert main_train(["--run-dir", str(run_dir), "--no-progress", *args]) == 2
    err = capsys.readouterr().err
    assert needle in err
    assert not run_dir.exists()


def test_unknown_choice_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main_train(["--dataset", "cifar10"])
    assert exit_info.value.code == 2
    assert "--dataset" in capsys.readouterr().err


def test_missing_data_dir_names_the_path(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    code = main_train(["--dataset", "folder", "--data-dir", str(missing), "--no-progress"])
    assert code == 2
    assert "nowhere" in capsys.readouterr().err


def test_config_file_then_flags(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('dataset = "swissroll"\nsteps = 7\nlr-g = 0.002\n')
    files, flags = config.parse_args(["--config", str(toml), "--steps", "9"])
    cfg = config.merge(files, flags)
    assert (cfg.dataset, cfg.steps, cfg.lr_g) == ("swissroll", 9, 0.002)
    js = tmp_path / "c.json"
    js.write_text(json.dumps({"n_critic": 3, "bogus": 1}))
    with pytest.raises(config.ConfigError, match="bogus"):
        config.parse_args(["--config", str(js)])


def test_resolve_fills_every_auto_field():
    toy = config.resolve(config.merge({"run_dir": "x"}), (2,))
    optional = config.RESUMABLE_FIELDS | {"data_dir", "image_size", "channels"}
    assert all(v is not None for k, v in toy.to_dict().items() if k not in optional)
    assert (toy.arch, toy.penalty, toy.n_critic, toy.optimizer) == ("mlp", "gp", 2, "adam")
    images = config.resolve(config.merge({"dataset": "shapes", "run_dir": "x"}), (3, 32, 32))
    assert (images.arch, images.weight, images.beta1, images.lr_g) == ("dcgan32", 10.0, 0.0, 1e-4)
    clip = config.resolve(config.merge({"objective": "wgan-clip", "run_dir": "x"}), (2,))
    assert (clip.optimizer, clip.lr_d, clip.penalty) == ("rmsprop", 5e-5, "none")


@pytest.mark.parametrize(
    ("shape", "arch"),
    [((1, 28, 28), "dcgan28"), ((3, 32, 32), "dcgan32"), ((3, 64, 64), "dcgan64")],
)
def test_quick_preset_takes_the_architectures_recipe_and_flags_win(shape, arch):
    quick = config.QUICK_IMAGE_PRESET[arch]
    cfg = config.resolve(
        config.merge({"dataset": "shapes", "preset": "quick", "run_dir": "x"}), shape
    )
    assert cfg.arch == arch and cfg.preset == "quick"
    assert all(getattr(cfg, key) == value for key, value in quick.items())
    assert cfg.steps == config.QUICK_STEPS[arch][cfg.n_critic]
    # What the quick recipe leaves open comes from the image preset, given flags win.
    assert cfg.ema_start == cfg.steps // 2
    if "weight" not in quick:
        assert cfg.weight == config.IMAGE_PRESET["weight"]
    flags = config.resolve(
        config.merge({"dataset": "shapes", "preset": "quick", "steps": 7, "nf": 8, "run_dir": "x"}),
        shape,
    )
    assert (flags.steps, flags.nf) == (7, 8)
    default = config.resolve(config.merge({"dataset": "shapes", "run_dir": "x"}), shape)
    assert default.steps == config.IMAGE_PRESET["steps"] != cfg.steps
    assert default.objective == "wgan-gp"


def _quick_dcgan28(**flags):
    return config.resolve(
        config.merge({"dataset": "shapes", "preset": "quick", "run_dir": "x", **flags}),
        (1, 28, 28),
    )


def test_quick_dcgan28_recipe_is_hinge_with_r1_and_its_wasserstein_recipe_stays_measured():
    cfg = _quick_dcgan28()
    assert (cfg.objective, cfg.penalty, cfg.weight, cfg.n_critic) == ("hinge", "r1", 3.0, 1)
    assert (cfg.steps, cfg.lazy_reg, cfg.batch_size) == (15000, 4, 32)
    # Another objective takes its own penalty, weight, critic steps and their step count.
    wgan = _quick_dcgan28(objective="wgan-gp")
    assert (wgan.penalty, wgan.weight, wgan.n_critic, wgan.steps) == ("gp", 10.0, 5, 5000)
    assert (wgan.lazy_reg, wgan.batch_size, wgan.nf) == (4, 32, 16)
    lsgan = _quick_dcgan28(objective="lsgan")
    assert (lsgan.penalty, lsgan.weight, lsgan.n_critic, lsgan.steps) == ("none", 10.0, 1, 15000)
    # Another penalty with the recipe's objective takes that penalty's usual weight.
    assert _quick_dcgan28(penalty="gp").weight == config.IMAGE_PRESET["weight"]
    assert _quick_dcgan28(penalty="r1", weight=0.5).weight == 0.5


@pytest.mark.parametrize(
    ("n_critic", "steps"), [(1, 15000), (2, 5000), (5, 5000), (10, 2500), (7, 5000 * 5 // 7)]
)
def test_quick_steps_take_the_nearest_measured_critic_count_at_or_above(n_critic, steps):
    assert config.quick_steps("dcgan28", n_critic) == steps
    assert _quick_dcgan28(n_critic=n_critic).steps == steps


def test_quick_preset_keeps_the_toy_recipe():
    quick = config.resolve(config.merge({"preset": "quick", "run_dir": "x"}), (2,))
    default = config.resolve(config.merge({"run_dir": "x"}), (2,))
    assert {**quick.to_dict(), "preset": "default"} == default.to_dict()


def test_toy_run_directory_contents(tmp_path, capsys):
    run = tmp_path / "run"
    assert main_train(tiny_toy(run)) == 0
    out = capsys.readouterr().out
    assert "finished 4 steps" in out and "modes_covered" in out
    saved = json.loads((run / "config.json").read_text())
    assert saved["dataset"] == "8gaussians" and saved["arch"] == "mlp"
    assert saved["penalty"] == "gp" and saved["weight"] == 1.0
    records = read_metrics(run / "metrics.jsonl")
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [2, 4]
    for key in ("loss_d", "loss_g", "wdist", "gp", "grad_norm_mean", "grad_norm_std", "lr_g",
                "lr_d", "samples_per_s", "time"):  # fmt: skip
        assert all(np.isfinite(r[key]) for r in train), key
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [4]
    for key in ("modes_covered", "hq_fraction", "reverse_kl", "wasserstein1"):
        assert key in evals[0]
    assert json.loads((run / "eval.json").read_text())["step"] == 4
    assert (run / "samples" / "step-00000004.png").stat().st_size > 1000
    assert (run / "loss_curves.png").stat().st_size > 1000
    steps = sorted(p.name for p in (run / "checkpoints").glob("step-*.pt"))
    assert steps == ["step-00000002.pt", "step-00000004.pt"]


def test_keep_last_prunes_checkpoints(tmp_path):
    run = tmp_path / "run"
    assert main_train(tiny_toy(run, "--checkpoint-every", "1", "--keep-last", "2")) == 0
    steps = sorted(p.name for p in (run / "checkpoints").glob("step-*.pt"))
    assert steps == ["step-00000003.pt", "step-00000004.pt"]


def test_sample_and_eval_toy(tmp_path, capsys):
    run = tmp_path / "run"
    assert main_train(tiny_toy(run)) == 0
    capsys.readouterr()
    for suffix in (".npy", ".npz", ".pt", ".png"):
        out = tmp_path / f"s{suffix}"
        assert main_sample([str(run), "--num", "50", "--out", str(out)]) == 0
        assert out.stat().st_size > 0
    assert np.load(tmp_path / "s.npy").shape == (50, 2)
    assert np.load(tmp_path / "s.npz")["samples"].shape == (50, 2)
    pt = torch.load(tmp_path / "s.pt", weights_only=True)
    assert torch.equal(pt, torch.from_numpy(np.load(tmp_path / "s.npy")))
    capsys.readouterr()
    assert main_eval([str(run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    logged = json.loads((run / "eval.json").read_text())
    # Same weights, same seed: eval repeats the evaluation the trainer logged.
    for key in ("modes_covered", "hq_fraction", "reverse_kl", "wasserstein1"):
        assert result[key] == pytest.approx(logged[key], rel=1e-9, abs=1e-12), key
    assert main_eval([str(run / "checkpoints" / "step-00000002.pt")]) == 0
    text = capsys.readouterr().out
    assert "step: 2" in text and "modes_covered:" in text


def test_sample_and_eval_errors(tmp_path, capsys):
    assert main_sample([str(tmp_path), "--out", str(tmp_path / "x.png")]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    run = tmp_path / "run"
    assert main_train(tiny_toy(run, "--steps", "2", "--ema", "0")) == 0
    assert main_sample([str(run), "--out", str(tmp_path / "x.gif")]) == 2
    assert "--out" in capsys.readouterr().err
    assert main_sample([str(run), "--out", str(tmp_path / "x.npy"), "--ema"]) == 2
    assert "EMA" in capsys.readouterr().err
    assert main_eval([str(tmp_path / "missing")]) == 2


def test_image_run_sample_and_eval(tmp_path, capsys):
    run = tmp_path / "run"
    assert main_train(tiny_images(run)) == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["arch"] == "dcgan28" and saved["generator_norm"] == "batch"
    assert (run / "samples" / "step-00000002.png").is_file()
    out = tmp_path / "grid.png"
    assert main_sample([str(run), "--num", "9", "--out", str(out)]) == 0
    from PIL import Image

    # 3 x 3 grid of 28 x 28 with 2-pixel padding.
    assert Image.open(out).size == (3 * 30 + 2, 3 * 30 + 2)
    capsys.readouterr()
    assert main_eval([str(run), "--json", "--num", "16"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert np.isfinite(result["critic_wasserstein"])


def write_idx_images(path: Path, images: np.ndarray) -> None:
    """An IDX3 uint8 file (magic 0x00000803, big-endian sizes), gzipped if ``.gz``."""
    import gzip
    import struct

    header = struct.pack(">IIII", 0x803, *images.shape)
    data = header + images.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


@pytest.mark.parametrize("kind", ["mnist", "folder", "npz"])
def test_trains_on_user_data(tmp_path, kind, capsys):
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    extra: list[str] = []
    if kind == "mnist":  # torchvision's layout: ROOT/MNIST/raw/*-ubyte.gz
        raw = data / "MNIST" / "raw"
        write_idx_images(raw / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (20, 28, 28)))
        write_idx_images(raw / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (10, 28, 28)))
        arch = "dcgan28"
    elif kind == "folder":  # RGB images of another size, resized/cropped to 32
        from PIL import Image

        data.mkdir()
        for i in range(6):
            pixels = rng.integers(0, 256, (40, 48, 3)).astype(np.uint8)
            Image.fromarray(pixels).save(data / f"{i}.png")
        extra, arch = ["--image-size", "32"], "dcgan32"
    else:
        data.mkdir()
        np.savez(data / "images.npz", x=rng.integers(0, 256, (12, 1, 28, 28)).astype(np.uint8))
        arch = "dcgan28"
    run = tmp_path / "run"
    args = tiny_images(run, "--data-dir", str(data), "--dataset", kind, "--steps", "1", *extra)
    if kind != "folder":
        args += ["--image-size", "28"]
    assert main_train(args) == 0, capsys.readouterr().err
    saved = json.loads((run / "config.json").read_text())
    assert saved["arch"] == arch and saved["dataset"] == kind
    assert (run / "samples" / "step-00000001.png").is_file()


def test_the_option_table_has_one_row_per_field_of_the_declared_type():
    hints = typing.get_type_hints(config.TrainConfig)
    assert tuple(config.OPTIONS) == config.FIELD_NAMES
    defaults = config.TrainConfig().to_dict()
    for name, option in config.OPTIONS.items():
        hint = hints[name]
        allowed = typing.get_args(hint) or (hint,)
        assert option.kind in allowed, (name, option.kind, hint)
        assert (type(None) in allowed) == (defaults[name] is None), name  # None = auto
        default = defaults[name]
        if default is not None:
            assert type(default) is option.kind, name
            if option.choices:
                assert default in option.choices, name
        assert option.interval in ("[]", "[)", "(]", "()"), name
    assert config.RESUMABLE_FIELDS == {
        "steps", "device", "backend", "compile", "threads", "log_every", "sample_every",
        "checkpoint_every", "eval_every", "eval_samples", "fid", "inception_weights",
        "keep_last", "progress", "tensorboard", "run_dir", "resume",
    }  # fmt: skip


def test_the_parser_is_built_from_the_table():
    actions = {a.dest: a for a in config.build_parser()._actions}
    for name, option in config.OPTIONS.items():
        action = actions[name]
        assert action.option_strings == [
            config.flag(name),
            *([f"--no-{name}".replace("_", "-")] if option.kind is bool else []),
        ]
        if option.kind is bool:
            assert isinstance(action, argparse.BooleanOptionalAction), name
        else:
            assert action.choices == option.choices, name
            assert action.type.__name__ == option.kind.__name__, name
            if option.kind is not str:
                assert action.type("auto") is None and action.type("none") is None, name


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"progress": "no"}, "--progress must be true or false, got 'no'"),
        ({"spectral_norm": 1}, "--spectral-norm must be true or false, got 1"),
        ({"clip": None}, "--clip must be a number in (0.0, inf), got None"),
        ({"device": 3}, "--device must be a string, got 3"),
        ({"seed": 1.5}, "--seed must be an integer, got 1.5"),
        ({"steps": True}, "--steps must be an integer >= 0, got True"),
        ({"nf": 0}, "--nf must be an integer >= 1, got 0"),
        ({"lr_decay_rate": 0.0}, "--lr-decay-rate must be a number in (0.0, 1.0], got 0.0"),
        ({"replay_prob": 1.5}, "--replay-prob must be a number in [0.0, 1.0], got 1.5"),
        ({"amp": "fp8"}, "--amp must be one of none, bf16, fp16; got 'fp8'"),
        ({"critic_norm": None}, "--critic-norm must be one of none, layer, instance; got None"),
        ({"channels": 2}, "--channels must be 1 or 3, got 2"),
    ],
)
def test_checks_read_the_table(values, message):
    with pytest.raises(config.ConfigError) as error:
        config.check(config.merge(values))
    assert str(error.value) == message


def test_generator_layers_are_for_the_mlp():
    with pytest.raises(config.ConfigError, match="--g-layers applies to --arch mlp"):
        config.resolve(
            config.merge({"dataset": "shapes", "g_layers": 4, "run_dir": "x"}), (3, 32, 32)
        )
    assert (
        config.resolve(config.merge({"dataset": "shapes", "run_dir": "x"}), (3, 32, 32)).g_layers
        == 3
    )
