"""C++ backend: CPU kernels from ``csrc/``, built with ninja on first use and cached.

The kernels register themselves as the CPU implementations of the ``torch.ops.fastgp``
operators (schemas in ``fastgp.ops``). Nothing is built at import: ``load()`` (called by
``availability()`` on first use, or by ``fastgp build``) builds the extension, or loads an
earlier build from the cache directory, and remembers the outcome for the process, so a
failed build is reported once and never retried on every call.

Cache: ``$FASTGP_CACHE_DIR`` (default ``~/.cache/fastgp``) /
``torch<version>-py<major><minor>/cpp-<hash>``, where the hash covers the C++ sources, the
compiler command and the flags; a build whose library is already there is loaded without
invoking the compiler or ninja, and without a word.

Several processes at once (torchrun ranks, pytest-xdist workers): the library only ever
appears under its final name complete, renamed into place (``os.replace``) from a private
build directory, so no process loads a half-written file. A process that finds no library
takes an exclusive ``fcntl.flock`` on ``build.lock`` (the kernel drops it if the holder
dies, so a killed build leaves no stale lock) and, holding it, looks again: the library a
process it waited for built is loaded; the failure that process recorded in
``build-failed.txt`` is raised as it was written, so every waiting process reports the same
reason instead of one rank falling back alone; otherwise it builds, printing one line. A
failure recorded before a process started waiting is not reused: a later run tries again.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from fastgp.backends.errors import BackendUnavailable

__all__ = [
    "availability",
    "build_info",
    "cpu_cache_limit_from_environment",
    "describe_output_cache_limit",
    "empty_output_cache",
    "load",
    "output_cache_info",
    "output_cache_setting",
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
LOCK_NAME = "build.lock"
FAILURE_NAME = "build-failed.txt"
# Private build directories (one per attempt) start with this; any left over belonged to an
# attempt that died, since only the holder of the lock builds.
PRIVATE_BUILD_PREFIX = "tmp-build-"
# What the build line promises: `fastgp build` into an empty FASTGP_CACHE_DIR took 36.6 s
# (24.6 s of CPU) on this project's loaded 2-core VM; one translation unit, so more cores do
# not shorten it.
BUILD_SECONDS = 40
CPU_CACHE_VARIABLE = "FASTGP_CPU_CACHE_MB"
_MIB = 1 << 20

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


def _compile(sources: Path, directory: Path) -> None:
    """Build the library in a private directory under ``directory``, load it, and rename it
    to its final name there; raise ``BackendUnavailable`` with the compiler's output."""
    from torch.utils.cpp_extension import load as load_extension

    private = Path(tempfile.mkdtemp(prefix=PRIVATE_BUILD_PREFIX, dir=directory))
    try:
        built = load_extension(
            name=EXTENSION_NAME,
            sources=[str(sources / SOURCES[0])],
            extra_cflags=list(CFLAGS),
            extra_ldflags=list(LDFLAGS),
            extra_include_paths=[str(sources)],
            build_directory=str(private),
            is_python_module=False,
            verbose=False,
        )
        # The loaded file keeps its inode through the rename: this process and every later
        # one run the same library.
        os.replace(built, _library_path(directory))
    except (RuntimeError, OSError, ValueError) as exc:
        text = str(exc).strip()
        tail = "\n".join(text.splitlines()[-25:])
        raise BackendUnavailable(
            f"building fastgp's C++ extension in {directory} failed with compiler "
            f"{compiler()!r}:\n{tail}\nFix the compiler setup (CXX, g++ installed, torch "
            "headers present), or use backend='torch'"
        ) from exc
    finally:
        shutil.rmtree(private, ignore_errors=True)


