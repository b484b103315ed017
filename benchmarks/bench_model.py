"""Forward+backward step time of a named model size (default PlantCAD l20 at 512 bp).

    python benchmarks/bench_model.py --size plantcad_l20 --batch 1 2 --repeats 5
    python benchmarks/bench_model.py --scan-impl ref chunked_seq --batch 2

Times one jitted value_and_grad of a masked-LM-style loss (no optimizer), median of
--repeats after a compile + warm-up call; prints tokens/s and achieved FLOP/s from
nanodna.models.flops_per_token.
"""

from __future__ import annotations

import argparse
import statistics
import time

import equinox as eqx
import jax
import jax.numpy as jnp

from nanodna.models import build_model, count_params, flops_per_token, sizes


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="plantcad_l20", choices=sorted(sizes.SIZES))
    p.add_argument("--batch", type=int, nargs="+", default=[1, 2])
    p.add_argument("--length", type=int, default=512)
    p.add_argument("--scan-impl", nargs="+", default=["auto"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--remat", action="store_true")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()

    print(f"device: {jax.devices()[0].device_kind}; {args.size}, L={args.length}, {args.dtype}"
          f"{', remat' if args.remat else ''}")
    print("| scan impl | B | compile s | step ms (median) | tokens/s | GFLOP/s |")
    print("|---|---|---|---|---|---|")
    for impl in args.scan_impl:
        cfg = sizes.get(args.size, scan_impl=impl, compute_dtype=args.dtype, remat=args.remat)
        model = eqx.filter_jit(lambda k: build_model(cfg, k))(jax.random.key(0))
        for Bsz in args.batch:
            tokens = jax.random.randint(jax.random.key(1), (Bsz, args.length), 3, 7)

            @eqx.filter_jit
            @eqx.filter_value_and_grad
            def loss(m):
                logp = jax.nn.log_softmax(m(tokens))
                return -jnp.mean(jnp.take_along_axis(logp, tokens[..., None], -1))

            t0 = time.perf_counter()
            jax.block_until_ready(loss(model))
            compile_s = time.perf_counter() - t0
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                jax.block_until_ready(loss(model))
                times.append(time.perf_counter() - t0)
            step = statistics.median(times)
            tok_s = Bsz * args.length / step
            gflops = tok_s * flops_per_token(cfg, args.length) / 1e9
            print(f"| {impl} | {Bsz} | {compile_s:.1f} | {step * 1e3:.0f} | {tok_s:.0f} | {gflops:.1f} |",
                  flush=True)
    print(f"params: {count_params(model) / 1e6:.2f}M")


if __name__ == "__main__":
    main()
