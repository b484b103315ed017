"""Genome simulator: reproducible output, readable FASTA and store, a correct eval table and truth."""

import csv
import filecmp
import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from nanodna import tokenizer
from nanodna.data import DataError, genome
from nanodna.overrides import ConfigError
from nanodna.sim import ancestor as sim_ancestor
from nanodna.sim import card as sim_card
from nanodna.sim import evolve as sim_evolve
from nanodna.sim import provision, simulate
from nanodna.sim.config import make_config

TINY = dict(genome_length=40_000, n_species=6, n_chromosomes=2, n_eval=200, n_eval_small=40,
            context_ks=(3, 4), gene_codons=(60, 120))


def _run(path, seed=0, **kw):
    return simulate.simulate(str(path), seed=seed, progress=False, **{**TINY, **kw})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "a"
    card = _run(out)
    return out, card


def _read_tsv(path):
    with open(path) as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _read_fasta(path):
    records, name = {}, None
    with gzip.open(path, "rt") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith(">"):
                name = line[1:]
                records[name] = []
            else:
                records[name].append(line)
    return {k: "".join(v) for k, v in records.items()}


def _all_files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_same_seed_same_bytes_other_seed_differs(tiny, tmp_path):
    out, _ = tiny
    _run(tmp_path / "b")
    files = _all_files(out)
    assert files == _all_files(tmp_path / "b") and "card.json" in files
    match, mismatch, errors = filecmp.cmpfiles(out, tmp_path / "b", files, shallow=False)
    assert not mismatch and not errors
    _run(tmp_path / "c", seed=1)
    assert not filecmp.cmp(out / "fasta" / "sim00.fa.gz", tmp_path / "c" / "fasta" / "sim00.fa.gz",
                           shallow=False)


def test_fasta_is_soft_masked_and_matches_store(tiny):
    out, card = tiny
    store = genome.GenomeStore(str(out / "store"))
    assert store.assemblies == [s["name"] for s in card["species"]]
    for asm in store.assemblies:
        fasta = _read_fasta(out / "fasta" / f"{asm}.fa.gz")
        chroms = [c for c in store.chromosomes if c.assembly == asm]
        assert list(fasta) == [c.name for c in chroms] == ["chr1", "chr2"]
        for c in chroms:
            seq = fasta[c.name]
            assert set(seq) <= set("ACGTacgt") and any(ch.islower() for ch in seq)
            ids, rep = store.window(asm, c.offset, c.length)
            assert tokenizer.decode(ids, rep) == seq
            assert abs(c.repeat_frac - rep.mean()) < 1e-9


def test_eval_table_format(tiny):
    out, card = tiny
    rows = _read_tsv(out / "eval" / "conservation.tsv")
    with open(out / "eval" / "conservation.tsv") as f:
        assert f.readline().rstrip("\n").split("\t") == ["sequence", "label", "pos"]
    labels = np.array([int(r["label"]) for r in rows])
    assert len(rows) == card["eval"]["n"] == TINY["n_eval"]
    assert set(labels) == {0, 1} and labels.sum() * 2 == len(rows)
    assert all(len(r["sequence"]) == 512 and r["pos"] == "255" for r in rows)
    assert all(r["sequence"][255] in "ACGT" for r in rows)  # target outside repeats (upper case)
    small = _read_tsv(out / "eval" / "conservation_small.tsv")
    small_labels = [int(r["label"]) for r in small]
    assert len(small) == TINY["n_eval_small"] and sum(small_labels) * 2 == len(small)
    assert {r["sequence"] for r in small} <= {r["sequence"] for r in rows}


