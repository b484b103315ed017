"""Simulate a multi-species plant-like genome set with known conservation: data with no downloads.

    families ──▶ ancestor ──evolve on a star tree──▶ 16 species ──▶ fasta/, store/
                                                        │
                            reference species truth ────┴──▶ truth/, eval/, card.json, README.md

    python -m nanodna.sim --out data/sim --seed 0 [--preset demo|large] [--set k=v ...]
    python -m nanodna.data simulate ...   (the same)

Parts: config (parameters, presets), ancestor (families and the ancestral genome), evolve
(substitutions, indels, gains and losses per species), eval_tables (eval table and the scores
that bound it), card (card.json and README.md), provision (the training default's data set);
this file runs them and writes files.

The output folder is built under a temporary name and renamed at the end (nanodna.atomic), so
an interrupted run leaves nothing half-written. The same seed gives byte-identical files.

Glossary: L sequence length; A ancestral length; R eval rows; W window length.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import os
import sys
import time
import zipfile
from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from nanodna import atomic, tokenizer
from nanodna.data import DataError, genome
from nanodna.data.tables import write_tsv
from nanodna.errors import UserError, fail
from nanodna.sim import ancestor as anc_lib
from nanodna.sim import card as sim_card
from nanodna.sim import eval_tables as sim_eval
from nanodna.sim.config import PRESETS, SimConfig, make_config
from nanodna.sim.evolve import Species, bases_at_ancestral, evolve

FORMAT_VERSION = 1


def species_names(n: int) -> list[str]:
    return [f"sim{i:02d}" for i in range(n)]


def _chromosome_spans(chrom: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each chromosome in a species' end-to-end arrays (chrom is sorted)."""
    cuts = np.searchsorted(chrom, np.arange(chrom.max() + 2))
    return [(int(cuts[c]), int(cuts[c + 1])) for c in range(len(cuts) - 1)]


def _write_fasta(path: str, sp: Species, spans: list[tuple[int, int]]) -> None:
    """Soft-masked FASTA, 80 bases a line; gzip without a timestamp, so output is reproducible."""
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                                                compresslevel=6) as f:
        for c, (s, e) in enumerate(spans):
            seq = tokenizer.decode(sp.codes[s:e] + tokenizer.A, sp.repeat[s:e]).encode("ascii")
            f.write(f">chr{c + 1}\n".encode())
            f.write(b"\n".join(seq[i : i + 80] for i in range(0, len(seq), 80)) + b"\n")


