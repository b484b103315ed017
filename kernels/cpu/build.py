"""Compile the CPU kernels (selective_scan.cc, depthwise_conv.cc, simd.h) into one library
once per machine, and register their handlers with XLA.

The shared library is built on first use with the machine's C++ compiler (`$CXX`, else g++,
else c++/clang++), `-O3 -march=native`, against the XLA FFI headers that ship with jaxlib
(`jax.ffi.include_dir()`), and cached under `$NANODNA_KERNEL_CACHE` (default
`~/.cache/nanodna/kernels`) by a hash of the sources, the flags, the compiler, jax's version and
the CPU (model and feature flags); a second process finds it there. Writes go to a temporary
name and are renamed into place, so parallel test workers never load a half-written file.

`load()` returns the ctypes library, or None when no compiler works (then `error()` says why
in one line, and a warning says it once): nanodna then runs the pure-JAX scan
(nanodna/ops/scan_vjp.py) and XLA's convolution instead.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings

import jax

HERE = pathlib.Path(__file__).parent
SOURCES = [HERE / "selective_scan.cc", HERE / "depthwise_conv.cc"]  # one library
HEADERS = [HERE / "simd.h"]
# Handler symbols in the sources -> XLA FFI target names.
TARGETS = {
    "NanodnaScanFwdF32": "nanodna_scan_fwd_f32",
    "NanodnaScanFwdF64": "nanodna_scan_fwd_f64",
    "NanodnaScanGatedFwdF32": "nanodna_scan_gated_fwd_f32",
    "NanodnaScanGatedFwdResF32": "nanodna_scan_gated_fwd_res_f32",
    "NanodnaScanGatedBwdF32": "nanodna_scan_gated_bwd_f32",
    "NanodnaScanBwdF32": "nanodna_scan_bwd_f32",
    "NanodnaScanBwdF64": "nanodna_scan_bwd_f64",
    "NanodnaConvSiluBidirectionalF32": "nanodna_conv_silu_bidirectional_f32",
    "NanodnaConvSiluBidirectionalBwdF32": "nanodna_conv_silu_bidirectional_bwd_f32",
}
# The float32 vector paths put 8 or 16 adjacent channels in one vector: the channel counts
# the fused kernels (the gated scan, the conv pair) take must divide by this.
CHANNEL_MULTIPLE = 16
BASE_FLAGS = ["-O3", "-std=c++17", "-shared", "-fPIC", "-fno-math-errno", "-pthread"]
ARCH_FLAGS = [["-march=native"], ["-mcpu=native"], []]  # first that compiles wins

_state: dict = {}


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


def _cpu_id() -> str:
    """What -march=native compiles for: the CPU model and its feature flags on Linux (so that a
    cache in a home directory shared by different cluster nodes never hands a node code for
    another CPU), platform.processor() elsewhere."""
    try:
        lines = pathlib.Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    keep = [ln for ln in lines if ln.startswith(("model name", "flags", "Features", "CPU part"))]
    return "\n".join(dict.fromkeys(keep))  # one copy of each distinct line


def cache_dir() -> pathlib.Path:
    default = pathlib.Path.home() / ".cache" / "nanodna" / "kernels"
    return pathlib.Path(os.environ.get("NANODNA_KERNEL_CACHE", default))


def _build() -> pathlib.Path:
    """The path of the compiled library; RuntimeError (one line) if it cannot be built."""
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set CXX, or install g++ or clang++)")
    source = b"\0".join(p.read_bytes() for p in SOURCES + HEADERS)
    include = jax.ffi.include_dir()
    errors = []
    for arch in ARCH_FLAGS:
        flags = BASE_FLAGS + arch
        key = hashlib.sha256(b"\0".join([source, " ".join(flags).encode(), cxx.encode(),
                                         jax.__version__.encode(), platform.machine().encode(),
                                         _cpu_id().encode()])).hexdigest()[:16]
        out = cache_dir() / f"nanodna_cpu_{key}.so"
        if out.exists():
            return out
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
        os.close(fd)
        cmd = [cxx, *flags, f"-I{include}", *map(str, SOURCES), "-o", tmp]
        print(f"nanodna: building the CPU kernels into {out.parent} (once, ~10-40 s)",
              file=sys.stderr, flush=True)
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode == 0:
            os.replace(tmp, out)
            return out
        os.unlink(tmp)
        errors.append(done.stderr.strip().splitlines()[-1:] or ["?"])
    raise RuntimeError(f"{cxx} could not build {', '.join(p.name for p in SOURCES)}: "
                       f"{errors[0][0]}")


def load():
    """The registered kernel library (ctypes.CDLL), or None if it could not be built."""
    if "lib" not in _state:
        try:
            lib = ctypes.CDLL(str(_build()))
            for symbol, target in TARGETS.items():
                jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)),
                                            platform="cpu")
            _state["lib"], _state["error"] = lib, None
        except (OSError, RuntimeError) as e:
            _state["lib"], _state["error"] = None, str(e)
            warnings.warn(f"nanodna: the CPU scan kernel is unavailable ({e}); the selective "
                          "scan runs as XLA loops instead (slower)", stacklevel=2)
    return _state["lib"]


def available() -> bool:
    """True when the CPU kernel is built and registered (building it on the first call)."""
    return load() is not None


def error() -> str | None:
    """Why the kernel is unavailable (one line), or None."""
    load()
    return _state["error"]
