"""Score the SNVs of a VCF against a reference genome: PlantCAD's zero-shot variant effect.

    python -m nanodna.vep --checkpoint CKPT --vcf calls.vcf.gz --fasta genome.fa.gz --out scores.tsv
    python eval.py --checkpoint CKPT --vcf calls.vcf.gz --fasta genome.fa.gz --out scores.tsv

Each SNV site gets the window the table path would crop from a long row around it
(`scoring.context_window`, with the contig as the row): the longest odd window that fits in
max_len, variant at its centre (index 255 of 511 bases for max_len 512, PlantCAD's index
`tables.default_pos(512)`); near a contig end the window is pushed inside the contig, and a
contig shorter than max_len is scored whole. The windows
are scored by the table path itself (`scoring.score_table`: [MASK] at the variant, softmax over
a/c/g/t, both strands averaged where the model is not RC-equivariant by construction; a
Caduceus-PS model computes both strands in every call). Per allele the output holds

    chrom  pos  ref  alt  llr = log p(alt) - log p(ref)  p_ref = p(ref)

(`--out *.tsv`, one line per scored allele), or, with `--out *.vcf` / `*.vcf.gz`, the input
VCF with two INFO fields added (NANODNA_LLR, Number=A, '.' for alleles not scored;
NANODNA_PREF). Multi-allelic records are split into their alleles (one window per site);
indels, MNPs, symbolic / structural alleles and non-ACGT alleles are skipped and counted. A REF
that is not the FASTA base is counted and skipped; above `max_ref_mismatch` of the SNV sites
(checked after every chunk, once 100 sites are in) the run stops: that is a wrong genome build.
A contig that is not in the FASTA stops the run with one line listing both name sets.

VCF and FASTA go through pysam (htslib): one well-kept package reads plain, gzipped or
bgzipped VCF/BCF as a stream and random-accesses a faidx-indexed (plain or bgzipped) FASTA.
The VCF is read in chunks of `chunk` sites, so memory does not grow with the VCF.

Glossary: R sites (rows of the table a chunk scores), 4 the four alleles a/c/g/t.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator

import numpy as np
from tqdm.auto import tqdm

from nanodna import tokenizer
from nanodna.checkpoint import load_model
from nanodna.errors import UserError, fail
from nanodna.evaluation import scoring
from nanodna.evaluation.tables import EvalTable
from nanodna.models.config import ModelConfig

try:  # optional: pip install 'nanodna[vcf]'
    import pysam
except ImportError:  # pragma: no cover - exercised only without the extra
    pysam = None

LLR_TAG, PREF_TAG = "NANODNA_LLR", "NANODNA_PREF"
MIN_SITES_FOR_REF_CHECK = 100


class VepError(UserError):
    """A VCF / FASTA pair that cannot be scored; the message is one line."""


@dataclasses.dataclass(frozen=True)
class Site:
    """One VCF record: 1-based pos, alleles as written; `line` is its VCF text (write-back)."""

    chrom: str
    pos: int
    ref: str
    alts: tuple[str, ...]
    line: str | None = None


@dataclasses.dataclass
class Counts:
    """What happened to the VCF's records and alleles."""

    records: int = 0
    snv_sites: int = 0  # records with at least one SNV allele and a REF of A/C/G/T
    scored_sites: int = 0
    scored_alleles: int = 0
    indel_alleles: int = 0  # REF and ALT lengths differ, or MNPs
    sv_alleles: int = 0  # symbolic (<DEL>), breakends, '*'
    other_alleles: int = 0  # N or other non-ACGT bases, missing ALT '.'
    ref_mismatch_sites: int = 0
    seconds: float = 0.0

    @property
    def windows_per_s(self) -> float:
        return self.scored_sites / max(self.seconds, 1e-9)

    def summary(self) -> str:
        return (
            f"{self.scored_alleles} alleles at {self.scored_sites} sites scored "
            f"({self.windows_per_s:.1f} windows/s); {self.records} records; skipped: "
            f"{self.indel_alleles} indel/MNP, {self.sv_alleles} structural, "
            f"{self.other_alleles} non-ACGT/missing alleles, "
            f"{self.ref_mismatch_sites} sites whose REF differs from the FASTA"
        )


