"""``python -m fastgp.info``: versions, and which backend runs where (and why not)."""

from __future__ import annotations

import platform
import sys

import torch


def backend_report(build: bool = True) -> list[tuple[str, str, str]]:
    """(backend, device, "available" or the reason it is not) for CPU and, if present, CUDA.

    With ``build=False`` the C++ extension is not built just to answer.
    """
    from fastgp.backends import BACKENDS, unavailable_reason

    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    rows = []
    for device in devices:
        for name in BACKENDS:
            if name == "cpp" and device.type == "cpu" and not build:
                rows.append((name, device.type, "not checked (would build the extension)"))
                continue
            try:
                reason = unavailable_reason(name, device, torch.float32)
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"
            rows.append((name, device.type, "available" if reason is None else reason))
    return rows


def auto_choice(device: torch.device) -> str:
    """What ``backend="auto"`` picks for float32 tensors on ``device``."""
    import warnings

    from fastgp.backends import resolve_backend

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return resolve_backend("auto", device, torch.float32)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import os

    import fastgp

    parser = argparse.ArgumentParser(prog="fastgp info", description=__doc__)
    parser.add_argument(
        "--no-build", action="store_true", help="do not build the C++ extension to check it"
    )
    args = parser.parse_args(argv)
    print(f"fastgp {fastgp.__version__}")
    print(f"python {sys.version.split()[0]} ({platform.platform()})")
    print(f"torch {torch.__version__} (threads: {torch.get_num_threads()})")
    try:
        import triton

        print(f"triton {triton.__version__}")
    except ImportError:
        print("triton not installed")
    if torch.cuda.is_available():
        print(f"cuda {torch.version.cuda}: {torch.cuda.get_device_name(0)}")
    else:
        print("cuda: no device")
    print(
        f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '')!s} "
        f"FASTGP_BACKEND={os.environ.get('FASTGP_BACKEND', '')!s} "
        f"FASTGP_CPU_CACHE_MB={os.environ.get('FASTGP_CPU_CACHE_MB', '')!s}"
    )
    print()
    print("backend  device  status")
    for name, device, status in backend_report(build=not args.no_build):
        print(f"{name:<8} {device:<7} {status}")
    from fastgp.backends import cpp

    print()
    print(f"C++ CPU output cache: {cpp.output_cache_setting()}")
    if not args.no_build:
        print()
        for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
            print(f'backend="auto" on {device}: {auto_choice(torch.device(device))}')
    return 0


if __name__ == "__main__":
    sys.exit(main())
