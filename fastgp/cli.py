"""The ``fastgp`` command: ``train``, ``sample``, ``eval``, ``info``, ``build``."""

from __future__ import annotations

import sys

USAGE = """usage: fastgp COMMAND [ARGS]

commands:
  train    train a GAN with WGAN-GP (or another objective); `fastgp train --help`
  sample   draw samples from a trained run: fastgp sample RUN_DIR --num N --out FILE
  eval     print a run's metrics (text and JSON): fastgp eval RUN_DIR
  info     versions, and which backends run on which device (and why not)
  build    build the C++ extension now and say where it lives
"""


def build(argv: list[str]) -> int:
    """Build (or find the cached build of) the C++ extension."""
    import argparse

    argparse.ArgumentParser(prog="fastgp build", description=build.__doc__).parse_args(argv)
    import fastgp  # noqa: F401  (defines the op schemas the extension implements)
    from fastgp.backends import BackendUnavailable, cpp

    try:
        cpp.load()
    except BackendUnavailable as exc:
        print(f"fastgp build failed: {exc}", file=sys.stderr)
        return 1
    for key, value in cpp.build_info().items():
        print(f"{key}: {value}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command == "info":
        from fastgp.info import main as info_main

        return info_main(rest)
    if command == "build":
        return build(rest)
    if command in ("train", "sample", "eval"):
        from fastgp.train import cli as train_cli

        return getattr(train_cli, f"main_{command}")(rest)
    print(f"fastgp: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
