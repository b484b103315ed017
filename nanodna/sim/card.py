"""The dataset card of a simulated data set: card.json (every parameter, counts, AUCs) + README.md."""

from __future__ import annotations

import dataclasses

import numpy as np

from nanodna.sim import ancestor as anc_lib
from nanodna.sim.ancestor import Ancestor
from nanodna.sim.config import SimConfig, make_config
from nanodna.sim.evolve import Species

CARD_FORMAT = "nanodna-sim-card"


def _class_counts(cls: np.ndarray) -> dict[str, int]:
    counts = np.bincount(cls, minlength=len(anc_lib.CLASS_NAMES))
    return {name: int(c) for name, c in zip(anc_lib.CLASS_NAMES, counts)}


def make_card(cfg: SimConfig, seed: int, preset: str, anc: Ancestor, species: list[dict],
              ref_name: str, ref: Species, branches: np.ndarray, sites: np.ndarray,
              labels: np.ndarray, eval_chrom: str, aucs: dict) -> dict:
    preset_cfg = dataclasses.asdict(make_config(preset))
    overrides = {k: v for k, v in dataclasses.asdict(cfg).items() if v != preset_cfg[k]}
    newick = "(" + ",".join(f"{s['name']}:{b:.4f}" for s, b in zip(species, branches)) + ");"
    by_label = {
        name: _class_counts(ref.cls[sites[labels == y]]) for name, y in (("positives", 1), ("negatives", 0))
    }
    return {
        "format": CARD_FORMAT,
        "version": 1,
        "preset": preset,
        "seed": seed,
        "overrides": overrides,  # parameters that differ from the preset
        "params": dataclasses.asdict(cfg),
        "tree": newick,
        "reference": ref_name,
        "eval_assembly": ref_name,
        # chromosome names are shared by all species (orthologous, no rearrangements): hold out
        # these in the reference only, or in every species to keep orthologs out of training too
        "eval_chromosomes": [eval_chrom],
        "ancestor": {"length": int(len(anc.codes)), **anc.counts,
                     "sites_by_class": _class_counts(anc.cls)},
        "species": species,
        "reference_sites_by_class": _class_counts(ref.cls),
        "eval": {
            "table": "eval/conservation.tsv",
            "small_table": "eval/conservation_small.tsv",
            "sites": "eval/conservation_sites.tsv",
            "n": int(len(labels)),
            "n_small": cfg.n_eval_small,
            "n_positive": int(labels.sum()),
            "window": cfg.window,
            "pos": cfg.window // 2 - 1,
            **{f"{k}_by_class": {c: n for c, n in v.items() if n} for k, v in by_label.items()},
        },
        "auc": aucs,
    }


def render_readme(card: dict) -> str:
    p, a, e = card["params"], card["auc"], card["eval"]
    lc = a["local_context"]
    species = "\n".join(
        f"| {s['name']} | {s['branch_length']:.3f} | {s['length']:,} | {s['gc']:.3f} "
        f"| {s['repeat_frac']:.3f} "
        f"| {s['deletions']} / {s['insertions']} | {s['elements_lost']} | {s['enhancers_gained']} |"
        for s in card["species"])
    params = "\n".join(f"| {k} | {v} |" for k, v in p.items())
    pos = ", ".join(f"{k} {v}" for k, v in e["positives_by_class"].items())
    neg = ", ".join(f"{k} {v}" for k, v in e["negatives_by_class"].items())
    anc = card["ancestor"]
    sets = "".join(
        f" --set {k}={','.join(map(str, v)) if isinstance(v, (list, tuple)) else v}"
        for k, v in card["overrides"].items())
    return f"""# Simulated plant-like genomes with known conservation

Made by `python -m nanodna.data simulate --preset {card['preset']} --seed {card['seed']}{sets}` (nanodna).
Everything here is synthetic: no real organism, no download.

## What it is

An ancestral genome of {anc['length']:,} bp ({p['n_chromosomes']} chromosomes, GC {p['gc']}, an order-{p['markov_order']} Markov background) holds {anc['genes']} genes from {p['n_gene_families']} families (codon-structured exons, GT..AG introns, a promoter motif cluster each), {anc['enhancers']} enhancer motif clusters drawn from a library of {p['n_motifs']} motifs, {anc['cnes']} conserved non-coding elements from {p['n_cne_families']} families and {anc['transposons']} transposon copies from {p['n_te_families']} families (soft-masked, lowercase).
Elements are noisy copies of a few family sequences, as in real genomes, so a single-sequence model can learn them; their GC matches the background, so composition gives nothing away.

{p['n_species']} species evolve from it on a star tree (`tree` in card.json) under HKY85 (kappa {p['kappa']}, equilibrium at the background composition).
Constrained sites mutate at a fraction of the neutral rate: codon positions 1-2 {p['rate_codon']}, other non-fourfold third positions {p['rate_codon3']}, splice sites {p['rate_splice']}, motifs {p['rate_motif']}, CNEs {p['rate_cne']}.
Indels, young transposons and newly gained enhancers fall only between neutral sites, so the alignment to the ancestor is exact.
Each species loses about {p['loss_prob']:.0%} of its enhancers and CNEs (they then evolve neutrally).

## Files

- `fasta/<species>.fa.gz`: soft-masked chromosomes `chr1..chr{p['n_chromosomes']}` (names shared by all species: chromosomes are orthologous).
- `store/`: the same as a nanodna genome store, one assembly per species.
- `truth/{card['reference']}.npz`: per site of the reference species: `class` (index into `class_names`), `rate` (relative to neutral), `align_score` (fraction of the other species keeping the base at the aligned site; NaN for inserted bases), `anc_pos` (ancestral coordinate, -1 if inserted), `repeat`, `chrom_names`, `chrom_offsets`.
- `eval/conservation.tsv`: {e['n']} rows (`sequence`, `label`, `pos`): {e['window']}-bp windows of {card['eval_assembly']} {', '.join(card['eval_chromosomes'])} with the target at index {e['pos']}.
  Half positive (rate <= {p['positive_max_rate']}: {pos}), half negative (neutral: {neg}); targets outside repeats; negatives match the positives' reference-base mix exactly and their window-GC mix roughly.
- `eval/conservation_small.tsv`: a balanced subset of {e['n_small']} rows, for evaluation during training.
- `eval/conservation_sites.tsv`: where each row of the big table comes from, its class, rate and alignment score.

To keep the eval windows out of training, hold out `eval_chromosomes` of `eval_assembly` (card.json); holding them out in every species also removes their orthologs.

## How hard is the eval table (ROC AUC)

| score | ROC AUC |
|---|---|
| alignment (fraction of other species matching): the ceiling | {a['alignment']:.3f} |
| local context p(ref given +-{lc['best_k']} flanks), counts over all genomes, site left out | {lc['best']:.3f} |
| window GC (trivial) | {a['window_gc']:.3f} |
| target is G/C (trivial) | {a['target_gc']:.3f} |
| frequency of the target's centred {p['kmer_baseline_k']}-mer (trivial) | {a['kmer_frequency']:.3f} |

Local context by flank size k: {', '.join(f"k={k}: {v:.3f}" for k, v in lc['by_k'].items())}.

Why a star tree: a prototype found that 16 species at neutral divergence ~0.3 on a star keep the alignment ceiling near 0.98, where a balanced tree of 8 species dropped it to 0.73-0.87.

## Species

| species | branch | length | GC | repeats | deletions / insertions | elements lost | enhancers gained |
|---|---|---|---|---|---|---|---|
{species}

## Parameters

| name | value |
|---|---|
{params}
"""