def _require_pysam() -> None:
    if pysam is None:
        raise VepError("VCF scoring needs pysam: pip install 'nanodna[vcf]' (or pip install pysam)")


def allele_kind(ref: str, alt: str | None) -> str:
    """'snv', 'indel' (incl. MNPs), 'sv' (symbolic, breakend, '*') or 'other' (N, missing)."""
    if alt is None or alt == ".":
        return "other"
    if alt.startswith("<") or "[" in alt or "]" in alt or alt == "*":
        return "sv"
    if len(ref) != 1 or len(alt) != 1:
        return "indel"
    if ref.upper() not in tokenizer.BASES or alt.upper() not in tokenizer.BASES:
        return "other"
    return "snv"


# ---------------------------------------------------------------------------------------------
# Reading


def read_sites(vcf_path: str) -> Iterator[Site]:
    """Stream a VCF/BCF's records as Sites (lazily, one at a time)."""
    _require_pysam()
    verbosity = pysam.set_verbosity(0)  # not "could not retrieve index": a stream needs none
    try:
        vcf = pysam.VariantFile(vcf_path)
    except (OSError, ValueError) as e:
        raise VepError(f"{vcf_path}: cannot read as VCF/BCF ({e})") from None
    finally:
        pysam.set_verbosity(verbosity)
    with vcf:
        for rec in vcf:
            yield Site(rec.chrom, rec.pos, rec.ref, tuple(rec.alts or ()), str(rec).rstrip("\n"))


def vcf_header(vcf_path: str) -> str:
    """The VCF's header text (meta lines and #CHROM line)."""
    _require_pysam()
    verbosity = pysam.set_verbosity(0)
    try:
        with pysam.VariantFile(vcf_path) as vcf:
            return str(vcf.header)
    except (OSError, ValueError) as e:
        raise VepError(f"{vcf_path}: cannot read as VCF/BCF ({e})") from None
    finally:
        pysam.set_verbosity(verbosity)


class Genome:
    """A faidx-indexed FASTA (plain or bgzipped; the .fai is built beside it when missing)."""

    def __init__(self, path: str):
        _require_pysam()
        self.path = path
        verbosity = pysam.set_verbosity(0)  # htslib's own stderr lines: we report in one
        try:
            self.fasta = pysam.FastaFile(path)
        except (OSError, ValueError) as e:
            hint = ""
            if path.endswith(".gz"):
                hint = (f"; if it is plain gzip, recompress with bgzip: "
                        f"zcat {path} | bgzip > {path[:-3]}.bgz")
            raise VepError(f"{path}: cannot open as an indexed FASTA ({e}){hint}") from None
        finally:
            pysam.set_verbosity(verbosity)
        self.lengths = dict(zip(self.fasta.references, self.fasta.lengths))

    def fetch(self, chrom: str, start: int, stop: int) -> str:
        """Bases [start, stop) of chrom, 0-based, as written in the file (case kept)."""
        return self.fasta.fetch(chrom, start, stop)


def _contig_error(chrom: str, genome: Genome, vcf_contigs: Iterable[str]) -> VepError:
    def show(names):
        names = sorted(set(names))
        return ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")

    return VepError(
        f"contig {chrom!r} of the VCF is not in {genome.path}: VCF contigs {{{show(vcf_contigs)}}} "
        f"vs FASTA contigs {{{show(genome.lengths)}}} (chr1 vs 1? rename one side)"
    )


# ---------------------------------------------------------------------------------------------
# Scoring


def site_window(contig_len: int, pos0: int, max_len: int | None) -> tuple[int, int]:
    """[start, stop) of a site's window on its contig: the table path's crop, contig = row."""
    return scoring.context_window(contig_len, pos0, max_len)


