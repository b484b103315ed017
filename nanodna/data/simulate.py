"""Simulate a multi-species plant-like genome set with known conservation: data with no downloads.

    families ──▶ ancestor ──evolve on a star tree──▶ 16 species ──▶ fasta/, store/
                                                        │
                            reference species truth ────┴──▶ truth/, eval/, card.json, README.md

    python -m nanodna.data simulate --out data/sim --seed 0 [--preset demo|large] [--set k=v ...]

Parts: sim_config (parameters, presets), sim_ancestor (families and the ancestral genome),
sim_evolve (substitutions, indels, gains and losses per species), sim_eval (eval table and the
scores that bound it), sim_card (card.json and README.md); this file runs them and writes files.

The output folder is written under a temporary name and renamed at the end, so an interrupted
run leaves nothing half-written. The same seed gives byte-identical files.

Glossary: L sequence length; A ancestral length; N eval rows; W window length.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import os
import shutil
import tempfile
import time
import zipfile

import numpy as np
from tqdm import tqdm

from nanodna import tokenizer
from nanodna.data import DataError, genome, sim_card, sim_eval
from nanodna.data import sim_ancestor as anc_lib
from nanodna.data.sim_config import PRESETS, SimConfig, make_config, parse_override
from nanodna.data.sim_evolve import Species, bases_at_ancestral, evolve

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


def _write_tsv(path: str, header: list[str], rows) -> None:
    with open(path, "w") as f:
        f.write("\t".join(header) + "\n")
        for row in rows:
            f.write("\t".join(str(v) for v in row) + "\n")


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
    windows_NW = np.stack([ref.codes[p - centre : p + half + 1] for p in sites])
    texts = [tokenizer.decode(ref.codes[p - centre : p + half + 1] + tokenizer.A,
                              ref.repeat[p - centre : p + half + 1]) for p in sites]
    header = ["sequence", "label", "pos"]
    _write_tsv(os.path.join(out, "eval", "conservation.tsv"), header,
               ((t, y, centre) for t, y in zip(texts, labels)))
    small = sim_eval.small_subset(labels, cfg.n_eval_small)
    _write_tsv(os.path.join(out, "eval", "conservation_small.tsv"), header,
               ((texts[j], labels[j], centre) for j in small))
    _write_tsv(os.path.join(out, "eval", "conservation_sites.tsv"),
               ["assembly", "chrom", "chrom_pos", "label", "class", "rate", "align_score", "ref"],
               ((ref.name, chrom_name, p - lo, y, anc_lib.CLASS_NAMES[ref.cls[p]], f"{ref.rate[p]:.3g}",
                 f"{align[p]:.4f}", "ACGT"[ref.codes[p]]) for p, y in zip(sites, labels)))
    return sites, labels, windows_NW


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
    sites, labels, windows_NW = _write_eval(out, cfg, rng_eval, ref, ref_spans[-1], chrom_names[-1], align)
    if progress:
        print("scoring the eval table (alignment, local context, baselines) ...", flush=True)
    aucs = sim_eval.score_table(cfg, seqs, windows_NW, labels, align[sites].astype(np.float64))
    card = sim_card.make_card(cfg, seed, preset, anc, records, ref.name, ref, branches, sites, labels,
                              chrom_names[-1], aucs)
    with open(os.path.join(out, "card.json"), "w") as f:
        json.dump(card, f, indent=1)
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(sim_card.render_readme(card))
    return card


def simulate(out_dir: str, seed: int = 0, preset: str = "demo", overwrite: bool = False,
             progress: bool = True, **overrides) -> dict:
    """Write a simulated data set to out_dir and return its card (a dict)."""
    cfg = make_config(preset, **overrides)
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and os.listdir(out_dir):
        if not overwrite:
            raise DataError(f"{out_dir} exists and is not empty (use --overwrite to replace it)")
        if not os.path.exists(os.path.join(out_dir, "card.json")):
            raise DataError(f"{out_dir} does not look like a simulated data set; not replacing it")
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
    try:
        card = _generate(tmp, cfg, seed, preset, progress)
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return card


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m nanodna.data simulate", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preset", default="demo", choices=sorted(PRESETS))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE",
                   help=f"override a parameter, e.g. --set n_species=8; names: "
                        f"{', '.join(f.name for f in dataclasses.fields(SimConfig))}")
    p.add_argument("--overwrite", action="store_true", help="replace an existing simulated data set")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    try:
        overrides = dict(parse_override(o) for o in args.overrides)
        t0 = time.time()
        card = simulate(args.out, args.seed, args.preset, overwrite=args.overwrite,
                        progress=not args.quiet, **overrides)
    except DataError as e:
        print(f"error: {e}")
        return 2
    auc = card["auc"]
    print(f"wrote {args.out} in {time.time() - t0:.1f} s: {card['eval']['n']} eval rows; ROC AUC "
          f"alignment {auc['alignment']:.3f}, local context {auc['local_context']['best']:.3f} "
          f"(k={auc['local_context']['best_k']}), window GC {auc['window_gc']:.3f}, "
          f"target GC {auc['target_gc']:.3f}, k-mer frequency {auc['kmer_frequency']:.3f}")
    return 0
