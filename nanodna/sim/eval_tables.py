"""The conservation eval table of the reference species, and the scores that bound it.

Positives are strongly constrained sites (at most `positive_max_rate` of the neutral rate),
negatives neutral ones; both outside repeats and both present in the ancestor, so every row has
an exact alignment column. Negatives are drawn with the same reference-base mix as positives
and about the same window-GC mix, so composition carries no signal.

Scores reported on the table (ROC AUC):
    alignment       fraction of the other species that keep the reference base at the aligned
                    site: the ceiling, what a multiple alignment knows
    local context   p(ref | +-k flanks) from counts over every genome, both strands, leaving the
                    site itself out: roughly the best a single-sequence model can hope for
    trivial         window GC, target is G/C, frequency of the target's centred k-mer: must sit
                    near 0.5, or composition gives the answer away

Glossary: R eval rows; M rows of the small subset; W window length; L sequence length;
4 the four bases.
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Bool, Float, Int, UInt8

from nanodna import tokenizer
from nanodna.data import DataError
from nanodna.evaluation.metrics import roc_auc
from nanodna.sim import ancestor as anc_lib
from nanodna.sim.config import SimConfig

CONSTRAINED_CLASSES = (anc_lib.CODON, anc_lib.SPLICE, anc_lib.MOTIF, anc_lib.CNE)


def sample_sites(rng: np.random.Generator, cfg: SimConfig, codes: UInt8[np.ndarray, " L"],
                 cls: UInt8[np.ndarray, " L"], rate: Float[np.ndarray, " L"],
                 repeat: Bool[np.ndarray, " L"], anc_pos: Int[np.ndarray, " L"],
                 lo: int, hi: int) -> tuple[Int[np.ndarray, " R"], Int[np.ndarray, " R"]]:
    """Balanced (positions, labels) with targets in [lo, hi), shuffled; base mix matched."""
    half = cfg.n_eval // 2
    inside = np.zeros(len(codes), bool)
    inside[lo:hi] = True
    usable = inside & ~repeat & (anc_pos >= 0)
    pos_ok = usable & (rate <= cfg.positive_max_rate) & np.isin(cls, CONSTRAINED_CLASSES)
    neg_ok = usable & (rate >= 1.0) & np.isin(cls, anc_lib.NEUTRAL_CLASSES)
    candidates = np.flatnonzero(pos_ok)
    if len(candidates) < half:
        raise DataError(f"only {len(candidates)} constrained sites for {half} positives: "
                        "lower n_eval or raise genome_length")
    positives = np.sort(rng.choice(candidates, half, replace=False))
    # negatives: the positives' reference-base mix exactly, and their window-GC mix roughly
    # (importance weights over GC bins), so neither composition score can tell the labels apart
    half_w = cfg.window // 2
    gc_cum = np.concatenate([[0], np.cumsum((codes == 1) | (codes == 2))])
    window_gc = np.zeros(len(codes))
    centres = np.arange(lo, hi)
    window_gc[lo:hi] = (gc_cum[centres + half_w + 1] - gc_cum[centres - half_w + 1]) / cfg.window
    edges = np.quantile(window_gc[positives], np.linspace(0, 1, 11)[1:-1])
    negatives = []
    for base in range(4):
        pos_b = positives[codes[positives] == base]
        pool = np.flatnonzero(neg_ok & (codes == base))
        if len(pool) < len(pos_b):
            raise DataError(f"only {len(pool)} neutral '{tokenizer.BASES[base]}' sites for {len(pos_b)} "
                            "negatives: lower n_eval or raise genome_length")
        bin_pos = np.bincount(np.searchsorted(edges, window_gc[pos_b]), minlength=10)
        bin_pool = np.searchsorted(edges, window_gc[pool])
        weight = bin_pos[bin_pool] / np.maximum(np.bincount(bin_pool, minlength=10)[bin_pool], 1)
        weight = weight + 1e-3 * weight.max()  # keep every site reachable, bins may be thin
        negatives.append(rng.choice(pool, len(pos_b), replace=False, p=weight / weight.sum()))
    sites = np.concatenate([positives, *negatives])
    labels = np.concatenate([np.ones(half, np.int64), np.zeros(half, np.int64)])
    order = rng.permutation(len(sites))
    return sites[order], labels[order]


def small_subset(labels: Int[np.ndarray, " R"], n_small: int) -> Int[np.ndarray, " M"]:
    """Row indices of a balanced subset: the first n_small/2 of each label, in table order."""
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    return np.sort(np.concatenate([pos[: n_small // 2], neg[: n_small // 2]]))


def _context_codes(x: UInt8[np.ndarray, " L"], k: int) -> tuple[np.ndarray, np.ndarray]:
    """(flank code, centre) of every position with k bases on each side (positions k..L-k-1)."""
    n = len(x) - 2 * k
    if n <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.uint8)
    code = np.zeros(n, np.int64)
    for j in range(-k, k + 1):
        if j:
            code = code * 4 + x[k + j : k + j + n]
    return code, x[k : k + n]


def context_counts(seqs: list[np.ndarray], query_ctx: Int[np.ndarray, " R"], k: int
                   ) -> Int[np.ndarray, "R 4"]:
    """How often each base sits between each query's flanks, over all seqs and both strands."""
    uniq = np.unique(query_ctx)
    counts = np.zeros(len(uniq) * 4, np.int64)
    # context code -> query row: a dense table while it fits in 64 MiB, else a sorted search
    dense = 4 ** (2 * k) <= 1 << 24
    if dense:
        table = np.full(4 ** (2 * k), -1, np.int32)
        table[uniq] = np.arange(len(uniq))
    for x in seqs:
        for strand in (x, tokenizer.reverse_complement_codes(x)):
            code, centre = _context_codes(strand, k)
            if dense:
                idx = table[code]
                hit = idx >= 0
            else:
                idx = np.minimum(np.searchsorted(uniq, code), len(uniq) - 1)
                hit = uniq[idx] == code
            counts += np.bincount(idx[hit] * 4 + centre[hit], minlength=len(counts))
    return counts.reshape(-1, 4)[np.searchsorted(uniq, query_ctx)]


