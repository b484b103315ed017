"""Evolve one species from the ancestor along its branch of a star tree.

Substitutions follow HKY85 (transitions kappa times as likely as transversions, equilibrium at
the background composition), each site at its own rate: constrained sites mutate at a small
fraction of the neutral rate. Indels and lineage-specific insertions (young transposons, newly
gained enhancers) fall only between neutral sites, so every constrained ancestral site keeps an
exact position in every species and the alignment is known, not inferred. A species also loses a few enhancers and CNEs: those
evolve neutrally in that lineage.

Glossary: L species length; A ancestral length.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from jaxtyping import Bool, Float, Int, UInt8

from nanodna.sim import ancestor as anc_lib
from nanodna.sim.ancestor import Ancestor, Background, Families
from nanodna.sim.config import SimConfig

# classes an indel may touch: neutral DNA, intron interiors and transposons (never a frame)
INDEL_CLASSES = (anc_lib.NEUTRAL, anc_lib.INTRON, anc_lib.REPEAT)


@dataclass
class Species:
    name: str
    branch: float
    codes: UInt8[np.ndarray, " L"]
    cls: UInt8[np.ndarray, " L"]
    rate: Float[np.ndarray, " L"]  # the rate this lineage evolved at (losses set to neutral)
    repeat: Bool[np.ndarray, " L"]
    anc_pos: Int[np.ndarray, " L"]  # ancestral coordinate of each site, -1 for inserted bases
    chrom: Int[np.ndarray, " L"]
    counts: dict


def hky_rate_matrix(kappa: float, pi: np.ndarray) -> np.ndarray:
    """HKY85 rate matrix over a, c, g, t, scaled to one substitution per unit time."""
    transition = np.array([[0, 0, 1, 0], [0, 0, 0, 1], [1, 0, 0, 0], [0, 1, 0, 0]], bool)
    q = np.where(transition, kappa, 1.0) * pi[None, :]
    np.fill_diagonal(q, 0.0)
    np.fill_diagonal(q, -q.sum(1))
    return q / -(pi * np.diag(q)).sum()


def transition_probs(q: np.ndarray, pi: np.ndarray, dist: float) -> np.ndarray:
    """exp(q * dist) through the symmetrised (reversible) eigendecomposition: P[from, to]."""
    root = np.sqrt(pi)
    w, v = np.linalg.eigh(root[:, None] * q / root[None, :])
    p = (v * np.exp(w * dist)) @ v.T
    return np.clip(p / root[:, None] * root[None, :], 0.0, 1.0)


def hky_substitute(rng: np.random.Generator, codes: UInt8[np.ndarray, " A"],
                   dist: Float[np.ndarray, " A"], kappa: float, gc: float) -> UInt8[np.ndarray, " A"]:
    """Draw the base at the end of a branch of `dist` substitutions per site (HKY85, exact).

    HKY rather than K80 because its equilibrium is the background composition: under K80
    neutral DNA drifts toward 50% GC while constrained DNA stays put, and window GC would then
    tell conserved from neutral sites.
    """
    pi = anc_lib.base_probs(gc)
    q = hky_rate_matrix(kappa, pi)
    u = rng.random(len(codes))
    out = codes.copy()
    for d in np.unique(dist):  # a handful of distinct rates
        at = dist == d
        cum_44 = np.cumsum(transition_probs(q, pi, float(d)), axis=1)
        out[at] = np.minimum((u[at, None] > cum_44[codes[at]]).sum(1), 3)
    return out


def _flatten_insertions(at: list, pieces: list) -> tuple:
    """Per-event (index, arrays) -> per-base arrays for np.insert, in index order."""
    if not pieces:
        return np.zeros(0, np.int64), *(np.zeros(0, d) for d in (np.uint8, np.uint8, np.float32, bool))
    idx = np.concatenate([np.full(len(p[0]), i) for i, p in zip(at, pieces)])
    cols = [np.concatenate([p[j] for p in pieces]) for j in range(4)]
    order = np.argsort(idx, kind="stable")
    return idx[order], *(c[order] for c in cols)


def evolve(rng: np.random.Generator, cfg: SimConfig, anc: Ancestor, fams: Families,
           bg: Background, name: str, branch: float) -> Species:
    n = len(anc.codes)
    counts = {}
    # lineage-specific losses of enhancers and CNEs
    rate = anc.rate.copy()
    losable = np.flatnonzero(anc.elem_kind != anc_lib.GENE)
    lost = losable[rng.random(len(losable)) < cfg.loss_prob]
    rate[np.isin(anc.elem, lost)] = 1.0
    counts["elements_lost"] = int(len(lost))

    codes = hky_substitute(rng, anc.codes, rate * branch, cfg.kappa, cfg.gc)

    # deletions: runs of indel-able sites inside one chromosome
    ok = np.isin(anc.cls, INDEL_CLASSES)
    ok_cum = np.concatenate([[0], np.cumsum(ok)])
    n_events = rng.poisson(cfg.indel_rate * branch * ok.sum() / 2)
    length = np.minimum(rng.geometric(1 / cfg.indel_mean_length, n_events), cfg.indel_max_length)
    start = rng.integers(0, n - cfg.indel_max_length, n_events)
    end = start + length
    good = (ok_cum[end] - ok_cum[start] == length) & (anc.chrom[start] == anc.chrom[end - 1])
    deleted = np.zeros(n + 1, np.int64)
    np.add.at(deleted, start[good], 1)
    np.add.at(deleted, end[good], -1)
    deleted = np.cumsum(deleted)[:n] > 0
    counts["deletions"] = int(good.sum())

    # insertions go before site i when sites i-1 and i are both indel-able and on one chromosome
    gap_ok = np.flatnonzero(ok[1:] & ok[:-1] & (anc.chrom[1:] == anc.chrom[:-1])) + 1
    at, pieces = [], []
    n_small = rng.poisson(cfg.indel_rate * branch * ok.sum() / 2)
    small_at = rng.choice(gap_ok, n_small)
    small_len = np.minimum(rng.geometric(1 / cfg.indel_mean_length, n_small), cfg.indel_max_length)
    small_codes = np.split(bg.take(int(small_len.sum())), np.cumsum(small_len)[:-1])
    def uniform_piece(c, cls: int, repeat: bool):
        """An inserted piece whose sites share one class, neutral rate and repeat flag."""
        return (c, np.full(len(c), cls, np.uint8), np.ones(len(c), np.float32),
                np.full(len(c), repeat, bool))

    for i, c in zip(small_at, small_codes):
        at.append(i)
        pieces.append(uniform_piece(c, anc_lib.NEUTRAL, repeat=False))
    counts["insertions"] = int(n_small)
    n_te = rng.poisson(cfg.te_young_per_mbp * n / 1e6)
    for i in rng.choice(gap_ok, n_te):
        c = anc_lib.te_copy(rng, cfg, fams, cfg.te_young_divergence)
        at.append(i)
        pieces.append(uniform_piece(c, anc_lib.REPEAT, repeat=True))
    counts["young_transposons"] = int(n_te)
    n_gain = rng.poisson(cfg.gains_per_mbp * n / 1e6)
    for i in rng.choice(gap_ok, n_gain):
        n_m = int(rng.integers(*cfg.motifs_per_enhancer, endpoint=True))
        c, cls, r, rep, _ = anc_lib.motif_cluster(rng, cfg, fams, bg, n_m, None, -1).arrays()
        at.append(i)
        pieces.append((c, cls, r.astype(np.float32), rep))
    counts["enhancers_gained"] = int(n_gain)

    idx, ins_codes, ins_cls, ins_rate, ins_rep = _flatten_insertions(at, pieces)
    codes = np.insert(codes, idx, ins_codes)
    cls = np.insert(anc.cls, idx, ins_cls)
    rate = np.insert(rate, idx, ins_rate)
    repeat = np.insert(anc.repeat, idx, ins_rep)
    anc_pos = np.insert(np.arange(n, dtype=np.int64), idx, -1)
    chrom = np.insert(anc.chrom, idx, anc.chrom[idx - 1])
    keep = ~np.insert(deleted, idx, False)
    return Species(name, branch, codes[keep], cls[keep], rate[keep], repeat[keep], anc_pos[keep],
                   chrom[keep], counts)


def bases_at_ancestral(sp: Species, n_anc: int) -> UInt8[np.ndarray, " A"]:
    """The species' base (0..3) at each ancestral coordinate; 4 where it was deleted."""
    out = np.full(n_anc, 4, np.uint8)
    aligned = sp.anc_pos >= 0
    out[sp.anc_pos[aligned]] = sp.codes[aligned]
    return out
