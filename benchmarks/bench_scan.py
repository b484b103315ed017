"""Selective-scan implementations on this machine: forward and forward+backward wall time.

    python benchmarks/bench_scan.py                 # default shapes, median of 5 runs
    python benchmarks/bench_scan.py --chunks 32 64 128 --batch 4 --d 768

"chunked" and "chunked_seq" run once per --chunks value; ratios are against "ref" (lax.scan)
measured in the same run.

Prints a Markdown table; times exclude compilation (one warm-up call first).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import jax
import jax.numpy as jnp

from nanodna.ops.scan import random_scan_inputs, selective_scan


def make_inputs(key, Bsz, L, Dch, N):
    """(u, delta, A, B, C, D): the positional arguments every implementation is timed on."""
    x = random_scan_inputs(key, Bsz, L, Dch, N, gate=False, bias=False)
    return tuple(x[k] for k in ("u", "delta", "A", "B", "C", "D"))


def temp_mib(fn, args):
    """XLA's planned scratch memory for one call (deterministic, unlike wall time)."""
    stats = fn.lower(*args).compile().memory_analysis()
    return float("nan") if stats is None else stats.temp_size_in_bytes / 2**20


def timed(fn, args, repeats):
    jax.block_until_ready(fn(*args))  # compile + warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, nargs="+", default=[2, 8])
    p.add_argument("--length", type=int, default=512)
    p.add_argument("--d", type=int, default=768)
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--chunks", type=int, nargs="+", default=[64])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-assoc", action="store_true", help="skip the whole-sequence assoc scan")
    args = p.parse_args()

    impls = [("ref", None)] + [("chunked", c) for c in args.chunks]
    impls += [("chunked_seq", c) for c in args.chunks]
    if not args.no_assoc:
        impls.append(("assoc", None))
    print(f"device: {jax.devices()[0].device_kind}, L={args.length} D={args.d} N={args.n}")
    print("| B | impl | fwd ms | fwd x ref | fwd+bwd ms | fwd+bwd x ref | fwd+bwd scratch MiB |")
    print("|---|---|---|---|---|---|---|")
    for Bsz in args.batch:
        inputs = make_inputs(jax.random.key(0), Bsz, args.length, args.d, args.n)
        base = {}
        for impl, chunk in impls:
            kw = dict(impl=impl, delta_softplus=True) | ({"chunk": chunk} if chunk else {})
            scan = functools.partial(selective_scan, **kw)
            fwd = jax.jit(lambda u, dt, A, B, C, D: scan(u, dt, A, B, C, D))
            loss = lambda *a: jnp.sum(scan(*a) ** 2)  # noqa: E731
            bwd = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4, 5)))
            t_f, t_b = timed(fwd, inputs, args.repeats), timed(bwd, inputs, args.repeats)
            base.setdefault("f", t_f), base.setdefault("b", t_b)
            name = impl + (f" T={chunk}" if chunk else "")
            print(
                f"| {Bsz} | {name} | {t_f * 1e3:.1f} | {t_f / base['f']:.2f} "
                f"| {t_b * 1e3:.1f} | {t_b / base['b']:.2f} | {temp_mib(bwd, inputs):.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