def query_contexts(windows_RW: UInt8[np.ndarray, "R W"], centre: int, k: int) -> Int[np.ndarray, " R"]:
    code = np.zeros(len(windows_RW), np.int64)
    for j in range(-k, k + 1):
        if j:
            code = code * 4 + windows_RW[:, centre + j]
    return code


def local_context_score(seqs: list[np.ndarray], windows_RW: UInt8[np.ndarray, "R W"], centre: int,
                        k: int) -> Float[np.ndarray, " R"]:
    """p(ref | flanks) with add-one smoothing, the query's own occurrence left out."""
    n_R4 = context_counts(seqs, query_contexts(windows_RW, centre, k), k)
    ref = windows_RW[:, centre].astype(np.int64)
    n_R4[np.arange(len(ref)), ref] -= 1  # the site itself is in the reference genome
    return (n_R4[np.arange(len(ref)), ref] + 1) / (n_R4.sum(1) + 4)


def kmer_frequency(seqs: list[np.ndarray], windows_RW: UInt8[np.ndarray, "R W"], centre: int,
                   kmer: int) -> Float[np.ndarray, " R"]:
    """Genome-wide count of the k-mer centred on the target (k odd)."""
    half = kmer // 2
    n_R4 = context_counts(seqs, query_contexts(windows_RW, centre, half), half)
    return n_R4[np.arange(len(n_R4)), windows_RW[:, centre]].astype(np.float64)


def auc(labels: Int[np.ndarray, " R"], score: Float[np.ndarray, " R"]) -> float:
    """ROC AUC by the project's metric (nanodna.evaluation.metrics.roc_auc)."""
    return roc_auc(labels, score)


def score_table(cfg: SimConfig, seqs: list[np.ndarray], windows_RW: UInt8[np.ndarray, "R W"],
                labels: Int[np.ndarray, " R"], align_score: Float[np.ndarray, " R"]) -> dict:
    """ROC AUC of the alignment ceiling, the local-context model and the trivial baselines."""
    centre = cfg.window // 2 - 1
    gc_RW = (windows_RW == 1) | (windows_RW == 2)
    by_k = {k: auc(labels, local_context_score(seqs, windows_RW, centre, k)) for k in cfg.context_ks}
    best_k = max(by_k, key=by_k.get)
    return {
        "alignment": auc(labels, align_score),
        "local_context": {"best": by_k[best_k], "best_k": best_k,
                          "by_k": {str(k): v for k, v in by_k.items()}},
        "window_gc": auc(labels, gc_RW.mean(1)),
        "target_gc": auc(labels, gc_RW[:, centre].astype(np.float64)),
        "kmer_frequency": auc(labels, kmer_frequency(seqs, windows_RW, centre, cfg.kmer_baseline_k)),
    }
