"""The ``fastgp`` command: ``info`` says which backend runs where and why not; ``--help``."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fastgp import cli


def _fastgp_script() -> str:
    """The installed ``fastgp`` console script (next to this Python, else on PATH).

    Skips when fastgp is not installed at all (run from the source tree with
    ``PYTHONPATH=.``, as on the GPU machine, where nothing can be pip-installed): there is no
    console script then by construction. Installed without the script fails.
    """
    try:
        importlib.metadata.distribution("fastgp")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("fastgp runs from the source tree (not pip-installed): no console script")
    local = Path(sys.executable).with_name("fastgp")
    found = str(local) if local.is_file() else shutil.which("fastgp")
    if found is None:
        pytest.fail("the `fastgp` console script is not installed (pip install -e .)")
    return found


def _run(args: list[str], **env_changes: str | None) -> str:
    env = dict(os.environ)
    for key, value in env_changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _status(output: str) -> dict[tuple[str, str], str]:
    """(backend, device) -> status text from the table `fastgp info` prints."""
    rows = {}
    for line in output.splitlines():
        match = re.match(r"^(triton|cpp|torch)\s+(cpu|cuda)\s+(.+)$", line)
        if match:
            rows[(match[1], match[2])] = match[3].strip()
    return rows


def test_fastgp_info_lists_every_backend(cpp_built):
    out = _run([_fastgp_script(), "info"], TRITON_INTERPRET=None, FASTGP_BACKEND=None)
    assert re.search(r"^fastgp \d+\.\d+", out, re.M)
    assert re.search(r"^torch \S+", out, re.M)
    status = _status(out)
    assert set(status) >= {("triton", "cpu"), ("cpp", "cpu"), ("torch", "cpu")}, out
    assert status[("cpp", "cpu")] == "available"
    assert status[("torch", "cpu")] == "available"
    # Without the interpreter Triton cannot run CPU tensors, and says why.
    assert "TRITON_INTERPRET=1" in status[("triton", "cpu")]
    assert 'backend="auto" on cpu: cpp' in out


def test_python_m_fastgp_info_without_building():
    out = _run(
        [sys.executable, "-m", "fastgp.info", "--no-build"],
        TRITON_INTERPRET="1",
        FASTGP_BACKEND=None,
    )
    status = _status(out)
    assert status[("triton", "cpu")] == "available"
    assert status[("cpp", "cpu")].startswith("not checked")
    assert status[("torch", "cpu")] == "available"
    assert "TRITON_INTERPRET=1" in out


def test_fastgp_help():
    out = _run([_fastgp_script(), "--help"])
    assert out.startswith("usage: fastgp COMMAND")
    for command in ("train", "sample", "eval", "info", "build"):
        assert re.search(rf"^\s+{command}\s+\S", out, re.M), f"{command} missing from --help"


def test_unknown_command_exits_2(capsys):
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err
