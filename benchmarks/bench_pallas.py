"""Build, check and time the Pallas selective scan against its peers, in one call.

On the GPU machine (one command, from the repository root; add `--dtypes bfloat16` to halve
the run time; results.json is rewritten after every stage):

    python -m benchmarks.bench_pallas --out $OUT

On a CPU, as a check that the script runs (tiny shapes, interpreter):

    python -m benchmarks.bench_pallas --smoke --out /tmp/bench

Glossary: S scan directions (2: BiMamba), B batch per direction, L length, D channels (d_inner),
N state size.

Shapes. PlantCAD l20: d_model 384 -> d_inner 768, N 16, 512-bp windows, 2^17 tokens a step. Per
layer Caduceus runs 4 scans: 2 directions x 2 RC strands. We time one device's micro-batch of 64
windows (a quarter of the step: 4 devices or 4 accumulation steps): the strands fold into the
batch (B = 128 per direction, i.e. 64 per stream) and both directions go in one launch (S = 2).
The long-context shape keeps the tokens: L = 8192, 4 windows -> B = 8.

What is reported, per shape and dtype (medians of --iters runs after warm-up, block_until_ready):
  * parity: relative L2 error of the output and of every gradient vs the lax.scan reference,
  * forward and forward+backward time of: the fused bidirectional Pallas launch, two single-
    direction Pallas launches, lax.scan (ref, nanodna.ops.scan.bidirectional_scan_ref),
    lax.associative_scan and the chunked XLA paths (nanodna.ops.scan), mamba-ssm's CUDA kernel
    (if importable, else "unavailable"),
  * achieved bandwidth = the fewest bytes the op must move / time, next to a large device-to-
    device copy measured in the same run (the floor any memory-bound kernel sits on),
  * a sweep of block sizes and warps for the fused launch (Triton), and (optional) training-
    step tokens/s of PlantCAD l20's shape with the Pallas scan vs the chunked one.
Everything goes to OUT/results.json and OUT/log.txt; a short table is printed last.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import statistics
import sys
import time
import traceback

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from kernels.pallas import (
    Backend,
    backend_for_platform,
    bidirectional_scan_pallas,
    selective_scan_pallas,
)
from kernels.pallas.plan import make_plan
from kernels.pallas.selective_scan import scan_stacked
from nanodna.models import ModelConfig, build_model
from nanodna.ops.scan import (
    ARG_NAMES,
    bidirectional_scan_ref,
    random_scan_inputs,
    selective_scan,
)

ARGS = ARG_NAMES
LOG = []


def log(*parts):
    line = " ".join(str(p) for p in parts)
    LOG.append(line)
    print(line, flush=True)


def make_inputs(seed, S, Bz, L, Dc, N, dtype):
    """Random inputs in a Mamba layer's ranges, stacked over S directions (z is shared)."""
    return random_scan_inputs(jax.random.key(seed), Bz, L, Dc, N, dtype, S=S)


def min_bytes(x, backward: bool) -> int:
    """Fewest bytes through device memory: every input read once, every output written once."""
    nbytes = lambda a: a.size * a.dtype.itemsize  # noqa: E731
    read = sum(nbytes(x[k]) for k in ARGS)
    written = nbytes(x["z"])  # y
    if not backward:
        return read + written
    # backward: inputs again plus dy, and a gradient for each input
    return read + written + read + nbytes(x["z"]) + read


