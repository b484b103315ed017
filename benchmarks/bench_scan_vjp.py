"""Bidirectional selective scan, forward+backward: autodiff (chunked_seq) vs the hand-written
backwards (chunked_vjp in XLA, and the fused C++ kernel "cpu" in kernels/cpu when it builds),
side by side in one process.

    python benchmarks/bench_scan_vjp.py                        # l20 layer and demo shapes
    python benchmarks/bench_scan_vjp.py --shape l20 --chunks 32 64 --repeats 7

Shapes: l20 = one PlantCAD l20 layer (B 8, L 512, D 768, N 16); demo = one caduceus_tiny layer
of configs/demo_caduceus.py (batch 32 folded to 64 strands by RCPS, L 128, D 128, N 16).
Calls are interleaved (one of each impl per round) so load changes hit both alike; the table
gives medians over rounds and the ratio of medians, for wall time and for this process's CPU
time (the steadier figure when other jobs share the cores). Compilation is excluded (one
warm-up call per function).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp

from kernels import cpu as cpu_kernel
from nanodna.ops import scan
from nanodna.ops.scan import selective_scan_bidirectional

SHAPES = {"l20": (8, 512, 768, 16), "demo": (64, 128, 128, 16)}  # B, L, D, N


def make_inputs(key, Bsz, L, Dch, N):
    ks = jax.random.split(key, 8)
    return {
        "u": jax.random.normal(ks[0], (2, Bsz, L, Dch)),
        "delta": jax.random.normal(ks[1], (2, Bsz, L, Dch)) * 0.5 - 1.0,
        "A": -jnp.exp(jax.random.normal(ks[2], (2, Dch, N)) * 0.5),
        "B": jax.random.normal(ks[3], (2, Bsz, L, N)),
        "C": jax.random.normal(ks[4], (2, Bsz, L, N)),
        "D": jax.random.normal(ks[5], (2, Dch)),
        "z": jax.random.normal(ks[6], (Bsz, L, Dch)),
        "delta_bias": 0.3 * jax.random.normal(ks[7], (2, Dch)),
    }


def fwd_bwd(impl: str, chunk: int):
    """jit(grad of sum(y * w)) wrt every input; `chunk` is read when the function is traced."""
    def loss(x, w):
        y = selective_scan_bidirectional(**x, delta_softplus=True, impl=impl)
        return jnp.sum(y * w)

    grad = jax.jit(jax.grad(loss))

    def run(x, w):
        saved, scan.DEFAULT_CHUNK = scan.DEFAULT_CHUNK, chunk
        try:
            return grad(x, w)
        finally:
            scan.DEFAULT_CHUNK = saved

    return run


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", nargs="+", default=["l20", "demo"], choices=list(SHAPES))
    p.add_argument("--chunks", type=int, nargs="+", default=[64], help="chunked_vjp chunks")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()

    print(f"load average before: {os.getloadavg()}")
    print("| shape | impl | chunk | fwd+bwd wall ms | speed-up (wall) | CPU ms | speed-up (CPU) |")
    print("|---|---|---|---|---|---|---|")
    for name in args.shape:
        Bsz, L, Dch, N = SHAPES[name]
        x = make_inputs(jax.random.key(0), Bsz, L, Dch, N)
        w = jax.random.normal(jax.random.key(1), (Bsz, L, Dch))
        base_key = ("chunked_seq", scan.DEFAULT_CHUNK)  # its chunk is the library default
        runs = {base_key: fwd_bwd(*base_key)}
        runs.update({("chunked_vjp", c): fwd_bwd("chunked_vjp", c) for c in args.chunks})
        if cpu_kernel.available():  # no chunks: it replays each channel's whole sequence
            runs[("cpu", "-")] = fwd_bwd("cpu", scan.DEFAULT_CHUNK)
        times = {k: [] for k in runs}
        cpu = {k: [] for k in runs}
        for fn in runs.values():
            jax.block_until_ready(fn(x, w))  # compile + warm up
        for _ in range(args.repeats):
            for k, fn in runs.items():
                t0, c0 = time.perf_counter(), time.process_time()
                jax.block_until_ready(fn(x, w))
                times[k].append(time.perf_counter() - t0)
                cpu[k].append(time.process_time() - c0)
        base, base_cpu = statistics.median(times[base_key]), statistics.median(cpu[base_key])
        for (impl, c), ts in times.items():
            med, med_cpu = statistics.median(ts), statistics.median(cpu[(impl, c)])
            print(f"| {name} (B {Bsz}, L {L}, D {Dch}, N {N}) | {impl} | {c} | "
                  f"{1e3 * med:.1f} | {base / med:.2f}x | {1e3 * med_cpu:.1f} | "
                  f"{base_cpu / med_cpu:.2f}x |", flush=True)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
