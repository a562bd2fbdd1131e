"""Entry points of ``fastgp train``, ``fastgp sample`` and ``fastgp eval``.

Each takes the arguments after the command and returns the process exit code:
0 done, 2 bad arguments or data (reported before any training), 3 training stopped on a
NaN/inf, 130 interrupted by Ctrl-C (after saving a checkpoint).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_USAGE, EXIT_NONFINITE, EXIT_INTERRUPTED = 0, 2, 3, 130


def _error(prog: str, message: str) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"--device {name!r} is not a torch device: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return device


def _starting_config(requested: dict[str, Any]):
    """``(config, resuming)``: a fresh config from the requested options, or the saved
    config of the run being resumed with the options that may change applied."""
    from fastgp.train import config
    from fastgp.train.run.checkpoint import latest_checkpoint

    resume, run_dir = requested.get("resume"), requested.get("run_dir")
    if resume and run_dir and Path(resume).resolve() != Path(run_dir).resolve():
        raise config.ConfigError(
            f"--resume {resume} and --run-dir {run_dir} name different directories"
        )
    target = resume or run_dir
    has_checkpoint = bool(target) and latest_checkpoint(target) is not None
    if resume and not has_checkpoint:
        raise config.ConfigError(f"--resume {resume}: no checkpoint to resume in that directory")
    if not has_checkpoint:
        return config.merge(requested), False
    saved = config.load(target)
    conflicts = config.resume_conflicts(saved, requested)
    if conflicts:
        raise config.ConfigError(
            f"cannot resume {target} with different settings:\n  "
            + "\n  ".join(conflicts)
            + "\n(start a new run with another --run-dir to change them)"
        )
    changes = {k: v for k, v in requested.items() if k in config.RESUMABLE_FIELDS and v is not None}
    return config.merge(saved.to_dict(), changes, {"run_dir": target, "resume": None}), True


def main_train(argv: list[str]) -> int:
    """``fastgp train [--config FILE] [--option value ...]``; see ``--help``."""
    prog = "fastgp train"
    from fastgp.train import config

    try:
        file_options, flags = config.parse_args(argv)
        cfg, resuming = _starting_config({**file_options, **flags})
        config.check(cfg)
        device = _resolve_device(cfg.device)
    except (config.ConfigError, ValueError) as e:
        return _error(prog, str(e))

    import torch

    threads_before = torch.get_num_threads()
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    flushed_before = denormals_flushed()
    try:
        return _train(prog, cfg, device, resuming)
    finally:  # main_train may run inside another program (tests): leave torch as it was
        torch.set_num_threads(threads_before)
        torch.use_deterministic_algorithms(deterministic_before)
        torch.set_flush_denormal(flushed_before)


def denormals_flushed() -> bool:
    """Whether this thread's CPU arithmetic flushes float32 denormals to zero (torch can set
    it, ``torch.set_flush_denormal``, but not read it back)."""
    import torch

    return torch.tensor([1e-40], dtype=torch.float32).mul(1.0).item() == 0.0


def _train(prog: str, cfg, device, resuming: bool) -> int:
    import torch

    from fastgp.backends import BackendUnavailable, resolve_backend
    from fastgp.train import config
    from fastgp.train.data import load_dataset_of
    from fastgp.train.run import distributed
    from fastgp.train.run.checkpoint import latest_checkpoint, load_checkpoint
    from fastgp.train.run.loop import run_training
    from fastgp.train.run.trainer import Trainer

    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    try:
        resolve_backend(cfg.backend, device, torch.float32)
        dataset = load_dataset_of(cfg)
        cfg = config.resolve(cfg, dataset.sample_shape)
    except (BackendUnavailable, config.ConfigError, ValueError, FileNotFoundError) as e:
        return _error(prog, str(e))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    # Denormal floats (below 1.2e-38) cost the CPU a microcode assist per operation: late
    # in the default toy run a quarter of the generator's Adam second moments are denormal
    # (gradients of dead units decay at beta2 = 0.9 per step), and a generator step took
    # 22.4 ms eager / 18.3 ms compiled with them against 17.3 / 14.5 flushed to zero
    # (`python -m benchmarks.step_profile --from-run RUN --denormals flushed,kept`, README
    # "Benchmarks"). Values that small change no update. torch sets it for this thread;
    # intra-op threads started after it inherit it.
    torch.set_flush_denormal(True)

    try:  # under torchrun: join the group, each process on its own device
        ctx = distributed.init_distributed(device)
    except ValueError as e:
        return _error(prog, str(e))
    try:
        if ctx.enabled:
            # Rank 0's auto run directory (its timestamp) is everyone's.
            cfg = config.merge(
                cfg.to_dict(), {"run_dir": distributed.gather_objects(cfg.run_dir, ctx)[0]}
            )
        if ctx.is_main:
            Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
            config.save(cfg, cfg.run_dir)
        try:
            trainer = Trainer(cfg, dataset, ctx)
        except ValueError as e:  # an option that cannot run as asked (e.g. --compile)
            return _error(prog, str(e))
        if resuming:
            path = latest_checkpoint(cfg.run_dir) if ctx.is_main else None
            path = distributed.gather_objects(str(path) if path else None, ctx)[0]
            trainer.load_state_dict(load_checkpoint(path))
        if ctx.is_main:
            _print_header(cfg, trainer, dataset, ctx.device, resuming, ctx.world_size)
        outcome = run_training(trainer, resumed=resuming)
        if ctx.is_main:
            stream = sys.stdout if outcome.status == "finished" else sys.stderr
            print(outcome.message, file=stream)
            if outcome.evaluation:
                print(_eval_line(outcome.evaluation), file=stream)
        return outcome.exit_code
    finally:
        distributed.shutdown(ctx)


def _print_header(cfg, trainer, dataset, device, resuming: bool, world: int) -> None:
    from fastgp.train.models import count_parameters

    what = f"resuming at step {trainer.step}" if resuming else "new run"
    print(
        f"fastgp train: {what} in {cfg.run_dir}\n"
        f"  data {dataset.name} {tuple(dataset.sample_shape)}, arch {cfg.arch}"
        f"{f' packing {cfg.pac}' if cfg.pac > 1 else ''} "
        f"(G {count_parameters(trainer.generator):,} / D {count_parameters(trainer.critic):,} "
        f"params), {cfg.objective} + {cfg.penalty} (weight {cfg.weight}), n_critic "
        f"{cfg.n_critic}\n  {cfg.steps} steps, batch {cfg.batch_size}, lr {cfg.lr_g}/{cfg.lr_d} "
        f"{cfg.lr_schedule}, ema {cfg.ema}, device {device}, backend {cfg.backend}, "
        f"{world} process(es)\n  compile: {trainer.compile_mode} ({trainer.compile_reason})",
        flush=True,
    )


def _eval_line(evaluation: dict[str, Any]) -> str:
    keys = (
        "modes_covered",
        "num_modes",
        "hq_fraction",
        "reverse_kl",
        "wasserstein1",
        "class_coverage",
        "confident_class_coverage",
        "class_kl",
        "confident_fraction",
        "real_confident_fraction",
        "classifier_fd",
        "class_metrics",
    )
    shown = {k: evaluation[k] for k in keys if k in evaluation}
    if "modes_covered" in shown and "num_modes" in shown:
        shown["modes_covered"] = f"{shown.pop('modes_covered')}/{shown.pop('num_modes')}"
    parts = [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items()]
    return f"eval at step {evaluation.get('step')}: " + (", ".join(parts) or json.dumps(evaluation))


def main_sample(argv: list[str]) -> int:
    """``fastgp sample RUN_DIR_OR_CHECKPOINT --num N --out FILE``."""
    prog = "fastgp sample"
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Draw samples from a trained run's generator (its EMA copy by default).",
    )
    parser.add_argument("run", help="run directory (newest checkpoint) or a checkpoint file")
    parser.add_argument("--num", type=int, default=64, help="number of samples (default: 64)")
    parser.add_argument(
        "--out",
        required=True,
        help="output file: .png (image grid / toy scatter), .npy, .npz (key 'samples'), .pt",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise (default: 0)")
    parser.add_argument(
        "--ema",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="use the EMA generator (default: when the run has one)",
    )
    args = parser.parse_args(argv)
    from fastgp.train.evaluation.sampling import build_networks, draw, load_run, write_samples
    from fastgp.train.run.checkpoint import CheckpointError

    try:
        if Path(args.out).suffix.lower() not in (".png", ".npy", ".npz", ".pt"):
            raise ValueError(f"--out must end in .png, .npy, .npz or .pt; got {args.out!r}")
        run = load_run(args.run)
        generator, _ = build_networks(run, ema=args.ema)
        samples = draw(generator, args.num, args.seed)
        path = write_samples(args.out, samples, run)
    except (ValueError, FileNotFoundError, CheckpointError) as e:
        return _error(prog, str(e))
    print(f"wrote {samples.shape[0]} samples {tuple(samples.shape[1:])} to {path}")
    return EXIT_OK


def main_eval(argv: list[str]) -> int:
    """``fastgp eval RUN_DIR_OR_CHECKPOINT [--num N] [--fid] [--json]``."""
    prog = "fastgp eval"
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Evaluate a trained run: toy sets: modes covered, high-quality fraction, "
        "reverse KL, exact W1 (2,500 samples); images: the critic's Wasserstein estimate on "
        "held-out data and pixel statistics; labelled images (MNIST with its labels file, "
        "stacked-mnist): class coverage, class KL, classifier confidence and Fréchet distance "
        "from a classifier trained once on the run's labelled files (cached in "
        "RUN/classifier/); with --fid, FID/KID through torch-fidelity and local Inception "
        "weights.",
    )
    parser.add_argument("run", help="run directory (newest checkpoint) or a checkpoint file")
    parser.add_argument(
        "--num",
        type=int,
        default=None,
        help="samples (default: 26000 stacked-mnist, 10000 other labelled images, else the "
        "run's --eval-samples)",
    )
    parser.add_argument("--seed", type=int, default=None, help="noise seed (default: the run's)")
    parser.add_argument(
        "--ema",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="evaluate the EMA generator (default: when the run has one)",
    )
    parser.add_argument(
        "--fid",
        action="store_true",
        help="also FID and KID (torch-fidelity: pip install 'fastgp[fidelity]'; image runs)",
    )
    parser.add_argument(
        "--inception-weights",
        metavar="PATH",
        default=None,
        help="torch-fidelity's Inception weights file (weights-inception-2015-12-05-6726825d"
        ".pth) for --fid (default: $FASTGP_INCEPTION_WEIGHTS, else torch hub's cache); never "
        "downloaded",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    args = parser.parse_args(argv)
    from fastgp.train.evaluation.fidelity import FidelityUnavailable
    from fastgp.train.evaluation.sampling import evaluate_run, format_metrics, load_run
    from fastgp.train.run.checkpoint import CheckpointError
    from fastgp.train.run.run_log import jsonable

    try:
        if args.inception_weights is not None and not args.fid:
            raise ValueError("--inception-weights is for --fid; add --fid")
        run = load_run(args.run)
        if args.fid and len(run.sample_shape) != 3:
            raise ValueError("--fid needs an image run; this run's samples are points")
        result = evaluate_run(
            run,
            num=args.num,
            seed=args.seed,
            ema=args.ema,
            fidelity=args.fid,
            inception_weights=args.inception_weights,
        )
    except (ValueError, FileNotFoundError, CheckpointError, FidelityUnavailable) as e:
        return _error(prog, str(e))
    if args.json:
        print(json.dumps(jsonable(result)))
    else:
        print(format_metrics(result))
        print(json.dumps(jsonable(result)))
    return EXIT_OK
