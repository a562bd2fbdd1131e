"""C++ backend: CPU kernels from ``csrc/``, built with ninja on first use and cached.

The kernels register themselves as the CPU implementations of the ``torch.ops.fastgp``
operators (schemas in ``fastgp.ops``). Nothing is built at import: ``load()`` (called by
``availability()`` on first use, or by ``fastgp build``) builds the extension, or loads an
earlier build from the cache directory, and remembers the outcome for the process, so a
failed build is reported once and never retried on every call.

Cache: ``$FASTGP_CACHE_DIR`` (default ``~/.cache/fastgp``) /
``torch<version>-py<major><minor>/cpp-<hash>``, where the hash covers the C++ sources, the
compiler command and the flags; a build whose library is already there is loaded without
invoking the compiler or ninja.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import time
from pathlib import Path

import torch
from torch import Tensor

from fastgp.backends.errors import BackendUnavailable

__all__ = [
    "availability",
    "build_info",
    "empty_output_cache",
    "interpolate",
    "interpolate_backward",
    "load",
    "output_cache_info",
    "penalty_backward",
    "penalty_forward",
    "set_output_cache_limit",
]

EXTENSION_NAME = "fastgp_cpp_ops"
SOURCES = ("fastgp_ops.cpp", "fastgp_checks.h", "fastgp_kernels.h", "fastgp_output_cache.h")
# -O3 with the baseline ISA of the target (no -march=native: a cached build may be shared
# by machines of one architecture). -ffp-contract=off keeps `a * x + b * y` as two rounded
# products and a sum, as eager PyTorch computes it. -fopenmp makes at::parallel_for use
# PyTorch's OpenMP runtime (libgomp.so.1, already loaded by libtorch_cpu).
CFLAGS = ("-O3", "-ffp-contract=off", "-fopenmp", "-Wall", "-Wextra", "-Wno-unused-parameter")
LDFLAGS = ("-fopenmp",)
# A `lock` file (torch's FileBaton) older than this is left over from an interrupted build.
STALE_LOCK_SECONDS = 300.0
_LOCK_POLL_SECONDS = 0.5

_loaded: dict[str, str] | None = None
_failure: str | None = None


def csrc_dir() -> Path:
    """The C++ sources: ``fastgp/csrc`` in a wheel, ``<repo>/csrc`` in a source checkout."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "csrc", package.parent / "csrc"):
        if (candidate / SOURCES[0]).is_file():
            return candidate
    raise BackendUnavailable(
        f"fastgp's C++ sources are missing (looked for {SOURCES[0]} in {package / 'csrc'} and "
        f"{package.parent / 'csrc'}); reinstall fastgp"
    )


def compiler() -> str:
    """The C++ compiler torch's extension builder will run (``$CXX``, default ``c++``)."""
    return os.environ.get("CXX", "c++")


def cache_root() -> Path:
    root = os.environ.get("FASTGP_CACHE_DIR")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "fastgp"


def build_dir(sources: Path) -> Path:
    """The build directory for these sources, this torch, Python, compiler and flags."""
    digest = hashlib.sha256()
    for name in SOURCES:
        digest.update(name.encode())
        digest.update((sources / name).read_bytes())
    digest.update(repr((compiler(), CFLAGS, LDFLAGS)).encode())
    version = f"torch{torch.__version__}-py{sys.version_info.major}{sys.version_info.minor}"
    return cache_root() / version / f"cpp-{digest.hexdigest()[:16]}"


def _library_path(directory: Path) -> Path:
    return directory / f"{EXTENSION_NAME}.so"


def _clear_stale_lock(directory: Path) -> None:
    """Wait for a running build's lock to go away; remove one left by an interrupted build.

    torch's builder waits forever on an existing ``lock`` file. A lock younger than
    ``STALE_LOCK_SECONDS`` may belong to a build in another process, so it is waited for
    until it disappears or grows stale; a stale one is removed with a message.
    """
    lock = directory / "lock"
    while True:
        try:
            age = time.time() - lock.stat().st_mtime
        except FileNotFoundError:
            return
        if age > STALE_LOCK_SECONDS:
            print(
                f"fastgp: removing stale build lock {lock} ({age:.0f} s old, left by an "
                "interrupted build)",
                file=sys.stderr,
            )
            lock.unlink(missing_ok=True)
            return
        time.sleep(_LOCK_POLL_SECONDS)


def _check_tools() -> None:
    """Fail early, with a fix, when the compiler or ninja is missing."""
    cxx = compiler()
    if shutil.which(cxx) is None:
        raise BackendUnavailable(
            f"C++ compiler {cxx!r} not found (from $CXX, default 'c++'); install g++ or clang++ "
            "(e.g. `apt-get install g++`) or point CXX at a working compiler"
        )
    from torch.utils.cpp_extension import is_ninja_available

    if not is_ninja_available():
        raise BackendUnavailable(
            "ninja not found, needed to build fastgp's C++ extension; `pip install ninja`"
        )


