"""Training and validation batches from genome stores, deterministic and exactly resumable.

Each element is a `nanodna.data.batch.Batch` (tokens_BL, targets_BL, weights_BL), numpy on the
host. Every batch is a pure function of (seed, batch index): window positions come from a random
generator keyed by (seed, stream, index), masking from one keyed by (seed, stream, index,
process). So an iterator's whole state is the index of its next batch, resuming is exact, and
the training loop can save that state (JSON) next to the model in its checkpoint. Grain runs
the batch function ahead of the consumer on background threads (or worker processes); where
Grain is not installed the same batches come from a plain loop.

Windows are drawn uniformly over all VALID windows: those that fit inside one chromosome and
hold at most max_n_frac unknown bases (N). When the stream is built, a cumulative N count per
chromosome (vectorised; skipped for chromosomes with too few N to matter) turns each chromosome
into runs of valid start positions; chromosomes and assemblies without one are dropped, and a
stream with no valid window at all refuses at start-up with one line. So a run never dies
mid-way for lack of a window, however gappy the assembly, and `summary()` says how much of the
genome is usable. Assemblies are sampled in proportion to their valid windows unless
`assembly_weights` says otherwise. Validation holds out
whole chromosomes or assemblies: the training stream never reads held-out sequence, and the
validation stream is a fixed, finite list of windows from the held-out part.

Multi-host: each global batch holds batch_size * process_count windows; process p gets rows
[p * batch_size, (p + 1) * batch_size). Window positions depend only on (seed, index), not on
the process count.

Glossary: B per-process batch size, G global batch size (B * process count), L seq_len,
W window length (L, or L + 1 for causal LM: inputs and shifted targets), R windows read (any
number).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
from jaxtyping import Bool, Int64, UInt8

from nanodna import tokenizer
from nanodna.data import DataError, masking
from nanodna.data.batch import Batch
from nanodna.data.config import DataConfig
from nanodna.data.genome import Chromosome, GenomeStore

_TRAIN, _EVAL = 1, 2  # stream ids in random keys, so train and eval never share randomness
_WINDOWS, _MASKS = 0, 1
_SCAN_CHUNK = 1 << 24  # window starts per step of the N scan (bounds its memory to ~100 MB)


def _validate(cfg: DataConfig) -> None:
    if not cfg.store_dirs:
        raise DataError("data.store_dirs is empty: give at least one genome store")
    if cfg.mode not in ("mlm", "clm"):
        raise DataError(f"data.mode must be 'mlm' or 'clm', got {cfg.mode!r}")
    if cfg.seq_len < 1 or cfg.batch_size < 1:
        raise DataError("data.seq_len and data.batch_size must be positive")
    if cfg.seed < 0:
        raise DataError(f"data.seed must be non-negative, got {cfg.seed}")
    if not 0.0 <= cfg.max_n_frac <= 1.0:
        raise DataError(f"data.max_n_frac must be in [0, 1], got {cfg.max_n_frac}")


def valid_runs(
    tokens: UInt8[np.ndarray, " R"] | None, chrom: Chromosome, window: int, max_n_frac: float
) -> tuple[Int64[np.ndarray, " r"], Int64[np.ndarray, " r"]]:
    """Runs of valid window starts in one chromosome, as (first start, run length), the starts
    being offsets into the assembly's tokens. A window is valid when its count of unknown bases
    is <= max_n_frac * window. One cumulative N count, scanned in chunks; a chromosome with too
    few N in all (manifest n_frac) is one run without a scan, and so is every chromosome when
    `tokens` is None (no N filter)."""
    n_starts = chrom.length - window + 1
    if n_starts < 1:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    few_n = round(chrom.n_frac * chrom.length) <= max_n_frac * window
    if tokens is None or max_n_frac >= 1.0 or few_n:  # no window can fail
        return np.array([chrom.offset], np.int64), np.array([n_starts], np.int64)
    firsts, stops = [], []
    prev_ok = False  # validity of the start just before the chunk
    for b in range(0, n_starts, _SCAN_CHUNK):
        e = min(b + _SCAN_CHUNK, n_starts)
        seg = np.asarray(tokens[chrom.offset + b : chrom.offset + e + window - 1])
        cum = np.concatenate([[0], np.cumsum(seg == tokenizer.UNK, dtype=np.int32)])
        ok = cum[window:] - cum[:-window] <= max_n_frac * window  # starts b .. e-1
        edges = np.diff(ok.astype(np.int8), prepend=np.int8(prev_ok))
        firsts.append(b + np.flatnonzero(edges == 1))  # a run of valid starts begins
        stops.append(b + np.flatnonzero(edges == -1))  # ... and ends (exclusive)
        prev_ok = bool(ok[-1])
    if prev_ok:
        stops.append(np.array([n_starts]))
    first, stop = np.concatenate(firsts), np.concatenate(stops)
    return chrom.offset + first.astype(np.int64), (stop - first).astype(np.int64)


class WindowSampler:
    """Uniform draws over every valid window (see `valid_runs`) of the given chromosomes.

    All runs of valid starts are laid end to end in one table, so a draw is one
    `searchsorted`: no Python loop per window, and no redraws. For chromosomes without N the
    runs are the chromosomes, and the draws are those of a plain uniform start.

    Raises DataError when no chromosome has a valid window, or when `weights` gives a positive
    weight to an assembly without one.
    """

    def __init__(
        self,
        chromosomes: list[Chromosome],
        window: int,
        weights: dict | None,
        tokens_of=None,
        max_n_frac: float = 1.0,
    ):
        all_asm = sorted({c.assembly for c in chromosomes})
        if weights is not None:
            unknown = sorted(set(weights) - set(all_asm))
            if unknown:
                raise DataError(f"assembly_weights names unknown assembly {unknown[0]!r}")
        self.window, self.max_n_frac = window, max_n_frac
        self.total_bp = sum(c.length for c in chromosomes)
        self.n_chromosomes = len(chromosomes)
        long_enough = [c for c in chromosomes if c.length >= window]
        if not long_enough:
            raise DataError(f"no chromosome is long enough for a {window}-bp window")
        runs = []  # (chromosome, run firsts, run lengths)
        for c in long_enough:
            tokens = None if tokens_of is None else tokens_of(c.assembly)
            first, count = valid_runs(tokens, c, window, max_n_frac)
            if len(first):
                runs.append((c, first, count))
        self.possible_starts = sum(c.length - window + 1 for c in long_enough)
        self.skipped = [f"{c.assembly}/{c.name}" for c in chromosomes
                        if all(c is not r[0] for r in runs)]
        if not runs:
            raise DataError(
                f"no window with N fraction <= max_n_frac={max_n_frac} anywhere in "
                f"{len(chromosomes)} chromosome(s) ({self.total_bp:,} bp) for {window}-bp "
                "windows: the sequence is mostly N, or max_n_frac / seq_len is too strict"
            )
        self.assemblies = sorted({c.assembly for c, _, _ in runs})
        self.n_used_chromosomes = len(runs)
        asm_index = {a: i for i, a in enumerate(self.assemblies)}
        runs.sort(key=lambda r: asm_index[r[0].assembly])  # assemblies contiguous
        self.run_asm = np.concatenate([np.full(len(f), asm_index[c.assembly]) for c, f, _ in runs])
        self.run_first = np.concatenate([f for _, f, _ in runs])
        n_starts = np.concatenate([n for _, _, n in runs])
        self.cum_starts = np.cumsum(n_starts)  # end of each run in the table of starts
        self.first_start = self.cum_starts - n_starts
        self.usable_starts = int(self.cum_starts[-1])
        # Per assembly: its slice [asm_first, asm_first + asm_count) of the start table.
        counts = np.bincount(self.run_asm, weights=n_starts, minlength=len(self.assemblies))
        self.asm_count = counts.astype(np.int64)
        self.asm_first = np.cumsum(self.asm_count) - self.asm_count
        if weights is None:
            w = self.asm_count.astype(np.float64)
        else:
            dead = sorted(a for a in weights if a not in asm_index and float(weights[a]) > 0)
            if dead:
                raise DataError(
                    f"assembly_weights gives weight to {dead[0]!r}, which has no "
                    f"{window}-bp window with N fraction <= max_n_frac={max_n_frac}"
                )
            w = np.array([float(weights.get(a, 0.0)) for a in self.assemblies])
            if (w < 0).any() or w.sum() <= 0:
                raise DataError("assembly_weights must be non-negative with a positive sum")
        self.asm_prob = w / w.sum()

    @property
    def usable_fraction(self) -> float:
        """Valid window starts / all starts where a window fits in a chromosome."""
        return self.usable_starts / max(self.possible_starts, 1)

    def draw(
        self, rng: np.random.Generator, n: int
    ) -> tuple[Int64[np.ndarray, " R"], Int64[np.ndarray, " R"]]:
        """n random valid windows as (assembly index, start offset into the assembly's tokens)."""
        asm = rng.choice(len(self.assemblies), size=n, p=self.asm_prob)
        r = np.floor(rng.random(n) * self.asm_count[asm]).astype(np.int64)
        g = self.asm_first[asm] + r  # position in the table of all valid starts
        k = np.searchsorted(self.cum_starts, g, side="right")
        return asm.astype(np.int64), self.run_first[k] + (g - self.first_start[k])


class WindowReader:
    """Reads windows out of one or more genome stores (memory maps, opened lazily).

    Lazily, so that the object pickles small when Grain sends it to worker processes.
    """

    def __init__(self, store_dirs: tuple[str, ...], assemblies: list[str], window: int):
        self.store_dirs, self.assemblies, self.window = store_dirs, assemblies, window
        self._stores: dict[str, GenomeStore] | None = None

    def __getstate__(self):
        return {**self.__dict__, "_stores": None}

    def _store_of(self, assembly: str) -> GenomeStore:
        if self._stores is None:
            self._stores = {}
            for d in self.store_dirs:
                store = GenomeStore(d)
                for a in store.assemblies:
                    self._stores[a] = store
        return self._stores[assembly]

    def read(
        self, asm: Int64[np.ndarray, " R"], start: Int64[np.ndarray, " R"]
    ) -> tuple[UInt8[np.ndarray, "R W"], Bool[np.ndarray, "R W"]]:
        """Gather windows [start, start + W) of the given assemblies, as (ids, repeat)."""
        n, W = len(start), self.window
        ids_RW = np.empty((n, W), np.uint8)
        repeat_RW = np.empty((n, W), bool)
        cols_W = np.arange(W)
        for a in np.unique(asm):
            rows = np.flatnonzero(asm == a)
            store = self._store_of(self.assemblies[a])
            s = start[rows]
            ids_RW[rows] = store.tokens(self.assemblies[a])[s[:, None] + cols_W]
            # Repeat flags are bit-packed: fetch the covering bytes, unpack, shift into place.
            packed = store.repeat_packed(self.assemblies[a])
            byte_idx = np.minimum(s[:, None] // 8 + np.arange(W // 8 + 2), len(packed) - 1)
            bits = np.unpackbits(packed[byte_idx], axis=1)
            repeat_RW[rows] = np.take_along_axis(bits, (s % 8)[:, None] + cols_W, axis=1) > 0
        return ids_RW, repeat_RW


def _load_chromosomes(cfg: DataConfig) -> tuple[list[Chromosome], list[Chromosome]]:
    """(training, held-out) chromosomes of all stores, checking the config against them."""
    chromosomes: list[Chromosome] = []
    owner: dict[str, str] = {}
    for d in cfg.store_dirs:
        try:
            store = GenomeStore(d)
        except (FileNotFoundError, ValueError) as e:
            raise DataError(str(e)) from None
        for a in store.assemblies:
            if a in owner:
                raise DataError(f"assembly {a!r} is in two stores: {owner[a]} and {d}")
            owner[a] = d
        chromosomes += store.chromosomes
    known = {c.name for c in chromosomes} | {f"{c.assembly}/{c.name}" for c in chromosomes}
    for name in cfg.holdout_chromosomes:
        if name not in known:
            raise DataError(f"holdout chromosome {name!r} is not in any store")
    for name in cfg.holdout_assemblies:
        if name not in owner:
            raise DataError(f"holdout assembly {name!r} is not in any store")
    held = set(cfg.holdout_chromosomes)

    def is_held_out(c: Chromosome) -> bool:
        qualified = f"{c.assembly}/{c.name}"
        return c.assembly in cfg.holdout_assemblies or c.name in held or qualified in held

    train = [c for c in chromosomes if not is_held_out(c)]
    return train, [c for c in chromosomes if is_held_out(c)]


class WindowBatches:
    """Random-access batches: `batch(i)` is this process's share of global batch i.

    `train=True`: an endless stream of fresh random windows. `train=False`: a fixed list of
    `eval_windows` windows from the held-out chromosomes, in ceil(eval_windows / G) batches;
    the last batch is padded with zero-weight rows so every batch has the same shape.
    """

    def __init__(self, cfg: DataConfig, *, train: bool, process_index: int, process_count: int):
        _validate(cfg)
        if not 0 <= process_index < process_count:
            raise DataError(f"process_index {process_index} not in [0, {process_count})")
        self.cfg, self.train = cfg, train
        self.process_index, self.process_count = process_index, process_count
        self.global_batch = cfg.batch_size * process_count
        self.window = cfg.seq_len + (1 if cfg.mode == "clm" else 0)
        train_chroms, held_chroms = _load_chromosomes(cfg)
        if not train and not held_chroms:
            raise DataError("no validation holdout: set holdout_chromosomes or holdout_assemblies")
        chroms = train_chroms if train else held_chroms
        if not chroms:
            raise DataError("every chromosome is held out: nothing left to train on")
        weights = cfg.assembly_weights if train else None
        stores = {a: s for s in map(GenomeStore, cfg.store_dirs) for a in s.assemblies}
        self.sampler = WindowSampler(
            chroms, self.window, weights, lambda a: stores[a].tokens(a), cfg.max_n_frac
        )
        self.reader = WindowReader(cfg.store_dirs, self.sampler.assemblies, self.window)
        self.stream = _TRAIN if train else _EVAL
        self.repeat_weight = cfg.repeat_weight_train if train else cfg.repeat_weight_eval
        if not train:
            if cfg.eval_windows < 1:
                raise DataError("data.eval_windows must be positive")
            n, rows = cfg.eval_windows, np.arange(cfg.eval_windows)
            self.eval_asm, self.eval_start, _, _ = self._draw_windows((self.stream, 0), n, rows)

    def __len__(self) -> int:
        """Number of batches: endless (sys.maxsize) for training."""
        if self.train:
            return sys.maxsize
        return math.ceil(self.cfg.eval_windows / self.global_batch)

    def summary(self) -> str:
        """One line for the start-up log: how much of the genome can feed this stream."""
        sp = self.sampler
        line = (
            f"{'train' if self.train else 'validation'} data: {sp.usable_fraction:.1%} of "
            f"{sp.total_bp:,} bp usable ({sp.usable_starts:,} {self.window}-bp windows with N "
            f"fraction <= {self.cfg.max_n_frac}) in {len(sp.assemblies)} "
            f"assembl{'y' if len(sp.assemblies) == 1 else 'ies'}, "
            f"{sp.n_used_chromosomes} of {sp.n_chromosomes} chromosomes"
        )
        if sp.skipped:
            more = f" (+{len(sp.skipped) - 3} more)" if len(sp.skipped) > 3 else ""
            line += f"; skipped (no valid window): {', '.join(sp.skipped[:3])}{more}"
        return line

    def _draw_windows(self, key: tuple, n_global: int, rows: np.ndarray):
        """(assembly, start, ids, repeat) of `rows` of a draw of n_global windows.

        The sampler draws valid windows only, so one draw is enough. Every process makes the
        same draws for the whole global batch and keeps its rows, so processes agree without
        talking to each other.
        """
        rng = np.random.default_rng((self.cfg.seed, *key, _WINDOWS, 0))
        a_all, s_all = self.sampler.draw(rng, n_global)
        asm, start = a_all[rows], s_all[rows]
        ids_RW, repeat_RW = self.reader.read(asm, start)
        return asm, start, ids_RW, repeat_RW

    def batch(self, index: int) -> Batch:
        """The Batch of this process's rows of global batch `index`."""
        B, p = self.cfg.batch_size, self.process_index
        rows = np.arange(p * B, (p + 1) * B)
        if self.train:
            key = (self.stream, index)
            _, _, ids_BW, repeat_BW = self._draw_windows(key, self.global_batch, rows)
            rng = np.random.default_rng((self.cfg.seed, self.stream, index, _MASKS, p))
            if self.cfg.rc_augment:
                ids_BW, repeat_BW = _random_reverse_complement(ids_BW, repeat_BW, rng)
            return self._targets(ids_BW, repeat_BW, rng)
        return self._eval_batch(index * self.global_batch + rows)

    def _eval_batch(self, rows: np.ndarray) -> Batch:
        # Masks come from each window's own key: the validation set is the same whatever the
        # batch size or process count, so validation losses stay comparable.
        real = rows[rows < self.cfg.eval_windows]
        ids_BW, repeat_BW = self.reader.read(self.eval_asm[real], self.eval_start[real])
        parts = [
            self._targets(
                ids_BW[i : i + 1],
                repeat_BW[i : i + 1],
                np.random.default_rng((self.cfg.seed, self.stream, int(r), _MASKS)),
            )
            for i, r in enumerate(real)
        ]
        pad = len(rows) - len(real)
        if pad:
            L = self.cfg.seq_len
            parts.append(
                Batch(
                    tokens_BL=np.full((pad, L), tokenizer.PAD, np.int32),
                    targets_BL=np.full((pad, L), tokenizer.PAD, np.int32),
                    weights_BL=np.zeros((pad, L), np.float32),
                )
            )
        return Batch(*(np.concatenate(field) for field in zip(*parts)))

    def _targets(self, ids_BW, repeat_BW, rng: np.random.Generator) -> Batch:
        if self.cfg.mode == "clm":
            return masking.clm_shift(ids_BW, repeat_BW, repeat_weight=self.repeat_weight)
        return masking.mlm_mask(
            ids_BW,
            repeat_BW,
            rng,
            mask_prob=self.cfg.mask_prob,
            mask_frac=self.cfg.mask_frac,
            random_frac=self.cfg.random_frac,
            repeat_weight=self.repeat_weight,
        )

    def fingerprint(self) -> dict[str, Any]:
        """What must match for a saved iterator state to mean the same batches."""
        c = self.cfg
        return {
            "train": self.train,
            "seed": c.seed,
            "seq_len": c.seq_len,
            "batch_size": c.batch_size,
            "mode": c.mode,
            "process": [self.process_index, self.process_count],
        }


def _random_reverse_complement(ids_BW, repeat_BW, rng: np.random.Generator):
    """Reverse-complement a random half of the windows (strand augmentation)."""
    flip = rng.random(len(ids_BW)) < 0.5
    ids_BW, repeat_BW = ids_BW.copy(), repeat_BW.copy()
    ids_BW[flip] = tokenizer.reverse_complement(ids_BW[flip])
    repeat_BW[flip] = repeat_BW[flip][:, ::-1]
    return ids_BW, repeat_BW


class BatchIterator:
    """Iterates batches start, start + 1, ...; `get_state()`/`set_state()` resume exactly.

    The state is JSON: {"next_batch": i, ...fingerprint}. Batches are produced ahead by Grain
    (threads, or worker processes with worker_count > 0); a plain loop where Grain is absent.
    """

    def __init__(self, batches: WindowBatches, start: int = 0):
        self.batches = batches
        self.next_batch = start
        self._it: Iterator | None = None

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> Batch:
        if self._it is None:
            self._it = _open(self.batches, self.next_batch)
        batch = next(self._it)
        self.next_batch += 1
        # Plain arrays: worker batches live in shared memory that Grain frees with the array.
        return Batch(*(np.array(v) for v in batch))

    def __len__(self) -> int:
        return len(self.batches)

    def get_state(self) -> dict:
        return {"next_batch": self.next_batch, **self.batches.fingerprint()}

    def set_state(self, state: dict) -> None:
        expected = self.batches.fingerprint()
        changed = {k: (state.get(k), v) for k, v in expected.items() if state.get(k) != v}
        if changed:
            k, (old, new) = next(iter(changed.items()))
            raise DataError(f"saved data iterator state does not fit: {k} was {old}, now {new}")
        self.next_batch = int(state["next_batch"])
        self._it = None  # restart the producer at the new position


def _open(batches: WindowBatches, start: int) -> Iterator[Batch]:
    cfg = batches.cfg
    try:
        import grain
    except ImportError:  # e.g. a GPU image without Grain: same batches, produced inline
        return (batches.batch(i) for i in range(start, len(batches)))
    ds = grain.MapDataset.range(start, len(batches)).map(batches.batch)
    if cfg.worker_count > 0:
        _absl_flags_parsed()
        it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.worker_count))
    elif cfg.prefetch > 0:
        options = grain.ReadOptions(num_threads=1, prefetch_buffer_size=cfg.prefetch)
        it_ds = ds.to_iter_dataset(options)
    else:
        return (batches.batch(i) for i in range(start, len(batches)))
    return iter(it_ds)


def _absl_flags_parsed() -> None:
    """Grain's worker processes read absl flags, which fail unless parsed (google/grain#1355).

    Scripts that do not start through absl.app never parse them: take the defaults.
    """
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def make_train_iterator(
    cfg: DataConfig, *, process_index: int = 0, process_count: int = 1
) -> BatchIterator:
    """Endless iterator of training batches (this process's share); see the module docstring.

    Process 0 prints the one-line summary of the usable genome (`WindowBatches.summary`).
    Raises DataError (one line) when the stores cannot feed the stream."""
    batches = WindowBatches(
        cfg, train=True, process_index=process_index, process_count=process_count
    )
    if process_index == 0:
        print(batches.summary())
    return BatchIterator(batches)


def make_eval_iterator(
    cfg: DataConfig, *, process_index: int = 0, process_count: int = 1
) -> BatchIterator:
    """Finite iterator over the fixed validation set (call again for a fresh pass)."""
    return BatchIterator(
        WindowBatches(cfg, train=False, process_index=process_index, process_count=process_count)
    )
