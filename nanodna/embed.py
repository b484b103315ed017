"""Embeddings for downstream classifiers: the model's last hidden states, both strands combined.

    python -m nanodna.embed --checkpoint CKPT --data windows.tsv --out emb.npy
    python -m nanodna.embed --checkpoint CKPT --data genome.fa.gz --out emb.parquet --per-position

The hidden state is the final norm's output, before the LM head (`model.hidden`). Both strands
are combined as PlantCaduceus combines them for its classifiers (kuleshov-group/PlantCaduceus,
src/fine_tune.py, `extract_embeddings`): Caduceus-PS' last hidden state has 2D channels in the
published split view, [h_fwd, flip_{L,C}(h_rc)] (rcps.to_channels); PlantCaduceus takes the
first half plus the second half flipped back along channels, halved. In nanodna's folded batch
that is

    e[t] = (h_fwd[t] + h_rc[L-1-t]) / 2        (D channels per position)

i.e. the two strands' states of the same base pair, averaged. Other models (Caduceus-Ph,
transformers) get the same formula from hidden(x) and hidden(rc(x)): post-hoc conjoining. So
e(rc(x)) = flip_L(e(x)) exactly, and the per-window mean is strand-independent.

Input: a table with a `sequence` column (parquet / CSV / TSV, optionally gzipped; each row is a
window, embedded whole), or a FASTA file (.fa/.fasta/.fna, optionally gzipped) whose records
are cut into consecutive windows of --window bases (default the model's max_len; a record's
last, shorter piece is kept). Output: .npy (an (R, D) array, or (R, L, D) with --per-position,
which needs equal window lengths) or .parquet (columns name, start, length, embedding).
Windows run in fixed-size batches (the last padded), so each window length compiles once.

Glossary: B windows in a batch, L window length, D d_model, R windows in all (rows of the
output).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Iterator

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from jaxtyping import Array, Float, Int
from tqdm.auto import tqdm

from nanodna import tokenizer
from nanodna.checkpoint import load_model
from nanodna.data import DataError
from nanodna.data import tables as data_tables
from nanodna.data.fasta import read_fasta
from nanodna.errors import UserError, fail
from nanodna.evaluation.tables import encode_sequence

FASTA_SUFFIXES = (".fa", ".fasta", ".fna", ".fa.gz", ".fasta.gz", ".fna.gz")


class EmbedError(UserError):
    """Input or output that cannot be embedded / written; one line."""


def strand_hidden(model, tokens_BL: Int[Array, "B L"]) -> Float[Array, "B L D"]:
    """(h_fwd[t] + h_rc[L-1-t]) / 2 from one model call on the folded batch [x, rc(x)]: for
    Caduceus-PS exactly PlantCaduceus' average of the split view's two halves (module doc).
    The folded batch is also what rcps_swap_strands needs."""
    both_BL = jnp.concatenate([tokens_BL, tokenizer.reverse_complement(tokens_BL)], axis=0)
    h_fwd, h_rc = jnp.split(model.hidden(both_BL).astype(jnp.float32), 2, axis=0)
    return 0.5 * (h_fwd + jnp.flip(h_rc, axis=1))


@eqx.filter_jit
def _embed_batch(model, tokens_BL, per_position: bool):
    h_BLD = strand_hidden(model, tokens_BL)
    return h_BLD if per_position else h_BLD.mean(axis=1)


def read_windows(path: str, window: int | None) -> Iterator[tuple[str, int, np.ndarray]]:
    """Yield (name, start, token ids) per window of a table or FASTA file (streamed)."""
    try:
        if path.lower().endswith(FASTA_SUFFIXES):
            yield from _fasta_windows(path, window)
            return
        row = 0
        for batch in data_tables.read_table_batches(path, ["sequence"]):
            for value in batch["sequence"]:
                _, ids = encode_sequence(value, f"{path}: row {row}", EmbedError)
                yield str(row), 0, ids
                row += 1
    except DataError as e:
        raise EmbedError(str(e)) from None


def _fasta_windows(path: str, window: int | None) -> Iterator[tuple[str, int, np.ndarray]]:
    if not window or window < 1:
        raise EmbedError("FASTA input needs a window length: --window, or a model with max_len")
    name, buf, start = None, np.zeros(0, np.uint8), 0
    for piece in read_fasta(path):
        if piece.name != name:  # a new record: flush the last one's tail
            if len(buf):
                yield name, start, buf
            name, buf, start = piece.name, np.zeros(0, np.uint8), 0
        buf = np.concatenate([buf, piece.ids_L])
        while len(buf) >= window:
            yield name, start, buf[:window]
            buf, start = buf[window:], start + window
    if len(buf):
        yield name, start, buf


def embed_windows(
    model, windows, batch_size: int = 64, per_position: bool = False, progress: bool = False
) -> Iterator[tuple[list[tuple[str, int, int]], np.ndarray]]:
    """Yield (keys, embeddings) per batch: keys (name, start, length) per window, embeddings
    (b, D) or (b, L, D). Consecutive windows of equal length share a batch; the last batch
    of each run is padded to batch_size, so each length compiles once."""
    if batch_size < 1:
        raise EmbedError(f"batch size must be >= 1, got {batch_size}")
    model = eqx.nn.inference_mode(model)
    t0, n = time.perf_counter(), 0
    with tqdm(unit="window", desc="embedding", disable=not progress) as bar:
        keys, rows = [], []

        def flush():
            tokens_BL = np.stack(rows + [rows[-1]] * (batch_size - len(rows))).astype(np.int32)
            out = np.asarray(_embed_batch(model, tokens_BL, per_position))[: len(rows)]
            bar.update(len(rows))
            bar.set_postfix(windows_per_s=f"{(n + len(rows)) / (time.perf_counter() - t0):.1f}")
            return list(keys), out

        for name, start, ids in windows:
            if rows and (len(ids) != len(rows[0]) or len(rows) == batch_size):
                yield flush()
                n += len(rows)
                keys, rows = [], []
            keys.append((name, start, len(ids)))
            rows.append(ids)
        if rows:
            yield flush()


def write_embeddings(path: str, batches, per_position: bool) -> int:
    """Collect the batches and write .npy or .parquet; returns the number of windows."""
    keys, arrays = [], []
    for k, a in batches:
        keys += k
        arrays.append(a)
    if not arrays:
        raise EmbedError("no windows to embed")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if path.endswith(".npy"):
        if per_position and len({a.shape[1] for a in arrays}) > 1:
            raise EmbedError("--per-position .npy needs windows of one length; write .parquet")
        np.save(path, np.concatenate(arrays))
    elif path.endswith(".parquet"):
        rows = [x for a in arrays for x in a]
        emb_type = pa.list_(pa.float32()) if not per_position else pa.list_(pa.list_(pa.float32()))
        table = pa.table({
            "name": [k[0] for k in keys],
            "start": pa.array([k[1] for k in keys], pa.int64()),
            "length": pa.array([k[2] for k in keys], pa.int64()),
            "embedding": pa.array([x.tolist() for x in rows], emb_type),
        })
        pq.write_table(table, path)
    else:
        raise EmbedError(f"{path}: --out must end in .npy or .parquet")
    return len(keys)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True,
                   help="training workdir (latest step) or one step's folder")
    p.add_argument("--data", required=True, help="table with a `sequence` column, or a FASTA")
    p.add_argument("--out", required=True, help=".npy or .parquet")
    p.add_argument("--per-position", action="store_true", help="one vector per base, not per window")
    p.add_argument("--window", type=int, default=None, help="FASTA window length (default max_len)")
    p.add_argument("--batch-size", type=int, default=64, help="windows per forward pass")
    args = p.parse_args(argv)
    logging.getLogger("absl").setLevel(logging.ERROR)
    try:
        if not args.out.endswith((".npy", ".parquet")):
            raise EmbedError(f"{args.out}: --out must end in .npy or .parquet")
        model, config, _ = load_model(args.checkpoint)
        if not hasattr(model, "hidden"):
            raise EmbedError(f"{config.model.arch} models have no hidden-state method")
        windows = read_windows(args.data, args.window or config.model.max_len)
        t0 = time.perf_counter()
        batches = embed_windows(model, windows, args.batch_size, args.per_position, progress=True)
        n = write_embeddings(args.out, batches, args.per_position)
    except UserError as e:
        return fail(e)
    print(f"{n} windows embedded ({n / (time.perf_counter() - t0):.1f} windows/s); "
          f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
