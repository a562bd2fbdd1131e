"""What machine a benchmark ran on, and the file names its results are written under."""

from __future__ import annotations

import datetime
import os
import platform
import re
import socket

import torch


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (Linux), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown-cpu"


def gpu_name(device: torch.device) -> str | None:
    """The CUDA device name, or None for a CPU run."""
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_name(device)


def machine_info(device: torch.device, threads: int) -> dict[str, object]:
    """Everything that identifies a run: host, CPU, GPU, threads, versions, date (UTC)."""
    import fastgp

    return {
        "hostname": socket.gethostname(),
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "gpu": gpu_name(device),
        "device": device.type,
        "threads": threads,
        "torch": torch.__version__,
        "fastgp": fastgp.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        # Other processes on a shared machine distort timings; the load says how busy it was.
        "loadavg_1m_start": round(os.getloadavg()[0], 2),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def sanitize(text: str) -> str:
    """Lower-case ``text`` with every run of non-alphanumerics replaced by one ``-``."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def result_stem(info: dict[str, object]) -> str:
    """File stem naming a run, e.g. ``myhost_amd-epyc_cpu_2t_torch-2-13-0_2026-11-25``.

    Host and CPU (or GPU) model, device, thread count, torch version and the UTC date, so
    results from different machines and settings never overwrite each other.
    """
    hardware = info["gpu"] if info["gpu"] else info["cpu_model"]
    parts = [
        sanitize(str(info["hostname"]))[:40],
        sanitize(str(hardware))[:40],
        str(info["device"]),
        f"{info['threads']}t",
        "torch-" + sanitize(str(info["torch"]).split("+")[0]),
        str(info["date_utc"])[:10],
    ]
    return "_".join(parts)


def nvidia_driver_version() -> str | None:
    """The NVIDIA driver version (``nvidia-smi``, e.g. ``580.159.04``), or None without one."""
    import subprocess

    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    return lines[0] if lines else None


def triton_version() -> str | None:
    """Triton's version, or None when it is not installed."""
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def gpu_info(device: torch.device) -> dict[str, object]:
    """GPU, driver, CUDA and Triton versions (the GPU's properties are None off CUDA)."""
    info: dict[str, object] = {
        "cuda": torch.version.cuda,
        "driver": nvidia_driver_version(),
        "triton": triton_version(),
        "gpu_count": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "gpu_capability": None,
        "gpu_multiprocessors": None,
        "gpu_memory_bytes": None,
        "gpu_l2_bytes": None,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu_capability=f"{props.major}.{props.minor}",
            gpu_multiprocessors=props.multi_processor_count,
            gpu_memory_bytes=props.total_memory,
            gpu_l2_bytes=getattr(props, "L2_cache_size", None),
        )
    return info