def _stamp(path: Path) -> tuple[int, int] | None:
    """Identity of the file at ``path`` (inode, modification time), or None if absent."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def _write_atomically(path: Path, text: str) -> None:
    with tempfile.NamedTemporaryFile(
        "w", dir=path.parent, prefix=f".{path.name}.", delete=False, encoding="utf-8"
    ) as f:
        f.write(text)
    os.replace(f.name, path)


def _build_or_wait(sources: Path, directory: Path) -> str:
    """Load the library, building it first unless another process does; see the module
    docstring for the protocol. Returns ``"built"`` or ``"cached"`` (built by another
    process while this one waited)."""
    import fcntl  # POSIX only; imported here so that this module imports everywhere

    library = _library_path(directory)
    failure = directory / FAILURE_NAME
    directory.mkdir(parents=True, exist_ok=True)
    seen_failure = _stamp(failure)
    with open(directory / LOCK_NAME, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(
                f"fastgp: waiting for another process building the C++ CPU kernels in "
                f"{directory} ...",
                file=sys.stderr,
                flush=True,
            )
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if library.is_file():
                torch.ops.load_library(str(library))
                return "cached"
            current_failure = _stamp(failure)
            if current_failure is not None and current_failure != seen_failure:
                raise BackendUnavailable(failure.read_text(encoding="utf-8"))
            failure.unlink(missing_ok=True)
            for leftover in directory.glob(f"{PRIVATE_BUILD_PREFIX}*"):
                shutil.rmtree(leftover, ignore_errors=True)
            _check_tools()
            print(
                f"fastgp: building the C++ CPU kernels in {directory} (one-off for these "
                f"sources, about {BUILD_SECONDS} s) ...",
                file=sys.stderr,
                flush=True,
            )
            try:
                _compile(sources, directory)
            except BackendUnavailable as exc:
                _write_atomically(failure, str(exc))
                raise
            return "built"
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def cpu_cache_limit_from_environment() -> int:
    """Bytes the CPU output cache may hold, from ``$FASTGP_CPU_CACHE_MB`` (MiB; unset, empty
    or 0: the cache is off). Raises ``BackendUnavailable`` naming the variable if the value
    is not a whole number >= 0."""
    text = os.environ.get(CPU_CACHE_VARIABLE, "").strip()
    if not text:
        return 0
    if not (text.isascii() and text.isdigit()):
        raise BackendUnavailable(
            f"${CPU_CACHE_VARIABLE} must be a whole number of MiB >= 0 (N > 0 turns fastgp's "
            f"CPU output cache on with an N MiB limit; 0 or unset: off), got {text!r}"
        )
    return int(text) * _MIB


def load() -> dict[str, str]:
    """Build (or load the cached build of) the C++ extension once per process.

    Returns ``build_info()``. Raises ``BackendUnavailable`` with what failed and how to fix
    it; the failure is remembered and raised again without rebuilding.
    """
    global _loaded, _failure
    if _loaded is not None:
        return build_info()
    if _failure is not None:
        raise BackendUnavailable(_failure)
    import fastgp.ops  # noqa: F401  (the schemas the library implements must exist first)

    try:
        cache_limit = cpu_cache_limit_from_environment()
        sources = csrc_dir()
        directory = build_dir(sources)
        library = _library_path(directory)
        start = time.perf_counter()
        if library.is_file():
            torch.ops.load_library(str(library))
            status = "cached"
        else:
            status = _build_or_wait(sources, directory)
        seconds = time.perf_counter() - start
        torch.ops.fastgp_cpp.set_output_cache_limit(cache_limit)
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
        "status": status,
        "seconds": f"{seconds:.2f}",
        "debug_poison": str(bool(torch.ops.fastgp_cpp.debug_poison())),
    }
    return build_info()


def availability() -> str | None:
    """None if the C++ kernels can run (building them on first call), else why not."""
    try:
        load()
    except BackendUnavailable as exc:
        return str(exc)
    return None


def build_info() -> dict[str, str]:
    """Where the loaded extension lives, how it was obtained, and the output cache's
    setting now (``cpu_output_cache``, see ``output_cache_setting``); after ``load()``."""
    if _loaded is None:
        raise BackendUnavailable(
            _failure or "fastgp's C++ extension is not loaded yet; call fastgp.backends.cpp.load()"
        )
    return {**_loaded, "cpu_output_cache": output_cache_setting()}


def describe_output_cache_limit(limit_bytes: int) -> str:
    """``"off"`` for 0, else ``"on, limit N MiB"``: how fastgp words the cache's setting."""
    return "off" if limit_bytes == 0 else f"on, limit {limit_bytes / _MIB:g} MiB"


def output_cache_setting() -> str:
    """``"off"`` or ``"on, limit N MiB"``: the loaded extension's output cache now, else what
    ``$FASTGP_CPU_CACHE_MB`` will set when it loads (or why that value is refused)."""
    if _loaded is not None:
        return describe_output_cache_limit(int(torch.ops.fastgp_cpp.output_cache_limit()))
    try:
        return describe_output_cache_limit(cpu_cache_limit_from_environment())
    except BackendUnavailable as exc:
        return str(exc)


def output_cache_info() -> dict[str, int]:
    """The C++ kernels' cache of large output buffers (``csrc/fastgp_output_cache.h``).

    ``cached_bytes``: free buffers held now; ``limit_bytes``: the most it may hold (0: off,
    the default; ``$FASTGP_CPU_CACHE_MB`` sets it when the extension loads,
    ``set_output_cache_limit`` later); ``requests``: allocations served through the cache
    so far; ``min_bytes``: the smallest output it serves; ``max_idle_requests``: a free
    buffer not reused within this many later requests is returned to the system.
    """
    load()
    ops = torch.ops.fastgp_cpp
    return {
        "cached_bytes": int(ops.output_cache_bytes()),
        "limit_bytes": int(ops.output_cache_limit()),
        "requests": int(ops.output_cache_requests()),
        "min_bytes": int(ops.output_cache_min_bytes()),
        "max_idle_requests": int(ops.output_cache_max_idle_requests()),
    }


def set_output_cache_limit(limit_bytes: int) -> None:
    """Hold at most ``limit_bytes`` of free output buffers (0 turns the cache off); the
    oldest buffers above the new limit are returned to the system at once."""
    load()
    torch.ops.fastgp_cpp.set_output_cache_limit(int(limit_bytes))


def empty_output_cache() -> None:
    """Return every free output buffer to the system (buffers of live tensors are kept)."""
    load()
    torch.ops.fastgp_cpp.empty_output_cache()