def score_sites(
    model,
    model_cfg: ModelConfig,
    genome: Genome,
    sites: Iterable[Site],
    counts: Counts | None = None,
    batch_size: int = 64,
    chunk: int | None = None,
    max_ref_mismatch: float = 0.05,
    progress: bool = False,
) -> Iterator[tuple[Site, np.ndarray | None]]:
    """Yield (site, log p(a/c/g/t) at the site, shape (4,)) for every site, in order; None
    for sites not scored. Reads `sites` `chunk` at a time (default 16 batches).

    Raises VepError for a contig missing from the FASTA, or too many REF mismatches."""
    counts = counts if counts is not None else Counts()
    chunk = chunk or 16 * batch_size
    seen_contigs: set[str] = set()
    it = iter(sites)
    t0 = time.perf_counter()
    with tqdm(unit="site", desc="scoring VCF", disable=not progress) as bar:
        while True:
            block = list(itertools.islice(it, chunk))
            if not block:
                break
            windows, pos_R, ref_R, scored = [], [], [], []
            for site in block:
                counts.records += 1
                seen_contigs.add(site.chrom)
                kinds = [allele_kind(site.ref, a) for a in site.alts]
                counts.indel_alleles += kinds.count("indel")
                counts.sv_alleles += kinds.count("sv")
                counts.other_alleles += kinds.count("other") + (not site.alts)
                if "snv" not in kinds:
                    scored.append(False)
                    continue
                if site.chrom not in genome.lengths:
                    raise _contig_error(site.chrom, genome, seen_contigs)
                counts.snv_sites += 1
                pos0 = site.pos - 1
                start, stop = site_window(genome.lengths[site.chrom], pos0, model_cfg.max_len)
                seq = genome.fetch(site.chrom, start, stop)
                if seq[pos0 - start].upper() != site.ref.upper():
                    counts.ref_mismatch_sites += 1
                    scored.append(False)
                    continue
                ids, _ = tokenizer.encode(seq)
                windows.append(ids)
                pos_R.append(pos0 - start)
                ref_R.append(ids[pos0 - start])
                scored.append(True)
            _check_ref_mismatch(counts, max_ref_mismatch, final=False)
            lp_R4 = np.zeros((0, 4), np.float32)
            if windows:
                table = EvalTable(
                    path=genome.path, task="conservation", ids=windows,
                    pos_R=np.array(pos_R, np.int64), ref_R=np.array(ref_R, np.int64),
                    alt_R=None, label_R=None,
                )
                lp_R4 = scoring.score_table(model, model_cfg, table, batch_size).log_probs_R4
            counts.scored_sites += len(windows)
            counts.seconds = time.perf_counter() - t0
            bar.update(len(block))
            bar.set_postfix(windows_per_s=f"{counts.windows_per_s:.1f}")
            rows = iter(lp_R4)
            for site, ok in zip(block, scored):
                lp_4 = next(rows) if ok else None
                if ok:
                    counts.scored_alleles += sum(allele_kind(site.ref, a) == "snv" for a in site.alts)
                yield site, lp_4
    _check_ref_mismatch(counts, max_ref_mismatch, final=True)


def _check_ref_mismatch(counts: Counts, limit: float, final: bool) -> None:
    n, bad = counts.snv_sites, counts.ref_mismatch_sites
    if n and (final or n >= MIN_SITES_FOR_REF_CHECK) and bad > limit * n:
        raise VepError(
            f"{bad} of {n} SNV sites ({100 * bad / n:.1f}%) have a REF that differs from the "
            f"FASTA base (limit {100 * limit:g}%): is this the genome build the VCF was called on?"
        )


def allele_scores(site: Site, lp_4: np.ndarray) -> list[tuple[str, float, float] | None]:
    """Per ALT: (alt, llr = log p(alt) - log p(ref), p(ref)), or None for a non-SNV allele."""
    lp_ref = float(lp_4[tokenizer.BASES.index(site.ref.upper())])
    out = []
    for alt in site.alts:
        if allele_kind(site.ref, alt) != "snv":
            out.append(None)
            continue
        lp_alt = float(lp_4[tokenizer.BASES.index(alt.upper())])
        out.append((alt, lp_alt - lp_ref, float(np.exp(lp_ref))))
    return out


# ---------------------------------------------------------------------------------------------
# Writing


def write_tsv(path: str, scored: Iterable[tuple[Site, np.ndarray | None]]) -> None:
    """chrom, pos, ref, alt, llr, p_ref: one line per scored allele, in VCF order."""
    with open(path, "w") as f:
        f.write("chrom\tpos\tref\talt\tllr\tp_ref\n")
        for site, lp_4 in scored:
            if lp_4 is None:
                continue
            for row in allele_scores(site, lp_4):
                if row is not None:
                    alt, llr, p_ref = row
                    f.write(f"{site.chrom}\t{site.pos}\t{site.ref}\t{alt}\t{llr:.6g}\t{p_ref:.6g}\n")


