"""Two versions of the CPU scan kernel's inner loops, timed against each other in one process.

    python benchmarks/bench_kernel_ab.py --a 8e01d2b            # b: this checkout's files
    python benchmarks/bench_kernel_ab.py --a 8e01d2b --b HEAD --repeats 40

Why: on the shared 2-core VMs this project runs on, the same step drifts 20-50% within minutes
(BENCHMARKS.md), more than most kernel changes are worth. Here versions a and b of
kernels/cpu/selective_scan.cc (with its simd.h) are compiled into one binary
(benchmarks/kernel_ab/), and each repeat runs every function once per version, alternating
which goes first; the minimum over repeats is kept. Functions, on one PlantCAD l20 row (L 512,
D 768, N 16, both directions, one thread): the scan forward, the scan backward on contiguous
buffers, and the gated block's forward and backward. It also prints how far a's and b's
outputs differ. The versions must share the kernel's internal functions that
benchmarks/kernel_ab/impl.cc calls.

--a / --b: a git revision (its kernels/cpu files, via `git show`) or `worktree` (the files on
disk). Needs the C++ compiler the kernel build uses and jax's FFI headers.
"""

from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys
import tempfile

import jax

from kernels.cpu import build
from kernels.cpu.selective_scan import CHUNK

ROOT = pathlib.Path(__file__).resolve().parents[1]
HERE = pathlib.Path(__file__).resolve().parent / "kernel_ab"
# The scan kernel and the headers the build compiles it with (kernels/cpu/build.py).
FILES = [str(f.resolve().relative_to(ROOT)) for f in [build.SOURCES[0], *build.HEADERS]]


def checkout(version: str, into: pathlib.Path) -> pathlib.Path:
    """Write version's kernel files into `into`; the path of its selective_scan.cc."""
    into.mkdir(parents=True)
    for f in FILES:
        if version == "worktree":
            text = (ROOT / f).read_bytes()
        else:
            done = subprocess.run(["git", "-C", str(ROOT), "show", f"{version}:{f}"],
                                  capture_output=True)
            if done.returncode:
                sys.exit(f"error: git cannot show {f} at {version!r}: "
                         f"{done.stderr.decode().strip()}")
            text = done.stdout
        (into / pathlib.Path(f).name).write_bytes(text)
    return into / "selective_scan.cc"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--a", required=True, help="git revision, or 'worktree'")
    p.add_argument("--b", default="worktree", help="git revision, or 'worktree' (default)")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--length", type=int, default=512, help="L of the row")
    p.add_argument("--chunk", type=int, default=CHUNK,
                   help="steps per chunk of the gated backward's replay")
    args = p.parse_args()
    cxx = build._compiler()
    if cxx is None:
        sys.exit("error: no C++ compiler found (set CXX, or install g++ or clang++)")
    flags = [f for f in build.BASE_FLAGS if f not in ("-shared", "-fPIC")] + ["-march=native",
                                                                               "-w"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        objects = []
        for prefix, version in (("a", args.a), ("b", args.b)):
            src = checkout(version, tmp / prefix)
            obj = tmp / f"{prefix}.o"
            subprocess.run([cxx, *flags, f"-I{jax.ffi.include_dir()}", f"-I{src.parent}",
                            f"-I{HERE}", f'-DKERNEL_SRC="{src}"', f"-DPREFIX={prefix}", "-c",
                            str(HERE / "impl.cc"), "-o", str(obj)], check=True)
            objects.append(str(obj))
        exe = tmp / "kernel_ab"
        # Both objects define the kernel's FFI handler symbols; none is called here.
        subprocess.run([cxx, *flags, f"-I{HERE}", str(HERE / "main.cc"), *objects,
                        "-Wl,--allow-multiple-definition", "-o", str(exe)], check=True)
        print(f"a = {args.a}, b = {args.b}")
        subprocess.run([str(exe), str(args.repeats), str(args.length), str(args.chunk)],
                       check=True)


if __name__ == "__main__":
    main()