def _write_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    """np.savez with fixed zip timestamps (np.savez stamps the current time into the file)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asarray(arr), allow_pickle=False)


def _write_species(out: str, sp: Species) -> tuple[list[tuple[int, int]], dict, dict]:
    """FASTA + store arrays of one species -> (chromosome spans, manifest entry, card entry)."""
    spans = _chromosome_spans(sp.chrom)
    _write_fasta(os.path.join(out, "fasta", f"{sp.name}.fa.gz"), sp, spans)
    ids = sp.codes + np.uint8(tokenizer.A)
    genome.write_assembly_arrays(os.path.join(out, "store"), sp.name, ids, sp.repeat)
    chroms = [{"name": f"chr{c + 1}", "offset": s, **genome.chromosome_stats(ids[s:e], sp.repeat[s:e])}
              for c, (s, e) in enumerate(spans)]
    record = {"name": sp.name, "branch_length": round(sp.branch, 6), "length": len(sp.codes),
              "gc": round(float(np.isin(sp.codes, (1, 2)).mean()), 4),
              "repeat_frac": round(float(sp.repeat.mean()), 4), **sp.counts}
    return spans, genome.assembly_record(sp.name, chroms), record


def _write_eval(out: str, cfg: SimConfig, rng: np.random.Generator, ref: Species,
                span: tuple[int, int], chrom_name: str, align: np.ndarray):
    """Sample the eval sites on one reference chromosome and write the three tables."""
    lo, hi = span
    half = cfg.window // 2
    centre = half - 1  # the target's index in its window (255 for 512 bp)
    sites, labels = sim_eval.sample_sites(rng, cfg, ref.codes, ref.cls, ref.rate, ref.repeat,
                                          ref.anc_pos, lo + centre, hi - half)
    windows_RW = np.stack([ref.codes[p - centre : p + half + 1] for p in sites])
    texts = [tokenizer.decode(ref.codes[p - centre : p + half + 1] + tokenizer.A,
                              ref.repeat[p - centre : p + half + 1]) for p in sites]
    write_tsv(os.path.join(out, "eval", "conservation.tsv"),
              {"sequence": texts, "label": labels, "pos": [centre] * len(texts)})
    small = sim_eval.small_subset(labels, cfg.n_eval_small)
    write_tsv(os.path.join(out, "eval", "conservation_small.tsv"),
              {"sequence": [texts[j] for j in small], "label": labels[small],
               "pos": [centre] * len(small)})
    write_tsv(os.path.join(out, "eval", "conservation_sites.tsv"), {
        "assembly": [ref.name] * len(sites),
        "chrom": [chrom_name] * len(sites),
        "chrom_pos": sites - lo,
        "label": labels,
        "class": [anc_lib.CLASS_NAMES[c] for c in ref.cls[sites]],
        "rate": [f"{r:.3g}" for r in ref.rate[sites]],
        "align_score": [f"{a:.4f}" for a in align[sites]],
        "ref": [tokenizer.BASES[c] for c in ref.codes[sites]],
    })
    return sites, labels, windows_RW


def _generate(out: str, cfg: SimConfig, seed: int, preset: str, progress: bool) -> dict:
    names = species_names(cfg.n_species)
    for sub in ("fasta", "store", "truth", "eval"):
        os.makedirs(os.path.join(out, sub))
    # one independent generator per stage and per species: adding species changes nothing else
    rng_model, rng_anc, rng_tree, rng_eval, *rng_species = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4 + cfg.n_species))

    bg = anc_lib.Background.random(rng_model, cfg)
    fams = anc_lib.make_families(rng_model, cfg)
    anc = anc_lib.make_ancestor(rng_anc, cfg, fams, bg.fork(rng_anc))
    branches = cfg.branch_length + rng_tree.uniform(-cfg.branch_jitter, cfg.branch_jitter, cfg.n_species)

    # the reference first, so each other species is compared with it as soon as it is made
    order = [cfg.reference] + [i for i in range(cfg.n_species) if i != cfg.reference]
    seqs: list[np.ndarray] = []  # every chromosome of every species, for the local-context model
    manifest, records = [None] * cfg.n_species, [None] * cfg.n_species
    for i in tqdm(order, desc="simulate species", disable=not progress):
        sp = evolve(rng_species[i], cfg, anc, fams, bg.fork(rng_species[i]), names[i], float(branches[i]))
        spans, manifest[i], records[i] = _write_species(out, sp)
        seqs += [sp.codes[s:e] for s, e in spans]
        if i == cfg.reference:
            ref, ref_spans = sp, spans
            aligned = np.flatnonzero(ref.anc_pos >= 0)
            matches = np.zeros(len(aligned), np.int64)
        else:
            matches += bases_at_ancestral(sp, len(anc.codes))[ref.anc_pos[aligned]] == ref.codes[aligned]
    genome.write_manifest(os.path.join(out, "store"), manifest)

    # truth for every site of the reference
    align = np.full(len(ref.codes), np.nan, np.float32)
    align[aligned] = matches / (cfg.n_species - 1)
    chrom_names = [f"chr{c + 1}" for c in range(len(ref_spans))]
    _write_npz(os.path.join(out, "truth", f"{ref.name}.npz"), {
        "class": ref.cls, "rate": ref.rate, "align_score": align, "anc_pos": ref.anc_pos,
        "repeat": ref.repeat, "class_names": np.array(anc_lib.CLASS_NAMES),
        "chrom_names": np.array(chrom_names),
        "chrom_offsets": np.array([s for s, _ in ref_spans], np.int64)})

    # eval sites from the last chromosome of the reference only, so training may hold it out
    sites, labels, windows_RW = _write_eval(out, cfg, rng_eval, ref, ref_spans[-1], chrom_names[-1], align)
    if progress:
        print("scoring the eval table (alignment, local context, baselines) ...", flush=True)
    aucs = sim_eval.score_table(cfg, seqs, windows_RW, labels, align[sites].astype(np.float64))
    card = sim_card.make_card(cfg, seed, preset, anc, records, ref.name, ref, branches, sites, labels,
                              chrom_names[-1], aucs)
    atomic.write_text(os.path.join(out, "card.json"), json.dumps(card, indent=1))
    atomic.write_text(os.path.join(out, "README.md"), sim_card.render_readme(card))
    return card


def simulate(out_dir: str, seed: int = 0, preset: str = "demo", overwrite: bool = False,
             progress: bool = True, sets: Sequence[str] = (), **overrides) -> dict:
    """Write a simulated data set to out_dir and return its card (a dict).

    `overrides` (keyword) and `sets` ("name=value" strings, nanodna.overrides grammar) change
    the preset's parameters. Raises a UserError (one line) for bad parameters or an existing
    out_dir that is not empty (unless overwrite) or not a simulated data set.
    """
    cfg = make_config(preset, sets, **overrides)
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and os.listdir(out_dir):
        if not overwrite:
            raise DataError(f"{out_dir} exists and is not empty (use --overwrite to replace it)")
        if not os.path.exists(os.path.join(out_dir, "card.json")):
            raise DataError(f"{out_dir} does not look like a simulated data set; not replacing it")
    with atomic.staging_dir(out_dir, replace=True) as tmp:
        return _generate(tmp, cfg, seed, preset, progress)


class ArgumentParser(argparse.ArgumentParser):
    """argparse that raises a UserError for bad arguments, so the CLI prints one `error:` line
    and exits 2 like every other user error (argparse itself prints the usage too)."""

    def error(self, message: str):
        raise UserError(f"{self.prog}: {message}")


def main(argv: list[str] | None = None) -> int:
    """The simulator's command line; returns the exit code (2 with one `error:` line on stderr
    for any UserError)."""
    try:
        return _main(sys.argv[1:] if argv is None else list(argv))
    except UserError as e:
        return fail(e)


def _main(argv: list[str]) -> int:
    p = ArgumentParser(prog="python -m nanodna.sim", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preset", default="demo", choices=sorted(PRESETS))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE",
                   help=f"override a parameter (a Python literal; tuples as 8,20 or '(8, 20)'), e.g. "
                        f"--set n_species=8; names: "
                        f"{', '.join(f.name for f in dataclasses.fields(SimConfig))}")
    p.add_argument("--overwrite", action="store_true", help="replace an existing simulated data set")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    t0 = time.time()
    card = simulate(args.out, args.seed, args.preset, overwrite=args.overwrite,
                    progress=not args.quiet, sets=args.overrides)
    auc = card["auc"]
    print(f"wrote {args.out} in {time.time() - t0:.1f} s: {card['eval']['n']} eval rows; ROC AUC "
          f"alignment {auc['alignment']:.3f}, local context {auc['local_context']['best']:.3f} "
          f"(k={auc['local_context']['best_k']}), window GC {auc['window_gc']:.3f}, "
          f"target GC {auc['target_gc']:.3f}, k-mer frequency {auc['kmer_frequency']:.3f}")
    return 0
