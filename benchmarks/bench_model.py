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
    python benchmarks/bench_model.py --batch 1 --scan-impl cpu --xla-options nanodna default \
        --repeats 5                                 # the train step's XLA options vs XLA's own
    python benchmarks/bench_model.py --batch 1 --scan-impl cpu --matmul-dtype float32 bfloat16 \
        --matmul --repeats 7                        # bfloat16 matmuls in the float32 model

Times one jitted value_and_grad of a masked-LM-style loss (no optimizer), median of
--repeats after a compile + warm-up call; prints tokens/s and achieved FLOP/s from
nanodna.models.flops_per_token. Every row is compiled first and the rows are then timed
round-robin, one call each per round, so that a drifting machine slows them alike. With
--matmul each timed step call is followed by three float32 2048^3 matmul calls, the fastest of
which is the step's baseline, and "of matmul" is the median over steps of step FLOP/s /
baseline FLOP/s: on a shared VM whose speed drifts by 2x within minutes, a step and the matmul
it is held against are then timed seconds apart, not minutes. (The fastest of three, because
the first matmul after a step finds its operands out of cache and runs slower.) --devices
splits the batch over a mesh of that many devices (on CPU, host "devices" made with XLA's
--xla_force_host_platform_device_count, so one process can run independent loops, such as the
selective scan's, on several cores at once).
--xla-options nanodna compiles the step with the options nanodna's train step uses
(nanodna.ops.compile_options: none for bfloat16 matmuls), default with XLA's own.
--matmul-dtype bfloat16 (with --dtype float32) sets ModelConfig.matmul_dtype; with --matmul
its rows are also held against a bfloat16-input, float32-output 2048^3 matmul ("of bf16
matmul"). Like train.py it restarts itself once with transparent huge pages
(nanodna.hugepages); NANODNA_HUGE_PAGES=0 times the 4 KiB-page baseline.
"""
# ruff: noqa: E402 - the huge-page restart (nanodna.hugepages) must run before jax is imported

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time
from functools import partial

from nanodna.hugepages import restart_with_huge_pages

if __name__ == "__main__":  # before jax loads: glibc reads its tunables only at process start
    restart_with_huge_pages()

import equinox as eqx
import jax
import jax.numpy as jnp

from nanodna.models import build_model, count_params, flops_per_token, sizes
from nanodna.ops.compile_options import cpu_compiler_options
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
    p.add_argument("--matmul-dtype", nargs="+", default=[None], choices=["float32", "bfloat16"],
                   help="ModelConfig.matmul_dtype (rows each): bfloat16 with --dtype float32 runs "
                        "the projections' dots in bfloat16 with float32 accumulation")
    p.add_argument("--remat", action="store_true")
    p.add_argument("--matmul", action="store_true",
                   help="also time a float32 2048^3 matmul after every step (rows with bfloat16 "
                        "matmuls: a bfloat16 one too); rows then give their FLOP/s as a fraction "
                        "of it")
    p.add_argument("--unroll-layers", action="store_true",
                   help="a Python loop over the blocks (ModelConfig.unroll_layers)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--devices", type=int, nargs="+", default=[1],
                   help="split the batch over this many devices (CPU: host devices), interleaved")
    p.add_argument("--xla-options", nargs="+", default=["nanodna"], choices=["nanodna", "default"],
                   help="compile with nanodna's train-step options or XLA's defaults (rows each)")
    args = p.parse_args()
    if max(args.devices) > 1 and "xla_force_host_platform_device_count" not in os.environ.get(
            "XLA_FLAGS", ""):  # read when the backend starts, i.e. at the first jax.devices()
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + f" --xla_force_host_platform_device_count={max(args.devices)}")

    print(f"device: {jax.devices()[0].device_kind}; L={args.length}, {args.dtype}"
          f"{', remat' if args.remat else ''}{', unrolled layers' if args.unroll_layers else ''}")
    rows = []  # (label cells, prepared step), compiled first, then timed round-robin
    for width, size, impl, mm_dtype in itertools.product(args.width, args.size, args.scan_impl,
                                                         args.matmul_dtype):
        over = {"max_len": max(args.length, sizes.get(size).max_len)}
        if width is not None:
            over["d_model"] = width
        if args.layers is not None:
            over["n_layers"] = args.layers
        cfg = sizes.get(size, scan_impl=impl, compute_dtype=args.dtype, matmul_dtype=mm_dtype,
                        remat=args.remat, unroll_layers=args.unroll_layers, **over)
        for Bsz, n_dev, xla in itertools.product(args.batch, args.devices, args.xla_options):
            options = cpu_compiler_options(cfg.dot_dtype) if xla == "nanodna" else {}
            prepared = prepare_step(cfg, Bsz, args.length, n_dev, options)
            prepared["dot_dtype"] = cfg.dot_dtype
            xla_cell = xla if options or xla == "default" else "nanodna (none here)"
            rows.append(([size, cfg.d_model, prepared["params"], impl, cfg.dot_dtype, xla_cell,
                          Bsz, n_dev], prepared))
            print(f"compiled {size} d_model {cfg.d_model} {impl} B {Bsz} on {n_dev} device(s), "
                  f"XLA options {xla}: {prepared['compile_s']:.1f} s", flush=True)

    matmuls = {}
    if args.matmul:
        for dt in ["float32"] + sorted({prep["dot_dtype"] for _, prep in rows} - {"float32"}):
            matmuls[dt] = make_matmul(dt)
            _seconds(matmuls[dt])  # compile
    results = time_rows([prepared for _, prepared in rows], args.repeats, matmuls)
    bf16 = "bfloat16" in matmuls
    print("| size | width | params | scan impl | matmul dtype | XLA options | B | devices "
          "| compile s | step ms (median) | tokens/s | GFLOP/s |"
          + (" matmul GFLOP/s (best of 3 per step) | of matmul |" if matmuls else "")
          + (" bf16 matmul GFLOP/s | of bf16 matmul |" if bf16 else ""))
    print("|---" * (12 + 2 * len(matmuls)) + "|")
    for (cells, prepared), r in zip(rows, results):
        line = ("| " + " | ".join(str(c) for c in cells)
                + f" | {prepared['compile_s']:.1f} | {r['step_s'] * 1e3:.0f} | {r['tok_s']:.0f} "
                f"| {r['gflops']:.1f} |")
        for dt in matmuls:
            if dt in r["matmul_gflops"]:
                line += f" {r['matmul_gflops'][dt]:.1f} | {r['of_matmul'][dt]:.0%} |"
            else:
                line += " - | - |"
        print(line)


MATMUL_N = 2048
MATMUL_FLOPS = 2 * MATMUL_N**3
MATMUL_CALLS = 3  # after each step; the fastest counts


def make_matmul(dtype: str = "float32"):
    """A jitted (2048, 2048) @ (2048, 2048) of dtype inputs, accumulated and returned in float32,
    as a no-argument call: the rate a model step is held against (MATMUL_FLOPS per call)."""
    a, b = (jax.random.normal(jax.random.key(i), (MATMUL_N, MATMUL_N), jnp.float32).astype(dtype)
            for i in (2, 3))
    dot = jax.jit(partial(jnp.dot, preferred_element_type=jnp.float32))
    return lambda: dot(a, b)


def _seconds(fn) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t0


def prepare_step(cfg, Bsz: int, length: int, n_devices: int = 1,
                 compiler_options: dict | None = None) -> dict:
    """Build, compile and warm up one jitted value_and_grad of a token log-likelihood loss, the
    batch split over the first n_devices devices (model replicated): {"call" (no arguments),
    "params", "compile_s", "flops" (model FLOPs of one call)}."""
    if Bsz % n_devices:
        raise SystemExit(f"error: batch {Bsz} does not split over {n_devices} devices")
    mesh = make_mesh(n_devices)
    model = eqx.filter_jit(lambda k: build_model(cfg, k))(jax.random.key(0))
    model = jax.device_put(model, replicated(mesh))
    tokens = jax.random.randint(jax.random.key(1), (Bsz, length), 3, 7)
    tokens = jax.device_put(tokens, batch_sharding(mesh))

    @partial(eqx.filter_jit, compiler_options=compiler_options or {})
    @eqx.filter_value_and_grad
    def loss(m, tokens):
        logp = jax.nn.log_softmax(m(tokens))
        return -jnp.mean(jnp.take_along_axis(logp, tokens[..., None], -1))

    call = lambda: loss(model, tokens)  # noqa: E731
    compile_s = _seconds(call)
    return {"call": call, "params": count_params(model), "compile_s": compile_s,
            "flops": Bsz * length * flops_per_token(cfg, length), "tokens": Bsz * length}


def time_rows(prepared: list[dict], repeats: int, matmuls: dict | None = None) -> list[dict]:
    """Time every prepared step `repeats` times, round-robin (row 1, row 2, ..., row 1, ...), so
    that the machine's drift falls on all rows alike; per row: median step seconds, tokens/s,
    GFLOP/s. With `matmuls` ({dtype: make_matmul(dtype)}), each step call is followed by
    MATMUL_CALLS calls of the float32 matmul and, for a row whose dot_dtype is another, of that
    dtype's too, the fastest of each being that step's baseline; the row also gets, per dtype,
    the median baseline GFLOP/s and the median ratio of step rate to baseline rate."""
    matmuls = matmuls or {}
    samples = [[] for _ in prepared]  # per row: (step seconds, {dtype: matmul seconds})
    for _ in range(repeats):
        for row_samples, prep in zip(samples, prepared):
            step_s = _seconds(prep["call"])
            mm_s = {dt: min(_seconds(mm) for _ in range(MATMUL_CALLS))
                    for dt, mm in matmuls.items() if dt in ("float32", prep.get("dot_dtype"))}
            row_samples.append((step_s, mm_s))
    out = []
    for row_samples, prep in zip(samples, prepared):
        step = statistics.median(s for s, _ in row_samples)
        r = {"step_s": step, "tok_s": prep["tokens"] / step, "gflops": prep["flops"] / step / 1e9,
             "matmul_gflops": {}, "of_matmul": {}}
        for dt in row_samples[0][1]:
            r["matmul_gflops"][dt] = statistics.median(
                MATMUL_FLOPS / m[dt] / 1e9 for _, m in row_samples)
            r["of_matmul"][dt] = statistics.median(
                (prep["flops"] / s) / (MATMUL_FLOPS / m[dt]) for s, m in row_samples)
        out.append(r)
    return out


if __name__ == "__main__":
    main()