def test_eval_rows_agree_with_truth_and_store(tiny):
    out, card = tiny
    ref = card["reference"]
    truth = np.load(out / "truth" / f"{ref}.npz")
    offsets = dict(zip(truth["chrom_names"], truth["chrom_offsets"]))
    store = genome.GenomeStore(str(out / "store"))
    rows = _read_tsv(out / "eval" / "conservation.tsv")
    sites = _read_tsv(out / "eval" / "conservation_sites.tsv")
    assert {s["chrom"] for s in sites} == set(card["eval_chromosomes"])
    names = list(truth["class_names"])
    constrained = [names.index(c) for c in ("codon", "splice", "motif", "cne")]
    neutral = [names.index(c) for c in ("neutral", "intron", "fourfold")]
    for row, site in zip(rows, sites):
        i = int(offsets[site["chrom"]]) + int(site["chrom_pos"])
        ids, rep = store.window(ref, i - 255, 512)
        assert tokenizer.decode(ids, rep) == row["sequence"]
        assert not truth["repeat"][i] and truth["anc_pos"][i] >= 0
        if row["label"] == "1":
            assert truth["rate"][i] <= card["params"]["positive_max_rate"]
            assert truth["class"][i] in constrained
        else:
            assert truth["rate"][i] == 1.0 and truth["class"][i] in neutral


def test_alignment_score_separates_labels(tiny):
    out, card = tiny
    sites = _read_tsv(out / "eval" / "conservation_sites.tsv")
    score = np.array([float(s["align_score"]) for s in sites])
    label = np.array([int(s["label"]) for s in sites])
    assert score[label == 1].mean() > score[label == 0].mean() + 0.2
    assert card["auc"]["alignment"] > 0.85
    # negatives match the positives' reference-base mix, so "target is G/C" is exactly chance
    assert card["auc"]["target_gc"] == pytest.approx(0.5)


def test_hky_substitution_matches_its_transition_matrix():
    rng = np.random.default_rng(1)
    gc, kappa, dist = 0.36, 3.0, rng.uniform(0.1, 0.5)
    pi = np.array([(1 - gc) / 2, gc / 2, gc / 2, (1 - gc) / 2])
    q = sim_evolve.hky_rate_matrix(kappa, pi)
    p = sim_evolve.transition_probs(q, pi, dist)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-9)
    np.testing.assert_allclose(pi @ p, pi, atol=1e-9)  # equilibrium: composition never drifts
    codes = rng.choice(4, 200_000, p=pi).astype(np.uint8)
    new = sim_evolve.hky_substitute(rng, codes, np.full(codes.size, dist, np.float32), kappa, gc)
    for a in range(4):
        freq = np.bincount(new[codes == a], minlength=4) / np.count_nonzero(codes == a)
        np.testing.assert_allclose(freq, p[a], atol=0.01)