def median_ms(fn, *args, warmup=2, iters=10):
    """Median wall time of fn(*args) in ms; device work is awaited before the clock is read."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), times


def copy_bandwidth(n_bytes, iters):
    """GB/s of a large device-to-device copy (bytes read + bytes written)."""
    x = jax.random.normal(jax.random.key(0), (n_bytes // 4,), jnp.float32)
    f = jax.jit(lambda x: x + 1.0)  # an elementwise op XLA cannot elide: one read, one write
    ms, _ = median_ms(f, x, iters=iters)
    return 2 * x.size * 4 / (ms * 1e-3) / 1e9


# ----------------------------------------------------------------------------- implementations


def kernel_backends(smoke: bool) -> list[Backend]:
    """The Pallas lowerings to compare here: the default first (on Hopper both GPU ones)."""
    default = backend_for_platform()
    if default == Backend("mosaic_gpu"):
        return [default, Backend("triton")]
    if smoke:  # CPU: the portable program, and the Hopper program in the GPU interpreter
        return [default, Backend("mosaic_gpu", interpret=True)]
    return [default]


def impls(backends):
    """name -> fn(**x) returning (B L D) = forward-direction scan + reverse-direction scan.
    "pallas_fused" is the default lowering; others are "pallas_fused[backend]"."""
    out = {}
    for i, backend in enumerate(backends):
        name = "pallas_fused" if i == 0 else f"pallas_fused[{backend.name}]"
        out[name] = functools.partial(bidirectional_scan_pallas, backend=backend)
    out["pallas_2x"] = functools.partial(
        _two_scans, functools.partial(selective_scan_pallas, backend=backends[0])
    )
    out["lax_scan_ref"] = bidirectional_scan_ref
    for impl in ("assoc", "chunked", "chunked_seq"):
        out[f"xla_{impl}"] = functools.partial(
            _two_scans, functools.partial(selective_scan, impl=impl)
        )
    return out


def _two_scans(scan, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    ys = [
        scan(u[s], delta[s], A[s], B[s], C[s], D[s], z, delta_bias[s],
             delta_softplus=delta_softplus, reverse=bool(s))  # fmt: skip
        for s in (0, 1)
    ]
    return ys[0] + ys[1]


def fwd_and_train(fn):
    fwd = jax.jit(lambda x: fn(**x, delta_softplus=True))

    @jax.jit
    def fwd_bwd(x, ct):
        y, vjp = jax.vjp(lambda x: fn(**x, delta_softplus=True), x)
        return y, vjp(ct)[0]

    return fwd, fwd_bwd


def rel_err(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if not np.isfinite(got).all():
        return float("nan")
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))


def parity(fns, x, ct):
    """Relative L2 error of each fused kernel's output and gradients vs the reference."""
    y_ref, g_ref = fns["lax_scan_ref"][1](x, ct)
    out = {}
    for name in (k for k in fns if k.startswith("pallas_fused")):
        try:
            y, g = fns[name][1](x, ct)
        except Exception as err:  # a lowering that fails here must not hide the others
            log(f"{name}: parity run failed {type(err).__name__}: {str(err)[:500]}")
            out[name] = {"y": float("nan")}
            continue
        errs = {"y": rel_err(y, y_ref)}
        errs.update({f"d{k}": rel_err(g[k], g_ref[k]) for k in ARGS})
        out[name] = errs
    return out


