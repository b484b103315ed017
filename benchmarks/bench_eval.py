"""Zero-shot scoring throughput (windows/s) against the bare forward pass on the same batches.

    python benchmarks/bench_eval.py --sizes caduceus_tiny transformer_1m --seq-len 512 --rows 64

Rows are random windows (throughput does not depend on the bases). Compilation is excluded:
each configuration runs once before timing. The baseline is `model(tokens_BL)` alone, jitted,
on batches of the same size, timed alternately with the scorer so both see the same machine
load; the ratio (median of per-repeat ratios) is what the scoring rule costs on top of it.
Strand averaging doubles the model's work and the causal four-allele rule quadruples it, so
their ratios sit near 1/2 and 1/4. Caduceus sizes run as PS (one strand; RCPS already runs
both strands inside the model) and Ph (both strands); transformers as MLM and CLM.

--paths compares scoring's two inference paths instead (issue 10), alternating in one process:

    python benchmarks/bench_eval.py --paths --sizes plantcad_l20 --n-layers 1 --rows 40 \
        --old-batch-size 64 --repeats 2

"old" is score_table as eval.py ran it before issue 10 (batch 64, the training scan that
"auto" picked on CPU then, chunked_vjp, full logits); "fast" the inference path (on CPU the
kernels/cpu scan, or the forward-only XLA loop without it; head at the target; CPU batch size).
Both include padding the last batch, so a table smaller than a batch shows the padding cost.
--n-layers keeps a size's layer shape with fewer layers (time per window scales with depth).
"""

import argparse
import os
import statistics
import time

import equinox as eqx
import jax
import numpy as np

from nanodna import tokenizer
from nanodna.evaluation import scoring
from nanodna.evaluation.tables import EvalTable, default_pos
from nanodna.models import build_model, sizes


def random_table(rows: int, seq_len: int, seed: int = 0) -> EvalTable:
    rng = np.random.default_rng(seed)
    ids = [tokenizer.ACGT[rng.integers(0, 4, seq_len)].astype(np.uint8) for _ in range(rows)]
    pos = np.full(rows, default_pos(seq_len))
    return EvalTable(
        "<random>",
        "conservation",
        ids,
        pos,
        np.array([x[p] for x, p in zip(ids, pos)], np.int64),
        None,
        rng.integers(0, 2, rows),
    )


_forward = eqx.filter_jit(lambda model, tokens_BL: model(tokens_BL))


def time_forward(model, tokens_RL: np.ndarray, batch_size: int) -> float:
    """Seconds for the bare jitted forward over all windows, in batches (rows % batch == 0)."""
    t0 = time.perf_counter()
    outs = [
        _forward(model, tokens_RL[i : i + batch_size]) for i in range(0, len(tokens_RL), batch_size)
    ]
    jax.block_until_ready(outs)
    return time.perf_counter() - t0


def compare_paths(args) -> None:
    """Old vs fast scoring path on one table, alternating, medians; compilation excluded."""
    table = random_table(args.rows, args.seq_len)
    print(f"{args.seq_len} bp, {args.rows} windows, old batch {args.old_batch_size}, fast batch "
          f"{args.fast_batch_size or scoring.default_batch_size()}, median of {args.repeats}, "
          f"load {os.getloadavg()[0]:.1f}")
    print("| model | old windows/s | fast windows/s | speed-up |")
    print("|---|---|---|---|")
    for size in args.sizes:
        overrides = {"max_len": args.seq_len}
        if args.n_layers:
            overrides["n_layers"] = args.n_layers
        cfg = sizes.get(size, **overrides)
        model = build_model(cfg, jax.random.key(0))
        runs = {"old": (model, {"batch_size": args.old_batch_size, "inference_path": "old"}),
                "fast": (model, {"batch_size": args.fast_batch_size, "inference_path": "fast"})}
        for m, kw in runs.values():  # compile
            scoring.score_table(m, cfg, table, **kw)
        secs = {k: [] for k in runs}
        for _ in range(args.repeats):
            for k, (m, kw) in runs.items():
                secs[k].append(scoring.score_table(m, cfg, table, **kw).seconds)
        ratio = statistics.median(o / f for o, f in zip(secs["old"], secs["fast"]))
        name = size + (f" ({cfg.n_layers} layers)" if args.n_layers else "")
        print(f"| {name} | {args.rows / statistics.median(secs['old']):.3g} | "
              f"{args.rows / statistics.median(secs['fast']):.3g} | {ratio:.2f}x |", flush=True)
    print(f"load after: {os.getloadavg()[0]:.1f}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--paths", action="store_true", help="compare the old and fast scoring paths")
    p.add_argument("--n-layers", type=int, default=None, help="override the size's depth")
    p.add_argument("--old-batch-size", type=int, default=64)
    p.add_argument("--fast-batch-size", type=int, default=None)
    p.add_argument("--sizes", nargs="+", default=["caduceus_tiny", "transformer_1m"])
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    if args.paths:
        return compare_paths(args)

    if args.rows % args.batch_size:
        p.error("--rows must be a multiple of --batch-size (the baseline has no padding)")
    table = random_table(args.rows, args.seq_len)
    print(
        f"{args.seq_len} bp, {args.rows} windows, batch {args.batch_size}, "
        f"median of {args.repeats}, device {jax.devices()[0].device_kind}"
    )
    print("| model | rule | scoring windows/s | forward windows/s | ratio |")
    print("|---|---|---|---|---|")
    for size in args.sizes:
        if sizes.get(size).arch == "caduceus":
            variants = [("PS", {"rcps": True}), ("Ph", {"rcps": False})]
        else:
            variants = [("MLM", {"causal": False}), ("CLM", {"causal": True})]
        for name, overrides in variants:
            cfg = sizes.get(size, max_len=args.seq_len, **overrides)
            model = build_model(cfg, jax.random.key(0))
            tokens_RL = np.stack(table.ids).astype(np.int32)
            first = scoring.score_table(model, cfg, table, batch_size=args.batch_size)  # compile
            time_forward(model, tokens_RL, args.batch_size)  # compile
            rule = first.rule + (" + both strands" if first.strand_average else "")
            # Alternate the two, so that both see the same machine load.
            score_s, fwd_s = [], []
            for _ in range(args.repeats):
                score_s.append(scoring.score_table(model, cfg, table, args.batch_size).seconds)
                fwd_s.append(time_forward(model, tokens_RL, args.batch_size))
            ratio = statistics.median(f / s for f, s in zip(fwd_s, score_s))
            score_s, fwd_s = statistics.median(score_s), statistics.median(fwd_s)
            print(
                f"| {size} ({name}) | {rule} | {args.rows / score_s:.1f} | "
                f"{args.rows / fwd_s:.1f} | {ratio:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
