"""Parameters of the genome simulator, and its two presets.

Every field is written to the dataset card, so a simulated data set says how it was made.
Rates are relative to the neutral substitution rate (1.0); lengths are in base pairs.

Command-line overrides use the project's one grammar (nanodna.overrides): `name=value` with a
Python literal value, type-checked against the field. A tuple is written `motif_length=8,20`
or `motif_length=(8, 20)` (both are Python literals); a one-element tuple needs its comma:
`context_ks=5,`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from nanodna.data import DataError
from nanodna.overrides import apply_overrides


@dataclass(frozen=True)
class SimConfig:
    # --- genomes
    n_species: int = 16  # PlantCAD1 trained on 16 angiosperms
    genome_length: int = 200_000  # ancestral genome size; species differ by indels
    n_chromosomes: int = 3
    gc: float = 0.36  # Arabidopsis-like; elements are drawn at the same GC so composition leaks nothing
    markov_order: int = 2  # background is a low-order Markov chain with random (plant-ish) contexts
    markov_concentration: float = 30.0  # Dirichlet around the GC composition: lower = more structure
    # --- layout of the ancestor: a piece (gene, enhancer, CNE or transposon) then a spacer, repeated
    piece_weights: tuple[float, float, float, float] = (0.2, 0.45, 0.27, 0.08)  # gene/enh/cne/te
    spacer_mean: int = 150  # mean background spacer between pieces (geometric)
    # --- element families: few families, many copies, so a single-sequence model can learn them
    n_motifs: int = 12
    motif_length: tuple[int, int] = (8, 20)
    motif_instance_noise: float = 0.01  # per-base difference of an instance from its motif
    motifs_per_promoter: tuple[int, int] = (2, 5)
    motifs_per_enhancer: tuple[int, int] = (3, 6)
    motif_gap: tuple[int, int] = (3, 20)  # background between motifs of a cluster
    n_gene_families: int = 3
    gene_codons: tuple[int, int] = (60, 150)  # CDS length in codons, without start and stop
    exons_per_gene: tuple[int, int] = (2, 4)
    intron_length: tuple[int, int] = (60, 250)
    codon_concentration: float = 1.0  # codon usage skew (Dirichlet): lower = a few codons dominate
    gene_copy_synonymous: float = 0.1  # fraction of fourfold sites redrawn in each family copy
    gene_copy_replacement: float = 0.01  # fraction of codons replaced in each family copy
    n_cne_families: int = 4
    cne_length: tuple[int, int] = (40, 150)
    cne_instance_noise: float = 0.02
    n_te_families: int = 5
    te_length: tuple[int, int] = (300, 1500)
    te_old_divergence: float = 0.15  # ancestral insertions, decayed
    te_young_divergence: float = 0.02  # lineage-specific insertions, fresh
    # --- evolution on a star tree (a balanced tree lowers the alignment ceiling, see README)
    branch_length: float = 0.35  # neutral substitutions per site from the root to each species
    branch_jitter: float = 0.05  # each branch is branch_length +- this (uniform)
    kappa: float = 3.0  # transition / transversion rate ratio (HKY85)
    rate_codon: float = 0.04  # first and second codon positions, start and stop codons
    rate_codon3: float = 0.3  # third positions that are not fourfold degenerate
    rate_splice: float = 0.04  # the GT..AG intron ends
    rate_motif: float = 0.04
    rate_cne: float = 0.06
    indel_rate: float = 0.03  # indel events per neutral site per unit branch length
    indel_mean_length: float = 3.0
    indel_max_length: int = 20
    loss_prob: float = 0.03  # chance a species loses an enhancer or CNE (it then evolves neutrally)
    gains_per_mbp: float = 30.0  # lineage-specific new enhancers per species
    te_young_per_mbp: float = 20.0  # lineage-specific transposon insertions per species
    # --- evaluation table
    reference: int = 0  # index of the reference species
    n_eval: int = 3000  # rows of eval/conservation.tsv, half positive
    n_eval_small: int = 400  # rows of eval/conservation_small.tsv (a balanced subset)
    window: int = 512
    positive_max_rate: float = 0.1  # positives: sites at most this fraction of the neutral rate
    context_ks: tuple[int, ...] = (3, 4, 5, 6)  # flank sizes tried by the local-context model
    kmer_baseline_k: int = 5  # k-mer (centred on the target) of the frequency baseline


PRESETS: dict[str, dict] = {
    # Generates in seconds on a 2-core CPU; dense in elements so a tiny model learns them fast.
    "demo": {},
    # For GPU runs: 16 x 10 Mbp, more families so the model has more to learn.
    "large": dict(
        genome_length=10_000_000,
        n_chromosomes=5,
        spacer_mean=300,
        n_motifs=48,
        n_gene_families=24,
        gene_codons=(100, 300),
        n_cne_families=32,
        n_te_families=12,
        te_length=(500, 5000),
        n_eval=10_000,
        n_eval_small=500,
    ),
}


def make_config(preset: str = "demo", sets: Sequence[str] = (), **overrides) -> SimConfig:
    """The preset's config with keyword `overrides`, then `name=value` strings `sets` (the
    --set flags), applied. Bad names or values fail with one line (DataError, or ConfigError
    from nanodna.overrides for a bad `sets` item); both are UserErrors."""
    if preset not in PRESETS:
        raise DataError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    fields = {f.name: f for f in dataclasses.fields(SimConfig)}
    for name in overrides:
        if name not in fields:
            raise DataError(f"unknown simulator parameter {name!r}")
    cfg = apply_overrides(SimConfig(**{**PRESETS[preset], **overrides}), list(sets))
    _check(cfg)
    return cfg


def _check(cfg: SimConfig) -> None:
    if cfg.n_species < 2:
        raise DataError(f"n_species must be >= 2 (got {cfg.n_species})")
    if not 0 <= cfg.reference < cfg.n_species:
        raise DataError(f"reference must index a species (0..{cfg.n_species - 1})")
    if cfg.genome_length < 5 * cfg.window * cfg.n_chromosomes:
        raise DataError(
            f"genome_length {cfg.genome_length} is too short for {cfg.n_chromosomes} chromosomes "
            f"of {cfg.window}-bp windows (need >= {5 * cfg.window * cfg.n_chromosomes})"
        )
    if not 0.05 < cfg.gc < 0.95:
        raise DataError(f"gc must be within (0.05, 0.95) (got {cfg.gc})")
    if cfg.n_eval < 2 or cfg.n_eval % 2 or cfg.n_eval_small % 2:
        raise DataError("n_eval and n_eval_small must be even (balanced labels) and n_eval >= 2")
    if cfg.n_eval_small > cfg.n_eval:
        raise DataError("n_eval_small must be <= n_eval")
    if cfg.window % 2:
        raise DataError(f"window must be even (got {cfg.window})")