def _build(sources: Path, directory: Path) -> None:
    from torch.utils.cpp_extension import load as load_extension

    _check_tools()
    directory.mkdir(parents=True, exist_ok=True)
    _clear_stale_lock(directory)
    try:
        load_extension(
            name=EXTENSION_NAME,
            sources=[str(sources / SOURCES[0])],
            extra_cflags=list(CFLAGS),
            extra_ldflags=list(LDFLAGS),
            extra_include_paths=[str(sources)],
            build_directory=str(directory),
            is_python_module=False,
            verbose=False,
        )
    except (RuntimeError, OSError, ValueError) as exc:
        text = str(exc).strip()
        tail = "\n".join(text.splitlines()[-25:])
        raise BackendUnavailable(
            f"building fastgp's C++ extension in {directory} failed with compiler "
            f"{compiler()!r}:\n{tail}\nFix the compiler setup (CXX, g++ installed, torch "
            "headers present), or use backend='torch'"
        ) from exc


def load() -> dict[str, str]:
    """Build (or load the cached build of) the C++ extension once per process.

    Returns ``build_info()``. Raises ``BackendUnavailable`` with what failed and how to fix
    it; the failure is remembered and raised again without rebuilding.
    """
    global _loaded, _failure
    if _loaded is not None:
        return _loaded
    if _failure is not None:
        raise BackendUnavailable(_failure)
    import fastgp.ops  # noqa: F401  (the schemas the library implements must exist first)

    try:
        sources = csrc_dir()
        directory = build_dir(sources)
        library = _library_path(directory)
        start = time.perf_counter()
        fresh = not library.is_file()
        if fresh:
            _build(sources, directory)
        else:
            torch.ops.load_library(str(library))
        seconds = time.perf_counter() - start
    except BackendUnavailable as exc:
        _failure = str(exc)
        raise
    except Exception as exc:  # any other surprise is also cached, never retried per call
        _failure = f"loading fastgp's C++ extension failed: {type(exc).__name__}: {exc}"
        raise BackendUnavailable(_failure) from exc
    _loaded = {
        "library": str(library),
        "build_dir": str(directory),
        "sources": str(sources),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "compiler": compiler(),
        "cflags": " ".join(CFLAGS),
        "status": "built" if fresh else "cached",
        "seconds": f"{seconds:.2f}",
        "debug_poison": str(bool(torch.ops.fastgp_cpp.debug_poison())),
        "output_cache_limit_mb": str(int(torch.ops.fastgp_cpp.output_cache_limit()) >> 20),
    }
    return _loaded


def availability() -> str | None:
    """None if the C++ kernels can run (building them on first call), else why not."""
    try:
        load()
    except BackendUnavailable as exc:
        return str(exc)
    return None


def build_info() -> dict[str, str]:
    """Where the loaded extension lives and how it was obtained (after ``load()``)."""
    if _loaded is None:
        raise BackendUnavailable(
            _failure or "fastgp's C++ extension is not loaded yet; call fastgp.backends.cpp.load()"
        )
    return dict(_loaded)


def output_cache_info() -> dict[str, int]:
    """The C++ kernels' cache of large output buffers (``csrc/fastgp_output_cache.h``):
    ``cached_bytes`` (free buffers held now) and ``limit_bytes`` (0: cache off). Set the
    limit with ``$FASTGP_CPU_CACHE_MB`` before the extension loads (default 1024), or with
    ``set_output_cache_limit``."""
    load()
    ops = torch.ops.fastgp_cpp
    return {
        "cached_bytes": int(ops.output_cache_bytes()),
        "limit_bytes": int(ops.output_cache_limit()),
    }


def set_output_cache_limit(limit_bytes: int) -> None:
    """Hold at most ``limit_bytes`` of free output buffers (0 turns the cache off); buffers
    above the new limit are returned to the system at once."""
    load()
    torch.ops.fastgp_cpp.set_output_cache_limit(int(limit_bytes))


def empty_output_cache() -> None:
    """Return every free output buffer to the system (buffers of live tensors are kept)."""
    load()
    torch.ops.fastgp_cpp.empty_output_cache()


def interpolate(real: Tensor, fake: Tensor, alpha: Tensor) -> Tensor:
    """See ``fastgp.backends.reference.interpolate``."""
    load()
    return torch.ops.fastgp.interpolate.default(real, fake, alpha)


def interpolate_backward(
    grad_out: Tensor, alpha: Tensor, need_real: bool, need_fake: bool
) -> list[Tensor]:
    """See ``fastgp.backends.reference.interpolate_backward``."""
    load()
    return torch.ops.fastgp.interpolate_backward.default(grad_out, alpha, need_real, need_fake)


def penalty_forward(
    grads: list[Tensor],
    inv_scale: float,
    lambda_gp: float,
    center: float,
    one_sided: bool,
    pac: int,
) -> tuple[Tensor, Tensor]:
    """See ``fastgp.backends.reference.penalty_forward``."""
    load()
    return torch.ops.fastgp.penalty_forward.default(
        list(grads), inv_scale, lambda_gp, center, one_sided, pac
    )


def penalty_backward(
    grad_penalty: Tensor,
    grads: list[Tensor],
    norms: Tensor,
    inv_scale: float,
    lambda_gp: float,
    center: float,
    one_sided: bool,
    pac: int,
) -> list[Tensor]:
    """See ``fastgp.backends.reference.penalty_backward``."""
    load()
    return torch.ops.fastgp.penalty_backward.default(
        grad_penalty, list(grads), norms, inv_scale, lambda_gp, center, one_sided, pac
    )