def mamba_ssm_peer(S, Bz, L, Dc, N, dtype, iters):
    """mamba-ssm's CUDA selective scan on the same work (S*Bz sequences), if it is installed."""
    try:
        import torch  # optional: only for the mamba-ssm comparison on a GPU machine
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except ImportError as err:
        bare = importlib.util.find_spec("selective_scan_cuda") is not None
        return {"status": f"unavailable ({err})" + ("; bare extension found" if bare else "")}
    tdt = {"bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(0)
    rnd = lambda *s: torch.randn(*s, device=dev, generator=g)  # noqa: E731
    b = S * Bz
    u, delta, z = (rnd(b, Dc, L).to(tdt) for _ in range(3))
    A = -torch.exp(0.5 * rnd(Dc, N))
    Bm, Cm = rnd(b, N, L).to(tdt), rnd(b, N, L).to(tdt)
    D, bias = rnd(Dc), rnd(Dc)
    for t in (u, delta, z, A, Bm, Cm, D, bias):
        t.requires_grad_(True)

    def run(backward):
        y = selective_scan_fn(u, delta, A, Bm, Cm, D, z, bias, delta_softplus=True)
        if backward:
            y.backward(torch.ones_like(y))
        torch.cuda.synchronize()

    res = {"status": "ok"}
    for name, bwd in (("fwd_ms", False), ("fwd_bwd_ms", True)):
        for _ in range(2):
            run(bwd)
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            run(bwd)
            times.append((time.perf_counter() - t0) * 1e3)
        res[name] = statistics.median(times)
    return res


def e2e_tokens_per_s(iters, batch=64, seq_len=512):
    """Training-step tokens/s of PlantCAD l20's shape with the Pallas scan vs the chunked one."""
    res = {"status": "ok", "batch": batch, "seq_len": seq_len}
    tokens = jax.random.randint(jax.random.key(0), (batch, seq_len), 3, 7)
    for impl in ("pallas", "chunked"):
        try:
            cfg = ModelConfig(arch="caduceus", d_model=384, n_layers=20, max_len=seq_len,
                              compute_dtype="bfloat16", scan_impl=impl)  # fmt: skip
            model = build_model(cfg, jax.random.key(1))

            @eqx.filter_jit
            def grads(model, tokens):
                def loss(model):
                    logp = jax.nn.log_softmax(model(tokens), axis=-1)
                    return -jnp.take_along_axis(logp, tokens[..., None], -1).mean()

                return eqx.filter_grad(loss)(model)

            ms, _ = median_ms(grads, model, tokens, warmup=1, iters=iters)
            res[impl] = {"step_ms": ms, "tokens_per_s": batch * seq_len / (ms * 1e-3)}
        except Exception as err:  # a model-side failure must not lose the kernel numbers
            res[impl] = {"status": f"failed: {type(err).__name__}: {str(err)[:300]}"}
    return res


# ----------------------------------------------------------------------------- main


def bench_shape(name, S, Bz, L, Dc, N, dtype, args, copy_gbs):
    log(f"\n== {name}: S={S} B={Bz} L={L} D={Dc} N={N} {dtype} ==")
    x = make_inputs(1, S, Bz, L, Dc, N, jnp.dtype(dtype))
    ct = jax.random.normal(jax.random.key(2), x["z"].shape, x["z"].dtype)
    fns = {k: fwd_and_train(f) for k, f in impls(args.backends).items()
           if k.split("[")[0] in args.impls or k == "lax_scan_ref"}  # fmt: skip
    row = {"shape": dict(S=S, B=Bz, L=L, D=Dc, N=N, dtype=dtype),
           "backends": [b.name for b in args.backends]}
    row["parity"] = parity(fns, x, ct)
    for impl, errs in row["parity"].items():
        log(f"parity {impl} (rel L2 vs lax.scan ref):",
            " ".join(f"{k}={v:.2e}" for k, v in errs.items()))  # fmt: skip
    row["times"] = {}
    for impl, (fwd, fwd_bwd) in fns.items():
        if impl.endswith("_interpret]"):  # a simulated GPU: its parity counts, not its time
            continue
        try:
            f_ms, f_all = median_ms(fwd, x, iters=args.iters)
            b_ms, b_all = median_ms(fwd_bwd, x, ct, iters=args.iters)
        except Exception as err:
            log(f"{impl}: failed {type(err).__name__}: {str(err)[:500]}")
            row["times"][impl] = {"status": f"failed: {type(err).__name__}"}
            continue
        row["times"][impl] = {"fwd_ms": f_ms, "fwd_bwd_ms": b_ms, "fwd_all": f_all,
                              "fwd_bwd_all": b_all}  # fmt: skip
        log(f"{impl:14s} fwd {f_ms:9.3f} ms   fwd+bwd {b_ms:9.3f} ms")
    ref = row["times"].get("lax_scan_ref", {})
    for impl, t in row["times"].items():
        if "fwd_ms" in t and "fwd_ms" in ref:
            t["speedup_vs_ref"] = {"fwd": ref["fwd_ms"] / t["fwd_ms"],
                                   "fwd_bwd": ref["fwd_bwd_ms"] / t["fwd_bwd_ms"]}  # fmt: skip
    xla = [t["fwd_bwd_ms"] for k, t in row["times"].items()
           if (k == "lax_scan_ref" or k.startswith("xla_")) and "fwd_bwd_ms" in t]  # fmt: skip
    for impl, fused in row["times"].items():
        if not impl.startswith("pallas_fused") or "fwd_ms" not in fused:
            continue
        for key, bwd in (("fwd", False), ("fwd_bwd", True)):
            gbs = min_bytes(x, bwd) / (fused[f"{key}_ms"] * 1e-3) / 1e9
            fused[f"{key}_GBps"] = gbs
            fused[f"{key}_frac_of_copy"] = gbs / copy_gbs
        if xla:  # target: fwd+bwd >= 10x faster than the best XLA path
            fused["fwd_bwd_speedup_vs_best_xla"] = min(xla) / fused["fwd_bwd_ms"]
        log(f"{impl} achieved {fused['fwd_GBps']:.1f} GB/s fwd, "
            f"{fused['fwd_bwd_GBps']:.1f} GB/s fwd+bwd (copy {copy_gbs:.1f} GB/s)")  # fmt: skip
    if not args.smoke and jax.default_backend() == "gpu":
        row["mamba_ssm"] = mamba_ssm_peer(S, Bz, L, Dc, N, dtype, args.iters)
    else:
        row["mamba_ssm"] = {"status": "unavailable (no GPU)"}
    log("mamba_ssm:", row["mamba_ssm"])
    return row


def sweep(args, shape, dtype, variants):
    """Fused fwd+bwd time for several plans (dicts of make_plan knobs, the backend by name):
    tuning data, one call."""
    S, Bz, L, Dc, N = shape
    x = make_inputs(3, S, Bz, L, Dc, N, jnp.dtype(dtype))
    ct = jax.random.normal(jax.random.key(4), x["z"].shape, x["z"].dtype)
    out = []
    for knobs in variants:
        knobs = dict(dict(chunk=None, block_d=None, backend=args.backends[0].name), **knobs)
        tag = " ".join(f"{k}={v}" for k, v in knobs.items())
        try:
            plan = make_plan(n_dir=2, reverse=False, L=L, D=Dc, softplus=True, has_D=True,
                             has_z=True, has_bias=True,
                             **dict(knobs, backend=Backend.named(knobs["backend"])))  # fmt: skip

            def fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, plan=plan):
                return scan_stacked(plan, u, delta, A, B, C, D, z, delta_bias)

            fwd, fwd_bwd = fwd_and_train(fn)
            f_ms, _ = median_ms(fwd, x, iters=args.iters)
            b_ms, _ = median_ms(fwd_bwd, x, ct, iters=args.iters)
            out.append(dict(knobs, chunk=plan.chunk, block_d=plan.block_d, fwd_ms=f_ms,
                            fwd_bwd_ms=b_ms))  # fmt: skip
            log(f"sweep {tag}: fwd {f_ms:8.3f} ms, fwd+bwd {b_ms:8.3f} ms")
        except Exception as err:
            out.append(dict(knobs, status=f"failed: {err!r}"[:300]))
            log(f"sweep {tag}: failed {type(err).__name__}")
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT", "bench_out"))
    p.add_argument("--smoke", action="store_true", help="tiny shapes, interpreter: a CPU check")
    p.add_argument("--iters", type=int, default=None)
    p.add_argument("--dtypes", default="bfloat16,float32")
    p.add_argument("--no-e2e", action="store_true", help="skip the training-step timing")
    p.add_argument("--impls", default=None, help="comma list (default: all; smoke: fused, ref)")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    backend = backend_for_platform()
    args.backends = kernel_backends(args.smoke)
    if args.smoke:
        args.iters = args.iters or 2
        shapes = {"smoke": (2, 2, 24, 8, 4)}
        dtypes = ["float32"]
        # The default sizes again: same program as above, so the compilation cache answers.
        copy_bytes, variants = 1 << 20, [{}]
        args.impls = args.impls or "pallas_fused,lax_scan_ref"
    else:
        args.iters = args.iters or 10
        shapes = {"l20_L512": (2, 128, 512, 768, 16), "long_L8192": (2, 8, 8192, 768, 16)}
        dtypes = args.dtypes.split(",")
        copy_bytes = 1 << 30
        variants = []
        if Backend("mosaic_gpu") in args.backends:  # chunk sets shared memory: blocks per SM
            variants += [dict(backend="mosaic_gpu", chunk=c) for c in (8, 32)]
        tri = dict(backend="triton")
        variants += [dict(tri, block_d=b, num_warps=w) for b in (32, 64, 128) for w in (1, 2, 4)]
        variants += [dict(tri, chunk=c) for c in (16, 64)]
        variants += [dict(tri, block_d=64, num_stages=st) for st in (2, 3)]
        # Register-resident backward (unrolled chunk): no workspace traffic, more saved states.
        variants += [dict(tri, chunk=c, block_d=32, bwd_in_registers=True) for c in (8, 16)]
        args.impls = args.impls or "pallas_fused,pallas_2x,lax_scan_ref,xla_assoc,xla_chunked"
    args.impls = args.impls.split(",")
    results = {
        "device": str(jax.devices()[0]),
        "platform": jax.default_backend(),
        "kernel_backend": backend.name,
        "jax": jax.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "iters": args.iters,
    }
    log(f"device {results['device']} jax {jax.__version__} kernel backend {backend.name}")
    copy_gbs = copy_bandwidth(copy_bytes, args.iters)
    results["copy_GBps"] = copy_gbs
    log(f"device-to-device copy: {copy_gbs:.1f} GB/s")
    results["shapes"] = []

    def save():  # after every stage: a run cut off by its time limit keeps what it measured
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump(results, f, indent=1)
        with open(os.path.join(args.out, "log.txt"), "w") as f:
            f.write("\n".join(LOG) + "\n")

    def run_shapes(dtype):
        for name, shape in shapes.items():
            try:
                results["shapes"].append(bench_shape(name, *shape, dtype, args, copy_gbs))
            except Exception:
                log(f"{name} {dtype} failed:\n{traceback.format_exc()}")
            save()

    # Most useful first: the training dtype, then tuning data, then the rest.
    run_shapes(dtypes[0])
    results["sweep"] = sweep(args, next(iter(shapes.values())), dtypes[0], variants)
    save()
    if not args.smoke and not args.no_e2e:
        results["e2e"] = e2e_tokens_per_s(args.iters)
        log("e2e:", results["e2e"])
        save()
    for dtype in dtypes[1:]:
        run_shapes(dtype)
    # The short table last: the remote reply shows only the end of the output.
    log("\nshape         dtype     impl                     fwd ms  fwd+bwd ms  vs ref  vs best XLA")
    for row in results["shapes"]:
        shp = next(k for k, v in shapes.items() if v[2] == row["shape"]["L"])
        for impl, t in row["times"].items():
            if "fwd_ms" in t:
                sp = t.get("speedup_vs_ref", {}).get("fwd_bwd", float("nan"))
                vx = t.get("fwd_bwd_speedup_vs_best_xla", float("nan"))
                log(f"{shp:13s} {row['shape']['dtype']:9s} {impl:23s} {t['fwd_ms']:8.3f} "
                    f"{t['fwd_bwd_ms']:10.3f}  {sp:6.2f}x  {vx:6.2f}x")  # fmt: skip
        for impl, errs in row["parity"].items():
            log(f"{shp:13s} {row['shape']['dtype']:9s} {impl} parity worst rel L2 "
                f"{max(errs.values()):.2e}")  # fmt: skip
    save()
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
