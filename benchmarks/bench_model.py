"""Forward+backward step time of a named model size (default PlantCAD l20 at 512 bp).

    python benchmarks/bench_model.py --size plantcad_l20 --batch 1 2 --repeats 5
    python benchmarks/bench_model.py --scan-impl ref chunked_seq --batch 2
    python benchmarks/bench_model.py --batch 1 --scan-impl chunked_seq cpu --matmul --repeats 3
    python benchmarks/bench_model.py --size caduceus_tiny transformer_1m --width 32 64 128 \
        --layers 3 --length 128 --batch 32          # Caduceus-PS vs transformer at equal widths
    python benchmarks/bench_model.py --size caduceus_tiny transformer_1m --width 64 \
        --layers 3 --length 128 --batch 32 --scan-impl chunked_vjp cpu --unroll-layers
    python benchmarks/bench_model.py --size caduceus_tiny --width 64 --layers 3 --length 128 \
        --batch 32 --devices 1 2                    # the batch split over 1 vs 2 CPU "devices"

Times one jitted value_and_grad of a masked-LM-style loss (no optimizer), median of
--repeats after a compile + warm-up call; prints tokens/s and achieved FLOP/s from
nanodna.models.flops_per_token. --devices splits the batch over a mesh of that many devices
(on CPU, host "devices" made with XLA's --xla_force_host_platform_device_count, so one process
can run independent loops, such as the selective scan's, on several cores at once).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import equinox as eqx
import jax
import jax.numpy as jnp

from nanodna.models import build_model, count_params, flops_per_token, sizes
from nanodna.training.mesh import batch_sharding, make_mesh, replicated


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", nargs="+", default=["plantcad_l20"], choices=sorted(sizes.SIZES))
    p.add_argument("--width", type=int, nargs="+", default=[None], help="d_model override(s)")
    p.add_argument("--layers", type=int, default=None, help="n_layers override")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 2])
    p.add_argument("--length", type=int, default=512)
    p.add_argument("--scan-impl", nargs="+", default=["auto"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--remat", action="store_true")
    p.add_argument("--matmul", action="store_true",
                   help="also time a float32 2048^3 matmul in this process; rows then give "
                        "their FLOP/s as a fraction of it")
    p.add_argument("--unroll-layers", action="store_true",
                   help="a Python loop over the blocks (ModelConfig.unroll_layers)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--devices", type=int, nargs="+", default=[1],
                   help="split the batch over this many devices (CPU: host devices), interleaved")
    args = p.parse_args()
    if max(args.devices) > 1 and "xla_force_host_platform_device_count" not in os.environ.get(
            "XLA_FLAGS", ""):  # read when the backend starts, i.e. at the first jax.devices()
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + f" --xla_force_host_platform_device_count={max(args.devices)}")

    print(f"device: {jax.devices()[0].device_kind}; L={args.length}, {args.dtype}"
          f"{', remat' if args.remat else ''}{', unrolled layers' if args.unroll_layers else ''}")
    peak = matmul_gflops(args.repeats) if args.matmul else None
    if peak:
        print(f"float32 matmul (2048 x 2048 x 2048, median of {args.repeats}): {peak:.1f} GFLOP/s")
    print("| size | width | params | scan impl | B | devices | compile s | step ms (median) "
          "| tokens/s | GFLOP/s |" + (" of matmul |" if peak else ""))
    print("|---|---|---|---|---|---|---|---|---|---|" + ("---|" if peak else ""))
    for width in args.width:  # sizes interleaved per width: same-run ratios
        for size in args.size:
            for impl in args.scan_impl:
                over = {"max_len": max(args.length, sizes.get(size).max_len)}
                if width is not None:
                    over["d_model"] = width
                if args.layers is not None:
                    over["n_layers"] = args.layers
                cfg = sizes.get(size, scan_impl=impl, compute_dtype=args.dtype,
                                remat=args.remat, unroll_layers=args.unroll_layers, **over)
                for Bsz in args.batch:
                    for n_dev in args.devices:
                        row = time_step(cfg, Bsz, args.length, args.repeats, n_dev)
                        print(f"| {size} | {cfg.d_model} | {row['params']} | {impl} | {Bsz} | "
                              f"{n_dev} | {row['compile_s']:.1f} | {row['step_s'] * 1e3:.0f} | "
                              f"{row['tok_s']:.0f} | {row['gflops']:.1f} |"
                              + (f" {row['gflops'] / peak:.0%} |" if peak else ""), flush=True)


def matmul_gflops(repeats: int, n: int = 2048) -> float:
    """GFLOP/s of one jitted float32 (n, n) @ (n, n): the rate a model step is held against."""
    a, b = (jax.random.normal(jax.random.key(i), (n, n), jnp.float32) for i in (2, 3))
    dot = jax.jit(jnp.dot)
    _, seconds = warm_then_median(lambda: dot(a, b), repeats)
    return 2 * n**3 / seconds / 1e9


def warm_then_median(fn, repeats: int) -> tuple[float, float]:
    """(seconds of the first call, which compiles, and the median of `repeats` later calls)."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times)


def time_step(cfg, Bsz: int, length: int, repeats: int, n_devices: int = 1) -> dict:
    """Compile, warm up and time one jitted value_and_grad of a token log-likelihood loss, the
    batch split over the first n_devices devices (model replicated)."""
    if Bsz % n_devices:
        raise SystemExit(f"error: batch {Bsz} does not split over {n_devices} devices")
    mesh = make_mesh(n_devices)
    model = eqx.filter_jit(lambda k: build_model(cfg, k))(jax.random.key(0))
    model = jax.device_put(model, replicated(mesh))
    tokens = jax.random.randint(jax.random.key(1), (Bsz, length), 3, 7)
    tokens = jax.device_put(tokens, batch_sharding(mesh))

    @eqx.filter_jit
    @eqx.filter_value_and_grad
    def loss(m, tokens):
        logp = jax.nn.log_softmax(m(tokens))
        return -jnp.mean(jnp.take_along_axis(logp, tokens[..., None], -1))

    compile_s, step = warm_then_median(lambda: loss(model, tokens), repeats)
    tok_s = Bsz * length / step
    return {"params": count_params(model), "compile_s": compile_s, "step_s": step,
            "tok_s": tok_s, "gflops": tok_s * flops_per_token(cfg, length) / 1e9}


if __name__ == "__main__":
    main()
