"""Building and loading fleetwm's native CPU kernel (``fused_mlp.cpp`` and ``simd.h``).

Built on first use with the machine's C++ compiler for the machine's own CPU (``-march=native``),
and cached under ``$XDG_CACHE_HOME/fleetwm`` (default ``~/.cache/fleetwm``) by a key of the
sources, the compiler command and the CPU's feature flags, so a home directory shared by machines
with different CPUs never loads a build for another one. No torch headers are involved: a build
takes about a second, and the library is called through ``ctypes``.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Sequence

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("fused_mlp.cpp")
FLAGS = ("-O3", "-march=native", "-std=gnu++17", "-shared", "-fPIC", "-fopenmp")
"""The build: optimised for this CPU; OpenMP shares a call's tiles over torch's thread count."""
ENABLE = "FLEETWM_NATIVE"
"""Environment variable: 0 keeps torch's path everywhere."""

_P, _L, _I = ctypes.c_void_p, ctypes.c_long, ctypes.c_int


class Library:
    """A loaded build: ``mlp``, ``gaussian_step`` and ``normal`` call its C functions; ``vector_width``
    is the multiple its layers' widths are padded to."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lib = ctypes.CDLL(str(path))
        self.vector_width = int(self._lib.fleetwm_vector_width())
        net = [_I, _L, _I, _P, _P, _P, _P, _I, _P, _P, _L]  # the MLP and its inputs
        self.mlp = self._function("fleetwm_mlp", [*net, _P, _I])
        self.gaussian_step = self._function(
            "fleetwm_gaussian_step", [*net, _I, _P, _L, _L, ctypes.c_uint64, _P, _P, _P, _P, _P, _L, _L, _I])
        self.normal = self._function("fleetwm_normal", [_P, _L, ctypes.c_uint64, _I])

    def _function(self, name: str, argtypes: list) -> ctypes._CFuncPtr:
        fn = getattr(self._lib, name)
        fn.argtypes, fn.restype = argtypes, None
        return fn


_status = "not loaded"


def status() -> str:
    """'loaded from PATH', or why the kernel is not used."""
    library()
    return _status


@lru_cache(maxsize=None)
def library() -> Library | None:
    """The kernel for this machine, built if needed; None where there is no compiler, the build
    fails, or ``FLEETWM_NATIVE=0`` is set (callers then keep torch's path; the reason is logged once)."""
    global _status
    if os.environ.get(ENABLE, "1") == "0":
        _status = f"disabled by {ENABLE}=0"
        return None
    threads = ""
    try:
        try:
            path = build(FLAGS)
        except RuntimeError as exc:
            if "openmp" not in str(exc).lower() and "omp" not in str(exc).lower():
                raise
            path = build(tuple(f for f in FLAGS if f != "-fopenmp"))  # e.g. clang on macOS: one thread per call
            threads = " (without OpenMP: one thread per call)"
        lib = Library(path)
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        _status = f"unavailable: {exc}"
        log.warning("fleetwm native kernel %s; planning uses torch's path", _status)
        return None
    _status = f"loaded from {path}{threads}"
    return lib


def build(flags: Sequence[str]) -> Path:
    """The kernel built with ``flags`` (cached; see the module docstring). Raises RuntimeError if it cannot be."""
    compiler = shlex.split(os.environ.get("CXX", "")) or [c for c in (shutil.which("g++") or shutil.which("c++"),) if c]
    if not compiler:
        raise RuntimeError("no C++ compiler (g++ or c++) on PATH")
    command = [*compiler, *flags]
    sources = "".join(p.read_text() for p in sorted([*SOURCE.parent.glob("*.cpp"), *SOURCE.parent.glob("*.h")]))
    key = hashlib.sha256("\0".join([sources, *command, platform.machine(), _cpu_flags()]).encode())
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fleetwm"
    path = cache / f"fused_mlp-{key.hexdigest()[:16]}.so"
    if path.exists():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    # Built beside its final name and renamed into place: concurrent builders never load half a file.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache)
    os.close(fd)
    try:
        done = subprocess.run([*command, "-o", tmp, str(SOURCE)], capture_output=True, text=True, timeout=300)
        if done.returncode:
            raise RuntimeError(f"{' '.join(command)} failed: {done.stderr.strip()[-2000:]}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _cpu_flags() -> str:
    """The CPU's feature flags (Linux), which decide what ``-march=native`` emits."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return platform.processor()
