"""Where options come from besides the defaults, and how the layers are merged.

Precedence, lowest first: the defaults, ``--config FILE`` (TOML or JSON with the same
names as the fields), the saved ``config.json`` of a run being resumed, the flags given on
the command line. ``config.json`` in a run directory always holds the resolved config.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fastgp.train.config.options import RESUMABLE_FIELDS, build_parser
from fastgp.train.config.schema import FIELD_NAMES, ConfigError, TrainConfig, flag

CONFIG_FILE = "config.json"


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Options from a TOML (``.toml``) or JSON file; unknown names are an error."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config: file {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                raise ConfigError(
                    f"--config {path}: TOML needs Python 3.11+; use a JSON file"
                ) from None
            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"--config {path}: cannot parse it: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a table/object of options")
    data = {k.replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(data) - set(FIELD_NAMES))
    if unknown:
        raise ConfigError(f"--config {path}: unknown options {unknown}")
    return data


def parse_args(argv: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(file_options, flag_options)`` from the command line; argparse exits on bad input."""
    namespace = vars(build_parser().parse_args(argv))
    config_file = namespace.pop("config", None)
    file_options = read_config_file(config_file) if config_file else {}
    return file_options, namespace


def merge(*layers: dict[str, Any]) -> TrainConfig:
    """A TrainConfig from the defaults overridden by each layer in turn."""
    values = TrainConfig().to_dict()
    for layer in layers:
        values.update(layer)
    return TrainConfig(**values)


def save(cfg: TrainConfig, run_dir: str | os.PathLike) -> Path:
    """Write ``run_dir/config.json`` atomically; returns its path."""
    from fastgp.train.run.checkpoint import atomic_write

    text = json.dumps(cfg.to_dict(), indent=2, sort_keys=True).encode() + b"\n"
    return atomic_write(Path(run_dir) / CONFIG_FILE, lambda f: f.write(text))


def load(run_dir: str | os.PathLike) -> TrainConfig:
    """The TrainConfig saved in ``run_dir/config.json``."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a run directory: it has no {CONFIG_FILE}")
    data = json.loads(path.read_text())
    unknown = sorted(set(data) - set(FIELD_NAMES))
    if unknown:
        raise ConfigError(f"{path}: unknown options {unknown} (written by another version?)")
    return merge(data)


def resume_conflicts(saved: TrainConfig, requested: dict[str, Any]) -> list[str]:
    """Options in ``requested`` that differ from the saved run's and may not change."""
    saved_values = saved.to_dict()
    return [
        f"{flag(k)}: run has {saved_values[k]!r}, requested {v!r}"
        for k, v in sorted(requested.items())
        if k not in RESUMABLE_FIELDS and v is not None and v != saved_values[k]
    ]
