"""The trainer's configuration: one dataclass, its option table, its files and its checks.

* ``schema``: ``TrainConfig`` (every option of ``fastgp train`` with its default; None
  means "auto") and ``ConfigError``;
* ``options``: the option table (type, help, choices, range, resumable) and the argparse
  parser built from it;
* ``files``: ``--config FILE`` (TOML/JSON), ``config.json`` of a run, merging the layers,
  what a resumed run may change;
* ``checks``: every value against its row of the table, then the cross-option rules;
* ``presets``: the toy and image presets and ``resolve`` (auto -> concrete values).
"""

from fastgp.train.config.checks import check
from fastgp.train.config.files import (
    CONFIG_FILE,
    load,
    merge,
    parse_args,
    read_config_file,
    resume_conflicts,
    save,
)
from fastgp.train.config.options import OPTIONS, RESUMABLE_FIELDS, Option, build_parser
from fastgp.train.config.presets import (
    IMAGE_PRESET,
    QUICK_IMAGE_PRESET,
    QUICK_STEPS,
    TOY_PRESET,
    quick_steps,
    resolve,
)
from fastgp.train.config.schema import FIELD_NAMES, ConfigError, TrainConfig, flag
from fastgp.train.data import is_toy

__all__ = [
    "CONFIG_FILE",
    "FIELD_NAMES",
    "IMAGE_PRESET",
    "OPTIONS",
    "QUICK_IMAGE_PRESET",
    "QUICK_STEPS",
    "RESUMABLE_FIELDS",
    "TOY_PRESET",
    "ConfigError",
    "Option",
    "TrainConfig",
    "build_parser",
    "check",
    "flag",
    "is_toy",
    "load",
    "merge",
    "parse_args",
    "quick_steps",
    "read_config_file",
    "resolve",
    "resume_conflicts",
    "save",
]