def write_vcf(path: str, header: str, scored: Iterable[tuple[Site, np.ndarray | None]]) -> None:
    """The input records with NANODNA_LLR / NANODNA_PREF added to INFO; every record kept.
    `.gz` paths are bgzipped (pysam.BGZFile), so tabix can index them."""
    lines = header.rstrip("\n").split("\n")
    info = [
        (f'##INFO=<ID={LLR_TAG},Number=A,Type=Float,Description="nanodna zero-shot log p(alt) - '
         f'log p(ref) at the variant, [MASK]ed (PlantCAD LLR); . for alleles not scored">'),
        (f'##INFO=<ID={PREF_TAG},Number=1,Type=Float,Description="nanodna probability of the '
         f'reference allele at the variant, [MASK]ed">'),
    ]
    lines[-1:-1] = [x for x in info if x.split(",")[0] not in header]
    opener = pysam.BGZFile if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(("\n".join(lines) + "\n").encode())
        for site, lp_4 in scored:
            line = site.line if site.line is not None else _site_line(site)
            if lp_4 is not None:
                rows = allele_scores(site, lp_4)
                llr = ",".join("." if r is None else f"{r[1]:.6g}" for r in rows)
                p_ref = next(r[2] for r in rows if r is not None)
                fields = line.split("\t")
                added = f"{LLR_TAG}={llr};{PREF_TAG}={p_ref:.6g}"
                fields[7] = added if fields[7] in (".", "") else f"{fields[7]};{added}"
                line = "\t".join(fields)
            f.write((line + "\n").encode())


def _site_line(site: Site) -> str:
    return "\t".join([site.chrom, str(site.pos), ".", site.ref, ",".join(site.alts) or ".",
                      ".", ".", "."])


def run(
    checkpoint: str,
    vcf: str,
    fasta: str,
    out: str,
    batch_size: int = 64,
    max_ref_mismatch: float = 0.05,
    progress: bool = True,
    matmul_dtype: str | None = None,
) -> Counts:
    """Load a checkpoint, score the VCF's SNVs and write `out` (.tsv, or .vcf / .vcf.gz).
    matmul_dtype: see nanodna.checkpoint.load_model."""
    _require_pysam()
    is_vcf = out.endswith((".vcf", ".vcf.gz", ".vcf.bgz"))
    genome = Genome(fasta)  # before the model loads: a bad path fails fast
    header = vcf_header(vcf)
    model, config, _ = load_model(checkpoint, matmul_dtype)
    counts = Counts()
    scored = score_sites(model, config.model, genome, read_sites(vcf), counts, batch_size,
                         max_ref_mismatch=max_ref_mismatch, progress=progress)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    if is_vcf:
        write_vcf(out, header, scored)
    else:
        write_tsv(out, scored)
    return counts


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vcf", help="variant calls: .vcf, .vcf.gz (bgzip or gzip) or .bcf")
    p.add_argument("--fasta", help="reference genome, faidx-indexable: plain or bgzipped FASTA")
    p.add_argument("--max-ref-mismatch", type=float, default=0.05,
                   help="stop when more than this fraction of SNV sites has a REF != FASTA")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True,
                   help="training workdir (latest step) or one step's folder")
    add_arguments(p)
    p.add_argument("--out", default="scores.tsv", help=".tsv, or .vcf / .vcf.gz (INFO fields)")
    p.add_argument("--batch-size", type=int, default=64, help="windows per forward pass")
    args = p.parse_args(argv)
    if not args.vcf or not args.fasta:
        p.error("--vcf and --fasta are required")
    return run_cli(args)


def run_cli(args) -> int:
    """The command line's body, shared with eval.py: print a summary, or one error line."""
    if args.batch_size < 1:
        return fail("--batch-size must be >= 1")
    logging.getLogger("absl").setLevel(logging.ERROR)
    try:
        counts = run(args.checkpoint, args.vcf, args.fasta, args.out, args.batch_size,
                     args.max_ref_mismatch, matmul_dtype=getattr(args, "matmul_dtype", None))
    except UserError as e:
        return fail(e)
    print(counts.summary())
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
