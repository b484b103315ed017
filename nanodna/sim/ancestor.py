"""The ancestral genome: a plant-like background with recurring FAMILIES of functional elements.

Real genomes reuse their parts: a few hundred transcription-factor motifs appear thousands of
times, genes come in families, transposons copy themselves. That reuse is what lets a model that
sees one sequence at a time learn which bases matter. So every element here is a noisy copy of a
family member:

    motif library      short motifs, placed in clusters upstream of genes (promoters) and alone
                       (enhancers)
    gene families      a consensus coding sequence (ATG .. stop, codons at the background GC) split
                       into exons by GT..AG introns; each copy redraws some synonymous sites
    CNE families       conserved non-coding elements
    transposons        soft-masked (lowercase) copies of a few consensus sequences

Bases are coded 0..3 (a, c, g, t) inside the simulator; token id = code + tokenizer.A.
Each site carries a class (see CLASS_NAMES), a substitution rate relative to neutral, a repeat
flag and the id of the element it belongs to (-1: none), so evolution and truth need nothing else.

Glossary: L sequence length; R rows (parallel Markov streams); C codons; 3 codon positions;
Z Markov contexts (4^order); 4 the four bases.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from jaxtyping import Bool, Float, Int, UInt8

from nanodna import tokenizer
from nanodna.sim.config import SimConfig

# site classes
NEUTRAL, INTRON, FOURFOLD, CODON, SPLICE, MOTIF, CNE, REPEAT = range(8)
CLASS_NAMES = ("neutral", "intron", "fourfold", "codon", "splice", "motif", "cne", "repeat")
NEUTRAL_CLASSES = (NEUTRAL, INTRON, FOURFOLD)  # where eval negatives come from

# element kinds (for lineage-specific losses: only enhancers and CNEs are ever lost)
GENE, ENHANCER, CNE_ELEMENT = 0, 1, 2

_LOWER = tokenizer.BASES.lower()  # codon tables below are spelt in lower case
CODON_TABLE_STOPS = ("taa", "tag", "tga")
# first two bases of the eight codon boxes whose third position is fourfold degenerate
FOURFOLD_BOXES = ("ct", "gt", "tc", "cc", "ac", "gc", "cg", "gg")


def base_probs(gc: float) -> np.ndarray:
    return np.array([(1 - gc) / 2, gc / 2, gc / 2, (1 - gc) / 2])


def iid_bases(rng: np.random.Generator, n: int, gc: float) -> UInt8[np.ndarray, " L"]:
    return rng.choice(4, size=n, p=base_probs(gc)).astype(np.uint8)


def gc_matched(rng: np.random.Generator, n: int, gc: float) -> UInt8[np.ndarray, " L"]:
    """A random consensus with exactly round(gc * n) G/C bases: families must not stand out in GC."""
    strong = rng.permutation(n) < round(gc * n)
    pick = rng.integers(0, 2, n).astype(np.uint8)
    return np.where(strong, 1 + pick, 3 * pick).astype(np.uint8)  # c|g  or  a|t


class Background:
    """An order-k Markov chain with random contexts at a target GC, sampled in bulk.

    The chain runs as S independent streams side by side (one vectorised step per position of
    a stream), so sampling 10 Mbp takes a few thousand NumPy steps instead of 10M Python ones.
    `take(n)` hands out consecutive pieces of one long pool.
    """

    def __init__(self, cum_Z4: np.ndarray, rng: np.random.Generator):
        self.cum_Z4, self.rng = cum_Z4, rng
        self.order = int(round(np.log(len(cum_Z4)) / np.log(4)))
        self.pool = np.zeros(0, np.uint8)
        self.pos = 0

    @staticmethod
    def random(rng: np.random.Generator, cfg: SimConfig) -> "Background":
        """A fresh chain: per-context next-base probabilities drawn around the GC composition."""
        p_Z4 = rng.dirichlet(cfg.markov_concentration * base_probs(cfg.gc), size=4**cfg.markov_order)
        # every context keeps the target GC (so the chain's does too); structure lives in which
        # weak (a/t) and which strong (c/g) base follows which context
        strong = np.array([False, True, True, False])
        p_Z4[:, strong] *= cfg.gc / p_Z4[:, strong].sum(1, keepdims=True)
        p_Z4[:, ~strong] *= (1 - cfg.gc) / p_Z4[:, ~strong].sum(1, keepdims=True)
        return Background(np.cumsum(p_Z4, axis=1), rng)

    def fork(self, rng: np.random.Generator) -> "Background":
        """The same chain drawing from another generator (one per species, for determinism)."""
        return Background(self.cum_Z4, rng)

    def _sample(self, n: int) -> UInt8[np.ndarray, " L"]:
        n_streams = max(1, min(4096, n // 256))
        steps = -(-n // n_streams)
        u_RL = self.rng.random((n_streams, steps))
        x_RL = np.zeros((n_streams, steps), np.uint8)
        ctx_R = self.rng.integers(0, 4**self.order, n_streams)
        for t in range(steps):
            x_RL[:, t] = (u_RL[:, t, None] > self.cum_Z4[ctx_R]).sum(1)
            ctx_R = (ctx_R * 4 + x_RL[:, t]) % 4**self.order
        return x_RL.reshape(-1)[:n]

    def take(self, n: int) -> UInt8[np.ndarray, " L"]:
        if self.pos + n > len(self.pool):
            # refills double in size: small users stay cheap, big ones need few refills
            fresh = self._sample(max(n, 2 * len(self.pool), 1 << 14))
            self.pool = np.concatenate([self.pool[self.pos :], fresh])
            self.pos = 0
        out = self.pool[self.pos : self.pos + n]
        self.pos += n
        return out


@dataclass
class Families:
    """Consensus sequences that elements are copied from."""

    motifs: list[np.ndarray]
    promoter_motifs: list[np.ndarray]  # per gene family: indices of its preferred motifs
    genes: list[np.ndarray]  # coding sequences, ATG .. stop
    gene_splits: list[np.ndarray]  # per gene family: exon boundaries inside the CDS
    cnes: list[np.ndarray]
    tes: list[np.ndarray]
    codon_usage: np.ndarray  # probability of each of SENSE_CODONS


SENSE_CODONS = np.array([[a, b, c] for a in range(4) for b in range(4) for c in range(4)
                         if _LOWER[a] + _LOWER[b] + _LOWER[c] not in CODON_TABLE_STOPS], np.uint8)


def codon_usage(rng: np.random.Generator, gc: float, concentration: float) -> Float[np.ndarray, " C"]:
    """Skewed usage of the sense codons (real genes favour some codons), tilted to the target GC.

    Draw weights around the base-composition product (Dirichlet: lower concentration, more skew),
    then tilt by exp(theta * #GC) with theta chosen by bisection so the expected GC is `gc`.
    """
    p = base_probs(gc)
    prior = p[SENSE_CODONS].prod(1)
    w = rng.dirichlet(concentration * len(prior) * prior / prior.sum())
    n_gc = np.isin(SENSE_CODONS, (1, 2)).sum(1)
    lo, hi = -20.0, 20.0
    for _ in range(60):
        theta = (lo + hi) / 2
        tilted = w * np.exp(theta * n_gc)
        if (tilted * n_gc).sum() / tilted.sum() / 3 < gc:
            lo = theta
        else:
            hi = theta
    return tilted / tilted.sum()


def make_families(rng: np.random.Generator, cfg: SimConfig) -> Families:
    """Draw every family's consensus once; all elements of the genomes are copies of these."""
    motifs = [gc_matched(rng, int(rng.integers(*cfg.motif_length, endpoint=True)), cfg.gc)
              for _ in range(cfg.n_motifs)]
    usage = codon_usage(rng, cfg.gc, cfg.codon_concentration)
    genes, splits, promoters = [], [], []
    for _ in range(cfg.n_gene_families):
        n_codons = int(rng.integers(*cfg.gene_codons, endpoint=True))
        while True:  # redraw until the family's GC is the background's: each family has many copies
            body = SENSE_CODONS[rng.choice(len(SENSE_CODONS), n_codons, p=usage)].reshape(-1)
            stop = tokenizer.base_codes(CODON_TABLE_STOPS[rng.integers(3)])
            cds = np.concatenate([tokenizer.base_codes("atg"), body, stop])
            if abs(np.isin(cds, (1, 2)).mean() - cfg.gc) < 0.005:
                break
        n_exons = int(rng.integers(*cfg.exons_per_gene, endpoint=True))
        genes.append(cds)
        splits.append(np.sort(rng.choice(np.arange(10, len(cds) - 10), n_exons - 1, replace=False)))
        # genes of one family share most of their regulatory motifs, as co-regulated genes do
        promoters.append(rng.choice(cfg.n_motifs, size=min(4, cfg.n_motifs), replace=False))
    cnes = [gc_matched(rng, int(rng.integers(*cfg.cne_length, endpoint=True)), cfg.gc)
            for _ in range(cfg.n_cne_families)]
    tes = [gc_matched(rng, int(rng.integers(*cfg.te_length, endpoint=True)), cfg.gc)
           for _ in range(cfg.n_te_families)]
    return Families(motifs, promoters, genes, splits, cnes, tes, usage)


@dataclass
class Track:
    """Per-site arrays of a stretch of genome, built piece by piece then concatenated."""

    codes: list
    cls: list
    rate: list
    repeat: list
    elem: list

    @staticmethod
    def empty() -> "Track":
        return Track([], [], [], [], [])

    def add(self, codes, cls, rate, repeat=False, elem=-1) -> None:
        n = len(codes)
        self.codes.append(np.asarray(codes, np.uint8))
        self.cls.append(np.broadcast_to(np.asarray(cls, np.uint8), n))
        self.rate.append(np.broadcast_to(np.asarray(rate, np.float32), n))
        self.repeat.append(np.broadcast_to(np.asarray(repeat, bool), n))
        self.elem.append(np.broadcast_to(np.asarray(elem, np.int32), n))

    def extend(self, other: "Track", reverse: bool = False) -> None:
        """Append another track; reverse=True puts it on the minus strand (reverse complement)."""
        codes, cls, rate, rep, elem = (np.concatenate(x) for x in
                                       (other.codes, other.cls, other.rate, other.repeat, other.elem))
        if reverse:
            codes, cls, rate, rep, elem = tokenizer.reverse_complement_codes(codes), cls[::-1], rate[::-1], rep[::-1], elem[::-1]
        self.add(codes, cls, rate, rep, elem)

    def arrays(self) -> tuple[np.ndarray, ...]:
        return tuple(np.concatenate(x) for x in (self.codes, self.cls, self.rate, self.repeat, self.elem))


def mutate(rng: np.random.Generator, codes: np.ndarray, frac: float, gc: float) -> np.ndarray:
    """Redraw a fraction of the bases (at the background composition): a noisy family copy."""
    out = codes.copy()
    hit = rng.random(len(codes)) < frac
    out[hit] = iid_bases(rng, int(hit.sum()), gc)
    return out


def motif_cluster(rng, cfg: SimConfig, fams: Families, bg: Background, n_motifs: int,
                  choices: np.ndarray | None, elem: int) -> Track:
    """A few motif instances on random strands with short background gaps between them."""
    t = Track.empty()
    for j in range(n_motifs):
        if j:
            t.add(bg.take(int(rng.integers(*cfg.motif_gap, endpoint=True))), NEUTRAL, 1.0)
        use_family = choices is not None and rng.random() < 0.7
        m = fams.motifs[int(rng.choice(choices)) if use_family else int(rng.integers(cfg.n_motifs))]
        m = mutate(rng, m, cfg.motif_instance_noise, cfg.gc)
        t.add(tokenizer.reverse_complement_codes(m) if rng.random() < 0.5 else m, MOTIF, cfg.rate_motif, elem=elem)
    return t


def gene_copy(rng, cfg: SimConfig, fams: Families, bg: Background, family: int, elem: int) -> Track:
    """Promoter motif cluster, then exons of a family copy interrupted by GT..AG introns."""
    cds = fams.genes[family].copy()
    n_codons = len(cds) // 3
    codons_C3 = cds.reshape(n_codons, 3)
    box = [(_LOWER[a] + _LOWER[b]) in FOURFOLD_BOXES for a, b in codons_C3[:, :2]]
    fourfold_C = np.array(box)
    inner = np.zeros(n_codons, bool)
    inner[1:-1] = True  # start and stop stay
    # copy divergence: some codons replaced (same composition, never a stop), some synonymous redraws
    replace = inner & (rng.random(n_codons) < cfg.gene_copy_replacement)
    for i in np.flatnonzero(replace):
        codons_C3[i] = SENSE_CODONS[rng.choice(len(SENSE_CODONS), p=fams.codon_usage)]
        fourfold_C[i] = (_LOWER[codons_C3[i, 0]] + _LOWER[codons_C3[i, 1]]) in FOURFOLD_BOXES
    syn = inner & fourfold_C & (rng.random(n_codons) < cfg.gene_copy_synonymous)
    codons_C3[syn, 2] = iid_bases(rng, int(syn.sum()), cfg.gc)
    cls_C3 = np.full((n_codons, 3), CODON, np.uint8)
    rate_C3 = np.full((n_codons, 3), cfg.rate_codon, np.float32)
    third = inner & fourfold_C
    cls_C3[third, 2], rate_C3[third, 2] = FOURFOLD, 1.0
    rate_C3[inner & ~fourfold_C, 2] = cfg.rate_codon3
    cds, cls, rate = codons_C3.reshape(-1), cls_C3.reshape(-1), rate_C3.reshape(-1)

    t = Track.empty()
    n_prom = int(rng.integers(*cfg.motifs_per_promoter, endpoint=True))
    t.extend(motif_cluster(rng, cfg, fams, bg, n_prom, fams.promoter_motifs[family], elem))
    t.add(bg.take(int(rng.integers(20, 80))), NEUTRAL, 1.0)  # promoter to start codon
    bounds = [0, *fams.gene_splits[family].tolist(), len(cds)]
    for j in range(len(bounds) - 1):
        if j:
            intron = bg.take(int(rng.integers(*cfg.intron_length, endpoint=True)))
            t.add(tokenizer.base_codes("gt"), SPLICE, cfg.rate_splice, elem=elem)
            t.add(intron, INTRON, 1.0)
            t.add(tokenizer.base_codes("ag"), SPLICE, cfg.rate_splice, elem=elem)
        s = slice(bounds[j], bounds[j + 1])
        t.add(cds[s], cls[s], rate[s], elem=elem)
    return t


def te_copy(rng, cfg: SimConfig, fams: Families, divergence: float) -> np.ndarray:
    """A transposon copy: often 5'-truncated, as most plant TE copies are, then decayed."""
    te = fams.tes[int(rng.integers(len(fams.tes)))]
    keep = int(len(te) * rng.uniform(0.3, 1.0)) if rng.random() < 0.6 else len(te)
    te = mutate(rng, te[len(te) - keep :], divergence, cfg.gc)
    return tokenizer.reverse_complement_codes(te) if rng.random() < 0.5 else te


@dataclass
class Ancestor:
    codes: UInt8[np.ndarray, " L"]
    cls: UInt8[np.ndarray, " L"]
    rate: Float[np.ndarray, " L"]
    repeat: Bool[np.ndarray, " L"]
    elem: Int[np.ndarray, " L"]  # element id, -1 outside elements
    chrom: Int[np.ndarray, " L"]  # chromosome index
    elem_kind: Int[np.ndarray, " E"]  # GENE / ENHANCER / CNE_ELEMENT per element id
    counts: dict  # pieces and elements laid down, for the card


def make_ancestor(rng: np.random.Generator, cfg: SimConfig, fams: Families, bg: Background) -> Ancestor:
    """Lay pieces and spacers end to end until each chromosome reaches its length."""
    lengths = rng.uniform(0.8, 1.2, cfg.n_chromosomes)
    lengths = np.round(lengths / lengths.sum() * cfg.genome_length).astype(int)
    weights = np.asarray(cfg.piece_weights) / np.sum(cfg.piece_weights)
    kinds: list[int] = []
    counts = {"genes": 0, "enhancers": 0, "cnes": 0, "transposons": 0}
    parts = []
    for c, target in enumerate(lengths):
        t, n = Track.empty(), 0
        while n < target:
            spacer = bg.take(int(rng.geometric(1 / cfg.spacer_mean)))
            t.add(spacer, NEUTRAL, 1.0)
            piece, kind = Track.empty(), int(rng.choice(4, p=weights))
            if kind == 0:
                family = int(rng.integers(cfg.n_gene_families))
                piece = gene_copy(rng, cfg, fams, bg, family, len(kinds))
                kinds.append(GENE)
                counts["genes"] += 1
            elif kind == 1:
                n_m = int(rng.integers(*cfg.motifs_per_enhancer, endpoint=True))
                piece = motif_cluster(rng, cfg, fams, bg, n_m, None, len(kinds))
                kinds.append(ENHANCER)
                counts["enhancers"] += 1
            elif kind == 2:
                f = int(rng.integers(cfg.n_cne_families))
                piece.add(mutate(rng, fams.cnes[f], cfg.cne_instance_noise, cfg.gc), CNE, cfg.rate_cne,
                          elem=len(kinds))
                kinds.append(CNE_ELEMENT)
                counts["cnes"] += 1
            else:
                piece.add(te_copy(rng, cfg, fams, cfg.te_old_divergence), REPEAT, 1.0, repeat=True)
                counts["transposons"] += 1
            t.extend(piece, reverse=bool(rng.random() < 0.5))
            n += len(spacer) + sum(len(x) for x in piece.codes)
        codes, cls, rate, rep, elem = t.arrays()
        parts.append((codes[:target], cls[:target], rate[:target], rep[:target], elem[:target],
                      np.full(target, c, np.int32)))
    codes, cls, rate, rep, elem, chrom = (np.concatenate(x) for x in zip(*parts))
    return Ancestor(codes, cls, rate.astype(np.float32), rep, elem.astype(np.int64),
                    chrom.astype(np.int64), np.array(kinds, np.int64), counts)