def test_gene_copies_are_codon_structured():
    cfg = make_config("demo", **TINY)
    rng = np.random.default_rng(2)
    fams = sim_ancestor.make_families(rng, cfg)
    bg = sim_ancestor.Background.random(rng, cfg)
    for family in range(cfg.n_gene_families):
        codes, cls, rate, _, _ = sim_ancestor.gene_copy(rng, cfg, fams, bg, family, elem=0).arrays()
        coding = np.isin(cls, (sim_ancestor.CODON, sim_ancestor.FOURFOLD))
        cds = "".join("acgt"[c] for c in codes[coding])
        codons = [cds[i : i + 3] for i in range(0, len(cds), 3)]
        assert len(cds) % 3 == 0 and codons[0] == "atg" and codons[-1] in ("taa", "tag", "tga")
        assert not set(codons[1:-1]) & {"taa", "tag", "tga"}
        # introns open with GT and close with AG; both splice dinucleotides are constrained
        splice = "".join("acgt"[c] for c in codes[cls == sim_ancestor.SPLICE])
        assert len(splice) % 4 == 0 and splice == "gtag" * (len(splice) // 4) and len(splice) > 0
        assert np.all(rate[cls == sim_ancestor.FOURFOLD] == 1.0)
        assert np.all(rate[cls == sim_ancestor.SPLICE] < 0.1)
        # codon usage is skewed but the coding sequence keeps the background GC
        assert abs(np.isin(codes[coding], (1, 2)).mean() - cfg.gc) < 0.05


def test_bad_input_fails_with_one_line(tiny, tmp_path, capsys):
    out, _ = tiny
    with pytest.raises(DataError, match="unknown simulator parameter"):
        make_config("demo", genome_lenght=10)
    with pytest.raises(DataError, match="unknown preset"):
        make_config("huge")
    assert simulate.main(["--out", str(out), "--quiet"]) == 2  # exists, no --overwrite
    assert simulate.main(["--out", str(tmp_path / "x"), "--set", "n_species=one"]) == 2
    assert simulate.main(["--out", str(tmp_path / "x"), "--set", "genome_lenght=9"]) == 2
    assert simulate.main(["--out", str(tmp_path / "x"), "--seed", "many"]) == 2  # argparse
    captured = capsys.readouterr()
    printed = captured.err.strip().splitlines()
    assert len(printed) == 4 and all(line.startswith("error: ") for line in printed)
    assert "n_species" in printed[1] and "genome_length" in printed[2]  # named, with a hint
    assert captured.out == "" and not os.path.exists(tmp_path / "x")


def test_set_uses_the_override_grammar():
    """--set values are Python literals checked against the field type; tuples as a,b or (a, b)."""
    cfg = make_config("demo", ["n_species=5", "motif_length=6,12", "context_ks=(2, 3)",
                               "kmer_baseline_k=3", "gc=0.4"])
    assert (cfg.n_species, cfg.motif_length, cfg.context_ks) == (5, (6, 12), (2, 3))
    assert cfg.kmer_baseline_k == 3 and cfg.gc == 0.4
    assert make_config("demo", ["context_ks=5,"]).context_ks == (5,)
    for bad in ("context_ks=5", "motif_length=(1, 2, 3)", "gc=high", "n_species=2.5"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            make_config("demo", [bad])
    with pytest.raises(DataError, match="n_species must be >= 2"):  # the config's own checks
        make_config("demo", ["n_species=1"])


@pytest.mark.parametrize("module", [["nanodna.data", "simulate"], ["nanodna.sim"]])
def test_cli_exits_2_with_one_error_line(tmp_path, module):
    """Both entry points: a user error is one `error:` line on stderr and exit status 2."""
    for args in (["--out", str(tmp_path / "x"), "--set", "n_species=1"],
                 ["--out", str(tmp_path / "x"), "--preset", "huge"],
                 ["--bogus"]):
        proc = subprocess.run([sys.executable, "-m", *module, *args], capture_output=True,
                              text=True, check=False, env={**os.environ, "PYTHONPATH": os.getcwd()})
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2, (args, proc.stderr)
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, proc.stderr)


def test_provision_paths_and_generate_once(tmp_path, monkeypatch, capsys):
    sim_dir = str(tmp_path / "sim")
    store, table = provision.simulated_paths(sim_dir)
    assert store == os.path.join(sim_dir, "store")
    assert table == os.path.join(sim_dir, "eval", "conservation_small.tsv")
    calls = []

    def tiny_simulate(out_dir, **kw):  # the real simulator, on the tiny config
        calls.append(kw)
        return _run(out_dir, seed=kw["seed"])

    monkeypatch.setattr(provision, "simulate", tiny_simulate)
    assert not provision.ensure_simulated(sim_dir, "demo", 3, leader=False)  # not the leader
    assert calls == [] and not os.path.exists(sim_dir)
    assert provision.ensure_simulated(sim_dir, "demo", 3)
    assert calls[0]["seed"] == 3 and calls[0]["preset"] == "demo"
    assert os.path.exists(os.path.join(store, "manifest.json")) and os.path.exists(table)
    assert "generating" in capsys.readouterr().out
    assert not provision.ensure_simulated(sim_dir, "demo", 3)  # present: nothing to do
    assert len(calls) == 1


def test_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    def boom(card):
        raise KeyboardInterrupt

    monkeypatch.setattr(sim_card, "render_readme", boom)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "out", genome_length=20_000, n_species=3)
    assert os.listdir(tmp_path) == []


def test_demo_preset_card(tmp_path):
    """The real demo preset: the eval table is hard for composition and easy for an alignment."""
    card = simulate.simulate(str(tmp_path / "demo"), seed=0, preset="demo", progress=False)
    auc = card["auc"]
    assert auc["alignment"] >= 0.95
    assert auc["local_context"]["best"] >= 0.75
    for name in ("window_gc", "target_gc", "kmer_frequency"):
        assert 0.40 <= auc[name] <= 0.60, (name, auc[name])
    assert len(card["species"]) == 16 and card["eval"]["n"] == 3000
    on_disk = json.loads((tmp_path / "demo" / "card.json").read_text())
    assert on_disk["auc"] == auc and on_disk["eval_chromosomes"] == ["chr3"]
